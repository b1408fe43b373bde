"""Honest quality meters for generated product shots: does the picture show what the prompt asked, and do the pictures
look like the real catalogue?

Everything here is measured with a small :class:`AttributeClassifier` trained on the synthetic catalogue
(:class:`~dalle2_edu.datasets.catalogue.ProductCatalogue`), never with a pretrained Inception network (this project
downloads nothing). The classifier reads all four attributes of a product shot with >= 99% accuracy on real pictures
it never saw, including the held-out (category, colour) pairs such as a green mug. Its weights ship in
``data/checkpoints/attribute_classifier.safetensors``, with a report of how they were trained and graded in
``attribute_classifier.json``; :data:`TRAIN_COMMAND` trains them again (10 minutes on two free CPU cores;
half an hour when they are shared).

Trained on the train split as it is, the classifier would fail on exactly the pictures that matter most: it never
sees a green mug, learns "green, so not a mug", and calls four in five held-out products by the wrong category. Two
colour augmentations fix this without showing it a single held-out picture: :func:`swap_colours` repaints products in
another catalogue colour (exactly as the catalogue would draw them, with the colour label changed to match) and
:func:`recolour` gives them random hues (the colour head does not learn from those).

* :func:`prompt_fidelity`: the fraction of generated pictures whose category, colour, pattern and background the
  classifier reads as the ones the prompt asked for. The classifier's own error on real pictures (< 1%) is the
  floor of this meter's uncertainty.
* :func:`fid` (Fréchet distance) and :func:`kid` (kernel inception distance) compare two sets of pictures through
  the classifier's penultimate features, exactly as FID and KID do with Inception's pool features. Their numbers are
  on this classifier's own scale, not comparable with published FIDs; :func:`fid_floor` gives the FID between two
  samples of *real* pictures of the same size, which is what a perfect generator would score. Report it beside every
  FID, with the number of pictures: FID is biased upwards for small samples, KID is not.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from dalle2_edu.checkpoint import CheckpointError, load_weights
from dalle2_edu.datasets.catalogue import (
    _LIGHT_COLOURS,  # which colours get darker (not lighter) stripes and dots
    COLOUR_NAMES,
    COLOURS,
    LABEL_COLUMNS,
    PATTERNS,
    ProductCatalogue,
)
from dalle2_edu.nets.classifier import ATTRIBUTES, AttributeClassifier, to_model_input  # noqa: F401 (re-exported)
from dalle2_edu.train import Trainer
from dalle2_edu.utils import data_dir, set_seed

CLASSIFIER_NAME = "attribute_classifier"
TRAIN_COMMAND = "python -m dalle2_edu train classifier --recipe full"
"""The shell command that trains the shipped classifier and writes its weights and report (run from the repo root)."""

# The real pictures the classifier is graded on: never seen in training (other splits, other seed).
EVAL_SETS: dict[str, dict] = {
    "test": dict(n=2000, split="test", seed=1),
    "heldout": dict(n=1000, split="heldout", seed=1),
}


def default_classifier_path() -> Path:
    """``data/checkpoints/attribute_classifier.safetensors`` under :func:`dalle2_edu.utils.data_dir`."""
    return data_dir() / "checkpoints" / f"{CLASSIFIER_NAME}.safetensors"


# ----------------------------------------------------------------------------------------------------------------------
# the classifier


def augment(images: torch.Tensor, max_shift: float = 2.0, noise: float = 0.04) -> torch.Tensor:
    """Light, label-preserving augmentation of a training batch, drawn from torch's global generator.

    Each picture is mirrored left-right with probability 1/2 (no attribute depends on the side a product faces),
    shifted by up to ``max_shift`` pixels in each direction (bilinear, so sub-pixel shifts also blur a little, and
    edges are extended), and given Gaussian noise of a standard deviation drawn uniformly from [0, ``noise``]. The
    blur and noise resemble what a diffusion model's samples have and real catalogue pictures do not.
    Pictures are never turned upside down: the wooden table is always at the bottom.

    :param images: (N, 3, 32, 32) float in [-1, 1] (or uint8).
    :param max_shift: largest shift, in pixels.
    :param noise: largest noise standard deviation, on the [-1, 1] scale.
    :return: (N, 3, 32, 32) float32.
    """
    x = to_model_input(images)
    n, size = x.shape[0], x.shape[-1]
    flip = torch.where(torch.rand(n) < 0.5, -1.0, 1.0)
    shift = (torch.rand(n, 2) * 2 - 1) * (2 * max_shift / size)  # pixels -> grid units ([-1, 1] spans the picture)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1], theta[:, :, 2] = flip, 1.0, shift
    grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    sigma = torch.rand(n, 1, 1, 1, device=x.device) * noise
    return x + sigma * torch.randn_like(x)


def recolour(images: torch.Tensor, min_saturation: float = 0.5, max_saturation: float = 1.5) -> torch.Tensor:
    """Give every picture a random hue and saturation, leaving greys (white and grey backgrounds, black) as they are.

    Each pixel's colour is rotated about the grey axis r = g = b of RGB space by an angle drawn uniformly from
    [0, 2 pi) (a hue rotation: red -> green -> blue -> red at 120 degrees apart), and its distance from that axis is
    scaled by a factor drawn from [``min_saturation``, ``max_saturation``]. Drawn from torch's global generator.

    This is how the classifier learns to name a shape it has never seen in some colour: the train split holds no
    green mug, so a classifier trained on it alone learns "green, so not a mug" and calls a green mug a handbag.
    Recoloured pictures show mugs (and every other category) in every hue, but their colour label no longer holds,
    so :func:`classifier_loss` leaves them out of the colour head's loss.

    :param images: (N, 3, H, W) float in [-1, 1].
    :param min_saturation: smallest saturation factor.
    :param max_saturation: largest saturation factor.
    :return: (N, 3, H, W) float in [-1, 1] (clamped).
    """
    n = images.shape[0]
    axis = torch.full((3,), 3**-0.5)
    along = torch.outer(axis, axis)  # projection onto the grey axis
    cross = torch.tensor([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]])
    angle = torch.rand(n) * 2 * torch.pi
    saturation = min_saturation + (max_saturation - min_saturation) * torch.rand(n)
    cos, sin = angle.cos()[:, None, None], angle.sin()[:, None, None]
    rotation = cos * torch.eye(3) + sin * cross + (1 - cos) * along  # Rodrigues' formula, (N, 3, 3)
    transform = along + saturation[:, None, None] * (rotation - along)  # scale only the part off the grey axis
    out = torch.einsum("nij,njhw->nihw", transform.to(images.device), images)
    return out.clamp(-1, 1)


def colour_swap_maps() -> torch.Tensor:
    """Linear colour maps that repaint a product from one catalogue colour into another, leaving greys alone.

    The catalogue paints a product as its colour centre times a shading factor, mixed with greys (lighter pattern
    tones, anti-aliased edges on white and grey backgrounds); every step is linear in the colour or a mix with a grey.
    So a 3x3 map ``M`` that takes centre ``a`` to centre ``b`` and every grey to itself repaints a drawn colour-``a``
    product as the colour-``b`` one the catalogue would draw (to within about 3 levels of 255 on white and grey
    backgrounds; a wooden table gets tinted). With ``g`` the unit grey direction and ``w`` the part of ``c_a``
    across it, scaled so that ``w . c_a = 1``: ``M = I + (c_b - c_a) w^T`` (so ``M g = g`` and ``M c_a = c_b``).
    The same map works on [-1, 1] pixels, since it fixes the grey (1, 1, 1).

    Black lies on the grey axis and cannot be told apart from the greys: a black product is never repainted (its
    maps are the identity), and :func:`swap_colours` keeps its label black.

    :return: float32 (8, 8, 3, 3): ``maps[a, b]`` repaints colour index ``a`` as colour index ``b``.
    """
    centres = torch.tensor([COLOURS[name] for name in COLOUR_NAMES], dtype=torch.float64)  # (8, 3), 0..255
    grey = torch.full((3,), 3**-0.5, dtype=torch.float64)
    maps = torch.eye(3, dtype=torch.float64).repeat(len(centres), len(centres), 1, 1)
    for a, c_a in enumerate(centres):
        across = c_a - (c_a @ grey) * grey
        if across.norm() < 10:  # black
            continue
        w = across / (across @ c_a)
        for b, c_b in enumerate(centres):
            maps[a, b] += torch.outer(c_b - c_a, w)
    return maps.float()


_SWAP_MAPS = colour_swap_maps()
_REPAINTABLE = (_SWAP_MAPS != torch.eye(3)).flatten(1).any(dim=1)  # (8,) bool: False for black


def _same_tone_colours() -> torch.Tensor:
    """(8, 8) bool: ``[a, b]`` is True when colours a and b draw their stripes and dots in the same way.

    The catalogue draws the patterns of its light colours (orange, yellow, pink) darker than the product and those of
    the others lighter; a linear repaint cannot turn one kind into the other.
    """
    light = torch.tensor([name in _LIGHT_COLOURS for name in COLOUR_NAMES])
    return light[:, None] == light[None, :]


_SAME_TONE = _same_tone_colours()


def swap_colours(
    images: torch.Tensor, labels: torch.Tensor, target: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Repaint every product in another catalogue colour (:func:`colour_swap_maps`), and relabel it.

    Together with :func:`recolour` this teaches the classifier to name colours and categories independently: the
    train split holds no red sneaker, so a classifier trained on it alone learns "a sneaker, so not red" and calls a
    red sneaker pink. Repainted pictures show every category in every colour, with the right colour label.

    Plain products are repainted in any of the eight colours, striped and dotted ones only in a colour whose pattern
    tone is drawn the same way (:func:`_same_tone_colours`), so that every repainted picture is one the catalogue
    could have drawn. Black products stay black.

    :param images: (N, 3, H, W) float in [-1, 1], catalogue pictures.
    :param labels: int64 (N, 4) their labels (columns :data:`LABEL_COLUMNS`).
    :param target: int64 (N,) colour indices to repaint in, taken as given; default: drawn uniformly from the
        allowed colours with torch's global generator.
    :return: ``(images (N, 3, H, W) float in [-1, 1], labels int64 (N, 4))``: the repainted pictures and their labels
        with the new colours.
    """
    colour_col, pattern_col = LABEL_COLUMNS.index("colour"), LABEL_COLUMNS.index("pattern")
    colours = labels[:, colour_col]
    if target is None:
        plain = labels[:, pattern_col] == PATTERNS.index("plain")
        allowed = _SAME_TONE.to(labels.device)[colours] | plain[:, None]  # (N, 8)
        target = torch.multinomial(allowed.float(), 1).squeeze(1) if len(labels) else colours
    target = torch.where(_REPAINTABLE.to(labels.device)[colours], target, colours)
    maps = _SWAP_MAPS.to(images.device)[colours, target]  # (N, 3, 3)
    labels = labels.clone()
    labels[:, colour_col] = target
    return torch.einsum("nij,njhw->nihw", maps, images).clamp(-1, 1), labels


