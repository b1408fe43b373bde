"""The unCLIP decoder: a 32×32 image diffusion model conditioned on a CLIP image embedding.

DALL·E 2 (Ramesh et al. 2022, §2.1) conditions its decoder on the CLIP image embedding z_i in two ways, and so does
this one:

- z_i is projected and ADDED to the timestep embedding (the UNet's ``cond`` vector), so it modulates every ResBlock;
- z_i is projected into ``num_clip_tokens`` (4) extra context tokens that every attention block attends to.

Optionally the caption's per-token features from CLIP's text tower are appended to the context as well (GLIDE's text
conditioning; DALL·E 2 found it helps little, and it is off by default here).

Classifier-free guidance: during training z_i is replaced by a learned null embedding with probability ``emb_drop``
(10%) and the caption tokens are dropped with probability ``caption_drop`` (50%); at sampling
ε̂ = ε̂(x_t, ∅) + s · (ε̂(x_t, z_i) - ε̂(x_t, ∅)) with ``guidance_scale`` s
(:class:`dalle2_edu.diffusion.guidance.GuidedModel`).

Embeddings are expected at the diffusion scale of :mod:`dalle2_edu.stages.clip`: L2-normalised, times √d.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from dalle2_edu.diffusion import GaussianDiffusion, diffusion_loss, respaced, sample
from dalle2_edu.diffusion.config import DiffusionConfig, coerce_diffusion, diffusion_field, lift_legacy_fields
from dalle2_edu.diffusion.guidance import GuidedModel
from dalle2_edu.nets.unet import UNet, UNetConfig
from dalle2_edu.stages.attributes import default_unet

__all__ = ["CLIPDecoder", "DecoderConfig", "decoder_loss_fn", "guided_decoder", "respaced", "sample_decoder",
           "train_decoder", "save_decoder", "load_decoder", "init_from_image_model"]  # fmt: skip


@dataclass
class DecoderConfig:
    """What defines a CLIP-conditioned decoder (saved beside its weights).

    :param unet: ``UNetConfig`` fields of the image network (``cond_dim``, ``context_dim``, ``learned_sigma`` are
        set from the fields below).
    :param clip_dim: size d of the CLIP image embedding.
    :param cond_dim: size of the vector z_i is projected to before the UNet adds it to the timestep embedding.
    :param num_clip_tokens: context tokens made from z_i.
    :param context_dim: width of every context token.
    :param text_width: width of CLIP's per-token caption features to attend to as well; None: no caption tokens.
    :param emb_drop: probability of replacing z_i (and the caption) by the null condition in training.
    :param caption_drop: probability of dropping the caption tokens alone in training.
    """

    unet: dict = field(default_factory=default_unet)
    clip_dim: int = 64
    cond_dim: int = 128
    num_clip_tokens: int = 4
    context_dim: int = 64
    text_width: int | None = None
    diffusion: DiffusionConfig = diffusion_field(var_type="learned_range", loss_type="hybrid")
    emb_drop: float = 0.1
    caption_drop: float = 0.5

    def __post_init__(self):
        coerce_diffusion(self)
        for name in ("clip_dim", "cond_dim", "num_clip_tokens", "context_dim"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"DecoderConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("emb_drop", "caption_drop"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"DecoderConfig.{name} must lie in [0, 1), got {getattr(self, name)}")

    def unet_config(self) -> UNetConfig:
        return UNetConfig.from_dict(
            {**self.unet, "cond_dim": self.cond_dim, "context_dim": self.context_dim,
             "learned_sigma": self.diffusion.learned_sigma}
        )  # fmt: skip

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DecoderConfig:
        return cls(**lift_legacy_fields(d))


class CLIPDecoder(nn.Module):
    """``decoder(x_t, t, image_emb, drop=None, text_tokens=None, text_mask=None)`` → the UNet's output.

    :param x_t: (B, 3, H, W) noisy images.
    :param t: (B,) timesteps.
    :param image_emb: (B, clip_dim) CLIP image embeddings (√d scale).
    :param drop: optional (B,) bool; True rows use the null condition (for guidance), as if z_i were unknown.
    :param text_tokens: (B, L, text_width) caption features, required when built with ``text_width``.
    :param text_mask: (B, L) bool, True for real caption tokens.
    """

    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.config = config
        self.unet = UNet.from_config(config.unet_config())
        self.to_cond = nn.Linear(config.clip_dim, config.cond_dim)
        self.to_tokens = nn.Linear(config.clip_dim, config.num_clip_tokens * config.context_dim)
        self.token_norm = nn.LayerNorm(config.context_dim)
        self.null_emb = nn.Parameter(torch.zeros(config.clip_dim))
        if config.text_width is not None:
            width = config.text_width
            self.caption_proj = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, config.context_dim))

    def conditioning(self, image_emb, drop=None, text_tokens=None, text_mask=None):
        """z_i → (cond (B, cond_dim), context (B, K [+ L], context_dim), context_mask (B, K [+ L]) bool)."""
        cfg = self.config
        if image_emb.ndim != 2 or image_emb.shape[1] != cfg.clip_dim:
            raise ValueError(f"image_emb must have shape (B, {cfg.clip_dim}), got {tuple(image_emb.shape)}")
        B = image_emb.shape[0]
        drop = torch.zeros(B, dtype=torch.bool, device=image_emb.device) if drop is None else drop.to(torch.bool)
        if drop.shape != (B,):
            raise ValueError(f"drop must have shape ({B},), got {tuple(drop.shape)}")
        emb = torch.where(drop[:, None], self.null_emb.to(image_emb.dtype), image_emb)  # (B, d)
        tokens = self.token_norm(self.to_tokens(emb).view(B, cfg.num_clip_tokens, cfg.context_dim))  # (B, K, c)
        mask = torch.ones(B, cfg.num_clip_tokens, dtype=torch.bool, device=emb.device)
        if cfg.text_width is None:
            if text_tokens is not None:
                raise ValueError("this decoder was built without caption tokens (text_width=None); do not pass them")
            return self.to_cond(emb), tokens, mask
        if text_tokens is None or text_mask is None:
            raise ValueError("this decoder attends to caption tokens: pass text_tokens (B, L, w) and text_mask (B, L)")
        if text_tokens.ndim != 3 or text_tokens.shape[0] != B or text_tokens.shape[2] != cfg.text_width:
            raise ValueError(f"text_tokens must have shape ({B}, L, {cfg.text_width}), got {tuple(text_tokens.shape)}")
        if text_mask.shape != text_tokens.shape[:2]:
            raise ValueError(f"text_mask must have shape {tuple(text_tokens.shape[:2])}, got {tuple(text_mask.shape)}")
        caption = self.caption_proj(text_tokens)  # (B, L, c)
        caption_mask = text_mask.to(torch.bool) & ~drop[:, None]
        return self.to_cond(emb), torch.cat([tokens, caption], 1), torch.cat([mask, caption_mask], 1)

    def forward(self, x, t, image_emb, drop=None, text_tokens=None, text_mask=None):
        cond, context, mask = self.conditioning(image_emb.to(x.dtype), drop, text_tokens, text_mask)
        return self.unet(x, t, cond=cond, context=context, context_mask=mask)


def init_from_image_model(decoder: CLIPDecoder, image_model: nn.Module) -> list[str]:
    """Warm-start the decoder from a trained attribute model's UNet (``dalle2_edu.stages.attributes``) or from another
    decoder (to continue training a shipped one).

    Every weight whose name and shape match is copied. From an attribute model only the UNet is copied and the
    conditioning layers (the z_i projections, the attention blocks' context keys/values) stay freshly initialised: the
    UNet already knows how to draw products, so training only has to teach it to read z_i, which takes far fewer CPU
    steps than starting from zero.

    :return: names of the copied tensors.
    """
    if isinstance(image_model, CLIPDecoder):
        source, target = image_model.state_dict(), decoder.state_dict()
        module = decoder
    else:
        source, target = image_model.unet.state_dict(), decoder.unet.state_dict()
        module = decoder.unet
    copied = [k for k, v in source.items() if k in target and target[k].shape == v.shape]
    module.load_state_dict({**target, **{k: source[k] for k in copied}})
    return copied


def decoder_loss_fn(gd: GaussianDiffusion, config: DecoderConfig):
    """The Trainer's ``loss_fn`` for batches ``(images, image_emb)`` or ``(images, image_emb, text_tokens,
    text_mask)``: images (B, 3, H, W) uint8 or float in [-1, 1]; image_emb (B, d). Drops z_i with probability
    ``emb_drop`` and the caption with probability ``caption_drop`` (classifier-free guidance)."""

    def prepare(batch):
        x0, image_emb, *caption = batch
        B = x0.shape[0]
        drop = torch.rand(B, device=x0.device) < config.emb_drop
        kwargs = {"image_emb": image_emb.float(), "drop": drop}
        if caption:
            text_tokens, text_mask = caption
            keep = torch.rand(B, 1, device=x0.device) >= config.caption_drop
            kwargs.update(text_tokens=text_tokens.float(), text_mask=text_mask.to(torch.bool) & keep)
        return x0, kwargs

    return diffusion_loss(gd, prepare)


def guided_decoder(decoder: CLIPDecoder, image_emb, guidance_scale: float, text_tokens=None, text_mask=None):
    """``model(x_t, t)`` for the samplers: ``decoder`` with classifier-free guidance at ``guidance_scale``."""
    B = image_emb.shape[0]
    cond = {"image_emb": image_emb, "drop": torch.zeros(B, dtype=torch.bool, device=image_emb.device)}
    null = {"image_emb": image_emb, "drop": torch.ones(B, dtype=torch.bool, device=image_emb.device)}
    if text_tokens is not None:
        cond.update(text_tokens=text_tokens, text_mask=text_mask)
        null.update(text_tokens=text_tokens, text_mask=text_mask)
    mean_channels = 3 if decoder.config.diffusion.learned_sigma else None
    return GuidedModel(decoder, cond, null, guidance_scale, mean_channels=mean_channels)


@torch.no_grad()
def sample_decoder(
    decoder: CLIPDecoder,
    gd: GaussianDiffusion,
    image_emb: torch.Tensor,
    steps: int = 50,
    sampler: str = "ddim",
    guidance_scale: float = 3.0,
    eta: float = 0.0,
    seed: int = 0,
    noise: torch.Tensor | None = None,
    text_tokens: torch.Tensor | None = None,
    text_mask: torch.Tensor | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Draw one 32×32 image per row of ``image_emb``.

    :param steps: steps of the respaced process.
    :param sampler: ``"ddim"`` (η = ``eta``), ``"ddpm"`` (ancestral, with the model's variance), or an ODE solver,
        ``"dpmpp2m"``, ``"euler"``, ``"heun"``, for which ``steps`` counts network calls on the full process (see
        :data:`~dalle2_edu.diffusion.sampling.SAMPLERS`).
    :param guidance_scale: 0 ignores z_i, 1 is plain conditional sampling, > 1 follows z_i more closely.
    :param seed: fixes the starting noise and every step's noise.
    :param noise: (B, 3, H, W) starting x_T instead of seeded noise (e.g. from DDIM inversion, for variations).
    :return: (B, 3, H, W) images in [-1, 1].
    """
    device = next(decoder.parameters()).device
    image_emb = torch.as_tensor(image_emb, dtype=torch.float32).to(device)
    if image_emb.ndim == 1:
        image_emb = image_emb[None]
    size = decoder.unet.config.image_size
    net = guided_decoder(decoder, image_emb, guidance_scale, text_tokens, text_mask)
    return sample(net, gd, (image_emb.shape[0], 3, size, size), sampler=sampler, steps=steps, eta=eta, seed=seed,
                  noise=noise, progress=progress, desc=f"decoder {size}x{size}")


