"""The third road to text → image (latent diffusion, Rombach et al. 2022): diffuse in the VQ-VAE's latent space.

Pixel diffusion (DALL·E 2's decoder) denoises 3·32·32 = 3072 numbers per picture; here the same
:class:`~dalle2_edu.diffusion.GaussianDiffusion` and the project's :class:`~dalle2_edu.nets.unet.UNet` denoise the
VQ-VAE's 8×8×D latent grid (512 numbers with D = 8), and the VQ-VAE's decoder paints the picture::

    caption ─CLIP text tower─▶ z_t ─latent diffusion (UNet on 8×8×D, CFG)─▶ ẑ ─×σ+μ─▶ quantise ─VQ decoder─▶ 32×32

Choices, and why:

* **Which autoencoder.** The VQ-VAE of :mod:`dalle2_edu.stages.vqvae`, not a separate KL autoencoder: one
  autoencoder for both latent roads, so the comparison with the autoregressive road differs only in the generator
  (a transformer choosing codes one by one, against diffusion denoising the whole grid at once). The diffusion
  models the *pre-quantisation* latents z_e, which are continuous (diffusion needs a continuous space; the codes are
  a finite set), as LDM's VQ-regularised models do.
* **Normalised latents.** z_e has whatever scale the encoder happened to learn, per channel; the diffusion's noise
  schedule assumes data of unit scale (x_T ≈ N(0, I) only if the data's variance is about 1, and the signal-to-noise
  ratio at each t was designed for it). So each channel is standardised with its mean and standard deviation
  measured on the training latents, ẑ = (z_e - μ) / σ (LDM's "scale factor", per channel), kept as buffers in the
  model and undone before decoding.
* **Decoding: quantise, then decode.** The VQ decoder was only ever trained on codebook vectors z_q; a sampled
  latent is snapped to its nearest codes first (exactly what the encoder's outputs go through), so both roads end
  in the same decoder on the same kind of input. ``quantize=False`` decodes the raw latent instead, to compare.
* **Conditioning like the decoder.** The network is the decoder stage's :class:`~dalle2_edu.stages.decoder.CLIPDecoder`
  (a UNet whose conditioning vector is projected, added to the timestep embedding and turned into 4 context tokens
  for attention, with a learned null vector) with the caption's CLIP *text* embedding z_t as the vector (√d scale,
  ``clip.encode_text``); unCLIP needed a prior to get from z_t to an image embedding, latent diffusion conditions on
  the text directly, as LDM and GLIDE do. Classifier-free guidance: z_t is dropped with probability ``emb_drop`` in
  training, and sampling mixes ε̂(x_t, ∅) + s · (ε̂(x_t, z_t) - ε̂(x_t, ∅)).
* **The process** is continuous data (``data_type="continuous"``: no clipping of x̂_0 to [-1, 1], which normalised
  latents routinely exceed), ε-prediction with the simple loss; it samples through the project's one entry point,
  :func:`dalle2_edu.diffusion.sample`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from dalle2_edu.diffusion import GaussianDiffusion, diffusion_loss, sample
from dalle2_edu.diffusion.config import DiffusionConfig, coerce_diffusion, diffusion_field, lift_legacy_fields
from dalle2_edu.diffusion.guidance import GuidedModel
from dalle2_edu.images import describe
from dalle2_edu.nets.unet import UNetConfig
from dalle2_edu.stages.decoder import CLIPDecoder, DecoderConfig

__all__ = ["LatentDiffusion", "LatentDiffusionConfig", "encode_latents", "latent_stats", "latent_loss_fn",
           "train_latent_diffusion", "sample_latent_diffusion", "save_latent_diffusion", "load_latent_diffusion",
           "build_latent_diffusion"]  # fmt: skip


def default_latent_unet() -> dict:
    """A UNet for 8×8 latents: two levels (8 and 4 px), width 64, attention at both; with the default conditioning
    the whole :class:`LatentDiffusion` has about 4.6 M parameters (``benchmarks/three_roads.py`` uses width 32, about
    1.2 M, to match the other roads). ``in_channels`` and ``out_channels`` are set from ``latent_dim``."""
    return UNetConfig(model_channels=64, channel_mult=(1, 2), num_res_blocks=2, attention_resolutions=(8, 4),
                      num_heads=4, image_size=8).to_dict()  # fmt: skip


@dataclass
class LatentDiffusionConfig:
    """What defines a latent diffusion model (saved beside its weights).

    :param latent_dim: D, the VQ-VAE's ``code_dim`` (channels of the latent grid).
    :param latent_size: side of the latent grid (the VQ-VAE's ``grid_size``).
    :param unet: ``UNetConfig`` fields; ``in_channels``, ``out_channels``, ``image_size``, ``cond_dim``,
        ``context_dim`` and ``learned_sigma`` are set from the fields here.
    :param clip_dim: size d of the CLIP text embedding it is conditioned on.
    :param cond_dim: size of the vector z_t is projected to before the UNet adds it to the timestep embedding.
    :param num_clip_tokens: context tokens made from z_t.
    :param context_dim: width of every context token.
    :param emb_drop: probability of replacing z_t by the null condition in training (for guidance).
    :param diffusion: the process: continuous data, ε-prediction, the simple loss.
    """

    latent_dim: int = 8
    latent_size: int = 8
    unet: dict = field(default_factory=default_latent_unet)
    clip_dim: int = 64
    cond_dim: int = 128
    num_clip_tokens: int = 4
    context_dim: int = 64
    emb_drop: float = 0.1
    diffusion: DiffusionConfig = diffusion_field(data_type="continuous")

    def __post_init__(self):
        coerce_diffusion(self)
        self.unet = {k: list(v) if isinstance(v, tuple) else v for k, v in self.unet.items()}  # as JSON stores it
        for name in ("latent_dim", "latent_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise ValueError(f"LatentDiffusionConfig.{name} must be a whole number >= 1, got {value!r}")
        if self.diffusion.data_type != "continuous":
            raise ValueError("latent diffusion needs diffusion data_type='continuous' (normalised latents are not "
                             "8-bit pixels: they must not be clipped to [-1, 1])")  # fmt: skip
        self.decoder_config()  # validates the rest (sizes, emb_drop, the UNet)

    def decoder_config(self) -> DecoderConfig:
        """The :class:`~dalle2_edu.stages.decoder.DecoderConfig` of the conditioned UNet on latents."""
        unet = {**self.unet, "in_channels": self.latent_dim, "out_channels": self.latent_dim,
                "image_size": self.latent_size}  # fmt: skip
        return DecoderConfig(unet=unet, clip_dim=self.clip_dim, cond_dim=self.cond_dim,
                             num_clip_tokens=self.num_clip_tokens, context_dim=self.context_dim,
                             diffusion=self.diffusion, emb_drop=self.emb_drop, caption_drop=0.0)  # fmt: skip

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> LatentDiffusionConfig:
        return cls(**lift_legacy_fields(d))


class LatentDiffusion(nn.Module):
    """``model(x_t, t, text_emb, drop=None)`` → ε̂ (B, D, g, g) for noisy normalised latents x_t.

    Buffers ``latent_mean`` and ``latent_std`` (D,) hold the per-channel statistics of the training latents
    (:meth:`set_latent_stats`), saved with the weights.

    :param config: a :class:`LatentDiffusionConfig`.
    """

    def __init__(self, config: LatentDiffusionConfig | None = None):
        super().__init__()
        self.config = config = config or LatentDiffusionConfig()
        self.net = CLIPDecoder(config.decoder_config())
        self.register_buffer("latent_mean", torch.zeros(config.latent_dim))
        self.register_buffer("latent_std", torch.ones(config.latent_dim))

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, text_emb: torch.Tensor, drop=None) -> torch.Tensor:
        """
        :param x_t: (B, D, g, g) noisy normalised latents.
        :param t: (B,) timesteps.
        :param text_emb: (B, clip_dim) CLIP text embeddings (√d scale).
        :param drop: optional (B,) bool; True rows use the null condition.
        :return: (B, D, g, g).
        """
        return self.net(x_t, t, image_emb=text_emb, drop=drop)

    @torch.no_grad()
    def set_latent_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Keep the training latents' per-channel mean and standard deviation (each (D,), std > 0)."""
        D = self.config.latent_dim
        mean, std = torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(std, dtype=torch.float32)
        if mean.shape != (D,) or std.shape != (D,):
            raise ValueError(f"mean and std must have shape ({D},), got {tuple(mean.shape)} and {tuple(std.shape)}")
        if not (std > 0).all() or not torch.isfinite(mean).all():
            raise ValueError("std must be > 0 and mean finite in every channel; measure them with latent_stats(z_e)")
        self.latent_mean.copy_(mean)
        self.latent_std.copy_(std)

    def normalize(self, z_e: torch.Tensor) -> torch.Tensor:
        """ẑ = (z_e - μ) / σ per channel: (B, D, g, g) → (B, D, g, g)."""
        self._check_latents(z_e)
        return (z_e - self.latent_mean[:, None, None]) / self.latent_std[:, None, None]

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        """z_e = ẑ σ + μ per channel, the inverse of :meth:`normalize`."""
        self._check_latents(z)
        return z * self.latent_std[:, None, None] + self.latent_mean[:, None, None]

    def _check_latents(self, z) -> None:
        D, g = self.config.latent_dim, self.config.latent_size
        if not torch.is_tensor(z) or z.ndim != 4 or tuple(z.shape[1:]) != (D, g, g):
            raise ValueError(f"latents must have shape (B, {D}, {g}, {g}), got {describe(z)}")


# ----------------------------------------------------------------------------------------------------------------------
# data


@torch.no_grad()
def encode_latents(vqvae, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Pre-quantisation latents z_e of a whole data set, in batches: (N, 3, S, S) → (N, D, g, g) float32 on the CPU."""
    was_training = vqvae.training
    vqvae.eval()
    try:
        return torch.cat([vqvae.encode(images[i : i + batch_size]).float().cpu()
                          for i in range(0, len(images), batch_size)])  # fmt: skip
    finally:
        vqvae.train(was_training)


def latent_stats(z_e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and standard deviation of latents (N, D, g, g), over pictures and positions: ((D,), (D,))."""
    if not torch.is_tensor(z_e) or z_e.ndim != 4 or z_e.shape[0] * z_e.shape[2] * z_e.shape[3] < 2:
        raise ValueError(f"z_e must be latents (N, D, g, g) with at least two values per channel, got {describe(z_e)}")
    per_channel = z_e.float().transpose(0, 1).reshape(z_e.shape[1], -1)  # (D, N·g·g)
    return per_channel.mean(dim=1), per_channel.std(dim=1).clamp_min(1e-6)


def latent_loss_fn(gd: GaussianDiffusion, config: LatentDiffusionConfig):
    """The Trainer's ``loss_fn`` for batches ``(latents (B, D, g, g) normalised, text_emb (B, d))``: drops z_t with
    probability ``emb_drop`` (classifier-free guidance), then the project's diffusion loss."""

    def prepare(batch):
        z, text_emb = batch
        drop = torch.rand(z.shape[0], device=z.device) < config.emb_drop
        return z.float(), {"text_emb": text_emb.float(), "drop": drop}

    return diffusion_loss(gd, prepare)


def train_latent_diffusion(
    vqvae,
    images: torch.Tensor,
    text_emb: torch.Tensor,
    config: LatentDiffusionConfig | None = None,
    steps: int = 2000,
    batch_size: int = 64,
    lr: float = 3e-4,
    seed: int = 0,
    out_dir=None,
    progress: bool = True,
    **trainer_kwargs,
):
    """Train a :class:`LatentDiffusion` with the project's Trainer on pictures and their captions' CLIP text
    embeddings. The (trained, frozen) VQ-VAE encodes the pictures once; the latents' per-channel statistics are
    measured on them and stored in the model.

    :param vqvae: the trained :class:`~dalle2_edu.stages.vqvae.VQVAE`.
    :param images: (N, 3, S, S) uint8 pictures.
    :param text_emb: (N, d) CLIP text embeddings of their captions (``clip.encode_text(captions)``, √d scale).
    :param out_dir: resumable checkpoint folder, or None.
    :param trainer_kwargs: more :class:`~dalle2_edu.train.Trainer` arguments (they win over the defaults here).
    :return: ``(trainer, diffusion)``; sample from ``trainer.ema_model``.
    """
    from dalle2_edu.train import Trainer
    from dalle2_edu.utils import set_seed

    if len(images) != len(text_emb):
        raise ValueError(f"{len(images)} pictures but {len(text_emb)} text embeddings; pass one per picture")
    vq = vqvae.config
    config = config or LatentDiffusionConfig(latent_dim=vq.code_dim, latent_size=vq.grid_size,
                                             clip_dim=text_emb.shape[1])  # fmt: skip
    _check_vqvae(config, vqvae)
    if text_emb.ndim != 2 or text_emb.shape[1] != config.clip_dim:
        raise ValueError(f"text_emb must have shape (N, {config.clip_dim}) (config.clip_dim), got {describe(text_emb)}")
    set_seed(seed)
    z_e = encode_latents(vqvae, images)  # (N, D, g, g)
    model, gd = LatentDiffusion(config), config.diffusion.build()
    model.set_latent_stats(*latent_stats(z_e))
    z = model.normalize(z_e)
    kwargs = dict(warmup_steps=min(200, max(steps // 10, 1)), ema_decay=0.999, ckpt_every=250 if out_dir else None,
                  desc="training latent diffusion")  # fmt: skip
    kwargs.update(trainer_kwargs)
    trainer = Trainer(model, latent_loss_fn(gd, config), (z, text_emb.float().cpu()), batch_size=batch_size, lr=lr,
                      seed=seed, out_dir=out_dir, progress=progress,
                      config={"latent_diffusion": config.to_dict(), "n_train": len(z)}, **kwargs)  # fmt: skip
    trainer.fit(steps, resume=out_dir is not None)
    return trainer, gd


# ----------------------------------------------------------------------------------------------------------------------
# sampling


@torch.no_grad()
def sample_latent_diffusion(
    model: LatentDiffusion,
    gd: GaussianDiffusion,
    vqvae,
    text_emb: torch.Tensor,
    steps: int = 50,
    sampler: str = "ddim",
    guidance_scale: float = 3.0,
    eta: float = 0.0,
    seed: int = 0,
    quantize: bool = True,
    return_latents: bool = False,
    progress: bool = False,
):
    """Draw one picture per text embedding: sample normalised latents with :func:`dalle2_edu.diffusion.sample`,
    undo the normalisation, quantise to the nearest codes and decode with the VQ-VAE.

    :param text_emb: (B, clip_dim) or (clip_dim,) CLIP text embeddings (√d scale, ``clip.encode_text(captions)``).
    :param steps: steps of the respaced process (network calls for the ODE samplers).
    :param sampler: one of :data:`~dalle2_edu.diffusion.sampling.SAMPLERS`.
    :param guidance_scale: 0 ignores the caption, 1 plain conditional sampling, > 1 follows it more closely.
    :param seed: fixes the starting noise and every step's noise.
    :param quantize: snap the latents to the codebook before decoding (the decoder was trained on codes); False
        decodes the raw latents.
    :param return_latents: also return the sampled latents z_e (B, D, g, g), denormalised.
    :return: pictures (B, 3, S, S) in [-1, 1] (and the latents when asked).
    """
    _check_vqvae(model.config, vqvae)
    device = next(model.parameters()).device
    text_emb = torch.as_tensor(text_emb, dtype=torch.float32).to(device)
    text_emb = text_emb[None] if text_emb.ndim == 1 else text_emb
    if text_emb.ndim != 2 or text_emb.shape[1] != model.config.clip_dim:
        raise ValueError(f"text_emb must have shape (B, {model.config.clip_dim}), got {describe(text_emb)}")
    B, cfg = text_emb.shape[0], model.config
    zeros, ones = torch.zeros(B, dtype=torch.bool, device=device), torch.ones(B, dtype=torch.bool, device=device)
    mean_channels = cfg.latent_dim if cfg.diffusion.learned_sigma else None
    net = GuidedModel(model, {"text_emb": text_emb, "drop": zeros}, {"text_emb": text_emb, "drop": ones},
                      guidance_scale, mean_channels=mean_channels)  # fmt: skip
    shape = (B, cfg.latent_dim, cfg.latent_size, cfg.latent_size)
    z = sample(net, gd, shape, clamp=False, sampler=sampler, steps=steps, eta=eta, seed=seed, progress=progress,
               desc=f"latent diffusion {cfg.latent_size}x{cfg.latent_size}x{cfg.latent_dim}")  # fmt: skip
    z_e = model.denormalize(z).to(vqvae.codebook.weight.device)
    z_q = vqvae.quantize(z_e)[0] if quantize else z_e
    pictures = vqvae.decode(z_q)
    return (pictures, z_e) if return_latents else pictures


def _check_vqvae(config: LatentDiffusionConfig, vqvae) -> None:
    vq = vqvae.config
    if (config.latent_dim, config.latent_size) != (vq.code_dim, vq.grid_size):
        raise ValueError(
            f"the latent diffusion model draws {config.latent_size}×{config.latent_size}×{config.latent_dim} latents "
            f"but the VQ-VAE's are {vq.grid_size}×{vq.grid_size}×{vq.code_dim}: pass the VQ-VAE it was trained on"
        )


# ----------------------------------------------------------------------------------------------------------------------
# saving and loading


def default_latent_diffusion_path() -> Path:
    from dalle2_edu.utils import data_dir

    return data_dir() / "checkpoints" / "latent_diffusion.safetensors"


def save_latent_diffusion(model: LatentDiffusion, path=None, metrics: dict | None = None, half: bool = True) -> Path:
    """Safetensors weights (fp16 by default; the latent statistics too) with the config in the metadata."""
    from dalle2_edu.checkpoint import save_model

    if not isinstance(model, LatentDiffusion):
        raise TypeError(f"save_latent_diffusion needs a LatentDiffusion, got {type(model).__name__}")
    path = default_latent_diffusion_path() if path is None else path
    return save_model(path, model, "latent_diffusion", metrics, half)


def build_latent_diffusion(config: dict) -> LatentDiffusion:
    """An untrained latent diffusion model of a saved config (the checkpoint registry's builder)."""
    return LatentDiffusion(LatentDiffusionConfig.from_dict(config))


def load_latent_diffusion(path=None, device="cpu") -> tuple[LatentDiffusion, GaussianDiffusion]:
    """Load a model written by :func:`save_latent_diffusion` (default
    ``data/checkpoints/latent_diffusion.safetensors``).

    :return: ``(model in eval mode, diffusion)``.
    """
    from dalle2_edu.checkpoint import load_model

    how = ("train one with dalle2_edu.stages.latent.train_latent_diffusion and save it with "
           "save_latent_diffusion(trainer.ema_model, path)")  # fmt: skip
    model = load_model(default_latent_diffusion_path() if path is None else path, "latent_diffusion",
                       build_latent_diffusion, how, device, "latent diffusion model")  # fmt: skip
    return model, model.config.diffusion.build()
