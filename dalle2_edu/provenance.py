"""Provenance: every saved picture says what drew it, and can be drawn again from what it says.

A picture written by :meth:`~dalle2_edu.pipeline.Generation.save` (``python -m dalle2_edu generate``, the
playground's Save button) carries PNG text chunks:

- ``dalle2_edu``: one JSON object (:func:`picture_metadata`) with ``"generated-by": "dalle2_edu"``, the package
  version, the operation (``generate``, ``variations``, ``text_diff``, ``inpaint``, ``interpolate``), the picture's
  prompt, its index within the call, the seed, sampler, steps, guidance scale, size, the prior's and upsampler's
  settings, and each stage checkpoint's SHA-256 (:func:`~dalle2_edu.checkpoint.weights_digest`: the checksum of its
  tensors, the one the checkpoint's own metadata stores);
- ``Software`` and ``Description``: the same in words, for image viewers that show PNG text.

``python -m dalle2_edu info FILE`` prints it (:func:`read_metadata`, :func:`describe`), and
``python -m dalle2_edu generate --from FILE`` draws the picture again (:func:`redraw`).

What is exact. :meth:`~dalle2_edu.pipeline.UnCLIP.generate` draws its pictures in seed groups (one
:data:`~dalle2_edu.pipeline.SEED_BLOCK` of 64 pictures, or ``batch_size // 64`` of them): the prior's, decoder's and
upsampler's noise of a picture depends on its place in its block, and the networks run on the whole group at once,
so a picture drawn alone would not be bit-identical to the same picture drawn among others. The metadata therefore
records the prompts of the picture's seed group (for an ordinary call: all of them), ``n`` and ``batch_size``, and the
redraw draws that whole group again (``generate_batches(..., first_picture=index)``), skipping the groups before it.
On the same machine, with the same checkpoints, torch version and device, the redrawn picture is identical pixel for
pixel. Another device (a GPU instead of the CPU), another torch or other thread counts can change the last bits of
the arithmetic; :func:`compare_pictures` says by how much. Edits made in the playground record the picture they
started from (``"source"``), so they are redrawn by redrawing that picture and repeating the edit; edits of pictures
from elsewhere (a file, an interpolation's two ends) record their settings but cannot be redrawn.
"""

from __future__ import annotations

import inspect
import json
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from dalle2_edu.validate import check_int

METADATA_KEY = "dalle2_edu"
"""The PNG text chunk holding the JSON metadata."""
GENERATED_BY = "dalle2_edu"
FORMAT_VERSION = 1
"""Bumped when the metadata changes in a way older readers would misread."""
STAGES = ("clip", "prior", "decoder", "upsampler", "upsampler128")
DEFAULT_SAMPLER = "ddim"
"""The sampler a record without one stands for: every operation drew with DDIM before the sampler became a setting,
and the edits (variations, interpolation, text diffs, inpainting) still do. ``generate``'s own default may differ
(it is recorded with every call), so a picture whose metadata names no sampler is redrawn with this one."""
REDRAWABLE_EDITS = ("variations", "text_diff", "inpaint")
"""Edits that :func:`redraw` repeats, when the metadata records the picture they started from."""
_HEAD = ("generated-by", "format", "version", "operation", "prompt", "index", "seed", "sampler", "steps",
         "guidance_scale", "size")  # fmt: skip
_TAIL = ("call", "source", "checkpoints", "torch", "device")
_SETTINGS_HELP = "a .png saved by dalle2_edu (python -m dalle2_edu generate, Generation.save, the playground's Save)"


# ------------------------------------------------------------------------------------------------ recording
def checkpoint_record(pipe) -> dict[str, dict | None]:
    """Each stage's weights file and its SHA-256, ``{"decoder": {"file": "decoder32.safetensors", "sha256": ...}}``.

    A stage loaded by :meth:`~dalle2_edu.pipeline.UnCLIP.from_pretrained` names its file; one built in memory has
    ``"file": None, "sha256": None``; a stage the pipeline does not have (no prior, no upsampler) is None. Digests
    are computed once per file version (path, size, modification time) and kept on the pipeline.
    """
    from dalle2_edu.checkpoint import weights_digest

    files = getattr(pipe, "checkpoint_files", None) or {}
    cache = pipe.__dict__.setdefault("_checkpoint_digests", {})
    record: dict[str, dict | None] = {}
    for stage in STAGES:
        if getattr(pipe, stage, None) is None:
            record[stage] = None
            continue
        path = files.get(stage)
        if path is None:
            record[stage] = {"file": None, "sha256": None}
            continue
        path = Path(path)
        stat = path.stat()
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        if key not in cache:
            cache[key] = weights_digest(path)
        record[stage] = {"file": path.name, "sha256": cache[key]}
    return record


