"""Product animations: a smooth run of pictures between two prompts, between two pictures, or through colours.

Every frame is decoded deterministically (DDIM, η = 0) from one starting noise, and only the image embedding moves:

- **two prompts** ("a red mug on white" → "a blue mug on white"): each prompt's image embedding is drawn by the
  prior with the same ``seed``, the decoder's starting noise is the one ``generate(prompt, n=1, seed=seed)`` uses
  (so the end frames are ``generate(..., sampler="ddim")``'s pictures: animations keep DDIM, the edits' sampler),
  and the frames slerp from one embedding to the other (:func:`~dalle2_edu.edits.slerp`, on unit vectors);
- **two pictures**: as :meth:`~dalle2_edu.pipeline.UnCLIP.interpolate` does: both CLIP image embeddings and both
  DDIM-inverted noises are slerped, so the ends come out close to the two pictures;
- **a colour sweep** of one product ("a {colour} striped mug on a wooden table", or a prompt naming one colour): the
  prompt in each colour gives a key embedding (same seed, same noise), and the frames slerp from each colour's to
  the next's, optionally back to the first (``loop``).

Each frame is then upsampled alone with the same upsampler seed, so the upsampler's noise does not flicker from frame
to frame. :func:`save_animation` writes the frames as an animated GIF and an animated WebP with Pillow;
:func:`animation_report` measures how smooth a run is (mean absolute pixel change between consecutive frames) and
what the attribute classifier reads in each frame (the category should hold while the colour moves).

    >>> out = pipe.animate("a {colour} striped mug on a wooden table", colours="all", frames=32)  # doctest: +SKIP
    >>> save_animation(out.tensors, "out/mug.gif", duration=80)          # also writes out/mug.webp  # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from dalle2_edu.validate import check_counts, check_guidance_scale, check_int, check_seed, offset_seed

FRAMES_HINT = "(the two ends and the frames between them)"


def colour_prompts(template: str, colours: str | Sequence[str] = "all") -> list[str]:
    """The prompt in each colour: ``template`` holds ``{colour}`` ("a {colour} mug on white") or names exactly one
    catalogue colour ("a red mug on white"), which is replaced.

    :param colours: ``"all"`` (the catalogue's colours, in order) or a list of at least two colour names.
    :raises ValueError: an unknown colour (the message lists the known ones), fewer than two colours, a template
        naming no colour or several.
    """
    from dalle2_edu.datasets.catalogue import COLOUR_NAMES
    from dalle2_edu.widgets import recoloured_prompt

    if isinstance(colours, str):
        if colours != "all":
            raise ValueError(f"colours must be 'all' or a list of colour names (e.g. ['red', 'blue']), got {colours!r}")
        colours = list(COLOUR_NAMES)
    colours = list(colours)
    unknown = [c for c in colours if c not in COLOUR_NAMES]
    if unknown:
        raise ValueError(f"unknown colour(s) {', '.join(map(repr, unknown))}; choose among {', '.join(COLOUR_NAMES)}")
    if len(colours) < 2:
        raise ValueError(f"a colour sweep needs at least two colours, got {colours}; e.g. colours=['red', 'blue']")
    if "{colour}" in template:
        from dalle2_edu.widgets import _fix_article

        return [_fix_article(template.replace("{colour}", c)) for c in colours]
    return [recoloured_prompt(template, c) for c in colours]


def _path_fractions(frames: int, segments: int, loop: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """For each frame: the segment it lies on (0 .. segments - 1) and how far along it (0 .. 1). With ``loop`` the
    last frame stops one step short of the end (which is the first frame again)."""
    t = torch.linspace(0, segments, frames + 1 if loop else frames, dtype=torch.float64)[:frames]
    seg = t.floor().long().clamp(max=segments - 1)
    return seg, t - seg


def _slerp_path(keys: torch.Tensor, frames: int, loop: bool) -> torch.Tensor:
    """(K, ...) key rows → (frames, ...) rows slerped along key 0 → 1 → … (→ 0 with ``loop``)."""
    from dalle2_edu.edits import slerp

    if loop:
        keys = torch.cat([keys, keys[:1]])
    seg, frac = _path_fractions(frames, len(keys) - 1, loop)
    return slerp(keys[seg], keys[seg + 1], frac.to(keys.device))


@torch.no_grad()
def animate(
    pipe,
    start,
    end=None,
    *,
    colours: str | Sequence[str] | None = None,
    frames: int = 16,
    loop: bool = False,
    guidance_scale: float = 3.0,
    steps: int = 25,
    seed: int = 0,
    use_prior: bool = True,
    prior_steps: int = 64,
    upsample: bool = True,
    upsample_steps: int = 10,
    progress: bool = False,
):
    """:meth:`UnCLIP.animate <dalle2_edu.pipeline.UnCLIP.animate>`: ``frames`` pictures from ``start`` to ``end``
    (two prompts, or two pictures), or through ``colours`` of the product ``start`` describes.

    :param start, end: two prompts (str), or two pictures (PIL, uint8 array, tensor (1, 3, H, H) in [-1, 1]); with
        ``colours``, ``start`` is the prompt template and ``end`` stays None.
    :param colours: ``"all"`` or a list of colour names (:func:`colour_prompts`).
    :param frames: pictures in the run, >= 2.
    :param loop: return to the start (a seamless GIF loop: the last frame is one step before the first); prompts
        and colour sweeps only.
    :param seed: fixes the prior's draw, the decoder's noise and the upsampler's noise.
    :return: a :class:`~dalle2_edu.pipeline.Generation` of the frames in order (one row), labels saying where each is.
    :raises ValueError: frames < 2, both ``end`` and ``colours`` or neither, a prompt and a picture mixed, an unknown
        colour or word.
    """
    import time

    from tqdm.auto import tqdm

    from dalle2_edu.pipeline import Generation
    from dalle2_edu.provenance import call_record

    frames = check_int("frames", frames, low=2, hint=FRAMES_HINT)
    steps, prior_steps, upsample_steps = check_counts(steps=steps, prior_steps=prior_steps,
                                                      upsample_steps=upsample_steps)  # fmt: skip
    guidance_scale, seed = check_guidance_scale(guidance_scale), check_seed(seed)
    if (end is None) == (colours is None):
        raise ValueError("pass either end (a second prompt or picture) or colours (a colour sweep of start), not "
                         f"{'both' if end is not None else 'neither'}")  # fmt: skip
    t0 = time.perf_counter()
    if colours is not None:
        if not isinstance(start, str):
            raise ValueError(f"a colour sweep starts from a prompt template, e.g. 'a {{colour}} mug on white', got "
                             f"{type(start).__name__}")  # fmt: skip
        keys = colour_prompts(start, colours)
        mode = "colours"
    elif isinstance(start, str) and isinstance(end, str):
        keys, mode = [start, end], "prompts"
    elif isinstance(start, str) or isinstance(end, str):
        raise ValueError("start and end must both be prompts or both be pictures, got a prompt and a picture")
    else:
        keys, mode = None, "pictures"
        if loop:
            raise ValueError("loop=True needs prompts (or colours): a run between two pictures cannot loop back")

    if mode == "pictures":
        ends = pipe.interpolate(start, end, steps=frames, guidance_scale=guidance_scale, decoder_steps=steps,
                                seed=seed, upsample=False, progress=progress)  # fmt: skip
        low, z_path = ends.low_res.to(pipe.device), ends.image_emb
        labels = ends.prompts
    else:
        pipe.clip.tokenize(keys)  # unknown words fail before any drawing
        z = torch.cat([pipe.image_embeddings_from_text([k], 1, use_prior=use_prior, prior_steps=prior_steps, seed=seed)
                       for k in tqdm(keys, desc="key embeddings", disable=not progress, leave=False)])  # fmt: skip
        d = z.shape[1]
        z_path = _slerp_path(torch.nn.functional.normalize(z, dim=-1), frames, loop) * d**0.5
        noise = pipe.decoder_start_noise(1, seed).expand(frames, -1, -1, -1).contiguous()
        low = pipe.decode(z_path, guidance_scale, steps, eta=0.0, noise=noise, seed=offset_seed(seed, 1),
                          progress=progress)  # fmt: skip
        seg, frac = _path_fractions(frames, len(keys) - (0 if loop else 1), loop)
        names = keys + keys[:1]
        labels = [names[s] if f < 1e-9 else names[s + 1] if f > 1 - 1e-9 else
                  f"{f:.2f} of the way from {names[s]!r} to {names[s + 1]!r}"
                  for s, f in zip(seg.tolist(), frac.tolist())]  # fmt: skip
    t1 = time.perf_counter()
    images = _upsample_frames(pipe, low, upsample_steps, offset_seed(seed, 2), progress) if upsample else low
    times = {"decoder_s": t1 - t0, "upsampler_s": time.perf_counter() - t1}
    settings = call_record(pipe, "animate", mode=mode, keys=keys, frames=frames, loop=loop, seed=seed,
                           guidance_scale=guidance_scale, steps=steps, use_prior=use_prior, prior_steps=prior_steps,
                           upsample=upsample, upsample_steps=upsample_steps)  # fmt: skip
    return Generation(images.cpu(), labels, z_path.cpu(), low.cpu(), times, nrow=frames, settings=settings)


UPSAMPLE_BATCH = 8
"""Frames upsampled at once by :func:`animate`."""


@torch.no_grad()
def _upsample_frames(pipe, low: torch.Tensor, steps: int, seed: int, progress: bool) -> torch.Tensor:
    """Upsample every frame from the same starting noise (the one ``pipe.upsample`` draws for one picture from
    ``seed``), deterministically (DDIM, η = 0), :data:`UPSAMPLE_BATCH` frames at a time: so frame k is what
    ``pipe.upsample(low[k : k + 1], steps, seed)`` gives, and the upsampler adds no flicker of its own."""
    from tqdm.auto import tqdm

    if pipe.upsampler is None:
        return pipe.upsample(low, steps, seed=seed)  # bilinear: no noise at all
    from dalle2_edu.diffusion.sampling import sample
    from dalle2_edu.stages.upsampler import check_low_res

    model, gd = pipe.upsampler
    low = check_low_res(low, model.config.low_res_size).to(next(model.parameters()).device)
    shape = (3, 2 * low.shape[-2], 2 * low.shape[-1])
    start = torch.randn(1, *shape, generator=torch.Generator().manual_seed(seed))
    out = []
    with tqdm(total=len(low), desc="upsampling frames", unit="frame", disable=not progress, leave=False) as bar:
        for k in range(0, len(low), UPSAMPLE_BATCH):
            part = low[k : k + UPSAMPLE_BATCH]
            out.append(sample(model, gd, (len(part), *shape), sampler="ddim", steps=min(steps, gd.num_timesteps),
                              eta=0.0, seed=seed, noise=start.expand(len(part), *shape),
                              model_kwargs={"low_res": part}))  # fmt: skip
            bar.update(len(part))
    return torch.cat(out)


# ------------------------------------------------------------------------------------------------ writing
def animation_paths(path) -> tuple[Path, Path]:
    """``out/mug.gif`` (or ``out/mug.webp``) → (``out/mug.gif``, ``out/mug.webp``).

    :raises ValueError: another extension, or a folder that does not exist (the message says how to make it).
    """
    path = Path(path)
    if path.suffix.lower() not in (".gif", ".webp"):
        raise ValueError(f"an animation is written as .gif and .webp; name the file *.gif, got '{path}'")
    folder = path.parent
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise ValueError(f"cannot write '{path}': the folder '{folder}' {what}; create it first (mkdir -p {folder}) "
                         "or write into an existing folder")  # fmt: skip
    return path.with_suffix(".gif"), path.with_suffix(".webp")


def save_animation(
    images: torch.Tensor, path, duration: int = 80, scale: int = 4, webp: bool = True, comment: dict | None = None
) -> list[Path]:
    """Write frames (F, 3, H, W) in [-1, 1] as an animated GIF (looping forever) and, with ``webp``, an animated
    WebP beside it (same name, ``.webp``), each frame enlarged ``scale``× with nearest-neighbour.

    :param duration: milliseconds per frame, >= 20 (browsers show shorter GIF frames for 100 ms).
    :param comment: JSON-ready settings stored in the GIF's comment (``Image.open(gif).info["comment"]``).
    :return: the paths written.
    :raises ValueError: fewer than 2 frames, a bad duration or scale, a path not ending in .gif/.webp or in a folder
        that does not exist.
    """
    from PIL import Image

    from dalle2_edu.pipeline import to_pil

    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"frames must be a tensor (F, 3, H, W) in [-1, 1], got {shape}")
    check_int("frames", len(images), low=2, hint=FRAMES_HINT)
    duration = check_int("duration", duration, low=20, hint="(milliseconds per frame; browsers slow shorter GIF "
                         "frames down to 100 ms)")  # fmt: skip
    scale = check_int("scale", scale, low=1, high=16)
    gif, webp_path = animation_paths(path)
    pictures = [im.resize((im.width * scale, im.height * scale), Image.NEAREST) for im in to_pil(images)]
    extra = {"comment": json.dumps(comment, ensure_ascii=False).encode()} if comment else {}
    pictures[0].save(gif, save_all=True, append_images=pictures[1:], duration=duration, loop=0, **extra)
    written = [gif]
    if webp:
        pictures[0].save(webp_path, save_all=True, append_images=pictures[1:], duration=duration, loop=0,
                         lossless=True)  # fmt: skip
        written.append(webp_path)
    return written


# ------------------------------------------------------------------------------------------------ measuring
def frame_changes(images: torch.Tensor) -> torch.Tensor:
    """(F - 1,) mean absolute pixel change between consecutive frames of (F, 3, H, W) in [-1, 1], in 0..255 levels
    (of the pictures as saved: rounded to uint8)."""
    levels = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round()
    return (levels[1:] - levels[:-1]).abs().flatten(1).mean(dim=1)


def animation_report(generation, classifier=None, category: str | None = None) -> dict:
    """How smooth a run of frames is and what the attribute classifier reads in it.

    :param generation: what :func:`animate` returned (or any Generation of frames in order).
    :param classifier: default: the shipped attribute classifier.
    :param category: the category the frames should show (default: the one the first key prompt names, if any).
    :return: ``frame_change_mean`` / ``_max`` (0..255 levels, consecutive frames), ``end_to_end_change`` (first vs
        last frame, for scale), ``category_read`` (the classifier's category per frame), ``category_hold`` (share of
        frames read as ``category``), ``colour_read`` (its colour per frame), and for a colour sweep
        ``key_colour_accuracy`` (share of key frames, where the path passes a colour, read as that colour).
    """
    from dalle2_edu.datasets.catalogue import parse_caption
    from dalle2_edu.metrics import _classifier_or_default
    from dalle2_edu.nets.classifier import ATTRIBUTES

    frames = generation.tensors
    changes = frame_changes(frames)
    model = _classifier_or_default(classifier)
    device = next(model.parameters()).device
    x = frames.float().clamp(-1, 1)
    if x.shape[-1] % 32:
        x = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", antialias=True)
    with torch.no_grad():
        read = model.predict(x.to(device)).cpu()
    categories = [ATTRIBUTES["category"][i] for i in read[:, 0].tolist()]
    colours = [ATTRIBUTES["colour"][i] for i in read[:, 1].tolist()]
    keys = (generation.settings or {}).get("keys") or []
    if category is None and keys:
        category = parse_caption(keys[0]).get("category")
    report = {
        "frames": len(frames),
        "frame_change_mean": round(changes.mean().item(), 3),
        "frame_change_max": round(changes.max().item(), 3),
        "end_to_end_change": round(frame_changes(frames[[0, -1]]).item(), 3),
        "category": category,
        "category_read": categories,
        "category_hold": round(sum(c == category for c in categories) / len(categories), 4) if category else None,
        "colour_read": colours,
    }
    settings = generation.settings or {}
    if settings.get("mode") == "colours":
        wanted = [parse_caption(k).get("colour") for k in keys]
        at = [j for j, label in enumerate(generation.prompts) if label in keys]  # frames sitting on a key
        hits = [colours[j] == wanted[keys.index(generation.prompts[j])] for j in at]
        report["key_colours"] = [wanted[keys.index(generation.prompts[j])] for j in at]
        report["key_colour_accuracy"] = round(sum(hits) / len(hits), 4) if hits else None
    return report
