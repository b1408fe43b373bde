"""A synthetic e-commerce product catalogue: procedurally drawn product shots with captions and exact labels.

Every picture shows one product (8 categories) in one colour (8), with one pattern (3), on one background (3),
at a random size, position and slight rotation, with shading and a soft shadow. Each picture comes with a caption
written from several templates and synonyms, from which every attribute can be read back (:func:`parse_caption`),
and with its labels stored separately as integers.

Item ``i`` of a split is a pure function of ``(GENERATOR_VERSION, split, seed, i)``: it is drawn with its own
random generator ``np.random.default_rng([seed, split_id, i])``, so it is the same whatever ``n`` is, whatever
order items are drawn in, and whether they were drawn in one go, in parallel chunks, or loaded from the cache.

Pictures are drawn at 64x64 with signed distance functions on a coordinate grid (vectorised numpy, no per-pixel
Python loops); 32x32 pictures are the 64x64 ones averaged over 2x2 blocks (a box filter). 128x128 pictures (for the
second upsampler) draw the same item again at 128 with the same random numbers, then take their coarse part from
the 64x64 drawing: 128 = draw₁₂₈ + nearest-upsampled(draw₆₄ - box(draw₁₂₈)), so that box-filtering a 128 picture
gives its 64 picture back (to within one grey level, from rounding) and the upsamplers learn to invert exactly the
filter that made their inputs. :func:`_draw` is resolution-free; only the fine detail differs.

A few (category, colour) pairs, :data:`HELD_OUT_PAIRS`, never occur in the "train" and "test" splits; the
"heldout" split holds only them, to measure compositional generalisation ("a green mug" when the model has seen
green things and mugs, but never a green mug).
"""

from __future__ import annotations

import functools
import math
import os
import re
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from dalle2_edu.checkpoint import _atomic_write, warn_cache_not_written
from dalle2_edu.utils import data_dir

GENERATOR_VERSION = 1
"""Bumped whenever drawing, sampling or captions change, so that stale cache files are never reused."""

CATEGORIES: tuple[str, ...] = ("t-shirt", "mug", "bottle", "handbag", "sneaker", "lamp", "cap", "vase")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (210, 40, 40),
    "orange": (240, 130, 30),
    "yellow": (240, 205, 40),
    "green": (50, 160, 70),
    "blue": (40, 80, 200),
    "purple": (130, 60, 170),
    "pink": (240, 130, 180),
    "black": (30, 30, 30),
}
"""Colour name -> RGB centre (0..255). Each product's colour is its centre plus a small jitter, then shaded."""
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
PATTERNS: tuple[str, ...] = ("plain", "striped", "dotted")
BACKGROUNDS: tuple[str, ...] = ("white", "light grey", "wood")
"""White studio, light grey studio, and a wooden table (a wood-grain table top under a dark wall)."""
LABEL_COLUMNS: tuple[str, ...] = ("category", "colour", "pattern", "background")
"""The columns of :attr:`ProductCatalogue.labels`, in order."""

HELD_OUT_PAIRS: tuple[tuple[str, str], ...] = (
    ("t-shirt", "purple"),
    ("mug", "green"),
    ("bottle", "pink"),
    ("sneaker", "red"),
    ("lamp", "blue"),
    ("vase", "yellow"),
)
"""(category, colour) pairs that never appear in "train" or "test", only in "heldout".

Each category and each colour appears at most once here, so every category and every colour is still seen in
training (handbag, cap, orange and black in all their combinations), just not in these six combinations.
"""

SPLITS: dict[str, int] = {"train": 0, "test": 1, "heldout": 2}
"""Split name -> the number mixed into each item's seed. "test" has the same distribution as "train"."""
RESOLUTIONS: tuple[int, ...] = (32, 64, 128)

_HELD_OUT_IDX = {(CATEGORIES.index(c), COLOUR_NAMES.index(k)) for c, k in HELD_OUT_PAIRS}
_PAIRS = {
    "train": [(c, k) for c in range(8) for k in range(8) if (c, k) not in _HELD_OUT_IDX],
    "heldout": sorted(_HELD_OUT_IDX),
}
_PAIRS["test"] = _PAIRS["train"]

# ---------------------------------------------------------------------------------------------------------------
# Captions
# ---------------------------------------------------------------------------------------------------------------

