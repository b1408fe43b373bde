"""Product pictures from attributes: the compact UNet conditioned on (category, colour, pattern, background).

The stepping stone between the 2D toys and unCLIP: the same GaussianDiffusion and Trainer on 32×32 catalogue images,
conditioned on attribute labels instead of a CLIP embedding. Each attribute has its own embedding table with one
extra "unspecified" row; training replaces each label by it with probability ``label_drop``, so the model also
learns p(x) and partial conditions, which is what classifier-free guidance needs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from dalle2_edu.diffusion import GaussianDiffusion, diffusion_loss, sample
from dalle2_edu.diffusion.config import DiffusionConfig, coerce_diffusion, diffusion_field, lift_legacy_fields
from dalle2_edu.diffusion.guidance import GuidedModel
from dalle2_edu.nets.unet import UNet, UNetConfig

NUM_VALUES = (8, 8, 3, 3)  # categories, colours, patterns, backgrounds
UNSPECIFIED = -1  # a label value meaning "not asked for"


def default_unet() -> dict:
    """A 32×32 UNet that trains on 2 CPU cores: attention only at 8×8 (at 16×16 it costs most of the time)."""
    return UNetConfig.default32(num_res_blocks=1, attention_resolutions=(8,)).to_dict()


@dataclass
class ImageModelConfig:
    """What defines an attribute-conditioned image diffusion model (saved beside its weights)."""

    unet: dict = field(default_factory=default_unet)
    cond_dim: int = 128
    diffusion: DiffusionConfig = diffusion_field(var_type="learned_range", loss_type="hybrid")
    label_drop: float = 0.1

    def __post_init__(self):
        coerce_diffusion(self)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ImageModelConfig:
        return cls(**lift_legacy_fields(d))


class AttributeUNet(nn.Module):
    """``model(x_t, t, labels)``: labels (B, 4) long, ``UNSPECIFIED`` (-1) where an attribute is not given.

    The four label embeddings are summed into one vector added to the timestep embedding (the UNet's ``cond``).
    """

    def __init__(self, config: ImageModelConfig):
        super().__init__()
        self.config = config
        unet_cfg = UNetConfig.from_dict({**config.unet, "cond_dim": config.cond_dim,
                                         "learned_sigma": config.diffusion.learned_sigma})  # fmt: skip
        self.unet = UNet.from_config(unet_cfg)
        self.embeds = nn.ModuleList(nn.Embedding(n + 1, config.cond_dim) for n in NUM_VALUES)  # last row: unspecified

    def embed(self, labels: torch.Tensor) -> torch.Tensor:
        """(B, 4) labels → (B, cond_dim)."""
        labels = torch.as_tensor(labels)
        if labels.ndim != 2 or labels.shape[1] != len(NUM_VALUES):
            raise ValueError(
                f"labels must have shape (B, 4) (category, colour, pattern, background), got {tuple(labels.shape)}"
            )
        out = 0
        for k, (table, n) in enumerate(zip(self.embeds, NUM_VALUES)):
            col = labels[:, k]
            if ((col < UNSPECIFIED) | (col >= n)).any():
                raise ValueError(f"label column {k} must lie in [0, {n}) or be {UNSPECIFIED} (unspecified)")
            out = out + table(torch.where(col == UNSPECIFIED, n, col))
        return out

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t, cond=self.embed(labels.to(x.device)))


def drop_labels(labels: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Classifier-free guidance training: drop the whole label set with probability p (the null condition that
    guidance extrapolates from), and otherwise each attribute independently with probability p (so partial prompts
    such as "a red mug" without pattern or background are learned too)."""
    whole = torch.rand(labels.shape[0], 1, generator=generator) < p
    each = torch.rand(labels.shape, generator=generator) < p
    mask = (whole | each).to(labels.device)
    return torch.where(mask, torch.full_like(labels, UNSPECIFIED), labels)


def image_loss_fn(gd: GaussianDiffusion, label_drop: float):
    """The Trainer's ``loss_fn`` for batches ``(images, labels)``: images (B, 3, H, W) uint8, or float in [-1, 1];
    labels (B, 4). A dict with keys ``image`` and ``labels`` works too."""

    def prepare(batch):
        x0, labels = (batch["image"], batch["labels"]) if isinstance(batch, dict) else batch
        return x0, {"labels": drop_labels(labels, label_drop)}

    return diffusion_loss(gd, prepare)


def sample_images(
    model: AttributeUNet,
    gd: GaussianDiffusion,
    labels: torch.Tensor,
    sampler: str = "ddim",
    steps: int = 50,
    guidance_scale: float = 1.0,
    eta: float = 0.0,
    seed: int = 0,
    progress: bool = False,
) -> torch.Tensor:
    """Draw one image per row of ``labels``.

    :param sampler: ``"ddim"`` (η = ``eta``), ``"ddpm"`` (ancestral, with the model's variance), or an ODE solver,
        ``"dpmpp2m"``, ``"euler"``, ``"heun"``, for which ``steps`` counts network calls on the full process (see
        :data:`~dalle2_edu.diffusion.sampling.SAMPLERS`).
    :param steps: steps of the respaced process (``steps == T`` is the full chain).
    :param guidance_scale: classifier-free guidance scale; 1 is plain conditional sampling.
    :param seed: fixes the starting noise and every step's noise.
    :return: (N, 3, H, W) images in [-1, 1].
    """
    labels = torch.as_tensor(labels, dtype=torch.long)
    if labels.ndim == 1:
        labels = labels[None]
    labels = labels.to(next(model.parameters()).device)
    size = model.unet.config.image_size
    net = GuidedModel(
        model, {"labels": labels}, {"labels": torch.full_like(labels, UNSPECIFIED)}, guidance_scale,
        mean_channels=3 if gd.learned_variance else None,
    )  # fmt: skip
    return sample(net, gd, (labels.shape[0], 3, size, size), sampler=sampler, steps=steps, eta=eta, seed=seed,
                  progress=progress, desc="attribute model")  # fmt: skip


def train_image_model(
    config: ImageModelConfig | None = None,
    steps: int = 4000,
    batch_size: int = 64,
    lr: float = 3e-4,
    n_train: int = 20000,
    seed: int = 0,
    out_dir=None,
    sample_every: int | None = None,
    progress: bool = True,
    **trainer_kwargs,
):
    """Train an :class:`AttributeUNet` on the catalogue's training split (32×32) with the project's Trainer.

    :param out_dir: checkpoint (resumable: running again continues) and sample grids go here; None keeps nothing.
    :return: ``(trainer, diffusion)``; sample from ``trainer.ema_model`` with :func:`sample_images`.
    """
    from dalle2_edu.datasets.catalogue import ProductCatalogue
    from dalle2_edu.train import Trainer
    from dalle2_edu.utils import set_seed

    config = config or ImageModelConfig()
    set_seed(seed)
    cat = ProductCatalogue(n_train, split="train", seed=0, resolution=config.unet["image_size"], progress=progress)
    model, gd = AttributeUNet(config), config.diffusion.build()
    preview = cat.labels[:16].clone()

    def sample_fn(ema_model, step):
        return sample_images(ema_model, gd, preview, steps=25, seed=seed)

    kwargs = dict(warmup_steps=200, ema_decay=0.999, ckpt_every=250 if out_dir else None)
    kwargs.update(trainer_kwargs)
    trainer = Trainer(
        model, image_loss_fn(gd, config.label_drop), (cat.images, cat.labels), batch_size=batch_size, lr=lr,
        seed=seed, out_dir=out_dir, sample_every=sample_every, sample_fn=sample_fn if sample_every else None,
        config={"image_model": config.to_dict(), "n_train": n_train}, progress=progress, **kwargs,
    )  # fmt: skip
    trainer.fit(steps, resume=out_dir is not None)
    return trainer, gd


def default_image_model_path():
    from dalle2_edu.utils import data_dir

    return data_dir() / "checkpoints" / "image32_attributes.safetensors"


def save_image_model(model: AttributeUNet, path=None, metrics: dict | None = None, half: bool = True):
    """Ship a trained model: safetensors weights (fp16 by default) with its config in the file's metadata, and a
    JSON beside it with ``metrics`` (how it was trained and how good it is)."""
    from dalle2_edu.checkpoint import save_model

    return save_model(default_image_model_path() if path is None else path, model, "image_model", metrics, half)


def build_image_model(config: dict) -> AttributeUNet:
    """An untrained attribute model of a saved config (the checkpoint registry's builder)."""
    return AttributeUNet(ImageModelConfig.from_dict(config))


def load_image_model(path=None, device="cpu") -> tuple[AttributeUNet, GaussianDiffusion]:
    """Load shipped weights (default ``data/checkpoints/image32_attributes.safetensors``) in eval mode.

    :return: ``(model, diffusion)``.
    """
    from dalle2_edu.checkpoint import load_model

    how = ("train one with `python -m dalle2_edu train attributes --out FOLDER` (or train_image_model(...) and "
           "save_image_model(model, path))")
    model = load_model(default_image_model_path() if path is None else path, "image_model",
                       build_image_model, how, device)  # fmt: skip
    return model, model.config.diffusion.build()
