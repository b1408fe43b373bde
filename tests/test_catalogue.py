"""The synthetic product catalogue: determinism, caching, captions that carry the labels, held-out pairs, and
pictures that really show their category and colour."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dalle2_edu.datasets import catalogue as catalogue_module
from dalle2_edu.datasets.catalogue import (
    BACKGROUNDS,
    CATEGORIES,
    COLOURS,
    GENERATOR_VERSION,
    HELD_OUT_PAIRS,
    PATTERNS,
    ProductCatalogue,
    make_caption,
    parse_caption,
    render_product,
)

COLOUR_NAMES = list(COLOURS)
CENTRES = torch.tensor(list(COLOURS.values()), dtype=torch.float32)  # (8, 3)


@pytest.fixture(scope="module")
def train():
    return ProductCatalogue(n=500, split="train", seed=0, resolution=32, cache_dir=None, progress=False)


def names_of(labels: torch.Tensor) -> dict[str, str]:
    cat, col, pat, bg = labels.tolist()
    return dict(category=CATEGORIES[cat], colour=COLOUR_NAMES[col], pattern=PATTERNS[pat], background=BACKGROUNDS[bg])


# --- determinism and caching ------------------------------------------------------------------------------------


def test_same_seed_same_items_and_different_seed_different(train):
    again = ProductCatalogue(n=500, split="train", seed=0, cache_dir=None, progress=False)
    assert torch.equal(train.images, again.images)
    assert train.captions == again.captions
    assert torch.equal(train.labels, again.labels)
    other = ProductCatalogue(n=500, split="train", seed=1, cache_dir=None, progress=False)
    assert not torch.equal(train.images, other.images)
    assert train.captions != other.captions


def test_item_does_not_depend_on_n(train):
    small = ProductCatalogue(n=50, split="train", seed=0, cache_dir=None, progress=False)
    assert torch.equal(small.images, train.images[:50])
    assert small.captions == train.captions[:50]
    assert torch.equal(small.labels, train.labels[:50])


def test_test_split_differs_from_train(train):
    test = ProductCatalogue(n=50, split="test", seed=0, cache_dir=None, progress=False)
    assert not torch.equal(test.images, train.images[:50])


def test_chunks_match_whole():
    images, captions, labels = catalogue_module.generate("train", 3, 0, 40)
    tail = catalogue_module.generate("train", 3, 25, 40)
    assert np.array_equal(images[25:], tail[0]) and captions[25:] == tail[1] and np.array_equal(labels[25:], tail[2])


def test_cache_round_trip(tmp_path, monkeypatch):
    first = ProductCatalogue(n=60, split="test", seed=2, resolution=64, cache_dir=tmp_path, progress=False)
    expected = tmp_path / f"catalogue-v{GENERATOR_VERSION}-test-s2-n60-r64.npz"
    assert first.cache_path == expected and expected.exists()
    assert [p.name for p in tmp_path.iterdir()] == [expected.name]  # no temporary file left behind

    def no_drawing(*args, **kwargs):
        raise AssertionError("should have loaded the cache")

    monkeypatch.setattr(catalogue_module, "generate", no_drawing)
    second = ProductCatalogue(n=60, split="test", seed=2, resolution=64, cache_dir=tmp_path, progress=False)
    assert torch.equal(first.images, second.images)
    assert first.captions == second.captions
    assert torch.equal(first.labels, second.labels)


# --- shapes, ranges, arguments ----------------------------------------------------------------------------------


@pytest.mark.parametrize("resolution", [32, 64, 128])
def test_shapes_dtypes_and_ranges(resolution):
    cat = ProductCatalogue(n=20, split="train", seed=5, resolution=resolution, cache_dir=None, progress=False)
    assert len(cat) == 20
    assert cat.images.shape == (20, 3, resolution, resolution) and cat.images.dtype == torch.uint8
    assert cat.labels.shape == (20, 4) and cat.labels.dtype == torch.int64
    item = cat[3]
    assert item["image"].shape == (3, resolution, resolution) and item["image"].dtype == torch.float32
    assert -1 <= item["image"].min() and item["image"].max() <= 1
    assert isinstance(item["caption"], str) and item["caption"]
    assert set(item["labels"]) == {"category", "colour", "pattern", "background"}
    assert cat.attributes(3) == names_of(cat.labels[3])
    assert cat.grid(k=10, cols=4).shape == (3 * resolution, 4 * resolution, 3)
    with pytest.raises(IndexError):
        cat[20]


def test_32_is_the_64_drawing_averaged():
    big = ProductCatalogue(n=5, seed=4, resolution=64, cache_dir=None, progress=False).images.float()
    small = ProductCatalogue(n=5, seed=4, resolution=32, cache_dir=None, progress=False).images.float()
    assert (F.avg_pool2d(big, 2) - small).abs().max() <= 0.5 + 1e-4


def test_128_averages_back_to_the_64_and_adds_detail():
    """Item i at 128 is the same product as at 64 (captions, labels), its 2x2 box filter gives the 64 picture back
    within one grey level, and it holds detail the 64 picture cannot (an upsampler has something to learn)."""
    big = ProductCatalogue(n=6, seed=4, resolution=128, cache_dir=None, progress=False)
    mid = ProductCatalogue(n=6, seed=4, resolution=64, cache_dir=None, progress=False)
    assert big.captions == mid.captions and torch.equal(big.labels, mid.labels)
    assert (F.avg_pool2d(big.images.float(), 2) - mid.images.float()).abs().max() <= 1.0 + 1e-4
    nearest = F.interpolate(mid.images.float(), scale_factor=2, mode="nearest")
    detail = (big.images.float() - nearest).abs().mean().item()
    assert detail > 1.0, f"the 128 pictures are only the 64 ones enlarged (mean |difference| {detail:.2f})"


def test_bad_arguments_say_what_is_allowed():
    with pytest.raises(ValueError, match="heldout"):
        ProductCatalogue(n=10, split="validation", cache_dir=None)
    with pytest.raises(ValueError, match="32"):
        ProductCatalogue(n=10, resolution=48, cache_dir=None)
    with pytest.raises(ValueError, match="positive"):
        ProductCatalogue(n=0, cache_dir=None)
    with pytest.raises(ValueError, match="category"):
        render_product("sofa", "red")


def test_all_attribute_values_occur(train):
    for column, names in enumerate([CATEGORIES, COLOURS, PATTERNS, BACKGROUNDS]):
        assert set(train.labels[:, column].tolist()) == set(range(len(names)))


def test_render_product_is_deterministic_and_accepts_names_or_indices():
    a = render_product("mug", "red", "striped", "wood", rng=7)
    b = render_product(1, 0, 1, 2, rng=np.random.default_rng(7))
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)


# --- captions ---------------------------------------------------------------------------------------------------


def test_captions_carry_the_labels(train):
    heldout = ProductCatalogue(n=100, split="heldout", seed=0, cache_dir=None, progress=False)
    for cat in (train, heldout):
        for caption, labels in zip(cat.captions, cat.labels):
            assert parse_caption(caption) == names_of(labels), caption


def test_every_combination_round_trips_through_captions():
    rng = np.random.default_rng(0)
    for cat, col, pat, bg in itertools.product(CATEGORIES, COLOURS, PATTERNS, BACKGROUNDS):
        attrs = dict(category=cat, colour=col, pattern=pat, background=bg)
        for _ in range(3):
            caption = make_caption(attrs, rng)
            assert parse_caption(caption) == attrs, caption
            assert "  " not in caption and " a o" not in caption


def test_captions_vary_and_parse_rejects_incomplete_ones(train):
    assert len(set(train.captions)) > 400
    assert parse_caption("Product photo: striped mug, red, white background")["pattern"] == "striped"
    with pytest.raises(ValueError, match="colour"):
        parse_caption("a mug on white")
    with pytest.raises(ValueError, match="background"):
        parse_caption("a red mug")
    with pytest.raises(ValueError, match="more than one"):
        parse_caption("a red mug and a vase on white")


# --- held-out pairs ---------------------------------------------------------------------------------------------


def test_held_out_pairs_only_in_heldout_split(train):
    assert 5 <= len(HELD_OUT_PAIRS) <= 8
    for position in (0, 1):  # each category and each colour held out at most twice
        counts = np.unique([pair[position] for pair in HELD_OUT_PAIRS], return_counts=True)[1]
        assert counts.max() <= 2
    held = {(CATEGORIES.index(c), COLOUR_NAMES.index(k)) for c, k in HELD_OUT_PAIRS}
    test = ProductCatalogue(n=300, split="test", seed=0, cache_dir=None, progress=False)
    for cat in (train, test):
        assert not held & {tuple(pair) for pair in cat.labels[:, :2].tolist()}
    heldout = ProductCatalogue(n=200, split="heldout", seed=0, cache_dir=None, progress=False)
    assert {tuple(pair) for pair in heldout.labels[:, :2].tolist()} == held


# --- the pictures show their attributes -------------------------------------------------------------------------


def product_masks(images: torch.Tensor) -> torch.Tensor:
    """Pixels that differ from the studio background (its colour taken from the picture's border): (N, R, R)."""
    pictures = images.float()
    border = torch.cat([pictures[:, :, 0], pictures[:, :, -1], pictures[:, :, :, 0], pictures[:, :, :, -1]], dim=2)
    background = border.median(dim=2).values[:, :, None, None]
    return (pictures - background).abs().amax(dim=1) > 40


LIGHT = torch.tensor([name in ("yellow", "orange", "pink") for name in COLOURS])[:, None]
# Stripes and dots are drawn in a darker tone of the light colours and a lighter tone of the others.
TONES = torch.where(LIGHT, CENTRES * 0.5, CENTRES + 0.5 * (235 - CENTRES))


def dominant_colour(pixels: torch.Tensor, with_tones: bool = True) -> int:
    """Index of the colour whose centre (or, ``with_tones``, pattern tone) is nearest to most RGB pixels (P, 3)."""
    centres = torch.cat([CENTRES, TONES]) if with_tones else CENTRES
    nearest = torch.cdist(pixels, centres).argmin(dim=1) % len(CENTRES)
    return int(torch.bincount(nearest, minlength=len(CENTRES)).argmax())


def test_product_pixels_are_mostly_the_named_colour(train):
    studio = train.labels[:, 3] < 2  # white and light grey backgrounds: the product stands out from a plain colour
    images, labels = train.images[studio], train.labels[studio]
    masks = product_masks(images)
    pixels = [image.permute(1, 2, 0)[mask].float() for image, mask in zip(images, masks)]
    votes = torch.tensor([dominant_colour(p) for p in pixels])
    assert (votes == labels[:, 1]).float().mean() > 0.95
    plain = (labels[:, 2] == 0).nonzero()[:, 0].tolist()  # plain products: nearest the named centre, no tones
    strict = torch.tensor([dominant_colour(pixels[j], with_tones=False) for j in plain])
    assert (strict == labels[plain, 1]).float().mean() > 0.95


def test_colour_shows_on_every_background():
    rng = np.random.default_rng(1)
    hits = 0
    for col, bg, _ in itertools.product(range(8), range(3), range(2)):
        image, alpha = render_product(int(rng.integers(8)), col, int(rng.integers(3)), bg, rng, return_alpha=True)
        hits += dominant_colour(torch.from_numpy(image[alpha > 0.9]).float()) == col
    assert hits >= 46, hits


def normalised_silhouettes(masks: torch.Tensor, side: int = 12) -> torch.Tensor:
    """Crop each mask to a square around its bounding box and shrink it to side x side: (N, side * side)."""
    out = []
    for mask in masks:
        rows, cols = mask.any(dim=1).nonzero()[:, 0], mask.any(dim=0).nonzero()[:, 0]
        top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        half = max(bottom - top, right - left) / 2
        cy, cx = (top + bottom) / 2, (left + right) / 2
        padded = F.pad(mask.float(), (32, 32, 32, 32))
        crop = padded[int(cy - half) + 32 : int(cy + half) + 32, int(cx - half) + 32 : int(cx + half) + 32]
        out.append(F.interpolate(crop[None, None], size=(side, side), mode="area").flatten())
    return torch.stack(out)


def test_categories_differ_in_silhouette(train):
    studio = train.labels[:, 3] < 2
    features = normalised_silhouettes(product_masks(train.images[studio]))
    categories = train.labels[studio, 0]
    fit, check = slice(0, 200), slice(200, None)
    centroids = torch.stack([features[fit][categories[fit] == c].mean(dim=0) for c in range(len(CATEGORIES))])
    predicted = torch.cdist(features[check], centroids).argmin(dim=1)
    accuracy = (predicted == categories[check]).float().mean()
    assert accuracy > 0.9, accuracy
