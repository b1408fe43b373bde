"""Every shipped checkpoint's training settings, in one place.

A *recipe* names one setting per stage: ``full`` made the shipped checkpoints, ``fast`` retrains the pipeline from
scratch on a laptop CPU in minutes, ``gpu`` is sized for one large GPU, and ``tiny`` is a smoke test (seconds; used by
the tests and the torchrun check). The stage code keeps its own defaults for notebooks, but the command line trains
only through these tables, and each checkpoint's JSON records the one command that made it.

Your own folder of pictures: the recipes' step counts are tuned for the 20 000-picture catalogue; a folder of N
pictures trains ``steps × clamp(√(N / 20 000), 1, 4)`` steps (:func:`scale_steps`). Never fewer than the recipe: a
diffusion model needs about that many updates to learn to denoise at all, whatever the folder's size (measured: a
600-picture folder trained a quarter of the fast recipe's steps drew noisy blobs, colour right 60% of the time and
shape at chance; docs/TRAINING.md). A larger folder gets more, growing like √N rather than N because these small
networks stop improving long before a 50 000-picture folder has been seen many times.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

STAGE_FILES = {
    "clip": "clip_tiny.safetensors",
    "prior": "prior.safetensors",
    "decoder": "decoder32.safetensors",
    "upsampler": "upsampler64.safetensors",
    "upsampler128": "upsampler128.safetensors",
    "attributes": "image32_attributes.safetensors",
    "classifier": "attribute_classifier.safetensors",
}
"""Stage → weights file inside a checkpoint folder (a ``.json`` with the same name holds its report)."""

PIPELINE_STAGES = ("clip", "prior", "decoder", "upsampler")
"""What ``train all`` trains, in order: the unCLIP pipeline."""

OPTIONAL_STAGES = ("upsampler128",)
"""Stages of the pipeline that ``train all`` leaves out (name them to train them): the second upsampler, 64 → 128,
costs as much again as the first and only ``generate --size 128`` needs it."""

CATALOGUE_ONLY = ("attributes", "classifier")
"""Stages that need the catalogue's attribute labels, so they cannot train on a folder of captioned pictures."""

UPSTREAM = {"clip": (), "prior": ("clip",), "decoder": ("clip",), "upsampler": (), "upsampler128": (), "attributes": (),
            "classifier": ()}  # fmt: skip
"""The stages whose weights a stage is trained against (the prior and decoder learn CLIP's embeddings)."""

REFERENCE_SIZE = 20_000
"""The catalogue size the recipes' step counts are tuned for."""


@dataclass(frozen=True)
class StageSettings:
    """How one stage trains. ``model`` holds config fields of the stage's network (sizes), ``options`` the rest."""

    steps: int
    batch_size: int
    lr: float
    warmup_steps: int = 100
    ema_decay: float = 0.999
    weight_decay: float = 0.0
    lr_schedule: str = "constant"
    ckpt_every: int = 250
    n_train: int = REFERENCE_SIZE
    model: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)

    def __post_init__(self):
        for name in ("steps", "batch_size", "n_train", "ckpt_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be a whole number >= 0, got {self.warmup_steps!r}")
        if not (isinstance(self.lr, int | float) and 0 < self.lr < math.inf):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")

    def trainer_kwargs(self) -> dict:
        """The :class:`~dalle2_edu.train.Trainer` arguments these settings fix."""
        return dict(warmup_steps=min(self.warmup_steps, self.steps), ema_decay=self.ema_decay,
                    weight_decay=self.weight_decay, lr_schedule=self.lr_schedule, ckpt_every=self.ckpt_every,
                    total_steps=self.steps if self.lr_schedule == "cosine" else None)  # fmt: skip

    def to_dict(self) -> dict:
        return asdict(self)


def _tiny_unet(image_size: int, **kw) -> dict:
    from dalle2_edu.nets.unet import UNetConfig

    return UNetConfig.tiny(image_size=image_size, **kw).to_dict()


def _second_upsampler(**changes) -> dict:
    from dalle2_edu.stages.upsampler import second_upsampler_config

    return second_upsampler_config(**changes).to_dict()