# Nouns for each category; a word listed twice is picked twice as often.
_CATEGORY_WORDS: dict[str, tuple[str, ...]] = {
    "t-shirt": ("t-shirt", "tee", "t-shirt"),
    "mug": ("mug", "coffee mug", "mug"),
    "bottle": ("bottle", "water bottle"),
    "handbag": ("handbag", "purse", "handbag"),
    "sneaker": ("sneaker", "trainer", "running shoe"),
    "lamp": ("lamp", "table lamp", "desk lamp"),
    "cap": ("cap", "baseball cap"),
    "vase": ("vase", "flower vase"),
}
# Adjective before the noun ("striped mug") and phrase after it ("mug with stripes"); plain is often unsaid.
_PATTERN_ADJ: dict[str, tuple[str, ...]] = {
    "plain": ("", "", "plain ", "solid "),
    "striped": ("striped ", "stripy "),
    "dotted": ("dotted ", "polka-dot ", "spotted "),
}
_PATTERN_WITH: dict[str, tuple[str, ...]] = {
    "plain": ("", "", " in a solid colour"),
    "striped": (" with stripes", " with horizontal stripes"),
    "dotted": (" with dots", " with polka dots"),
}
_PATTERN_WORDS = {"striped": ("striped", "stripy", "stripes"), "dotted": ("dotted", "polka-dot", "spotted", "dots")}
# Background as a place ("... on white") and as a tag ("..., white background"); always stated.
_BACKGROUND_ON: dict[str, tuple[str, ...]] = {
    "white": ("on white", "on a white background", "on a white backdrop", "in a white studio"),
    "light grey": ("on light grey", "on a light grey backdrop", "on a grey background", "in a light grey studio"),
    "wood": ("on a wooden table", "on a wood table", "on a wooden surface", "on wood"),
}
_BACKGROUND_TAG: dict[str, tuple[str, ...]] = {
    "white": ("white background", "studio shot on white", "white backdrop"),
    "light grey": ("light grey background", "studio shot on light grey", "grey backdrop"),
    "wood": ("wooden table background", "shot on a wooden table", "wooden tabletop"),
}
_TEMPLATES: tuple[str, ...] = (
    "a {colour} {padj}{cat} {bg_on}",  # a red striped mug on a wooden table
    "product photo: {padj}{cat}, {colour}, {bg_tag}",  # product photo: striped mug, red, white background
    "{colour} {cat}{pwith}, {bg_tag}",  # red mug with stripes, white background
    "{bg_tag}: a {colour} {padj}{cat}",  # studio shot on white: a red striped mug
    "photo of a {colour} {cat}{pwith} {bg_on}",  # photo of a red mug with stripes on white
    "{colour} {padj}{cat} {bg_on}",  # red striped mug on a wood table
)


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def make_caption(attrs: dict[str, str], rng: np.random.Generator) -> str:
    """Write one caption for a product, choosing a template and synonyms with ``rng``.

    :param attrs: attribute names, e.g. ``{"category": "mug", "colour": "red", "pattern": "striped",
        "background": "wood"}`` (as returned by :meth:`ProductCatalogue.attributes`).
    :param rng: the random generator that picks the template and the words.
    :return: e.g. ``"a red striped mug on a wooden table"``; :func:`parse_caption` recovers ``attrs`` from it.
    """
    template = _pick(rng, _TEMPLATES)
    words = dict(
        colour=attrs["colour"],
        cat=_pick(rng, _CATEGORY_WORDS[attrs["category"]]),
        padj=_pick(rng, _PATTERN_ADJ[attrs["pattern"]]),
        pwith=_pick(rng, _PATTERN_WITH[attrs["pattern"]]),
        bg_on=_pick(rng, _BACKGROUND_ON[attrs["background"]]),
        bg_tag=_pick(rng, _BACKGROUND_TAG[attrs["background"]]),
    )
    caption = template.format(**words)
    return re.sub(r"\ba (?=[aeiou])", "an ", caption)  # "a orange mug" -> "an orange mug"


def _find_one(caption: str, what: str, words: dict[str, tuple[str, ...]]) -> str | None:
    found = {name for name, options in words.items() for w in options if re.search(rf"\b{re.escape(w)}\b", caption)}
    if len(found) > 1:
        raise ValueError(f"caption {caption!r} names more than one {what}: {sorted(found)}")
    return found.pop() if found else None