SWAPPED_FRACTION, RECOLOURED_FRACTION = 0.5, 0.25
"""Fractions of each training batch that :func:`classifier_loss` repaints (:func:`swap_colours`) and recolours
(:func:`recolour`); the rest is shown in its own colours."""


def classifier_loss(model: AttributeClassifier, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The training loss: the sum of the four heads' cross-entropies on an augmented batch.

    Every picture is shifted, maybe mirrored, and noised (:func:`augment`); :data:`SWAPPED_FRACTION` of them are
    repainted in another catalogue colour (:func:`swap_colours`, colour label changed to match) and
    :data:`RECOLOURED_FRACTION` given a random hue (:func:`recolour`; these do not count in the colour head's loss).

    :param model: the classifier being trained.
    :param batch: ``(images uint8 (B, 3, 32, 32), labels int64 (B, 4))``.
    :return: ``dict(loss=..., ce_category=..., ce_colour=..., ce_pattern=..., ce_background=...)`` (nats per picture).
    """
    images, labels = batch
    with torch.autocast(images.device.type, enabled=False):  # the augmentations' colour maths in fp32 under any amp
        x, labels = augment(images), labels.clone()
        which = torch.rand(len(x), device=x.device)
        swapped = which < SWAPPED_FRACTION
        recoloured = (which >= SWAPPED_FRACTION) & (which < SWAPPED_FRACTION + RECOLOURED_FRACTION)
        x[swapped], labels[swapped] = swap_colours(x[swapped], labels[swapped])
        x[recoloured] = recolour(x[recoloured])
    logits = model(x)
    ce = {}
    for j, name in enumerate(ATTRIBUTES):
        keep = ~recoloured if name == "colour" else torch.ones_like(recoloured)
        if keep.any():
            ce[f"ce_{name}"] = F.cross_entropy(logits[name][keep], labels[keep, j])
        else:  # a (tiny) batch recoloured throughout: nothing to learn about colour from it
            ce[f"ce_{name}"] = 0 * logits[name].sum()
    return {"loss": sum(ce.values()), **ce}


def train_attribute_classifier(
    n_train: int = 20000,
    steps: int = 1500,
    *,
    batch_size: int = 128,
    lr: float = 2e-3,
    width: int = 32,
    feature_dim: int = 128,
    seed: int = 0,
    eval_sets: dict[str, dict] | None = None,
    progress: bool = True,
    out_dir=None,
    **trainer_kwargs,
) -> tuple[AttributeClassifier, dict]:
    """Train an :class:`AttributeClassifier` on the catalogue's train split and grade it on real pictures it never saw.

    AdamW with a cosine learning-rate decay, through the project's :class:`~dalle2_edu.train.Trainer`; the EMA
    weights are returned. Grading uses :data:`EVAL_SETS`: 2000 "test" pictures (the training distribution, other
    items) and 1000 "heldout" pictures (only the (category, colour) pairs never seen in training).

    :param n_train: training pictures (32x32, split "train", seed 0; cached under ``data/cache``).
    :param steps: optimizer updates.
    :param batch_size: pictures per update.
    :param lr: peak learning rate.
    :param width: the classifier's first-stage channels.
    :param feature_dim: the classifier's feature size.
    :param seed: seeds the initial weights, the batches and the augmentation.
    :param eval_sets: the real picture sets to grade on; default :data:`EVAL_SETS`.
    :param progress: show progress bars.
    :param out_dir: resumable checkpoints go here; None keeps nothing.
    :param trainer_kwargs: more :class:`~dalle2_edu.train.Trainer` arguments (they win over the defaults above).
    :return: ``(model, metrics)``: the EMA classifier in eval mode on the CPU, and ``dict(accuracy={split: {attribute:
        fraction}}, train_seconds=... (wall clock), train_cpu_seconds=... (this process, all threads), n_params=...,
        config=..., final_loss=...)``.
    """
    set_seed(seed)
    model = AttributeClassifier(width=width, feature_dim=feature_dim)
    train = ProductCatalogue(n_train, split="train", seed=0, resolution=32, progress=progress)
    kwargs = dict(weight_decay=0.05, warmup_steps=min(200, steps // 10), lr_schedule="cosine", total_steps=steps,
                  ema_decay=0.998, device="cpu", ckpt_every=250 if out_dir else None)  # fmt: skip
    kwargs.update(trainer_kwargs)
    trainer = Trainer(
        model, classifier_loss, (train.images, train.labels), batch_size=batch_size, lr=lr, seed=seed,
        config=model.config, progress=progress, out_dir=out_dir, **kwargs,
    )  # fmt: skip
    start, start_cpu = time.perf_counter(), time.process_time()
    trainer.fit(steps, resume=out_dir is not None)
    train_seconds, train_cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
    classifier = trainer.ema_model.cpu().eval()
    config = {
        **model.config,
        "training": dict(n_train=n_train, steps=steps, batch_size=batch_size, lr=lr, seed=seed),
        "trainer": trainer.config["trainer"],
    }
    metrics = dict(
        accuracy=grade_classifier(classifier, eval_sets, progress=progress),
        train_seconds=round(train_seconds, 1),
        train_cpu_seconds=round(train_cpu_seconds, 1),
        n_params=sum(p.numel() for p in classifier.parameters()),
        config=config,
        final_loss=trainer.history["loss"][-1] if trainer.history.get("loss") else None,
    )
    return classifier, metrics


def grade_classifier(
    classifier: AttributeClassifier, eval_sets: dict[str, dict] | None = None, progress: bool = False
) -> dict[str, dict[str, float]]:
    """Per-attribute accuracy of ``classifier`` on real catalogue pictures it never saw.

    :param classifier: the classifier to grade.
    :param eval_sets: name -> :class:`ProductCatalogue` arguments (``n``, ``split``, ``seed``) of 32x32 picture
        sets; default :data:`EVAL_SETS`.
    :param progress: show progress bars.
    :return: ``{set name: {attribute: fraction correct, "n": pictures}}``.
    """
    grades = {}
    for name, spec in (EVAL_SETS if eval_sets is None else eval_sets).items():
        real = ProductCatalogue(resolution=32, progress=progress, **spec)
        grades[name] = prompt_fidelity(real.images, real.labels, classifier, progress=progress)
    return grades


# ----------------------------------------------------------------------------------------------------------------------
# shipping and loading


def save_attribute_classifier(
    classifier: AttributeClassifier, report: dict, path: str | os.PathLike | None = None, *, half: bool = True
) -> tuple[Path, Path]:
    """Write the weights (safetensors) and a JSON report beside them (same name, ``.json``).

    :param classifier: the trained classifier.
    :param report: JSON-serialisable facts to keep with it (accuracies, training time, the command, the date).
    :param path: the ``.safetensors`` file; default :func:`default_classifier_path`.
    :param half: store the weights as float16 (half the size).
    :return: ``(weights path, report path)``.
    """
    from dalle2_edu.checkpoint import save_model

    path = Path(path) if path is not None else default_classifier_path()
    save_model(path, classifier, "attribute_classifier", report, half, config=report.get("config", classifier.config))
    return path, path.with_suffix(".json")


def load_attribute_classifier(
    path: str | os.PathLike | None = None, device: str | torch.device = "cpu"
) -> AttributeClassifier:
    """Load the shipped (or any saved) :class:`AttributeClassifier`, in eval mode, float32, gradients off.

    :param path: a ``.safetensors`` file written by :func:`save_attribute_classifier`; default
        ``data/checkpoints/attribute_classifier.safetensors`` (:func:`default_classifier_path`).
    :param device: where to put it.
    :raises FileNotFoundError: no file there (the message says how to train one).
    :raises CheckpointError: the file is corrupt, or holds another model, or weights that do not fit.
    """
    path = Path(path) if path is not None else default_classifier_path()
    if not path.is_file():
        raise FileNotFoundError(
            f"No attribute classifier at '{path}'. It ships with the project in data/checkpoints/; to train it again "
            f"(10 to 30 minutes on two CPU cores) run, from the repository root:\n    {TRAIN_COMMAND}"
        )
    try:
        state, config = load_weights(path)
    except CheckpointError as err:
        raise CheckpointError(f"{err} To train the attribute classifier again: {TRAIN_COMMAND}") from err
    config = config.get("attribute_classifier", config)  # files before the registry keep the config flat
    if config.get("model") != "AttributeClassifier":
        raise CheckpointError(
            f"'{path}' does not hold an AttributeClassifier (its config says model={config.get('model')!r}). "
            f"Pass the attribute classifier's file, or train one with: {TRAIN_COMMAND}"
        )
    model = AttributeClassifier(width=config.get("width", 32), feature_dim=config.get("feature_dim", 128))
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(
            f"The weights in '{path}' do not fit an AttributeClassifier with config {config}:\n{err}"
        ) from err
    return model.float().to(device).eval().requires_grad_(False)


def build_attribute_classifier(config: dict) -> AttributeClassifier:
    """An untrained classifier of a saved config (the checkpoint registry's builder)."""
    return AttributeClassifier(width=config.get("width", 32), feature_dim=config.get("feature_dim", 128))


_LOADED: dict[Path, AttributeClassifier] = {}


def _classifier_or_default(classifier: AttributeClassifier | None) -> AttributeClassifier:
    """``classifier`` itself, or the shipped one (loaded once per process)."""
    if classifier is not None:
        return classifier
    path = default_classifier_path()
    if path not in _LOADED:
        _LOADED[path] = load_attribute_classifier(path)
    return _LOADED[path]


# ----------------------------------------------------------------------------------------------------------------------
# prompt fidelity


def _attribute_table(attributes: torch.Tensor | Sequence[dict], n: int) -> torch.Tensor:
    """Asked attributes as int64 (N, 4), columns :data:`LABEL_COLUMNS`, -1 where the prompt did not ask."""
    if isinstance(attributes, torch.Tensor):
        if attributes.ndim != 2 or attributes.shape[1] != len(ATTRIBUTES):
            raise ValueError(
                f"attributes must be a (N, 4) integer tensor (columns {list(ATTRIBUTES)}), "
                f"got {tuple(attributes.shape)}"
            )
        if attributes.is_floating_point() or attributes.dtype == torch.bool:
            raise ValueError(f"attributes must hold integer indices, got dtype {attributes.dtype}")
        table = attributes.long().cpu()
        for j, (name, values) in enumerate(ATTRIBUTES.items()):
            bad = (table[:, j] < -1) | (table[:, j] >= len(values))
            if bad.any():
                first = int(bad.nonzero()[0, 0])
                raise ValueError(
                    f"attributes[{first}]: {name} index {int(table[first, j])} out of range 0..{len(values) - 1} "
                    "(-1: not asked)"
                )
    elif isinstance(attributes, Sequence) and not isinstance(attributes, str):
        table = torch.full((len(attributes), len(ATTRIBUTES)), -1, dtype=torch.long)
        for i, asked in enumerate(attributes):
            if not isinstance(asked, dict):
                raise ValueError(f"attributes[{i}] must be a dict like {{'colour': 'red'}}, got {type(asked).__name__}")
            for name, value in asked.items():
                if name not in ATTRIBUTES:
                    raise ValueError(f"attributes[{i}] has unknown attribute {name!r}; choose from {list(ATTRIBUTES)}")
                table[i, LABEL_COLUMNS.index(name)] = _value_index(name, value, i)
    else:
        raise ValueError(f"attributes must be a (N, 4) tensor or a list of dicts, got {type(attributes).__name__}")
    if len(table) != n:
        raise ValueError(f"{n} images but {len(table)} attribute rows; give one row per image")
    return table


def _value_index(name: str, value: str | int, i: int) -> int:
    values = ATTRIBUTES[name]
    if isinstance(value, str):
        if value not in values:
            raise ValueError(f"attributes[{i}]: unknown {name} {value!r}; choose one of {list(values)}")
        return values.index(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(values):
        return value
    raise ValueError(f"attributes[{i}]: {name} must be a name from {list(values)} or an index, got {value!r}")


@torch.no_grad()
def _in_batches(fn, images: torch.Tensor, batch_size: int, progress: bool, desc: str) -> torch.Tensor:
    """``fn`` applied to ``images`` in batches, results concatenated along the first dimension."""
    if len(images) == 0:
        raise ValueError("no images given")
    starts = range(0, len(images), batch_size)
    bar = tqdm(starts, desc=desc, disable=not progress or len(starts) < 2, leave=False, unit="batch")
    return torch.cat([fn(images[s : s + batch_size]).cpu() for s in bar])


def prompt_fidelity(
    images: torch.Tensor,
    attributes: torch.Tensor | Sequence[dict],
    classifier: AttributeClassifier | None = None,
    *,
    batch_size: int = 500,
    progress: bool = False,
) -> dict[str, float]:
    """Per-attribute accuracy of generated pictures against what their prompts asked for, read by the classifier.

    :param images: (N, 3, H, H) pictures, H = 32 or 64, float in [-1, 1] or uint8.
    :param attributes: what each prompt asked: an int64 (N, 4) tensor with columns category, colour, pattern,
        background (the catalogue's ``labels``; -1 where a prompt did not ask), or a list of N dicts of names such
        as ``{"category": "mug", "colour": "red"}`` (any subset of the four keys; missing keys are not scored).
    :param classifier: default: the shipped classifier (:func:`load_attribute_classifier`).
    :param batch_size: pictures per forward pass.
    :param progress: show a progress bar.
    :return: e.g. ``{"category": 0.95, "colour": 0.9, "n": 200}``: for every attribute that at least one prompt
        asked for, the fraction of those prompts' pictures that show it; ``n`` is the number of pictures.
    :raises ValueError: wrong image shape, a different number of attribute rows and pictures, an unknown attribute
        or value name.
    """
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a tensor of shape (N, 3, H, W), got {shape}")
    to_model_input(images[:0])  # checks channels and size before any work
    asked = _attribute_table(attributes, len(images))
    model = _classifier_or_default(classifier)
    device = next(model.parameters()).device
    predicted = _in_batches(lambda x: model.predict(x.to(device)), images, batch_size, progress, "reading attributes")
    result: dict[str, float] = {}
    for j, name in enumerate(ATTRIBUTES):
        rows = asked[:, j] >= 0
        if rows.any():
            result[name] = (predicted[rows, j] == asked[rows, j]).float().mean().item()
    result["n"] = len(images)
    return result


# ----------------------------------------------------------------------------------------------------------------------
# FID and KID on the classifier's features


def extract_features(
    images: torch.Tensor,
    classifier: AttributeClassifier | None = None,
    *,
    batch_size: int = 500,
    progress: bool = False,
) -> torch.Tensor:
    """The classifier's penultimate features of a set of pictures.

    :param images: (N, 3, H, H), H = 32 or 64, float in [-1, 1] or uint8.
    :param classifier: default: the shipped classifier.
    :param batch_size: pictures per forward pass.
    :param progress: show a progress bar.
    :return: float32 (N, F) on the CPU (F = 128 for the shipped classifier).
    """
    to_model_input(images[:0])
    model = _classifier_or_default(classifier)
    device = next(model.parameters()).device
    return _in_batches(lambda x: model.features(x.to(device)), images, batch_size, progress, "extracting features")


def _as_features(x: torch.Tensor, classifier: AttributeClassifier | None, progress: bool) -> torch.Tensor:
    """Features (N, F) as given, or extracted from pictures (N, 3, H, H)."""
    if isinstance(x, torch.Tensor) and x.ndim == 2:
        return x
    return extract_features(x, classifier, progress=progress)


def feature_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and covariance of a feature set: the Gaussian that FID fits to it.

    :param features: (N, F), N >= 2.
    :return: ``(mu (F,), sigma (F, F))`` in float64; ``sigma`` is the unbiased sample covariance (divides by N - 1).
    """
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"features must be (N, F) with N >= 2, got {tuple(features.shape)}")
    x = features.double()
    mu = x.mean(dim=0)
    centred = x - mu
    sigma = centred.T @ centred / (len(x) - 1)
    return mu, sigma


def sqrtm_psd(a: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix, through its eigen-decomposition.

    ``a = V diag(l) V^T`` gives ``sqrt(a) = V diag(sqrt(l)) V^T``; eigenvalues that rounding made slightly negative
    are taken as 0.

    :param a: (F, F) symmetric PSD matrix.
    :return: (F, F) symmetric PSD matrix ``s`` with ``s @ s == a`` (to rounding), in ``a``'s dtype.
    """
    eigenvalues, vectors = torch.linalg.eigh((a + a.T) / 2)
    return (vectors * eigenvalues.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor) -> float:
    """Fréchet (2-Wasserstein) distance squared between two Gaussians: the "D" of FID.

    ``|mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr(sqrt(sigma1 sigma2))``. The product ``sigma1 sigma2`` is not
    symmetric, but it has the same eigenvalues as the symmetric PSD ``s sigma2 s`` with ``s = sqrt(sigma1)``, so
    ``tr(sqrt(sigma1 sigma2))`` is the sum of the square roots of that matrix's eigenvalues: two symmetric
    eigen-decompositions in float64, with no complex numbers and no iterative square root.

    :param mu1: (F,) mean of the first Gaussian.
    :param sigma1: (F, F) covariance of the first Gaussian (symmetric PSD).
    :param mu2: (F,) mean of the second.
    :param sigma2: (F, F) covariance of the second.
    :return: the distance, in squared feature units (>= 0 up to rounding).
    """
    mu1, mu2, sigma1, sigma2 = (torch.as_tensor(t).double() for t in (mu1, mu2, sigma1, sigma2))
    if mu1.shape != mu2.shape or mu1.ndim != 1:
        raise ValueError(f"means must both be (F,), got {tuple(mu1.shape)} and {tuple(mu2.shape)}")
    f = mu1.shape[0]
    if sigma1.shape != (f, f) or sigma2.shape != (f, f):
        raise ValueError(f"covariances must both be ({f}, {f}), got {tuple(sigma1.shape)} and {tuple(sigma2.shape)}")
    root1 = sqrtm_psd(sigma1)
    middle = root1 @ sigma2 @ root1
    trace_root_product = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    distance = (mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * trace_root_product
    return float(distance)


def fid(
    images_a: torch.Tensor,
    images_b: torch.Tensor,
    classifier: AttributeClassifier | None = None,
    *,
    progress: bool = False,
) -> float:
    """Fréchet distance between two picture sets, on the attribute classifier's penultimate features.

    Biased upwards for small sets (the covariances are estimated): compare FIDs only at equal set sizes, and report
    :func:`fid_floor` at that size beside them. Use at least a few times F (128) pictures per set.

    :param images_a: (N, 3, H, H) pictures (H = 32 or 64, float in [-1, 1] or uint8), or their features (N, F).
    :param images_b: (M, 3, H, H) pictures, or features (M, F).
    :param classifier: default: the shipped classifier.
    :param progress: show progress bars.
    :return: FID, in squared feature units; 0 for identical sets.
    """
    mu_a, sigma_a = feature_stats(_as_features(images_a, classifier, progress))
    mu_b, sigma_b = feature_stats(_as_features(images_b, classifier, progress))
    return frechet_distance(mu_a, sigma_a, mu_b, sigma_b)


def polynomial_mmd2(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Unbiased estimate of MMD^2 between the samples ``x`` and ``y`` with the kernel ``k(a, b) = (a.b / d + 1)^3``.

    ``mean over i != j of k(x_i, x_j) + mean over i != j of k(y_i, y_j) - 2 mean over all i, j of k(x_i, y_j)``:
    leaving out the diagonals (each point with itself) makes the expectation exactly MMD^2, so it is 0 on average
    for two samples of one distribution and can come out slightly negative.

    :param x: (m, d) features, m >= 2.
    :param y: (n, d) features, n >= 2.
    :return: scalar float64 tensor.
    """
    d = x.shape[1]
    k_xx = (x @ x.T / d + 1) ** 3
    k_yy = (y @ y.T / d + 1) ** 3
    k_xy = (x @ y.T / d + 1) ** 3
    m, n = len(x), len(y)
    within_x = (k_xx.sum() - k_xx.diagonal().sum()) / (m * (m - 1))
    within_y = (k_yy.sum() - k_yy.diagonal().sum()) / (n * (n - 1))
    return within_x + within_y - 2 * k_xy.mean()


def kid(
    images_a: torch.Tensor,
    images_b: torch.Tensor,
    classifier: AttributeClassifier | None = None,
    *,
    subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
    progress: bool = False,
) -> tuple[float, float]:
    """Kernel inception distance: unbiased polynomial-kernel MMD^2 on the classifier's features, over random subsets.

    Unlike FID it is unbiased, so it is comparable across set sizes and is about 0 (within its spread, possibly
    negative) for two samples of one distribution.

    :param images_a: (N, 3, H, H) pictures (H = 32 or 64, float in [-1, 1] or uint8), or their features (N, F).
    :param images_b: (M, 3, H, H) pictures, or features (M, F).
    :param classifier: default: the shipped classifier.
    :param subsets: how many pairs of subsets to average over.
    :param subset_size: pictures per subset, drawn without replacement; capped at ``min(N, M)``.
    :param seed: seeds the choice of subsets.
    :param progress: show progress bars.
    :return: ``(mean, std)`` of MMD^2 over the subsets, in the kernel's units.
    """
    a = _as_features(images_a, classifier, progress).double()
    b = _as_features(images_b, classifier, progress).double()
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sizes differ: {a.shape[1]} and {b.shape[1]}")
    size = min(subset_size, len(a), len(b))
    if size < 2:
        raise ValueError(f"KID needs at least 2 pictures per set, got {len(a)} and {len(b)}")
    generator = torch.Generator().manual_seed(seed)
    values = []
    for _ in tqdm(range(subsets), desc="KID subsets", disable=not progress, leave=False):
        pick_a = torch.randperm(len(a), generator=generator)[:size]
        pick_b = torch.randperm(len(b), generator=generator)[:size]
        values.append(polynomial_mmd2(a[pick_a], b[pick_b]))
    values = torch.stack(values)
    return float(values.mean()), float(values.std(unbiased=False)) if len(values) > 1 else 0.0


def _real_pairs(n: int, resolution: int, progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` train pictures (seed 0, what the generators learn from) and ``n`` test pictures (seed 1)."""
    train = ProductCatalogue(n, split="train", seed=0, resolution=resolution, progress=progress)
    test = ProductCatalogue(n, split="test", seed=1, resolution=resolution, progress=progress)
    return train.images, test.images


def fid_floor(
    n: int = 2000, *, resolution: int = 32, classifier: AttributeClassifier | None = None, progress: bool = False
) -> float:
    """The FID of real pictures against other real pictures: what a perfect generator would score with ``n`` pictures.

    FID(``n`` "train" pictures, seed 0; ``n`` "test" pictures, seed 1). Report it beside every FID measured with the
    same ``n``; it shrinks roughly like 1/n.

    :param n: pictures per set.
    :param resolution: 32 or 64.
    :param classifier: default: the shipped classifier.
    :param progress: show progress bars.
    """
    train, test = _real_pairs(n, resolution, progress)
    return fid(train, test, classifier, progress=progress)


def kid_floor(
    n: int = 2000,
    *,
    resolution: int = 32,
    classifier: AttributeClassifier | None = None,
    subset_size: int = 1000,
    progress: bool = False,
) -> tuple[float, float]:
    """KID of real "train" pictures against real "test" pictures (as :func:`fid_floor`): about 0 within its std.

    :param n: pictures per set.
    :param resolution: 32 or 64.
    :param classifier: default: the shipped classifier.
    :param subset_size: pictures per KID subset.
    :param progress: show progress bars.
    :return: ``(mean, std)``.
    """
    train, test = _real_pairs(n, resolution, progress)
    return kid(train, test, classifier, subset_size=subset_size, progress=progress)


# ----------------------------------------------------------------------------------------------------------------------
# Grain in flat backgrounds

FLAT_BACKGROUNDS: tuple[str, ...] = ("white", "light grey")
"""The catalogue's backgrounds that are smooth studio sweeps; wood has real fine detail (its grain lines)."""

CORNER_FRACTION = 1 / 8
"""The side of each corner square :func:`background_grain` reads, as a fraction of the picture's side. Products sit
well inside the frame: on real catalogue pictures these squares hold background only, but for the 1% of pictures
where a large product reaches into one, covering under 0.01% of their pixels (``tests/test_grain.py``)."""


def corner_squares(images: torch.Tensor, fraction: float = CORNER_FRACTION) -> torch.Tensor:
    """The four corner squares of each picture, side ``max(3, round(fraction * H))``: (B, 4, C, side, side)."""
    x = _float_pictures(images)
    side = max(3, round(fraction * x.shape[-1]))
    if 2 * side > min(x.shape[-2:]):
        raise ValueError(f"pictures of {tuple(x.shape[-2:])} are too small for corner squares of side {side}")
    rows, cols = (slice(0, side), slice(-side, None)), (slice(0, side), slice(-side, None))
    return torch.stack([x[:, :, r, c] for r in rows for c in cols], dim=1)


def background_grain(images: torch.Tensor, fraction: float = CORNER_FRACTION) -> torch.Tensor:
    """Fine detail where there should be none: the mean squared 5-point Laplacian inside each picture's four corner
    squares (interior pixels of each square, every channel), in [-1, 1] pixel units squared.

    A smooth studio background scores near 0 (real catalogue pictures: only their faint fixed noise and 8-bit
    rounding); speckle left by a sampler or an upsampler raises it. Compare pictures asked for a flat background
    (:data:`FLAT_BACKGROUNDS`) with real pictures of the same size and backgrounds: :func:`grain_ratio`.

    :param images: (B, 3, H, W) in [-1, 1] or uint8. :return: (B,).
    """
    from dalle2_edu.stages.upsampler import laplacian_energy

    squares = corner_squares(images, fraction)
    B, K, C, s, _ = squares.shape
    return laplacian_energy(squares.reshape(B * K, C, s, s)).view(B, K).mean(dim=1)  # squares of equal size


def grain_ratio(
    images: torch.Tensor, backgrounds: Sequence[str], real: torch.Tensor, real_backgrounds: Sequence[str]
) -> dict[str, float]:
    """:func:`background_grain` of generated pictures against real ones, over the pictures whose background is flat.

    :param images: (N, 3, H, W) generated pictures; ``backgrounds``: the background each one's prompt asked for.
    :param real: (M, 3, H, W) real pictures of the same size; ``real_backgrounds``: theirs.
    :return: ``{"generated": ..., "real": ..., "ratio": ..., "n": ..., "n_real": ...}``: the mean grain of each set
        and their ratio (1: as smooth as real pictures; 2: twice their high-frequency energy).
    :raises ValueError: sizes differ, or either set has no picture on a flat background.
    """
    if images.shape[-2:] != real.shape[-2:]:
        raise ValueError(f"generated pictures are {tuple(images.shape[-2:])} but real ones {tuple(real.shape[-2:])}: "
                         "compare pictures of one size")  # fmt: skip
    means = {}
    for name, x, bgs in (("generated", images, backgrounds), ("real", real, real_backgrounds)):
        if len(bgs) != len(x):
            raise ValueError(f"{len(x)} {name} pictures but {len(bgs)} backgrounds; give one background per picture")
        keep = torch.tensor([b in FLAT_BACKGROUNDS for b in bgs], dtype=torch.bool)
        if not keep.any():
            raise ValueError(f"none of the {name} pictures is on a flat background ({', '.join(FLAT_BACKGROUNDS)})")
        means[name] = (background_grain(x[keep]).mean().item(), int(keep.sum()))
    (gen, n), (ref, n_real) = means["generated"], means["real"]
    return {"generated": gen, "real": ref, "ratio": gen / ref, "n": n, "n_real": n_real}


def _float_pictures(images: torch.Tensor) -> torch.Tensor:
    from dalle2_edu.images import to_float

    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a tensor of shape (N, C, H, W), got {shape}")
    return to_float(images).float()
