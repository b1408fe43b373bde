"""A second, tiny data set for "train on your own pictures": coloured gadgets with nouns the catalogue never uses.

``write_shapes_folder("my_gadgets", n=600)`` writes PNG pictures and a caption file exactly as a user would lay out
their own folder (``metadata.jsonl`` by default, the Hugging Face image-folder convention, or ``captions.jsonl``):

* a *gizmo* is a disc, a *widget* a square, a *sprocket* a triangle;
* each in one of four colours (red, green, blue, yellow), at a random size and position, on white.

Because the truth is simple, a generated picture can be read back without a trained classifier
(:func:`read_shapes`): its colour is the mean of its saturated pixels, its shape the share of their bounding box they
fill (a disc about π/4, a square 1, a triangle 1/2; calibrated on drawn pictures).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

SHAPES = {"gizmo": "disc", "widget": "square", "sprocket": "triangle"}
"""Noun → the shape it names."""
SHAPE_COLOURS = {"red": (215, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 210), "yellow": (235, 200, 30)}
"""Colour name → RGB."""


def draw_shape(noun: str, colour: str, rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """One (size, size, 3) uint8 picture of a ``noun`` in ``colour`` on white, at a random size and place."""
    half = rng.uniform(0.22, 0.34) * size
    cx, cy = rng.uniform(half + 2, size - half - 2, size=2)
    y, x = np.mgrid[0:size, 0:size] + 0.5
    if SHAPES[noun] == "disc":
        inside = (x - cx) ** 2 + (y - cy) ** 2 <= half**2
    elif SHAPES[noun] == "square":
        inside = (np.abs(x - cx) <= half) & (np.abs(y - cy) <= half)
    else:  # an upright isosceles triangle filling half of its 2h × 2h box
        top = cy - half
        inside = (y >= top) & (y <= cy + half) & (np.abs(x - cx) <= (y - top) / 2)
    picture = np.full((size, size, 3), 255, np.uint8)
    picture[inside] = SHAPE_COLOURS[colour]
    return picture


def write_shapes_folder(path, n: int = 600, seed: int = 0, caption_file: str = "metadata.jsonl", size: int = 64):
    """Draw ``n`` captioned pictures into the folder ``path`` (created) and return the list of captions.

    :param caption_file: ``"metadata.jsonl"`` (keys ``file_name``, ``text``) or ``"captions.jsonl"`` (``file``,
        ``caption``).
    """
    from PIL import Image

    if caption_file not in ("metadata.jsonl", "captions.jsonl"):
        raise ValueError(f"caption_file must be 'metadata.jsonl' or 'captions.jsonl', got {caption_file!r}")
    folder = Path(path)
    (folder / "pictures").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    nouns, colours = list(SHAPES), list(SHAPE_COLOURS)
    templates = ("a {c} {s}", "a {c} {s} on white", "photo of a {c} {s}")
    captions, lines = [], []
    keys = ("file_name", "text") if caption_file == "metadata.jsonl" else ("file", "caption")
    for i in range(n):
        noun, colour = nouns[i % len(nouns)], colours[(i // len(nouns)) % len(colours)]
        name = f"pictures/{i:05d}.png"
        Image.fromarray(draw_shape(noun, colour, rng, size)).save(folder / name)
        caption = templates[rng.integers(len(templates))].format(c=colour, s=noun)
        captions.append(caption)
        lines.append(json.dumps({keys[0]: name, keys[1]: caption}))
    (folder / caption_file).write_text("\n".join(lines) + "\n")
    return captions


def _foreground(picture: np.ndarray) -> np.ndarray:
    """Saturated pixels: every gadget colour is far from grey, the white background and a sampler's pale specks
    are not."""
    return picture.max(axis=-1) - picture.min(axis=-1) > 70


def largest_blob(foreground: np.ndarray) -> np.ndarray:
    """The largest 4-connected region of a boolean mask (a flood fill from each unvisited pixel), so that a
    sampler's stray specks do not count as the gadget."""
    seen = np.zeros_like(foreground, dtype=bool)
    best: list = []
    height, width = foreground.shape
    for y0, x0 in zip(*np.nonzero(foreground)):
        if seen[y0, x0]:
            continue
        seen[y0, x0] = True
        stack, blob = [(y0, x0)], []
        while stack:
            y, x = stack.pop()
            blob.append((y, x))
            for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                ny, nx = y + dy, x + dx
                if 0 <= ny < height and 0 <= nx < width and foreground[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        if len(blob) > len(best):
            best = blob
    mask = np.zeros_like(foreground, dtype=bool)
    if best:
        ys, xs = zip(*best)
        mask[list(ys), list(xs)] = True
    return mask


def _fill(foreground: np.ndarray) -> float:
    """The share of its bounding box the largest blob fills."""
    blob = largest_blob(foreground)
    ys, xs = np.nonzero(blob)
    return float(blob[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].mean())


_CALIBRATION: dict[str, float] = {}


def calibrated_fills() -> dict[str, float]:
    """Each noun's mean :func:`_fill` over 60 pictures drawn by :func:`draw_shape` (the reader's reference)."""
    if not _CALIBRATION:
        rng = np.random.default_rng(12345)
        for noun in SHAPES:
            fills = [_fill(_foreground(draw_shape(noun, colour, rng).astype(np.float64)))
                     for colour in SHAPE_COLOURS for _ in range(15)]  # fmt: skip
            _CALIBRATION[noun] = float(np.mean(fills))
    return dict(_CALIBRATION)


def read_shapes(images: torch.Tensor) -> list[dict]:
    """Read colour and shape back from pictures (B, 3, H, W) in [-1, 1] or uint8, with no trained model.

    Colour: the gadget colour nearest to the mean of the saturated pixels. Shape: the noun whose calibrated fill of
    the bounding box of the largest saturated blob (:func:`calibrated_fills`) is nearest to the picture's.

    :return: per picture ``{"colour": name, "shape": noun, "fill": share}``; ``None`` values for a picture with no
        foreground.
    """
    if images.dtype != torch.uint8:
        images = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    reference = calibrated_fills()
    out = []
    names = list(SHAPE_COLOURS)
    table = np.array([SHAPE_COLOURS[c] for c in names], dtype=np.float64)
    for picture in images.permute(0, 2, 3, 1).cpu().numpy().astype(np.float64):
        foreground = _foreground(picture)
        if foreground.sum() < 8:
            out.append({"colour": None, "shape": None, "fill": None})
            continue
        mean = picture[foreground].mean(axis=0)
        colour = names[int(np.argmin(((table - mean) ** 2).sum(axis=1)))]
        fill = _fill(foreground)
        shape = min(reference, key=lambda noun: abs(reference[noun] - fill))
        out.append({"colour": colour, "shape": shape, "fill": round(fill, 3)})
    return out


def caption_truth(caption: str) -> dict:
    """The colour and noun a caption names: ``{"colour": ..., "shape": ...}``."""
    words = caption.lower().split()
    return {"colour": next((w for w in words if w in SHAPE_COLOURS), None),
            "shape": next((w for w in words if w in SHAPES), None)}  # fmt: skip
