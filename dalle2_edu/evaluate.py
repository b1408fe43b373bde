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
from dalle2_edu.edits import fit_size
from dalle2_edu.stages.upsampler import to_float_images


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
    :return: ``{"seen": {...fidelity...}, "heldout": {...}, "fid": ..., "grain": {...}, ...}``; with ``fid_real``
        also ``grain`` (:func:`~dalle2_edu.metrics.grain_ratio`): the fine detail in the flat backgrounds of the
        seen-prompt pictures against the real test pictures'.
    """
    from dalle2_edu.metrics import fid, fid_floor, grain_ratio, kid, load_attribute_classifier, prompt_fidelity

    classifier = classifier or load_attribute_classifier()
    report: dict = {"n_per_prompt": n, "settings": {k: v for k, v in generate_kwargs.items()}}
    seen_images = seen_backgrounds = None
    for split in ("seen", "heldout"):
        prompts, labels = eval_prompts(split, seed)
        images = generate_for_prompts(pipe, prompts, n, seed=seed, progress=progress, **generate_kwargs)
        fidelity = prompt_fidelity(images, labels.repeat_interleave(n, dim=0), classifier)
        report[split] = {k: round(v, 4) if isinstance(v, float) else v for k, v in fidelity.items()}
        report[split]["prompts"] = len(prompts)
        if split == "seen":
            seen_images = images
            seen_backgrounds = [BACKGROUNDS[int(b)] for b in labels[:, 3].repeat_interleave(n)]
    if fid_real:
        from dalle2_edu.datasets.catalogue import ProductCatalogue

        size = seen_images.shape[-1]
        real_set = ProductCatalogue(fid_real, split="test", seed=1, resolution=size, progress=False)
        real = real_set.images
        m = min(len(seen_images), fid_real)
        report["fid"] = round(fid(seen_images[:m], real[:m], classifier), 2)
        k_mean, k_std = kid(seen_images[:m], real[:m], classifier, subsets=50, subset_size=min(m, 100))
        report["kid"], report["kid_std"] = round(k_mean, 4), round(k_std, 4)
        report["fid_floor_train_vs_test"] = round(fid_floor(m, classifier=classifier, resolution=size), 2)
        report["fid_n"] = m
        real_backgrounds = [BACKGROUNDS[int(b)] for b in real_set.labels[:m, 3]]
        grain = grain_ratio(seen_images[:m], seen_backgrounds[:m], real[:m], real_backgrounds)
        report["grain"] = {k: round(v, 6) if isinstance(v, float) else v for k, v in grain.items()}
    return report


# ------------------------------------------------------------------------------------------------ edits
def edit_sources(n: int, seed: int = 0, size: int = 64) -> dict:
    """``n`` freshly drawn catalogue products to edit (seen (category, colour) pairs only), with what they show.

    :return: ``{"images": uint8 (n, 3, size, size), "alpha": float (n, size, size) product coverage,
        "attributes": [dict(category, colour, pattern, background)] * n, "seed": seed}``.
    """
    from dalle2_edu.datasets.catalogue import render_product

    rng = np.random.default_rng([seed, 13])
    held = set(HELD_OUT_PAIRS)
    images, alphas, attrs = [], [], []
    while len(images) < n:
        a = dict(category=_choice(rng, CATEGORIES), colour=_choice(rng, COLOUR_NAMES),
                 pattern=_choice(rng, PATTERNS), background=_choice(rng, BACKGROUNDS))  # fmt: skip
        if (a["category"], a["colour"]) in held:
            continue
        image, alpha = render_product(**a, rng=rng, size=size, return_alpha=True)
        images.append(image)
        alphas.append(alpha)
        attrs.append(a)
    return {
        "images": torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(),
        "alpha": torch.from_numpy(np.stack(alphas)),
        "attributes": attrs,
        "seed": seed,
    }


def _choice(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def other_colour(colour: str, rng: np.random.Generator, category: str | None = None) -> str:
    """A colour other than ``colour`` (and, given ``category``, not a held-out pair with it)."""
    held = set(HELD_OUT_PAIRS)
    options = [c for c in COLOUR_NAMES if c != colour and (category, c) not in held]
    return options[int(rng.integers(len(options)))]


def caption_pair(attrs: dict, changes: dict, seed: int) -> tuple[str, str]:
    """Two captions worded alike (same template and synonyms) for ``attrs`` and for ``attrs`` with ``changes``."""
    before = make_caption(attrs, np.random.default_rng(seed))
    after = make_caption({**attrs, **changes}, np.random.default_rng(seed))
    return before, after


def product_mask(alpha: torch.Tensor, grow: int = 2) -> torch.Tensor:
    """(N, H, W) product coverage → (N, H, W) 0/1 mask of the product grown by ``grow`` pixels (max pooling)."""
    m = (alpha > 0.1).float()[:, None]
    return torch.nn.functional.max_pool2d(m, 2 * grow + 1, stride=1, padding=grow)[:, 0] if grow else m[:, 0]


def _share(images: torch.Tensor, wanted: list[dict], classifier) -> dict:
    """Fraction of pictures showing every wanted attribute, and each attribute on its own."""
    from dalle2_edu.metrics import ATTRIBUTES

    columns = list(ATTRIBUTES)
    predicted = torch.cat([classifier.predict(images[i : i + 500]) for i in range(0, len(images), 500)])
    got = [{k: ATTRIBUTES[k][int(row[columns.index(k)])] for k in columns} for row in predicted]
    per = {k: float(np.mean([g[k] == w[k] for g, w in zip(got, wanted)])) for k in wanted[0]}
    both = float(np.mean([all(g[k] == w[k] for k in w) for g, w in zip(got, wanted)]))
    return {"all": round(both, 4), **{k: round(v, 4) for k, v in per.items()}, "n": len(images)}


def _rms(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Root-mean-square pixel distance per picture, on the [-1, 1] scale."""
    return (a.float() - b.float()).pow(2).flatten(1).mean(1).sqrt()


