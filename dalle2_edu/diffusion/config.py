"""One description of a diffusion process, embedded in every stage's config.

Every model of the project (the 2D toys, the attribute image model, the prior, the decoder, the upsamplers) is a
network plus a :class:`~dalle2_edu.diffusion.gaussian.GaussianDiffusion`. What defines that process lives here, once:

    DecoderConfig(diffusion={"num_timesteps": 20})         # a partial dict keeps the stage's other defaults
    DecoderConfig().diffusion.build()                       # -> GaussianDiffusion

Each stage declares its own defaults with :func:`diffusion_field` (the prior predicts x_0 on continuous vectors, the
decoder ε with a learned variance on 8-bit pictures, ...), and files written before this config existed, which kept
the five fields flat in the stage's dict, still load through :func:`lift_legacy_fields`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field

from dalle2_edu.diffusion.gaussian import (
    DATA_TYPES,
    LOSS_TYPES,
    MEAN_TYPES,
    VAR_TYPES,
    GaussianDiffusion,
    check_snr_gamma,
)
from dalle2_edu.diffusion.schedules import SCHEDULES, get_betas

FIELDS = ("num_timesteps", "schedule", "mean_type", "var_type", "loss_type", "data_type", "hybrid_lambda",
          "snr_gamma")


@dataclass(frozen=True)
class DiffusionConfig:
    """The process a network is trained and sampled with.

    :param num_timesteps: T, the number of noising steps.
    :param schedule: the β schedule's name (``"cosine"`` or ``"linear"``).
    :param mean_type: what the network predicts: ``"eps"``, ``"x0"`` or ``"v"``.
    :param var_type: ``"fixed_small"`` (β̃), ``"fixed_large"`` (β) or ``"learned_range"``.
    :param loss_type: ``"simple"``, ``"hybrid"`` or ``"kl"``.
    :param data_type: ``"image"`` (8-bit pixels in [-1, 1]) or ``"continuous"`` (points, embeddings).
    :param hybrid_lambda: λ of the hybrid loss.
    :param snr_gamma: ``None``, or γ of min-SNR-γ weighting of L_simple (e.g. 5; see
        :class:`~dalle2_edu.diffusion.gaussian.GaussianDiffusion`).
    """

    num_timesteps: int = 1000
    schedule: str = "cosine"
    mean_type: str = "eps"
    var_type: str = "fixed_small"
    loss_type: str = "simple"
    data_type: str = "image"
    hybrid_lambda: float = 0.001
    snr_gamma: float | None = None

    def __post_init__(self):
        if isinstance(self.num_timesteps, bool) or int(self.num_timesteps) != self.num_timesteps:
            raise ValueError(f"num_timesteps must be a whole number >= 1, got {self.num_timesteps!r}")
        object.__setattr__(self, "num_timesteps", int(self.num_timesteps))
        if self.num_timesteps < 1:
            raise ValueError(f"num_timesteps must be >= 1, got {self.num_timesteps}")
        for name, allowed in (("schedule", SCHEDULES), ("mean_type", MEAN_TYPES), ("var_type", VAR_TYPES),
                              ("loss_type", LOSS_TYPES), ("data_type", DATA_TYPES)):  # fmt: skip
            if getattr(self, name) not in allowed:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; choose one of {', '.join(allowed)}")
        if not 0.0 <= float(self.hybrid_lambda) < float("inf"):
            raise ValueError(f"hybrid_lambda must be a finite number >= 0, got {self.hybrid_lambda!r}")
        check_snr_gamma(self.snr_gamma)

    @property
    def learned_sigma(self) -> bool:
        """Whether the network outputs a variance too (twice the channels)."""
        return self.var_type == "learned_range"

    def build(self) -> GaussianDiffusion:
        """The :class:`GaussianDiffusion` this config describes."""
        return GaussianDiffusion(
            get_betas(self.schedule, self.num_timesteps), mean_type=self.mean_type, var_type=self.var_type,
            loss_type=self.loss_type, data_type=self.data_type, hybrid_lambda=self.hybrid_lambda,
            snr_gamma=self.snr_gamma,
        )  # fmt: skip

    def replace(self, **changes) -> DiffusionConfig:
        """A copy with some fields changed (unknown names are refused)."""
        unknown = set(changes) - set(FIELDS)
        if unknown:
            raise ValueError(f"unknown DiffusionConfig fields {sorted(unknown)}; known: {', '.join(FIELDS)}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return asdict(self)


def diffusion_field(**defaults):
    """A dataclass field holding a stage's :class:`DiffusionConfig`, with that stage's defaults."""
    return field(default_factory=lambda: DiffusionConfig(**defaults))


def coerce_diffusion(config) -> None:
    """In a stage config's ``__post_init__``: turn a (partial) dict in ``config.diffusion`` into a
    :class:`DiffusionConfig`, the missing fields taken from the stage's defaults."""
    value = config.diffusion
    if isinstance(value, DiffusionConfig):
        return
    if not isinstance(value, dict):
        raise TypeError(f"diffusion must be a DiffusionConfig or a dict of its fields, got {type(value).__name__}")
    default = next(f for f in dataclasses.fields(config) if f.name == "diffusion").default_factory()
    config.diffusion = default.replace(**value)


def lift_legacy_fields(d: dict) -> dict:
    """A stage config dict with the diffusion fields flat (files written before :class:`DiffusionConfig`) →
    the same with them under ``"diffusion"``. Dicts already in the new form pass through unchanged."""
    flat = {k: d[k] for k in FIELDS if k in d}
    if not flat:
        return dict(d)
    rest = {k: v for k, v in d.items() if k not in flat}
    return {**rest, "diffusion": {**flat, **(d.get("diffusion") or {})}}
