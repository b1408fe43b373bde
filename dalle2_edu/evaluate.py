"""Grade the text → image pipeline with the attribute classifier: does the picture show what the prompt asked for?

- **seen prompts**: every (category, colour, pattern) whose (category, colour) pair occurs in training
  (8 × 8 × 3 minus the held-out pairs = 174 prompts), each with a random background and caption template;
- **held-out prompts**: the (category, colour) pairs of :data:`~dalle2_edu.datasets.catalogue.HELD_OUT_PAIRS`, never
  seen in training, × 3 patterns: compositional generalisation;
- FID/KID of the seen-prompt pictures against real test pictures, beside the floor FID(train, test) at the same N.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from dalle2_edu.datasets.catalogue import (
    BACKGROUNDS,
    CATEGORIES,
    COLOUR_NAMES,
    HELD_OUT_PAIRS,
    PATTERNS,
    make_caption,
)


def eval_prompts(split: str = "seen", seed: int = 0) -> tuple[list[str], torch.Tensor]:
    """The evaluation prompts and the labels (P, 4) they ask for (background included, as the caption states it).

    :param split: ``"seen"`` (174 prompts) or ``"heldout"`` (18 prompts).
    :param seed: picks each prompt's background and wording.
    """
    if split not in ("seen", "heldout"):
        raise ValueError(f"split must be 'seen' or 'heldout', got {split!r}")
    rng = np.random.default_rng(seed)
    held = set(HELD_OUT_PAIRS)
    prompts, labels = [], []
    for cat, col, pat in itertools.product(CATEGORIES, COLOUR_NAMES, PATTERNS):
        if ((cat, col) in held) != (split == "heldout"):
            continue
        bg = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
        prompts.append(make_caption(dict(category=cat, colour=col, pattern=pat, background=bg), rng))
        labels.append([CATEGORIES.index(cat), COLOUR_NAMES.index(col), PATTERNS.index(pat), BACKGROUNDS.index(bg)])
    return prompts, torch.tensor(labels)


def generate_for_prompts(
    pipe, prompts: list[str], n: int, batch_prompts: int = 16, seed: int = 0, progress: bool = True, **generate_kwargs
) -> torch.Tensor:
    """``n`` pictures per prompt, prompt-major, generated ``batch_prompts`` prompts at a time (seed per batch)."""
    from tqdm.auto import tqdm

    chunks = range(0, len(prompts), batch_prompts)
    out = []
    for i in tqdm(chunks, desc="generating", disable=not progress):
        out.append(pipe.generate(prompts[i : i + batch_prompts], n=n, seed=seed + i, **generate_kwargs).tensors)
    return torch.cat(out)


def evaluate_pipeline(
    pipe,
    n: int = 4,
    seed: int = 0,
    fid_real: int = 0,
    classifier=None,
    progress: bool = True,
    **generate_kwargs,
) -> dict:
    """Prompt fidelity on seen and held-out prompts, and optionally FID/KID against ``fid_real`` real test pictures.

    :param pipe: a :class:`dalle2_edu.pipeline.UnCLIP`.
    :param n: pictures per prompt.
    :param fid_real: real test pictures to compare the seen-prompt pictures with (0: skip FID/KID).
    :param generate_kwargs: passed to :meth:`UnCLIP.generate` (guidance_scale, steps, use_prior, upsample, ...).
    :return: ``{"seen": {...fidelity...}, "heldout": {...}, "fid": ..., ...}``.
    """
    from dalle2_edu.metrics import fid, fid_floor, kid, load_attribute_classifier, prompt_fidelity

    classifier = classifier or load_attribute_classifier()
    report: dict = {"n_per_prompt": n, "settings": {k: v for k, v in generate_kwargs.items()}}
    seen_images = None
    for split in ("seen", "heldout"):
        prompts, labels = eval_prompts(split, seed)
        images = generate_for_prompts(pipe, prompts, n, seed=seed, progress=progress, **generate_kwargs)
        fidelity = prompt_fidelity(images, labels.repeat_interleave(n, dim=0), classifier)
        report[split] = {k: round(v, 4) if isinstance(v, float) else v for k, v in fidelity.items()}
        report[split]["prompts"] = len(prompts)
        if split == "seen":
            seen_images = images
    if fid_real:
        from dalle2_edu.datasets.catalogue import ProductCatalogue

        size = seen_images.shape[-1]
        real = ProductCatalogue(fid_real, split="test", seed=1, resolution=size, progress=False).images
        m = min(len(seen_images), fid_real)
        report["fid"] = round(fid(seen_images[:m], real[:m], classifier), 2)
        k_mean, k_std = kid(seen_images[:m], real[:m], classifier, subsets=50, subset_size=min(m, 100))
        report["kid"], report["kid_std"] = round(k_mean, 4), round(k_std, 4)
        report["fid_floor_train_vs_test"] = round(fid_floor(m, classifier=classifier, resolution=size), 2)
        report["fid_n"] = m
    return report
