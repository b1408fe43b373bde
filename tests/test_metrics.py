"""The quality meters: the shipped attribute classifier reads real pictures correctly, prompt fidelity scores what
was asked, and FID / KID compute what their formulas say (checked against closed forms and independent routes)."""

from __future__ import annotations

import json

import pytest
import torch

from dalle2_edu.checkpoint import CheckpointError, save_weights
from dalle2_edu.datasets.catalogue import COLOURS, LABEL_COLUMNS, PATTERNS, ProductCatalogue, render_product
from dalle2_edu.metrics import (
    ATTRIBUTES,
    TRAIN_COMMAND,
    AttributeClassifier,
    augment,
    default_classifier_path,
    extract_features,
    feature_stats,
    fid,
    fid_floor,
    frechet_distance,
    kid,
    load_attribute_classifier,
    polynomial_mmd2,
    prompt_fidelity,
    recolour,
    save_attribute_classifier,
    sqrtm_psd,
    swap_colours,
    train_attribute_classifier,
)
from dalle2_edu.utils import DATA_ENV


@pytest.fixture(scope="module")
def classifier():
    return load_attribute_classifier()


@pytest.fixture(scope="module")
def real():
    """300 real test-split pictures the classifier never saw (the first 300 of its own test set)."""
    return ProductCatalogue(300, split="test", seed=1, resolution=32, cache_dir=None, progress=False)


@pytest.fixture
def tiny():
    """A random, untrained classifier: enough for the maths, fast to run."""
    torch.manual_seed(0)
    return AttributeClassifier(width=4, feature_dim=8).eval()


def gauss(g: torch.Generator, *shape: int) -> torch.Tensor:
    """Standard normal float64 numbers."""
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def random_spd(f: int, g: torch.Generator) -> torch.Tensor:
    a = gauss(g, f, f)
    return a @ a.T / f + 0.1 * torch.eye(f, dtype=torch.float64)


def names(labels: torch.Tensor, keys=LABEL_COLUMNS) -> list[dict[str, str]]:
    return [{key: ATTRIBUTES[key][int(row[LABEL_COLUMNS.index(key)])] for key in keys} for row in labels]


# --- the shipped classifier -------------------------------------------------------------------------------------


def test_shipped_classifier_reads_real_pictures(classifier, real):
    scores = prompt_fidelity(real.images, real.labels, classifier)
    assert scores["n"] == 300
    for name in ATTRIBUTES:
        assert scores[name] >= 0.98, (name, scores)


def test_shipped_classifier_reads_64_pixel_pictures_and_held_out_pairs(classifier):
    big = ProductCatalogue(200, split="heldout", seed=2, resolution=64, cache_dir=None, progress=False)
    scores = prompt_fidelity(big.images.float() / 127.5 - 1, big.labels, classifier)
    for name in ATTRIBUTES:
        assert scores[name] >= 0.97, (name, scores)


def test_shipped_files_are_small_and_report_their_accuracy():
    path = default_classifier_path()
    assert path.stat().st_size < 2_000_000
    report = json.loads(path.with_suffix(".json").read_text())
    assert report["command"].startswith(TRAIN_COMMAND) and report["recipe"] == "full"
    for split in ("test", "heldout"):
        for name in ATTRIBUTES:
            assert report["accuracy"][split][name] >= 0.99, (split, name)
    state = load_attribute_classifier().state_dict()
    assert sum(t.numel() for t in state.values()) <= 300_000
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert dtypes == {"F16" if report["weights_dtype"] == "float16" else "F32"}


def test_predict_shape_and_features_do_not_depend_on_the_batch(tiny, real):
    x = real.images[:10]
    assert tiny.predict(x).shape == (10, 4) and tiny.predict(x).dtype == torch.long
    logits = tiny(x)
    assert {k: tuple(v.shape) for k, v in logits.items()} == {"category": (10, 8), "colour": (10, 8),
                                                               "pattern": (10, 3), "background": (10, 3)}  # fmt: skip
    with torch.no_grad():
        torch.testing.assert_close(tiny.features(x[:3]), tiny.features(x)[:3])
        # uint8 and [-1, 1] floats are the same pictures
        torch.testing.assert_close(tiny.features(x), tiny.features(x.float() / 127.5 - 1))