def train_decoder(
    images: torch.Tensor,
    image_emb: torch.Tensor,
    config: DecoderConfig | None = None,
    steps: int = 2000,
    batch_size: int = 64,
    lr: float = 3e-4,
    seed: int = 0,
    init_from: nn.Module | None = None,
    out_dir=None,
    progress: bool = True,
    **trainer_kwargs,
):
    """Train a :class:`CLIPDecoder` with the project's Trainer on pictures and their CLIP image embeddings.

    :param images: (N, 3, 32, 32) uint8 training pictures.
    :param image_emb: (N, d) their CLIP image embeddings (``dalle2_edu.stages.clip.embed_dataset``).
    :param init_from: an ``AttributeUNet`` or a ``CLIPDecoder`` to warm-start from (:func:`init_from_image_model`), or
        None.
    :param out_dir: resumable checkpoint folder, or None.
    :param trainer_kwargs: more :class:`~dalle2_edu.train.Trainer` arguments (e.g. ``log_every``).
    :return: ``(trainer, diffusion)``; sample from ``trainer.ema_model``.
    """
    from dalle2_edu.train import Trainer
    from dalle2_edu.utils import set_seed

    if len(images) != len(image_emb):
        raise ValueError(f"{len(images)} images but {len(image_emb)} embeddings; pass one embedding per image")
    config = config or DecoderConfig(clip_dim=image_emb.shape[1])
    if image_emb.shape[1] != config.clip_dim:
        raise ValueError(f"embeddings have size {image_emb.shape[1]} but config.clip_dim is {config.clip_dim}")
    set_seed(seed)
    model, gd = CLIPDecoder(config), config.diffusion.build()
    if init_from is not None:
        init_from_image_model(model, init_from)
    kwargs = dict(warmup_steps=min(200, max(steps // 10, 1)), ema_decay=0.999, ckpt_every=250 if out_dir else None)
    kwargs.update(trainer_kwargs)
    trainer = Trainer(
        model, decoder_loss_fn(gd, config), (images, image_emb.float()), batch_size=batch_size, lr=lr, seed=seed,
        out_dir=out_dir, config={"decoder": config.to_dict()}, progress=progress, **kwargs,
    )  # fmt: skip
    trainer.fit(steps, resume=out_dir is not None)
    return trainer, gd


def default_decoder_path() -> Path:
    from dalle2_edu.utils import data_dir

    return data_dir() / "checkpoints" / "decoder32.safetensors"


def save_decoder(model: CLIPDecoder, path=None, metrics: dict | None = None, half: bool = True) -> Path:
    """Safetensors weights (fp16 by default) with the config in the metadata, and ``metrics`` as JSON beside them."""
    from dalle2_edu.checkpoint import save_model

    return save_model(default_decoder_path() if path is None else path, model, "decoder", metrics, half)


def build_decoder(config: dict) -> CLIPDecoder:
    """An untrained decoder of a saved config (the checkpoint registry's builder)."""
    return CLIPDecoder(DecoderConfig.from_dict(config))


def load_decoder(path=None, device="cpu") -> tuple[CLIPDecoder, GaussianDiffusion]:
    """Load a decoder written by :func:`save_decoder` (default ``data/checkpoints/decoder32.safetensors``).

    :return: ``(decoder in eval mode, diffusion)``.
    """
    from dalle2_edu.checkpoint import load_model

    model = load_model(default_decoder_path() if path is None else path, "decoder",
                       build_decoder,
                       "train one with `python -m dalle2_edu train decoder`", device)  # fmt: skip
    return model, model.config.diffusion.build()