def _recipes() -> dict[str, dict[str, StageSettings]]:
    S = StageSettings
    clip = S(800, 256, 2e-3, warmup_steps=80, ema_decay=0.995, weight_decay=0.05, lr_schedule="cosine",
             ckpt_every=200, options={"augment": True})  # fmt: skip
    prior = S(2000, 128, 1e-3, warmup_steps=200, ckpt_every=500)
    # The decoder predicts v: its loss then weights each step's x_0 error by SNR + 1 (ε-prediction weights it by SNR),
    # so the noisiest steps, where the picture's overall brightness is decided, are learnt from z_i. Predicting ε, the
    # shipped decoder ignored z_i there and drew white backgrounds grey (docs/BENCHMARKS.md §3.1).
    decoder = S(1500, 64, 3e-4, warmup_steps=150, model={"diffusion": {"mean_type": "v"}},
                options={"init_from": "attributes"})
    upsampler = S(800, 32, 1e-3, warmup_steps=200)
    # 32×32 crops of 128×128 pictures: the same cost per step as the first upsampler. 4 000 pictures (drawn at 128 in
    # about a minute, cached) are plenty for a convolutional network that only sees 32×32 windows of them.
    upsampler128 = S(800, 32, 1e-3, warmup_steps=200, n_train=4000, model=_second_upsampler())
    attributes = S(1500, 64, 3e-4, warmup_steps=200)
    classifier = S(1500, 128, 2e-3, warmup_steps=150, ema_decay=0.998, weight_decay=0.05, lr_schedule="cosine",
                   options={"width": 32})  # fmt: skip
    full = dict(clip=clip, prior=prior, decoder=decoder, upsampler=upsampler, upsampler128=upsampler128,
                attributes=attributes, classifier=classifier)  # fmt: skip
    # The fast decoder weights its L_simple by min-SNR-γ (γ = 5): on the same CPU budget it learns colour and shape
    # sooner (docs/BENCHMARKS.md §3.4), which pays for fewer steps everywhere else. 1 300 steps since bf16 became the
    # CPU default where the CPU has AMX (2026-12-04): the time bf16 saved went to the decoder, which took category from
    # 81% to 90% of seen prompts in a trial from the same CLIP and prior.
    # Its UNet stays the decoder's default (widths 32, 64, 64). Narrower or folded networks ran a step 1.2-1.7x faster
    # but learnt less per step; the fastest that graded as well needed as many more steps as it saved time
    # (2026-12-05, docs/BENCHMARKS.md §2.1, docs/benchmarks/decoder_trials.json).
    fast = dict(
        full,
        clip=replace(clip, steps=300, warmup_steps=30),
        prior=replace(prior, steps=500, warmup_steps=50),
        decoder=S(1300, 32, 1e-3, warmup_steps=100, model={"diffusion": {"snr_gamma": 5}}),
        upsampler=replace(upsampler, steps=100, warmup_steps=25),
        upsampler128=replace(upsampler128, steps=300),
        attributes=replace(attributes, steps=600),
        classifier=replace(classifier, steps=600, warmup_steps=60),
    )  # fmt: skip
    # Sized for about ten minutes of one H200 from the rates measured there on 2026-12-04 (docs/TRAINING.md §3). On
    # these small networks the Trainer is bound by the host launching ~2 000 kernels per step, not by the GPU
    # (~6 ms of GPU work in a ~62 ms step at batch 32): a step costs about the same at batch 32 and 256, so the GPU
    # recipe takes fewer, much larger batches. CLIP keeps the full recipe's settings: the 3 000 × 1 024, lr 4e-3
    # first tried there graded worse (held-out zero-shot category 91% against 99.7%).
    gpu = dict(
        full,
        clip=clip,
        prior=replace(prior, steps=3000, batch_size=512, lr=1e-3, warmup_steps=300, ckpt_every=1000),
        decoder=replace(decoder, steps=2500, batch_size=512, lr=6e-4, warmup_steps=250, ckpt_every=500),
        upsampler=replace(upsampler, steps=1200, batch_size=256, lr=1e-3, ckpt_every=400),
        upsampler128=replace(upsampler128, steps=4000, batch_size=128, n_train=20_000, ckpt_every=1000),
        attributes=replace(attributes, steps=6000, batch_size=256, lr=6e-4, ckpt_every=1000),
        classifier=replace(classifier, steps=3000, batch_size=512, lr=4e-3),
    )  # fmt: skip
    # Seconds on a CPU: tiny networks, a few steps. For the tests and the torchrun smoke check, not for pictures.
    tiny_clip_model = {"embed_dim": 16, "vision_layers": [1, 1, 1, 1], "vision_width": 16, "vision_heads": 2,
                       "text_layers": 1, "text_width": 32, "text_heads": 2}  # fmt: skip
    tiny = dict(
        clip=S(8, 16, 2e-3, warmup_steps=2, ema_decay=0.9, n_train=256, ckpt_every=4, model=tiny_clip_model,
               options={"augment": True}),
        prior=S(8, 16, 1e-3, warmup_steps=2, ema_decay=0.9, n_train=256, ckpt_every=4,
                model={"transformer": {"width": 16, "num_layers": 1, "num_heads": 2},
                       "diffusion": {"num_timesteps": 20}}),
        decoder=S(8, 8, 1e-3, warmup_steps=2, ema_decay=0.9, n_train=256, ckpt_every=4,
                  model={"unet": _tiny_unet(32, attention_resolutions=()), "cond_dim": 16, "context_dim": 16,
                         "diffusion": {"num_timesteps": 20}}),
        upsampler=S(8, 8, 1e-3, warmup_steps=2, ema_decay=0.9, n_train=256, ckpt_every=4,
                    model={"unet": _tiny_unet(64, attention_resolutions=(), low_res_channels=3),
                           "diffusion": {"num_timesteps": 20}, "crop_size": 16}),
        upsampler128=S(8, 8, 1e-3, warmup_steps=2, ema_decay=0.9, n_train=32, ckpt_every=4,
                       model=_second_upsampler(unet=_tiny_unet(128, attention_resolutions=(), low_res_channels=3),
                                               diffusion={"num_timesteps": 20}, crop_size=16)),
        attributes=S(8, 8, 1e-3, warmup_steps=2, ema_decay=0.9, n_train=256, ckpt_every=4,
                     model={"unet": _tiny_unet(32, attention_resolutions=()), "cond_dim": 16,
                            "diffusion": {"num_timesteps": 20}}),
        classifier=S(8, 16, 2e-3, warmup_steps=2, ema_decay=0.9, n_train=256, ckpt_every=4, options={"width": 8}),
    )  # fmt: skip
    return {"full": full, "fast": fast, "gpu": gpu, "tiny": tiny}