def test_augment_mirrors_but_never_changes_labels():
    x = torch.rand(64, 3, 32, 32) * 2 - 1
    out = augment(x, max_shift=0, noise=0)
    same = (out - x).abs().flatten(1).amax(1) < 1e-5
    mirrored = (out - x.flip(-1)).abs().flatten(1).amax(1) < 1e-5
    assert bool((same | mirrored).all()) and 10 < int(mirrored.sum()) < 54
    assert augment(x).shape == x.shape


@pytest.mark.parametrize(
    "category, pattern, background", [("mug", "striped", "white"), ("sneaker", "dotted", "light grey")]
)
def test_swap_colours_repaints_a_product_as_the_catalogue_draws_it(category, pattern, background):
    colours = list(COLOURS)

    def draw(colour):
        picture = render_product(category, colour, pattern, background, rng=5, size=32)  # same pose for every colour
        labels = torch.tensor([[0, colours.index(colour), PATTERNS.index(pattern), 0]])
        return torch.from_numpy(picture).permute(2, 0, 1)[None].float() / 127.5 - 1, labels

    for source, target in [("red", "green"), ("green", "black"), ("orange", "yellow"), ("pink", "orange")]:
        picture, labels = draw(source)
        repainted, new_labels = swap_colours(picture, labels, torch.tensor([colours.index(target)]))
        assert new_labels[0, 1] == colours.index(target) and torch.equal(new_labels[0, [0, 2, 3]], labels[0, [0, 2, 3]])
        drawn = draw(target)[0]
        error = (repainted - drawn).abs().mean() * 127.5  # levels of 255; what is left is the colour jitter
        assert error < 3 and error < 0.3 * (picture - drawn).abs().mean() * 127.5
    black, labels = draw("black")
    unchanged, new_labels = swap_colours(black, labels, torch.tensor([0]))
    assert torch.equal(new_labels, labels) and torch.equal(unchanged, black)


def test_swap_colours_keeps_pattern_tones_and_black():
    n = 4000
    labels = torch.stack([torch.zeros(n, dtype=torch.long), torch.arange(n) % 8, torch.arange(n) // 8 % 3,
                          torch.zeros(n, dtype=torch.long)], dim=1)  # fmt: skip
    _, new = swap_colours(torch.zeros(n, 3, 32, 32), labels)
    light = torch.tensor([c in ("orange", "yellow", "pink") for c in COLOURS])
    patterned = labels[:, 2] > 0
    assert torch.equal(light[new[patterned, 1]], light[labels[patterned, 1]])
    assert (new[labels[:, 1] == 7, 1] == 7).all()
    plain_red = (labels[:, 1] == 0) & ~patterned
    assert set(new[plain_red, 1].tolist()) == set(range(8))  # plain products take any colour, black included
    assert torch.equal(new[:, [0, 2, 3]], labels[:, [0, 2, 3]])


def test_recolour_keeps_greys_and_brightness_and_turns_hues():
    colours = torch.rand(32, 3, 4, 4) * 0.6 - 0.3  # far enough from the ends of [-1, 1] not to be clamped
    out = recolour(colours)
    torch.testing.assert_close(out.mean(dim=1), colours.mean(dim=1))  # the part along the grey axis stays
    greys = torch.rand(32, 1, 4, 4).expand(-1, 3, -1, -1) * 2 - 1
    torch.testing.assert_close(recolour(greys), greys)
    red = torch.tensor([0.6, -0.3, -0.3]).view(1, 3, 1, 1).expand(400, -1, -1, -1)
    hues = recolour(red, 1.0, 1.0)[:, :, 0, 0]
    assert (hues.argmax(dim=1).bincount(minlength=3) > 80).all()  # red turns green or blue as often as it stays red


# --- prompt fidelity --------------------------------------------------------------------------------------------


def test_prompt_fidelity_with_shuffled_labels_is_chance(classifier, real):
    shuffled = real.labels[torch.randperm(len(real.labels), generator=torch.Generator().manual_seed(0))]
    scores = prompt_fidelity(real.images, shuffled, classifier)
    for j, name in enumerate(ATTRIBUTES):
        frequencies = torch.bincount(real.labels[:, j], minlength=len(ATTRIBUTES[name])).double() / len(real)
        chance = float(frequencies.square().sum())  # P(a random other item has the same value)
        assert abs(scores[name] - chance) < 0.1, (name, scores[name], chance)