def call_record(pipe, operation: str, **settings) -> dict:
    """What a call of ``operation`` was made with, for :attr:`Generation.settings
    <dalle2_edu.pipeline.Generation.settings>`: the settings given, the sampler (``"ddim"`` unless given), the
    checkpoints' SHA-256, and the package version, torch version and device it ran with."""
    from dalle2_edu import __version__

    return {"operation": operation, **settings, "sampler": settings.get("sampler", DEFAULT_SAMPLER),
            "checkpoints": checkpoint_record(pipe), "version": __version__, "torch": torch.__version__,
            "device": str(pipe.device)}  # fmt: skip


def seed_group(index: int, total: int, batch_size: int) -> tuple[int, int]:
    """The pictures ``(start, stop)`` that :meth:`~dalle2_edu.pipeline.UnCLIP.generate_batches` draws together with
    picture ``index`` of a call of ``total`` pictures: its :data:`~dalle2_edu.pipeline.SEED_BLOCK`, or the
    ``batch_size // SEED_BLOCK`` blocks it is decoded with."""
    from dalle2_edu.pipeline import SEED_BLOCK

    span = max(1, batch_size // SEED_BLOCK) * SEED_BLOCK
    start = index // span * span
    return start, min(start + span, total)


def picture_metadata(generation, j: int) -> dict:
    """The metadata of picture ``j`` of ``generation`` (a :class:`~dalle2_edu.pipeline.Generation`), JSON-ready.

    Keys: ``generated-by``, ``format``, ``version``, ``operation``, ``prompt``, ``index`` (within the call), ``size``
    ([height, width]), then the call's settings (``seed``, ``sampler``, ``steps``, ``guidance_scale``, ``n``,
    ``use_prior``, ``prior_steps``, ``upsample_steps``, ``batch_size``, ...), and for a ``generate`` picture ``call``:
    the prompts of its seed group (``prompts``, from ``first_prompt``, of ``prompt_count``), what :func:`redraw`
    needs; ``checkpoints``, ``torch``, ``device``. A Generation made without settings gives operation ``"unknown"``.
    """
    from dalle2_edu import __version__

    j = check_int("j", j, low=0, high=len(generation.prompts) - 1, hint="(a picture of this Generation)")
    settings = dict(generation.settings or {})
    settings.pop("size", None)  # the call's size is the picture's: meta["size"] = [H, W]
    index = generation.start + j
    meta = {"generated-by": GENERATED_BY, "format": FORMAT_VERSION, "version": settings.pop("version", __version__),
            "operation": settings.pop("operation", None) or "unknown", "prompt": generation.prompts[j],
            "index": index, "size": list(generation.tensors.shape[-2:])}  # fmt: skip
    prompts = settings.pop("prompts", None)
    if meta["operation"] == "generate" and prompts is not None:
        n = settings["n"]
        start, stop = seed_group(index, len(prompts) * n, settings["batch_size"])
        first, last = start // n, (stop - 1) // n
        group = list(prompts[first : last + 1])
        settings["call"] = {"prompt_count": len(prompts), "first_prompt": first, "prompts": group}
    meta.update(settings)
    order = [k for k in _HEAD if k in meta] + sorted(k for k in meta if k not in _HEAD and k not in _TAIL)
    return {k: meta[k] for k in order + [k for k in _TAIL if k in meta]}


# ------------------------------------------------------------------------------------------------ writing
def slug(text: str) -> str:
    """A file-name fragment of a prompt: "a Red mug!" → "a-red-mug" (at most 60 characters)."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60]


def picture_name(index: int, nrow: int, prompt: str) -> str:
    """``{row:02d}_{column}_{prompt}.png``: the name ``python -m dalle2_edu generate`` gives picture ``index``."""
    return f"{index // nrow:02d}_{index % nrow:0{len(str(nrow - 1))}d}_{slug(prompt)}.png"


def describe(meta: dict) -> str:
    """The metadata in words, one ``key: value`` line each (``python -m dalle2_edu info``)."""
    lines = []
    for key, value in meta.items():
        if key == "checkpoints" and isinstance(value, dict):
            lines.append("checkpoints:")
            for stage, rec in value.items():
                what = "none" if rec is None else f"{rec.get('file') or '(built in memory)'} sha256 {rec.get('sha256')}"
                lines.append(f"  {stage}: {what}")
        elif key == "call" and isinstance(value, dict):
            first, group = value.get("first_prompt", 0), value.get("prompts") or []
            lines.append(f"call: prompts {first + 1}..{first + len(group)} of {value.get('prompt_count')}, "
                         f"{json.dumps(group, ensure_ascii=False)}")  # fmt: skip
        elif key == "source" and isinstance(value, dict):
            lines.append(f"source: picture {value.get('index')} of a {value.get('operation')} call, seed "
                         f"{value.get('seed')}, prompt {value.get('prompt')!r}")  # fmt: skip
        else:
            lines.append(f"{key}: {json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value}")
    return "\n".join(lines)


def _summary(meta: dict) -> str:
    """One line for the ``Description`` chunk."""
    parts = [f"{meta.get('operation')}: {meta.get('prompt')}"]
    parts += [f"{k} {meta[k]}" for k in ("seed", "index", "sampler", "steps", "guidance_scale") if k in meta]
    return "; ".join(parts)


def png_info(meta: dict):
    """A Pillow ``PngInfo`` holding ``meta`` as JSON (chunk :data:`METADATA_KEY`) plus ``Software``/``Description``."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_itxt(METADATA_KEY, json.dumps(meta, ensure_ascii=False), zip=True)
    info.add_text("Software", f"dalle2_edu {meta.get('version', '')}".strip())
    info.add_itxt("Description", _summary(meta))
    return info


def save_picture(image, path, meta: dict) -> Path:
    """Write one PIL picture as a PNG carrying ``meta``. :raises ValueError: ``path`` does not end in .png."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"pictures with metadata are written as PNG; name the file *.png, got '{path}'")
    image.save(path, format="PNG", pnginfo=png_info(meta))
    return path


def save_generation(generation, folder, indices: Sequence[int] | None = None, overwrite: bool = True) -> list[Path]:
    """:meth:`Generation.save <dalle2_edu.pipeline.Generation.save>`: pictures ``indices`` (default all) into
    ``folder`` (created if missing), each with its :func:`picture_metadata`.

    :param overwrite: replace a file of the same name (as ``generate`` does); False adds ``-2``, ``-3``, ... to the
        name instead (the playground's Save, where pictures of several clicks share names).

    :raises ValueError: ``folder`` is a file or cannot be written; an index that is not a picture of ``generation``.
    """
    from dalle2_edu.pipeline import to_pil
    from dalle2_edu.utils import writable_folder

    count = len(generation.prompts)
    indices = range(count) if indices is None else list(indices)
    indices = [check_int("index", j, low=0, high=count - 1, hint=f"(this Generation holds {count} pictures)")
               for j in indices]  # fmt: skip
    folder = writable_folder(folder, "folder")
    nrow = generation.nrow or count
    paths = []
    for j in indices:
        image = to_pil(generation.tensors[j : j + 1])[0]
        path = folder / picture_name(generation.start + j, nrow, generation.prompts[j])
        k = 1
        while not overwrite and path.exists():
            k += 1
            path = folder / picture_name(generation.start + j, nrow, generation.prompts[j]).replace(".png", f"-{k}.png")
        paths.append(save_picture(image, path, picture_metadata(generation, j)))
    return paths


# ------------------------------------------------------------------------------------------------ reading
def read_metadata(path) -> dict:
    """The metadata of a picture written by dalle2_edu.

    :raises FileNotFoundError: no such file.
    :raises ValueError: the file is not a PNG, or carries no dalle2_edu metadata, or damaged or newer metadata;
        the message says which and what to pass instead.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no picture '{path}' (or it is a folder); pass {_SETTINGS_HELP}")
    try:
        with Image.open(path) as image:
            kind = image.format
            text = dict(getattr(image, "text", {}) or {}) if kind == "PNG" else {}
    except UnidentifiedImageError:
        raise ValueError(f"'{path}' is not a picture Pillow can read; pass {_SETTINGS_HELP}") from None
    if kind != "PNG":
        raise ValueError(f"'{path}' is a {kind} picture, not a PNG: only PNGs carry dalle2_edu metadata; pass "
                         f"{_SETTINGS_HELP}")  # fmt: skip
    if METADATA_KEY not in text:
        raise ValueError(
            f"'{path}' carries no dalle2_edu metadata (no '{METADATA_KEY}' text chunk): it was not saved by dalle2_edu,"
            f" or a program that rewrote it dropped its text chunks; pass {_SETTINGS_HELP}"
        )
    try:
        meta = json.loads(text[METADATA_KEY])
    except ValueError as err:
        raise ValueError(f"'{path}' has a damaged '{METADATA_KEY}' text chunk ({err}); pass {_SETTINGS_HELP}") from None
    if not isinstance(meta, dict) or meta.get("generated-by") != GENERATED_BY:
        raise ValueError(f"'{path}' has a '{METADATA_KEY}' text chunk that dalle2_edu did not write; pass "
                         f"{_SETTINGS_HELP}")  # fmt: skip
    if int(meta.get("format", 1)) > FORMAT_VERSION:
        raise ValueError(f"'{path}' was written by a newer dalle2_edu ({meta.get('version')}, metadata format "
                         f"{meta['format']}); update the package to read it")  # fmt: skip
    return meta


def _as_metadata(source) -> dict:
    return source if isinstance(source, dict) else read_metadata(source)


def check_checkpoints(pipe, source, where: str = "the pipeline") -> None:
    """Refuse to redraw a picture with other weights than it was drawn with.

    :param source: the picture's path or metadata.
    :param where: how to name the pipeline's checkpoints in the message (e.g. the ``--checkpoints`` folder).
    :raises ValueError: a stage's SHA-256 differs (both are named), or the picture used a stage the pipeline lacks.
    Stages built in memory (no SHA-256 recorded or known) cannot be checked: a warning says so.
    """
    meta = _as_metadata(source)
    if meta.get("source"):
        check_checkpoints(pipe, meta["source"], where)
    wanted, have = meta.get("checkpoints") or {}, checkpoint_record(pipe)
    files = getattr(pipe, "checkpoint_files", None) or {}
    unchecked = []
    for stage in STAGES:
        want, got = wanted.get(stage), have.get(stage)
        side = (meta.get("size") or [64])[0]
        if want is None or (stage == "upsampler" and not meta.get("upsample", True)) or (
            stage == "upsampler128" and side != 128
        ):
            continue  # the picture did not use this stage
        if stage == "prior" and meta.get("use_prior") is False:
            continue
        if got is None:
            raise ValueError(f"the picture was drawn with a {stage} ({want.get('file')}, sha256 {want.get('sha256')}), "
                             f"but {where} has none; pass the checkpoint folder it was drawn with")  # fmt: skip
        if want.get("sha256") is None or got.get("sha256") is None:
            unchecked.append(stage)
        elif want["sha256"] != got["sha256"]:
            raise ValueError(
                f"the picture was drawn with {stage} weights sha256 {want['sha256']} ({want.get('file')}), but "
                f"'{files.get(stage, got.get('file'))}' in {where} holds sha256 {got['sha256']}: other weights draw "
                "another picture; pass --checkpoints with the folder it was drawn with"
            )
    if unchecked:
        warnings.warn(f"cannot check the {', '.join(unchecked)} weights (built in memory, no SHA-256 recorded): the "
                      "redrawn picture is exact only if they are the ones it was drawn with", stacklevel=2)  # fmt: skip


# ------------------------------------------------------------------------------------------------ redrawing
def redraw(pipe, source, progress: bool = False):
    """Draw a saved picture again: a :class:`~dalle2_edu.pipeline.Generation` holding that one picture (with its
    metadata, ``start`` = its index in the call).

    :param pipe: a :class:`~dalle2_edu.pipeline.UnCLIP` with the picture's checkpoints (:func:`check_checkpoints`).
    :param source: the picture's path or metadata.
    :raises ValueError: the picture cannot be redrawn from its metadata (an edit of a picture that is not
        recorded, an interpolation), or names a sampler this pipeline does not have.
    """
    meta = _as_metadata(source)
    operation = meta.get("operation")
    if operation == "generate":
        return _redraw_generate(pipe, meta, progress)
    if operation in REDRAWABLE_EDITS and meta.get("source"):
        return _redraw_edit(pipe, meta, progress)
    why = ("its metadata does not record the picture it started from" if operation in REDRAWABLE_EDITS
           else f"'{operation}' pictures start from pictures that are not recorded")  # fmt: skip
    raise ValueError(f"this picture ({operation}) cannot be redrawn: {why}; only generate pictures and the "
                     "playground's edits of them can")  # fmt: skip


def _call_kwargs(method, meta: dict, skip: tuple[str, ...]) -> dict:
    """The metadata's entries that are parameters of ``method`` (so a setting added to the pipeline later, such as
    a sampler, is passed on when present), less ``skip``."""
    params = inspect.signature(method).parameters
    kwargs = {k: v for k, v in meta.items() if k in params and k not in skip}
    sampler = meta.get("sampler", DEFAULT_SAMPLER)
    if "sampler" in params:
        kwargs["sampler"] = sampler  # not the method's current default: a record without one was drawn with DDIM
    if "upsample_spacing" in params:
        kwargs["upsample_spacing"] = meta.get("upsample_spacing", "even")  # a record without one: evenly spaced
    if sampler != DEFAULT_SAMPLER and "sampler" not in params:
        raise ValueError(f"the picture was drawn with the {sampler!r} sampler, which this version of dalle2_edu's "
                         f"{method.__name__} does not offer; use the dalle2_edu {meta.get('version')} it was drawn with")  # fmt: skip  # noqa: E501
    return kwargs


def _redraw_generate(pipe, meta: dict, progress: bool):
    from dalle2_edu.pipeline import Generation

    call, index = meta.get("call"), meta.get("index")
    if not isinstance(call, dict) or not call.get("prompts") or not isinstance(index, int):
        raise ValueError("the picture's metadata lacks its call (prompts, index), so it cannot be redrawn")
    group, first, count = list(call["prompts"]), int(call["first_prompt"]), int(call["prompt_count"])
    # The prompts outside the picture's seed group are never drawn (generate_batches skips their groups), so any
    # known prompt can stand in for them; the count keeps every picture's index, block and seed.
    prompts = [group[0]] * first + group + [group[-1]] * (count - first - len(group))
    kwargs = _call_kwargs(pipe.generate_batches, meta, skip=("prompt", "progress", "first_picture", "size"))
    if isinstance(meta.get("size"), list) and meta["size"]:
        kwargs["size"] = int(meta["size"][0])  # where the cascade stopped: 32, 64 or 128
    for chunk in pipe.generate_batches(prompts, first_picture=index, progress=progress, **kwargs):
        return Generation(chunk.tensors[:1], chunk.prompts[:1], chunk.image_emb[:1], chunk.low_res[:1],
                          chunk.timings, nrow=chunk.nrow, start=chunk.start, settings=chunk.settings)  # fmt: skip
    raise AssertionError("generate_batches handed over no picture")  # pragma: no cover


def _redraw_edit(pipe, meta: dict, progress: bool):
    from dalle2_edu.pipeline import Generation

    source = redraw(pipe, meta["source"], progress)
    operation, index = meta["operation"], int(meta["index"])
    method = getattr(pipe, operation)
    kwargs = _call_kwargs(method, meta, skip=("image", "progress", "mask"))
    if operation == "inpaint":
        from dalle2_edu.widgets import region_mask

        if "mask_region" not in meta:
            raise ValueError("the inpainted picture does not record its mask (only the playground's named regions "
                             "are recorded), so it cannot be redrawn")  # fmt: skip
        kwargs["mask"] = region_mask(meta["mask_region"], source.tensors.shape[-1])
    out = method(source.tensors, progress=progress, **kwargs)
    settings = {**out.settings, **{k: meta[k] for k in ("source", "mask_region") if k in meta}}
    return Generation(out.tensors[index : index + 1], out.prompts[index : index + 1],
                      out.image_emb[index : index + 1], out.low_res[index : index + 1], out.timings, nrow=out.nrow,
                      start=index, settings=settings)  # fmt: skip


def compare_pictures(a, b) -> dict:
    """How two pictures (paths or PIL images) differ: ``{"identical": bool, "changed": values that differ,
    "values": all values, "max_abs": largest difference in 0..255 levels}``.

    :raises ValueError: they have different sizes.
    """
    from PIL import Image

    arrays = [np.asarray((Image.open(x) if not isinstance(x, Image.Image) else x).convert("RGB"), dtype=np.int16)
              for x in (a, b)]  # fmt: skip
    if arrays[0].shape != arrays[1].shape:
        raise ValueError(f"the pictures have different sizes, {arrays[0].shape[:2]} and {arrays[1].shape[:2]}")
    diff = np.abs(arrays[0] - arrays[1])
    changed = int((diff > 0).sum())
    return {"identical": changed == 0, "changed": changed, "values": int(diff.size), "max_abs": int(diff.max())}