RECIPES: dict[str, dict[str, StageSettings]] = _recipes()
"""Recipe name → stage → :class:`StageSettings`."""

EVALUATION = {"full": {"n": 4, "steps": 25}, "fast": {"n": 2, "steps": 15}, "gpu": {"n": 4, "steps": 25},
              "tiny": {"n": 1, "steps": 4}}  # fmt: skip
"""How ``train all`` grades the finished pipeline: pictures per prompt and decoder steps, with
:data:`EVALUATION_SAMPLER`."""

EVALUATION_SAMPLER = "ddim"
"""The decoder's sampler when ``train all`` grades the pipeline: DDIM, as every recorded grade of docs/BENCHMARKS.md
§3 and docs/TRAINING.md was measured (``generate``'s own default changed on 2026-12-04; a grade must stay comparable
with the runs before it)."""


def scale_steps(steps: int, n_pictures: int) -> int:
    """A recipe's step count for a training set of ``n_pictures`` (see the module docstring)."""
    factor = min(4.0, max(1.0, math.sqrt(n_pictures / REFERENCE_SIZE)))
    return max(1, round(steps * factor))


def recipe_for(recipe: str, stage: str, n_pictures: int | None = None, steps: int | None = None) -> StageSettings:
    """The settings of ``stage`` in ``recipe``.

    :param n_pictures: the size of a user's folder: the steps (and warm-up) are scaled by :func:`scale_steps`, and
        ``n_train`` is set to it. ``None`` for the catalogue (the recipe's own ``n_train``).
    :param steps: an explicit step count (wins over the recipe's and the scaling).
    """
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
    if stage not in RECIPES[recipe]:
        raise ValueError(f"unknown stage {stage!r}; choose one of {', '.join(RECIPES[recipe])}")
    s = RECIPES[recipe][stage]
    if n_pictures is not None:
        s = replace(s, steps=scale_steps(s.steps, n_pictures), n_train=n_pictures,
                    warmup_steps=min(s.warmup_steps, max(1, scale_steps(s.steps, n_pictures) // 10)))  # fmt: skip
    if steps is not None:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a whole number >= 1, got {steps!r} (0 would save an untrained model)")
        s = replace(s, steps=steps, warmup_steps=min(s.warmup_steps, max(1, steps // 10)))
    return s