def evaluate_variations(pipe, sources: dict, n: int = 4, classifier=None, progress: bool = True, **kwargs) -> dict:
    """Do variations keep the source's category and colour, and differ from each other?

    :return: shares of variations whose category / colour / pattern match the source's, the mean RMS pixel distance
        (64×64, [-1, 1] scale) between two variations of one source and between a variation and its source.
    """
    from tqdm.auto import tqdm

    from dalle2_edu.metrics import load_attribute_classifier

    classifier = classifier or load_attribute_classifier()
    images, attrs = to_float_images(sources["images"]), sources["attributes"]
    outs = []
    for i in tqdm(range(len(images)), desc="variations", disable=not progress):
        outs.append(pipe.variations(images[i : i + 1], n=n, seed=i, **kwargs).tensors)
    out = torch.cat(outs)
    wanted = [{k: a[k] for k in ("category", "colour", "pattern")} for a in attrs for _ in range(n)]
    report = _share(out, wanted, classifier)
    grouped = out.reshape(len(images), n, *out.shape[1:])
    pair = [_rms(grouped[:, j], grouped[:, k]).mean() for j in range(n) for k in range(j + 1, n)]
    src = fit_size(images, out.shape[-1])
    report["rms_between_variations"] = round(float(torch.stack(pair).mean()), 4) if pair else None
    report["rms_to_source"] = round(float(_rms(grouped, src[:, None].expand_as(grouped)).mean()), 4)
    return report


def evaluate_text_diff(pipe, sources: dict, amounts=(0.25, 0.5, 0.75), classifier=None, progress=True, **kw) -> dict:
    """Recolour every source with ``text_diff`` from its caption to the same caption in another colour.

    :return: per θ, the share of edits showing the new colour with the category unchanged (``all``), and each.
    """
    from tqdm.auto import tqdm

    from dalle2_edu.metrics import load_attribute_classifier

    classifier = classifier or load_attribute_classifier()
    rng = np.random.default_rng([sources["seed"], 7])
    images, attrs = to_float_images(sources["images"]), sources["attributes"]
    outs, wanted = [], []
    for i in tqdm(range(len(images)), desc="text diffs", disable=not progress):
        new = other_colour(attrs[i]["colour"], rng, attrs[i]["category"])
        before, after = caption_pair(attrs[i], {"colour": new}, seed=i)
        outs.append(pipe.text_diff(images[i : i + 1], before, after, amount=list(amounts), seed=i, **kw).tensors)
        wanted.append({"category": attrs[i]["category"], "colour": new})
    out = torch.cat(outs).reshape(len(images), len(amounts), 3, *outs[0].shape[-2:])
    return {f"theta_{a:g}": _share(out[:, j], wanted, classifier) for j, a in enumerate(amounts)}


def evaluate_inpaint(pipe, sources: dict, n: int = 2, classifier=None, progress=True, **kw) -> dict:
    """Recolour every source's product by inpainting: mask = the product grown by 2 px, prompt = the source's caption
    with another colour.

    :return: the share of repaintings showing the new colour with the category unchanged (``all``) and each;
        ``max_change_outside_mask`` (the largest change of a kept pixel, [-1, 1] scale) and the RMS change inside.
    """
    from tqdm.auto import tqdm

    from dalle2_edu.metrics import load_attribute_classifier

    classifier = classifier or load_attribute_classifier()
    rng = np.random.default_rng([sources["seed"], 11])
    images, attrs = to_float_images(sources["images"]), sources["attributes"]
    masks = product_mask(sources["alpha"])
    outs, wanted, worst, inside = [], [], 0.0, []
    for i in tqdm(range(len(images)), desc="inpainting", disable=not progress):
        new = other_colour(attrs[i]["colour"], rng, attrs[i]["category"])
        _, prompt = caption_pair(attrs[i], {"colour": new}, seed=i)
        out = pipe.inpaint(images[i], masks[i], prompt, n=n, seed=i, **kw).tensors
        keep = 1 - fit_size(masks[i][None, None], out.shape[-1])
        src = fit_size(images[i : i + 1], out.shape[-1])
        worst = max(worst, float(((out - src).abs() * keep).max()))
        inside.append(float((((out - src) ** 2) * (1 - keep)).sum() / ((1 - keep).sum() * 3 * n)) ** 0.5)
        outs.append(out)
        wanted += [{"category": attrs[i]["category"], "colour": new}] * n
    report = _share(torch.cat(outs), wanted, classifier)
    report["max_change_outside_mask"] = round(worst, 6)
    report["rms_change_inside_mask"] = round(float(np.mean(inside)), 4)
    report["mask_fraction"] = round(float(masks.mean()), 4)
    return report