def parse_caption(caption: str) -> dict[str, str]:
    """Read the attributes back from a caption written by :func:`make_caption`.

    The pattern is "plain" when no pattern word occurs; category, colour and background must be stated.

    :param caption: a caption, any letter case.
    :return: ``dict(category=..., colour=..., pattern=..., background=...)`` with names from :data:`CATEGORIES`,
        :data:`COLOURS`, :data:`PATTERNS` and :data:`BACKGROUNDS`.
    :raises ValueError: if the category, colour or background is missing, or two of one kind are named.
    """
    text = caption.lower()
    category = _find_one(text, "category", _CATEGORY_WORDS)
    colour = _find_one(text, "colour", {c: (c,) for c in COLOURS})
    pattern = _find_one(text, "pattern", _PATTERN_WORDS) or "plain"
    # "wood" first: no wood phrase says white or grey, and "table lamp" alone must not mean a wooden table.
    if re.search(r"\bwood(en)?\b", text):
        background = "wood"
    elif re.search(r"\b(grey|gray)\b", text):
        background = "light grey"
    elif re.search(r"\bwhite\b", text):
        background = "white"
    else:
        background = None
    for name, value in (("category", category), ("colour", colour), ("background", background)):
        if value is None:
            raise ValueError(f"caption {caption!r} names no {name}")
    return dict(category=category, colour=colour, pattern=pattern, background=background)


# ---------------------------------------------------------------------------------------------------------------
# Drawing: signed distances in the product's own coordinates (u right, v down, the product within about [-1, 1]),
# negative inside. Union is min, intersection max, cutting out max(a, -b).
# ---------------------------------------------------------------------------------------------------------------


def _length(a, b):
    """Euclidean length sqrt(a^2 + b^2), elementwise (twice as fast as np.hypot on small arrays)."""
    return np.sqrt(a * a + b * b)


def _box(u, v, cu, cv, hw, hh, r=0.0):
    """Distance to a box centred at (cu, cv) with half-width hw, half-height hh and corner radius r."""
    qu = np.abs(u - cu) - hw + r
    qv = np.abs(v - cv) - hh + r
    outside = _length(np.maximum(qu, 0), np.maximum(qv, 0))
    return outside + np.minimum(np.maximum(qu, qv), 0) - r


def _ellipse(u, v, cu, cv, a, b):
    """Approximate distance to an ellipse with semi-axes a (across) and b (down); exact on the axes' scale."""
    return (_length((u - cu) / a, (v - cv) / b) - 1) * min(a, b)


def _trapezoid(u, v, cu, v_top, v_bottom, hw_top, hw_bottom):
    """Approximate distance to a trapezoid symmetric about u = cu, half-widths hw_top at v_top, hw_bottom below."""
    t = np.clip((v - v_top) / (v_bottom - v_top), 0, 1)
    half = hw_top + (hw_bottom - hw_top) * t
    return np.maximum(np.abs(u - cu) - half, np.maximum(v_top - v, v - v_bottom))


def _ring(u, v, cu, cv, radius, thickness):
    """Distance to a circular ring of the given centre line radius and half-thickness."""
    return np.abs(_length(u - cu, v - cv) - radius) - thickness


def _smooth_union(a, b, k=0.15):
    """Union with a rounded join of width about k, for organic shapes (vase neck into body)."""
    h = np.maximum(k - np.abs(a - b), 0) / k
    return np.minimum(a, b) - h * h * k / 4


# Each shape returns (main, accent): distances for the part in the product colour (shaded, patterned) and for the
# detail in the accent tone (None when there is none). _ACCENT says which tone: "dark" (the colour darkened),
# "white" (an off-white sole), "metal" (a neutral grey).


def _tshirt(u, v):
    body = _box(u, v, 0, 0.15, 0.52, 0.8, 0.04)
    shoulders = _trapezoid(u, v, 0, -0.66, -0.22, 0.72, 0.98)
    neck = _ellipse(u, v, 0, -0.72, 0.24, 0.2)
    return np.maximum(np.minimum(body, shoulders), -neck), None


def _mug(u, v):
    body = _box(u, v, -0.15, 0.1, 0.55, 0.66, 0.1)
    handle = np.maximum(_ring(u, v, 0.38, 0.05, 0.3, 0.09), 0.3 - u)
    opening = _ellipse(u, v, -0.15, -0.5, 0.47, 0.09)
    return np.minimum(body, handle), opening