def test_prompt_fidelity_takes_names_and_subsets(classifier, real):
    images, labels = real.images[:60], real.labels[:60]
    by_index = prompt_fidelity(images, labels, classifier)
    assert prompt_fidelity(images, names(labels), classifier) == by_index

    only_colour = prompt_fidelity(images, names(labels, ["colour"]), classifier)
    assert set(only_colour) == {"colour", "n"} and only_colour["colour"] == by_index["colour"]

    # prompts that ask different things: each attribute is scored over the prompts that asked for it
    mixed = names(labels[:30], ["category"]) + names(labels[30:], ["category", "background"])
    scores = prompt_fidelity(images, mixed, classifier)
    assert set(scores) == {"category", "background", "n"} and scores["n"] == 60
    assert scores["background"] == prompt_fidelity(images[30:], labels[30:], classifier)["background"]
    asked = labels.clone()
    asked[:30, 3] = -1  # -1: not asked
    assert prompt_fidelity(images, asked, classifier)["background"] == scores["background"]


@pytest.mark.parametrize(
    "images, attributes, message",
    [
        (torch.zeros(4, 1, 32, 32), torch.zeros(4, 4, dtype=torch.long), "shape"),
        (torch.zeros(4, 3, 30, 30), torch.zeros(4, 4, dtype=torch.long), "multiple of 32"),
        (torch.zeros(3, 32, 32), torch.zeros(1, 4, dtype=torch.long), "shape"),
        (torch.zeros(4, 3, 32, 32), torch.zeros(5, 4, dtype=torch.long), "4 images but 5"),
        (torch.zeros(4, 3, 32, 32), torch.zeros(4, 3, dtype=torch.long), r"\(N, 4\)"),
        (torch.zeros(4, 3, 32, 32), torch.full((4, 4), 8), "out of range"),
        (torch.zeros(4, 3, 32, 32), torch.zeros(4, 4), "integer"),
        (torch.zeros(2, 3, 32, 32), [{"colour": "red"}, {"size": "big"}], "unknown attribute 'size'"),
        (torch.zeros(2, 3, 32, 32), [{"colour": "red"}, {"colour": "teal"}], "unknown colour 'teal'"),
        (torch.zeros(2, 3, 32, 32), [{"colour": "red"}], "2 images but 1"),
        (torch.zeros(1, 3, 32, 32), "a red mug", "list of dicts"),
        (torch.zeros(0, 3, 32, 32), torch.zeros(0, 4, dtype=torch.long), "no images"),
    ],
)
def test_prompt_fidelity_refuses_bad_input(tiny, images, attributes, message):
    with pytest.raises(ValueError, match=message):
        prompt_fidelity(images, attributes, tiny)


# --- Fréchet distance -------------------------------------------------------------------------------------------


def test_frechet_distance_matches_the_closed_form_for_diagonal_covariances():
    g = torch.Generator().manual_seed(0)
    mu1, mu2 = gauss(g, 6), gauss(g, 6)
    var1, var2 = gauss(g, 6).square() + 0.1, gauss(g, 6).square() + 0.1
    expected = (mu1 - mu2).square().sum() + (var1 + var2 - 2 * (var1 * var2).sqrt()).sum()
    got = frechet_distance(mu1, torch.diag(var1), mu2, torch.diag(var2))
    assert got == pytest.approx(float(expected), rel=1e-10)


def test_frechet_distance_matches_closed_forms_for_full_covariances():
    g = torch.Generator().manual_seed(1)
    sigma = random_spd(10, g)
    mu1, mu2 = gauss(g, 10), gauss(g, 10)
    # equal covariances: only the means count
    assert frechet_distance(mu1, sigma, mu2, sigma) == pytest.approx(float((mu1 - mu2).square().sum()), rel=1e-8)
    # sigma2 = c^2 sigma1: sqrt(sigma1 sigma2) = c sigma1, so the covariance term is (1 - c)^2 tr(sigma1)
    c = 1.7
    assert frechet_distance(mu1, sigma, mu1, c**2 * sigma) == pytest.approx((1 - c) ** 2 * float(sigma.trace()))


