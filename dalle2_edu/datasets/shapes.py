"""A second, tiny data set for "train on your own pictures": coloured gadgets with nouns the catalogue never uses.

``write_shapes_folder("my_gadgets", n=600)`` writes PNG pictures and a caption file exactly as a user would lay out
their own folder (``metadata.jsonl`` by default, the Hugging Face image-folder convention, or ``captions.jsonl``):

* a *gizmo* is a disc, a *widget* a square, a *sprocket* a triangle;
* each in one of four colours (red, green, blue, yellow), at a random size and position, on white.

Because the truth is simple, a generated picture can be read back without a trained classifier
(:func:`read_shapes`): its colour is the mean of the pixels that are not background, its shape the share of its
bounding box those pixels fill (a disc fills π/4 ≈ 0.79, a square 1, a triangle 1/2).
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
FILL = {"gizmo": np.pi / 4, "widget": 1.0, "sprocket": 0.5}
"""The share of its bounding box each shape fills."""


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


def read_shapes(images: torch.Tensor) -> list[dict]:
    """Read colour and shape back from generated pictures (B, 3, H, W) in [-1, 1] or uint8.

    :return: per picture ``{"colour": name, "shape": noun, "fill": share of the bounding box}``; ``None`` values
        for a picture with no foreground.
    """
    if images.dtype != torch.uint8:
        images = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    out = []
    names = list(SHAPE_COLOURS)
    table = np.array([SHAPE_COLOURS[c] for c in names], dtype=np.float64)
    for picture in images.permute(0, 2, 3, 1).cpu().numpy().astype(np.float64):
        foreground = np.abs(picture - 255).sum(axis=-1) > 120  # clearly not white
        if foreground.sum() < 8:
            out.append({"colour": None, "shape": None, "fill": None})
            continue
        mean = picture[foreground].mean(axis=0)
        colour = names[int(np.argmin(((table - mean) ** 2).sum(axis=1)))]
        ys, xs = np.nonzero(foreground)
        box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
        fill = foreground.sum() / box
        shape = min(FILL, key=lambda s: abs(FILL[s] - fill))
        out.append({"colour": colour, "shape": shape, "fill": round(float(fill), 3)})
    return out


def caption_truth(caption: str) -> dict:
    """The colour and noun a caption names: ``{"colour": ..., "shape": ...}``."""
    words = caption.lower().split()
    return {"colour": next((w for w in words if w in SHAPE_COLOURS), None),
            "shape": next((w for w in words if w in SHAPES), None)}  # fmt: skip