def _bottle(u, v):
    body = _box(u, v, 0, 0.32, 0.38, 0.64, 0.12)
    shoulders = _ellipse(u, v, 0, -0.3, 0.38, 0.3)
    neck = _box(u, v, 0, -0.6, 0.13, 0.2)
    lid = _box(u, v, 0, -0.86, 0.16, 0.1, 0.03)
    return np.minimum(np.minimum(body, shoulders), neck), lid


def _handbag(u, v):
    body = _trapezoid(u, v, 0, -0.15, 0.8, 0.62, 0.88)
    handle = np.maximum(_ring(u, v, 0, -0.15, 0.44, 0.07), v + 0.15)
    clasp = _box(u, v, 0, 0.05, 0.1, 0.08, 0.02)
    return np.minimum(body, handle), clasp


def _sneaker(u, v):
    heel = np.maximum(_ellipse(u, v, -0.38, 0.3, 0.56, 0.62), v - 0.55)
    toe = _ellipse(u, v, 0.45, 0.38, 0.55, 0.24)
    upper = _smooth_union(heel, toe, 0.2)
    collar = _ellipse(u, v, -0.42, -0.3, 0.3, 0.1)
    sole = _box(u, v, 0, 0.62, 1.0, 0.11, 0.08)
    return np.maximum(upper, -collar), sole


def _lamp(u, v):
    shade = _trapezoid(u, v, 0, -0.95, -0.2, 0.34, 0.72)
    stem = _box(u, v, 0, 0.3, 0.055, 0.5)
    base = _box(u, v, 0, 0.84, 0.42, 0.09, 0.06)
    return shade, np.minimum(stem, base)


def _cap(u, v):
    crown = np.maximum(_ellipse(u, v, -0.3, 0.45, 0.78, 1.0), v - 0.45)
    brim = _ellipse(u, v, 0.62, 0.42, 0.5, 0.1)
    button = _ellipse(u, v, -0.3, -0.56, 0.1, 0.06)
    return np.minimum(crown, brim), button


def _vase(u, v):
    body = _ellipse(u, v, 0, 0.38, 0.6, 0.55)
    neck = _box(u, v, 0, -0.35, 0.16, 0.35)
    lip = _trapezoid(u, v, 0, -0.9, -0.62, 0.34, 0.15)
    return _smooth_union(_smooth_union(body, neck, 0.25), lip, 0.1), None


_SHAPES: dict[str, Callable] = {
    "t-shirt": _tshirt,
    "mug": _mug,
    "bottle": _bottle,
    "handbag": _handbag,
    "sneaker": _sneaker,
    "lamp": _lamp,
    "cap": _cap,
    "vase": _vase,
}
_ACCENT = {"mug": "dark", "bottle": "dark", "handbag": "metal", "sneaker": "white", "lamp": "metal", "cap": "dark"}
_SOLE_WHITE = np.array([236, 234, 228], np.float32)
_METAL_GREY = np.full(3, 150, np.float32)
_LIGHT_COLOURS = {"yellow", "orange", "pink"}  # their stripes and dots are a darker tone; the others' lighter


def _index(value: int | str, names: tuple[str, ...], what: str) -> int:
    if isinstance(value, str):
        if value not in names:
            raise ValueError(f"unknown {what} {value!r}; choose one of {list(names)}")
        return names.index(value)
    if not 0 <= int(value) < len(names):
        raise ValueError(f"{what} index {value} out of range 0..{len(names) - 1}")
    return int(value)