def test_frechet_distance_agrees_with_the_eigenvalues_of_the_product():
    """tr(sqrt(A B)) = sum of sqrt of the (real, non-negative) eigenvalues of the non-symmetric product A B."""
    g = torch.Generator().manual_seed(2)
    a, b = random_spd(12, g), random_spd(12, g)
    mu1, mu2 = gauss(g, 12), torch.zeros(12, dtype=torch.float64)
    trace_root = torch.linalg.eigvals(a @ b).sqrt().real.sum()
    expected = (mu1 - mu2).square().sum() + a.trace() + b.trace() - 2 * trace_root
    got = frechet_distance(mu1, a, mu2, b)
    assert got == pytest.approx(float(expected), rel=1e-9)
    assert got == pytest.approx(frechet_distance(mu2, b, mu1, a), rel=1e-9)  # symmetric


def test_sqrtm_psd_squares_back_even_when_singular():
    g = torch.Generator().manual_seed(3)
    a = random_spd(8, g)
    root = sqrtm_psd(a)
    torch.testing.assert_close(root @ root, a)
    torch.testing.assert_close(root, root.T)
    low_rank = gauss(g, 8, 3)
    singular = low_rank @ low_rank.T  # rank 3: eigenvalues that rounding can make slightly negative
    root = sqrtm_psd(singular)
    assert not root.isnan().any()
    torch.testing.assert_close(root @ root, singular)


def test_fid_is_zero_for_a_set_with_itself_symmetric_and_sees_a_shift():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(400, 16, generator=g) @ torch.randn(16, 16, generator=g)
    y = torch.randn(400, 16, generator=g) @ torch.randn(16, 16, generator=g)
    assert abs(fid(x, x)) < 1e-6
    assert fid(x, y) == pytest.approx(fid(y, x), rel=1e-9)
    shift = torch.zeros(16)
    shift[:4] = 0.5
    assert fid(x, x + shift) == pytest.approx(1.0, rel=1e-6)  # same covariance: |shift|^2 = 4 * 0.25
    assert fid(x, y) > 1.0


def test_feature_stats_are_the_mean_and_unbiased_covariance():
    x = torch.randn(50, 5)
    mu, sigma = feature_stats(x)
    assert mu.dtype == torch.float64
    torch.testing.assert_close(mu, x.double().mean(0))
    torch.testing.assert_close(sigma, torch.cov(x.double().T))
    with pytest.raises(ValueError):
        feature_stats(torch.randn(1, 5))


def test_fid_on_pictures_uses_the_classifier_features(tiny, real):
    a, b = real.images[:100], real.images[100:200]
    features_a, features_b = extract_features(a, tiny), extract_features(b, tiny)
    assert features_a.shape == (100, 8)
    assert fid(a, b, tiny) == pytest.approx(fid(features_a, features_b), rel=1e-9)
    assert abs(fid(a, a, tiny)) < 1e-6


# --- KID --------------------------------------------------------------------------------------------------------


def test_polynomial_mmd2_matches_a_direct_sum():
    g = torch.Generator().manual_seed(5)
    x, y = gauss(g, 5, 3), gauss(g, 4, 3)

    def k(a, b):
        return (float(a @ b) / 3 + 1) ** 3

    xx = sum(k(x[i], x[j]) for i in range(5) for j in range(5) if i != j) / 20
    yy = sum(k(y[i], y[j]) for i in range(4) for j in range(4) if i != j) / 12
    xy = sum(k(x[i], y[j]) for i in range(5) for j in range(4)) / 20
    assert float(polynomial_mmd2(x, y)) == pytest.approx(xx + yy - 2 * xy, rel=1e-12)


def test_kid_is_about_zero_for_one_distribution_and_positive_for_two():
    g = torch.Generator().manual_seed(6)
    a, b = torch.randn(600, 16, generator=g), torch.randn(600, 16, generator=g)
    mean, std = kid(a, b, subsets=20, subset_size=300)
    assert abs(mean) < 3 * std + 1e-3
    mean_shifted, std_shifted = kid(a, b + 0.5, subsets=20, subset_size=300)
    assert mean_shifted > 10 * std_shifted and mean_shifted > 10 * abs(mean)