def _background(kind: str, rng: np.random.Generator, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """A background picture (H, W, 3), float32 in 0..255. ``y``, ``x``: pixel-centre grids (H, W) in [0, 1]."""
    if kind in ("white", "light grey"):
        level = rng.uniform(240, 250) if kind == "white" else rng.uniform(196, 210)
        vignette = 14 * ((x - 0.5) ** 2 + (y - 0.45) ** 2)  # a studio sweep: bright centre, darker corners
        gray = level + 4 - 10 * y - vignette
        return np.repeat(gray[..., None], 3, axis=2) * np.array([1.0, 1.0, 0.995], np.float32)
    horizon = rng.uniform(0.42, 0.52)  # the table's far edge; a dark warm wall above it
    wall = np.array([95, 78, 64], np.float32) * (0.9 + 0.2 * y[..., None])
    # Planks run across the picture; in perspective the near ones (at the bottom) look wider.
    depth = np.clip((y - horizon) / (1 - horizon), 0, 1)
    plank = 4.5 * depth**0.75 + rng.uniform()  # plank coordinate: integer steps are the seams
    which = np.floor(plank).astype(int)
    tint = rng.uniform(0.86, 1.06, 8).astype(np.float32)[which]  # each plank a slightly different shade
    bend = np.sin(2 * np.pi * (1.3 * x + rng.uniform(0, 1, 8).astype(np.float32)[which]))
    grain = np.sin(2 * np.pi * (6 * plank + 0.35 * bend))  # wavy lines along each plank
    seam = np.exp(-(((plank + 0.5) % 1 - 0.5) ** 2) / 0.004)
    light = tint * (0.95 + 0.07 * grain - 0.3 * seam + 0.1 * depth)
    wood = np.array([170, 112, 64], np.float32) * light[..., None]
    return np.where((y < horizon)[..., None], wall, wood).astype(np.float32)


@functools.cache
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (y, x), each float32 (size, size) in (0, 1); shared, so never write to them."""
    centres = (np.arange(size, dtype=np.float32) + 0.5) / size
    y, x = np.meshgrid(centres, centres, indexing="ij")
    y.flags.writeable = x.flags.writeable = False
    return y, x


@functools.cache
def _noise_field(side: int) -> np.ndarray:
    """A fixed field of Gaussian noise, standard deviation 1.5 (in 0..255 units): float32 (side, side, 3)."""
    return np.random.default_rng(1234).normal(0, 1.5, (side, side, 3)).astype(np.float32)


def _draw(cat: int, col: int, pat: int, bg: int, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw one product picture; returns (image float32 (size, size, 3) in 0..255, alpha float32 (size, size))."""
    px = size / 64  # pixels per pixel-of-a-64-picture: drawing sizes below are stated for 64x64
    y, x = _grid(size)
    image = _background(BACKGROUNDS[bg], rng, y, x)

    # Pose: scale s (pixels per product unit), centre, slight rotation.
    s = rng.uniform(17, 24) * px
    room = size / 2 - s  # keep the product inside the frame
    cx = size / 2 + rng.uniform(-0.8, 0.8) * room
    cy = size / 2 + rng.uniform(-0.6, 0.8) * room
    angle = math.radians(rng.uniform(-8, 8))
    dx, dy = x * size - cx, y * size - cy
    cos, sin = math.cos(angle), math.sin(angle)
    u = (cos * dx + sin * dy) / s
    v = (-sin * dx + cos * dy) / s

    main, accent = _SHAPES[CATEGORIES[cat]](u, v)
    a_main = np.clip(0.5 - main * s, 0, 1)  # distance in pixels -> anti-aliased coverage
    a_acc = np.clip(0.5 - accent * s, 0, 1) if accent is not None else np.zeros_like(a_main)
    alpha = np.maximum(a_main, a_acc)

    # Soft shadow on the ground under the product's lowest point.
    rows = np.nonzero(alpha.max(axis=1) > 0.5)[0]
    cols = np.nonzero(alpha.max(axis=0) > 0.5)[0]
    if len(rows):
        bottom, left, right = float(rows[-1]) + 0.5, float(cols[0]), float(cols[-1]) + 1
        rx, ry = 0.6 * (right - left) + 2 * px, 2.5 * px
        shadow = 0.28 * np.exp(-(((x * size - (left + right) / 2) / rx) ** 2) - ((y * size - bottom) / ry) ** 2)
        image *= (1 - shadow)[..., None]

    # Product colour: the named centre with a little jitter, shaded like a lit cylinder (light from the left).
    name = COLOUR_NAMES[col]
    base = np.clip(COLOURS[name] + rng.normal(0, 6, 3), 0, 255).astype(np.float32)
    shade = np.clip(1.1 - 0.3 * (u + 0.35) ** 2 - 0.06 * v, 0.65, 1.12)[..., None]
    colour = base * shade
    if PATTERNS[pat] != "plain":
        tone = base * 0.5 if name in _LIGHT_COLOURS else base + 0.5 * (235 - base)
        if PATTERNS[pat] == "striped":
            period, width = 10 * px, 4.5 * px
            t = (v * s / period + rng.uniform()) % 1
            cover = np.clip(width / 2 - np.abs(t - 0.5) * period + 0.5, 0, 1)
        else:
            period, radius = 11 * px, 3.0 * px
            row = v * s / period + rng.uniform()
            col_ = u * s / period + rng.uniform() + 0.5 * (np.floor(row) % 2)
            dist = _length(row % 1 - 0.5, col_ % 1 - 0.5) * period
            cover = np.clip(radius - dist + 0.5, 0, 1)
        colour += cover[..., None] * (tone * shade - colour)
    if accent is not None:
        kind = _ACCENT[CATEGORIES[cat]]
        tint = {"dark": base * 0.45, "white": _SOLE_WHITE, "metal": _METAL_GREY}[kind]
        acc_colour = tint * np.clip(shade, 0.8, 1.05)
        # Dark details lie on top of the main part (mug opening, bottle lid, cap button); the others show beside it.
        cover = a_acc if kind == "dark" else a_acc * (1 - a_main)
        colour += cover[..., None] * (acc_colour - colour)
    image += alpha[..., None] * (colour - image)
    # Faint sensor noise: a window at a random place in a fixed noise field (much faster than fresh noise).
    noise = _noise_field(max(256, size))
    oy, ox = rng.integers(0, len(noise) - size + 1, 2)
    image += noise[oy : oy + size, ox : ox + size]
    return np.clip(image, 0, 255), alpha


def render_product(
    category: int | str,
    colour: int | str,
    pattern: int | str = "plain",
    background: int | str = "white",
    rng: np.random.Generator | int | None = None,
    size: int = 64,
    return_alpha: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Draw one product shot, e.g. for a notebook.

    :param category: a name from :data:`CATEGORIES` or its index; likewise ``colour``, ``pattern``, ``background``.
    :param rng: random generator (or an int seed) for pose, jitter and texture; ``None`` draws a fresh one.
    :param size: side in pixels; the catalogue draws at 64 (fine details alias below about 48).
    :param return_alpha: also return the product's coverage mask.
    :return: uint8 array (size, size, 3), RGB; with ``return_alpha`` also float32 (size, size) in [0, 1], which is
        1 on the product (shadow excluded) and 0 on the background.
    """
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    idx = (
        _index(category, CATEGORIES, "category"),
        _index(colour, COLOUR_NAMES, "colour"),
        _index(pattern, PATTERNS, "pattern"),
        _index(background, BACKGROUNDS, "background"),
    )
    image, alpha = _draw(*idx, rng, size)
    image = np.round(image).astype(np.uint8)
    return (image, alpha) if return_alpha else image


# ---------------------------------------------------------------------------------------------------------------
# The dataset
# ---------------------------------------------------------------------------------------------------------------


def _names(cat: int, col: int, pat: int, bg: int) -> dict[str, str]:
    """Attribute indices -> names, as ``dict(category=..., colour=..., pattern=..., background=...)``."""
    return dict(category=CATEGORIES[cat], colour=COLOUR_NAMES[col], pattern=PATTERNS[pat], background=BACKGROUNDS[bg])


def _item(split: str, seed: int, i: int, size: int = 64) -> tuple[np.ndarray, str, tuple[int, int, int, int]]:
    """Item i of a split: (uint8 image (size, size, 3), caption, (category, colour, pattern, background)); ``size``
    64, or 128 (see the module docstring: its 2x2 box filter gives the 64 picture back)."""
    rng = np.random.default_rng([seed, SPLITS[split], i])
    pairs = _PAIRS[split]
    cat, col = pairs[int(rng.integers(len(pairs)))]
    pat, bg = int(rng.integers(len(PATTERNS))), int(rng.integers(len(BACKGROUNDS)))
    caption = make_caption(_names(cat, col, pat, bg), rng)
    state = rng.bit_generator.state  # the drawing's random numbers, replayed at 128
    image, _ = _draw(cat, col, pat, bg, rng, 64)
    if size == 128:
        rng.bit_generator.state = state
        fine, _ = _draw(cat, col, pat, bg, rng, 128)  # (128, 128, 3)
        image = _with_coarse(fine, image)
    return np.round(image).astype(np.uint8), caption, (cat, col, pat, bg)


def _with_coarse(fine: np.ndarray, coarse: np.ndarray, passes: int = 4) -> np.ndarray:
    """``fine`` (2H, 2W, 3) in 0..255, shifted block by block so that its 2x2 block means are ``coarse`` (H, W, 3):
    each pass adds every block's missing mean to the pixels of the block that are not clipped at 0 or 255."""
    h, w, c = coarse.shape
    out = fine.astype(np.float32)
    for _ in range(passes):
        blocks = out.reshape(h, 2, w, 2, c)
        missing = coarse - blocks.mean(axis=(1, 3))  # (H, W, 3)
        free = ((blocks < 255) & (missing[:, None, :, None] > 0)) | ((blocks > 0) & (missing[:, None, :, None] < 0))
        share = 4 * missing / np.maximum(free.sum(axis=(1, 3)), 1)  # spread over the pixels that can move
        out = np.clip(blocks + free * share[:, None, :, None], 0, 255).reshape(2 * h, 2 * w, c)
    return out


def downsample(images: np.ndarray) -> np.ndarray:
    """Halve uint8 pictures (..., H, W, C) by averaging 2x2 blocks (a box filter), rounding halves up."""
    wide = images.astype(np.uint16)
    total = wide[..., 0::2, 0::2, :] + wide[..., 1::2, 0::2, :] + wide[..., 0::2, 1::2, :] + wide[..., 1::2, 1::2, :]
    return ((total + 2) // 4).astype(np.uint8)


def _check_split_and_resolution(split: str, resolution: int) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {list(SPLITS)}")
    if resolution not in RESOLUTIONS:
        raise ValueError(f"resolution must be one of {list(RESOLUTIONS)}, got {resolution!r}")


def generate(
    split: str, seed: int, start: int, stop: int, resolution: int = 32, progress: bool = False
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Draw items ``start .. stop-1`` of a split; any chunk of the item range can be drawn on its own (in parallel
    processes, say) and the chunks concatenated give the same arrays as one call.

    :param split: "train", "test" or "heldout".
    :param seed: the dataset seed.
    :param start: first item index.
    :param stop: one past the last item index.
    :param resolution: 32, 64 or 128.
    :param progress: show a progress bar.
    :return: images uint8 (stop-start, 3, resolution, resolution), captions (list of str), labels int64
        (stop-start, 4) with columns :data:`LABEL_COLUMNS`.
    """
    _check_split_and_resolution(split, resolution)
    count = stop - start
    images = np.empty((count, 3, resolution, resolution), np.uint8)
    labels = np.empty((count, 4), np.int64)
    captions = []
    side = max(resolution, 64)  # drawn at 64 (or 128), shrunk to 32 and stored 256 at a time
    block = np.empty((256, side, side, 3), np.uint8)
    with tqdm(total=count, desc=f"drawing {split} products", disable=not progress, unit="img") as bar:
        for first in range(0, count, len(block)):
            last = min(first + len(block), count)
            for j in range(first, last):
                block[j - first], caption, labels[j] = _item(split, seed, start + j, side)
                captions.append(caption)
            drawn = block[: last - first] if resolution >= 64 else downsample(block[: last - first])
            images[first:last] = drawn.transpose(0, 3, 1, 2)
            bar.update(last - first)
    return images, captions, labels


class ProductCatalogue(Dataset):
    """Synthetic product shots with captions and labels, deterministic from a seed, optionally cached on disk.

    >>> cat = ProductCatalogue(n=20000, split="train", seed=0, resolution=32)  # doctest: +SKIP
    >>> item = cat[0]  # dict(image=float (3, 32, 32) in [-1, 1], caption=str, labels=dict of ints)

    :param n: number of items.
    :param split: "train", "test" (same distribution as train, other items) or "heldout" (only
        :data:`HELD_OUT_PAIRS`).
    :param seed: non-negative int; item i is the same for every ``n`` (see the module docstring).
    :param resolution: 32, 64 or 128 (pixels per side); 32 is the 64 drawing averaged over 2x2 blocks, and 128
        averaged over 2x2 blocks gives the 64 one (within one grey level).
    :param cache_dir: folder for a ``.npz`` cache, named by :data:`GENERATOR_VERSION`, split, seed, n and
        resolution; loaded when present, written (atomically) when not. ``"default"`` is ``data/cache`` of the
        project (:func:`dalle2_edu.utils.data_dir`), wherever you run from; ``None`` disables caching. A cache that
        cannot be written (a read-only checkout) or read (a damaged file) only gives a warning: the data is drawn.
    :param progress: show a progress bar while drawing.

    Attributes: ``images`` uint8 tensor (N, 3, R, R); ``captions`` list of N str; ``labels`` int64 tensor (N, 4)
    with columns :data:`LABEL_COLUMNS` (category, colour, pattern, background indices).
    """

    def __init__(
        self,
        n: int = 20000,
        split: str = "train",
        seed: int = 0,
        resolution: int = 32,
        cache_dir: str | os.PathLike | None = "default",
        progress: bool = True,
    ):
        _check_split_and_resolution(split, resolution)
        if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
            raise ValueError(f"n must be a positive int, got {n!r}")
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        self.n, self.split, self.seed, self.resolution = n, split, seed, resolution
        self.cache_path = None
        if cache_dir == "default":
            cache_dir = data_dir() / "cache"
        if cache_dir is not None:
            name = f"catalogue-v{GENERATOR_VERSION}-{split}-s{seed}-n{n}-r{resolution}.npz"
            self.cache_path = Path(cache_dir) / name
        cached = _load_cache(self.cache_path, n, resolution) if self.cache_path is not None else None
        if cached is not None:
            images, captions, labels = cached
        else:
            images, captions, labels = generate(split, seed, 0, n, resolution, progress)
            if self.cache_path is not None:
                try:
                    _save_atomically(self.cache_path, images=images, captions=np.array(captions), labels=labels)
                except OSError as err:  # a read-only checkout or a full disk: the cache is optional
                    warn_cache_not_written(self.cache_path, err)
        self.images = torch.from_numpy(images)
        self.captions: list[str] = captions
        self.labels = torch.from_numpy(labels)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        """:return: ``dict(image=float32 (3, R, R) in [-1, 1], caption=str, labels=dict(category=int, ...))``."""
        if not -self.n <= i < self.n:
            raise IndexError(f"index {i} out of range for {self.n} items")
        image = self.images[i].float() / 127.5 - 1
        labels = dict(zip(LABEL_COLUMNS, self.labels[i].tolist()))
        return dict(image=image, caption=self.captions[i], labels=labels)

    def attributes(self, i: int) -> dict[str, str]:
        """Attribute names of item i, e.g. ``dict(category="mug", colour="red", pattern="plain", background="wood")``.

        :param i: item index.
        """
        return _names(*self.labels[i].tolist())

    def grid(self, k: int = 16, cols: int = 8, start: int = 0) -> np.ndarray:
        """The first ``k`` pictures from ``start`` tiled ``cols`` wide, as uint8 (rows*R, cols*R, 3) for plotting."""
        images = self.images[start : start + k].permute(0, 2, 3, 1).numpy()
        rows = -(-len(images) // cols)
        r = self.resolution
        out = np.full((rows * r, cols * r, 3), 255, np.uint8)
        for j, image in enumerate(images):
            out[j // cols * r : (j // cols + 1) * r, j % cols * r : (j % cols + 1) * r] = image
        return out

    def __repr__(self) -> str:
        return f"ProductCatalogue(n={self.n}, split={self.split!r}, seed={self.seed}, resolution={self.resolution})"


def _load_cache(path: Path, n: int, resolution: int) -> tuple[np.ndarray, list[str], np.ndarray] | None:
    """The cached ``(images, captions, labels)``, or None when there is no cache file or it cannot be used (then
    with a warning; the caller draws the data again and rewrites the file)."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            images, captions, labels = data["images"], [str(c) for c in data["captions"]], data["labels"]
        if images.shape != (n, 3, resolution, resolution) or len(captions) != n or labels.shape != (n, 4):
            raise ValueError(f"it holds {len(captions)} items of shape {images.shape[1:]}")
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        warnings.warn(f"ignoring the unreadable dataset cache {path} ({err}); drawing the data again", stacklevel=3)
        return None
    return images, captions, labels


def _save_atomically(path: Path, **arrays: np.ndarray) -> None:
    """Write an .npz to a temporary file beside ``path``, then rename it into place (no half-written caches), with
    the permissions the umask allows."""
    _atomic_write(path, lambda f: np.savez(f, **arrays))