def test_kid_is_unbiased_over_many_draws():
    """Averaged over independent pairs of samples of one distribution, the estimate centres on 0; the biased version
    (keeping each point's kernel with itself) does not, so the test can tell them apart."""
    g = torch.Generator().manual_seed(7)
    unbiased, biased = [], []
    for _ in range(40):
        x, y = gauss(g, 50, 8), gauss(g, 50, 8)
        unbiased.append(float(polynomial_mmd2(x, y)))
        kxx, kyy, kxy = ((p @ q.T / 8 + 1) ** 3 for p, q in ((x, x), (y, y), (x, y)))
        biased.append(float(kxx.mean() + kyy.mean() - 2 * kxy.mean()))
    unbiased, biased = torch.tensor(unbiased), torch.tensor(biased)
    standard_error = unbiased.std() / len(unbiased) ** 0.5
    assert abs(unbiased.mean()) < 3 * standard_error
    assert biased.mean() > 10 * standard_error


# --- the floor on real pictures ---------------------------------------------------------------------------------


def test_fid_floor_is_below_the_fid_of_recoloured_pictures(classifier, real, tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_ENV, str(tmp_path))  # the catalogue caches it draws go to a temporary folder
    floor = fid_floor(n=300, classifier=classifier)
    recoloured = real.images[:, [2, 0, 1]]  # red -> green -> blue: every colour becomes another one
    assert 0 < floor < 0.3 * fid(real.images, recoloured, classifier)
    other_pairs = ProductCatalogue(300, split="heldout", seed=1, resolution=32, cache_dir=None, progress=False)
    assert floor < 0.2 * fid(real.images, other_pairs.images, classifier)  # same kinds of product, other mix
    train = ProductCatalogue(300, split="train", seed=0, resolution=32, cache_dir=None, progress=False)
    kid_mean, kid_std = kid(train.images, real.images, classifier, subsets=20, subset_size=200)
    recoloured_kid, _ = kid(train.images, recoloured, classifier, subsets=20, subset_size=200)
    assert abs(kid_mean) < 3 * kid_std + 0.05 * recoloured_kid


# --- saving, loading, training ----------------------------------------------------------------------------------


def test_load_missing_file_names_the_path_and_the_command(tmp_path):
    missing = tmp_path / "nothing_here.safetensors"
    with pytest.raises(FileNotFoundError) as err:
        load_attribute_classifier(missing)
    assert str(missing) in str(err.value) and TRAIN_COMMAND in str(err.value)


def test_load_corrupt_or_foreign_file_is_a_clear_error(tmp_path, tiny):
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00\x01 not a safetensors file" * 10)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_attribute_classifier(corrupt)

    weights, _ = save_attribute_classifier(tiny, {"config": tiny.config}, tmp_path / "good.safetensors")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_attribute_classifier(truncated)

    foreign = save_weights(tmp_path / "foreign.safetensors", {"w": torch.zeros(3)}, {"model": "UNet"})
    with pytest.raises(CheckpointError, match="does not hold an AttributeClassifier"):
        load_attribute_classifier(foreign)

    mismatched = save_weights(tmp_path / "mismatched.safetensors", tiny.state_dict(), {**tiny.config, "width": 8})
    with pytest.raises(CheckpointError, match="do not fit"):
        load_attribute_classifier(mismatched)


def test_save_and_load_round_trip(tmp_path, tiny, real):
    weights, report = save_attribute_classifier(tiny, {"config": tiny.config, "note": "x"}, tmp_path / "c.safetensors",
                                                half=False)  # fmt: skip
    assert json.loads(report.read_text())["note"] == "x"
    loaded = load_attribute_classifier(weights)
    assert not any(p.requires_grad for p in loaded.parameters())
    with torch.no_grad():
        torch.testing.assert_close(loaded.features(real.images[:20]), tiny.features(real.images[:20]))


def test_training_runs_end_to_end_on_a_tiny_budget(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    model, metrics = train_attribute_classifier(
        n_train=64, steps=3, batch_size=16, width=4, feature_dim=8, progress=False,
        eval_sets={"test": dict(n=32, split="test", seed=1)},
    )  # fmt: skip
    assert not model.training
    assert set(metrics["accuracy"]["test"]) == {*ATTRIBUTES, "n"}
    assert metrics["n_params"] == sum(p.numel() for p in model.parameters())
    assert metrics["config"]["model"] == "AttributeClassifier" and metrics["config"]["training"]["steps"] == 3
