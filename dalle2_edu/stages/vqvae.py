"""A VQ-VAE for the catalogue's pictures: a 32×32 RGB picture in [-1, 1] ↔ an 8×8 grid of codebook tokens.

Two of the "three roads" to text → image draw in this autoencoder's latent space instead of in pixels:
DALL·E (Ramesh et al. 2021) writes the 64 tokens one by one with a transformer
(:mod:`dalle2_edu.stages.autoregressive`), latent diffusion (Rombach et al. 2022) denoises the 8×8 latent grid
(:mod:`dalle2_edu.stages.latent`). The same VQ-VAE serves both, so the roads differ only in the generator.

The model (van den Oord et al. 2017, "Neural Discrete Representation Learning")::

    x (B, 3, 32, 32) ─encoder─▶ z_e (B, D, 8, 8) ─nearest code─▶ z_q (B, D, 8, 8), tokens (B, 8, 8) ─decoder─▶ x̂

* **Encoder**: a 3×3 convolution, then per level residual blocks and a strided 4×4 convolution that halves the side
  (32 → 16 → 8 with the default ``channel_mult=(1, 2, 2)``), then a 1×1 convolution to the code width D.
  The **decoder** mirrors it with transposed 4×4 convolutions.
* **Quantisation**: every one of the 64 vectors z_e[:, i, j] is replaced by its nearest codebook entry,
  k* = argmin_k ‖z_e - e_k‖², with ‖z - e‖² = ‖z‖² - 2 z·e + ‖e‖² computed for all K codes at once (in fp32).
* **Straight-through estimator**: argmin has no gradient, so the decoder's gradient is copied to the encoder as if
  quantisation were the identity: z_q = z_e + sg(e_k* - z_e) (sg = stop-gradient, ``.detach()``).
* **Losses** (the paper's eq. 3, with a codebook *loss*, not EMA updates: every term is an ordinary gradient)::

      L = ‖x - x̂‖² + ‖sg(z_e) - e‖² + β ‖z_e - sg(e)‖²,   β = 0.25
          reconstruction  codebook     commitment

  The codebook term moves the codes towards the encoder outputs that chose them; the commitment term keeps the
  encoder from drifting away from its codes. All three are means over elements (not sums).
* **Dead-code restarts**: a code that no encoder output chose for ``restart_window`` training steps is moved onto a
  random encoder output of the current batch (Dhariwal et al. 2020, Jukebox; Łańcucki et al. 2020). At
  construction every code counts as dead, so the first training batch initialises the whole codebook from encoder
  outputs (a data-dependent initialisation for free). The batch's codebook **perplexity** exp(H(p)), p the
  frequencies of the codes in the batch, says how many codes are effectively in use (K at best, 1 at worst).

A likelihood for the bits/dim bound. The decoder also predicts a per-pixel log-scale log σ (a small head that reads
the decoder's last features *detached*, so it only calibrates and never changes the mean), and
:meth:`VQVAE.decoder_nll` scores 8-bit pixels under the discretised Gaussian of
:func:`dalle2_edu.diffusion.losses.discretized_gaussian_log_likelihood` (the same bins as the diffusion decoder's
L_0). The head is trained by that negative log-likelihood (nats per dimension, added to the loss with a small weight;
it has no other gradient path). With the deterministic encoder, q(z | x) is a point mass and the ELBO is
log p(x | z_q) + log p(z | c), so

    -log p(x | c) ≤ NLL_tokens(z | c) + NLL_decoder(x | z_q)   (nats),   bits/dim = that / (3·32·32 · ln 2)

(:func:`dalle2_edu.stages.autoregressive.bits_per_dim_bound`).

Train it with the project's :class:`~dalle2_edu.train.Trainer` (:func:`vqvae_loss_fn`, :func:`train_vqvae`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dalle2_edu.diffusion.losses import discretized_gaussian_log_likelihood
from dalle2_edu.images import check_images, describe, to_float, to_uint8
from dalle2_edu.nets.layers import group_norm

__all__ = ["VQVAE", "VQVAEConfig", "vqvae_loss_fn", "train_vqvae", "encode_tokens", "evaluate_vqvae", "save_vqvae",
           "load_vqvae", "build_vqvae"]  # fmt: skip

LOG_SCALE_RANGE = (-7.0, 1.0)
"""Bounds of the decoder's predicted log σ: e^-7 ≈ 0.0009 is a quarter of a pixel bin (2/255), e^1 wider than the
whole [-1, 1] range."""


@dataclass
class VQVAEConfig:
    """What defines a VQ-VAE (saved beside its weights).

    :param image_size: side of the square pictures (32 for the catalogue).
    :param channels: base width C of the convolutions.
    :param channel_mult: width multiplier per level; the side is halved between levels, so the token grid has side
        ``image_size / 2 ** (len(channel_mult) - 1)`` (8 with the default three levels).
    :param num_res_blocks: residual blocks per level, in the encoder and in the decoder.
    :param codebook_size: K, the number of codes (the image "vocabulary").
    :param code_dim: D, the width of each code and of the latents z_e, z_q. Small on purpose: 8×8×8 = 512 numbers
        against 3072 pixels for the latent-diffusion road, and low-dimensional codebooks are used more evenly.
    :param beta: β, the weight of the commitment loss.
    :param restart_window: a code unused for this many training steps is moved onto an encoder output; 0 never.
    :param nll_weight: weight of the scale head's NLL in the loss. It only trains that head, and Adam moves a
        parameter at the same speed whatever the scale of its gradient, so the weight matters little to the head; a
        small one keeps the head's large early gradients from dominating the Trainer's global gradient-norm clipping.
    """

    image_size: int = 32
    channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    codebook_size: int = 256
    code_dim: int = 8
    beta: float = 0.25
    restart_window: int = 100
    nll_weight: float = 0.01

    def __post_init__(self):
        self.channel_mult = tuple(int(m) for m in self.channel_mult)
        for name in ("image_size", "channels", "num_res_blocks", "codebook_size", "code_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise ValueError(f"VQVAEConfig.{name} must be a whole number >= 1, got {value!r}")
        if not self.channel_mult or min(self.channel_mult) < 1:
            raise ValueError(f"channel_mult must be a non-empty tuple of positive ints, got {self.channel_mult}")
        factor = 2 ** (len(self.channel_mult) - 1)
        if self.image_size % factor:
            raise ValueError(f"image_size={self.image_size} must be divisible by 2**(len(channel_mult)-1) = {factor}")
        for name in ("beta", "nll_weight"):
            if not 0.0 <= getattr(self, name) < float("inf"):
                raise ValueError(f"VQVAEConfig.{name} must be a finite number >= 0, got {getattr(self, name)!r}")
        if isinstance(self.restart_window, bool) or int(self.restart_window) != self.restart_window:
            raise ValueError(f"restart_window must be a whole number (0: never restart), got {self.restart_window!r}")
        if self.restart_window < 0:
            raise ValueError(f"restart_window must be >= 0 (0: never restart), got {self.restart_window}")

    @property
    def grid_size(self) -> int:
        """Side of the token grid: 8 for 32×32 pictures and three levels."""
        return self.image_size // 2 ** (len(self.channel_mult) - 1)

    @property
    def num_tokens(self) -> int:
        """Tokens per picture (64)."""
        return self.grid_size**2

    @property
    def num_dims(self) -> int:
        """Pixel values per picture, 3·H·W: the "dim" of bits/dim."""
        return 3 * self.image_size**2

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channel_mult"] = list(self.channel_mult)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> VQVAEConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown VQVAEConfig field(s) {unknown}; known: {sorted(known)}")
        return cls(**d)


class ResidualBlock(nn.Module):
    """``skip(x) + conv(SiLU(GN(conv(SiLU(GN(x))))))``, with a 1×1 convolution on the skip path when widths differ."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.norm1, self.conv1 = group_norm(in_ch), nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2, self.conv2 = group_norm(out_ch), nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_ch, H, W) → (B, out_ch, H, W)."""
        h = self.conv1(F.silu(self.norm1(x)))
        return self.skip(x) + self.conv2(F.silu(self.norm2(h)))


class Encoder(nn.Module):
    """x (B, 3, S, S) → z_e (B, D, S/f, S/f), f = 2 ** (levels - 1)."""

    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        widths = [cfg.channels * m for m in cfg.channel_mult]
        layers: list[nn.Module] = [nn.Conv2d(3, widths[0], 3, padding=1)]
        ch = widths[0]
        for level, w in enumerate(widths):
            for _ in range(cfg.num_res_blocks):
                layers.append(ResidualBlock(ch, w))
                ch = w
            if level < len(widths) - 1:
                layers.append(nn.Conv2d(ch, ch, 4, stride=2, padding=1))  # halves the side
        layers += [group_norm(ch), nn.SiLU(), nn.Conv2d(ch, cfg.code_dim, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Decoder(nn.Module):
    """z_q (B, D, g, g) → (mean (B, 3, S, S), log σ (B, 3, S, S)); the mirror image of :class:`Encoder`."""

    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        widths = [cfg.channels * m for m in cfg.channel_mult]
        ch = widths[-1]
        layers: list[nn.Module] = [nn.Conv2d(cfg.code_dim, ch, 3, padding=1)]
        for level in reversed(range(len(widths))):
            for _ in range(cfg.num_res_blocks):
                layers.append(ResidualBlock(ch, widths[level]))
                ch = widths[level]
            if level > 0:
                layers.append(nn.ConvTranspose2d(ch, ch, 4, stride=2, padding=1))  # doubles the side
        self.trunk = nn.Sequential(*layers)
        self.to_mean = nn.Sequential(group_norm(ch), nn.SiLU(), nn.Conv2d(ch, 3, 3, padding=1))
        self.to_log_scale = nn.Conv2d(ch, 3, 3, padding=1)
        nn.init.zeros_(self.to_log_scale.weight)
        nn.init.constant_(self.to_log_scale.bias, -2.0)  # σ ≈ 0.14 to start with

    def forward(self, z_q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(z_q)  # (B, C, S, S)
        mean = self.to_mean(h)  # (B, 3, S, S), not clamped: the loss sees the raw prediction
        # the scale head reads detached features: its NLL calibrates σ and never pulls on the mean
        log_scale = self.to_log_scale(h.detach()).clamp(*LOG_SCALE_RANGE)  # (B, 3, S, S)
        return mean, log_scale


class VQVAE(nn.Module):
    """Encoder, codebook and decoder; see the module docstring.

    :param config: a :class:`VQVAEConfig` (default: 32×32 pictures → 8×8 tokens from K = 256 codes of width 8).

    Buffer ``unused_steps`` (K,) counts, per code, the training steps since an encoder output last chose it.
    """

    def __init__(self, config: VQVAEConfig | None = None):
        super().__init__()
        self.config = config = config or VQVAEConfig()
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.codebook = nn.Embedding(config.codebook_size, config.code_dim)
        nn.init.normal_(self.codebook.weight, std=1.0 / math.sqrt(config.code_dim))
        # every code starts "dead", so the first training batch places the codebook on encoder outputs
        start = max(config.restart_window, 1)
        self.register_buffer("unused_steps", torch.full((config.codebook_size,), start, dtype=torch.long))

    # -- the three parts -----------------------------------------------------------------------------------------------

    def _pictures(self, x) -> torch.Tensor:
        size = self.config.image_size
        x = check_images(x, name="images", size=size, allow_single=True, shape=f"(B, 3, {size}, {size})")
        return x.to(self.codebook.weight.device)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Pictures → pre-quantisation latents.

        :param x: (B, 3, S, S) uint8 or float in [-1, 1].
        :return: z_e (B, D, g, g), g = ``config.grid_size``.
        """
        return self.encoder(self._pictures(x))

    def nearest_codes(self, z_e: torch.Tensor) -> torch.Tensor:
        """k*[b, i, j] = argmin_k ‖z_e[b, :, i, j] - e_k‖², in fp32 even under autocast.

        :param z_e: (B, D, g, g). :return: tokens (B, g, g) int64.
        """
        self._check_latents(z_e, "z_e")
        B, D, H, W = z_e.shape
        with torch.no_grad(), torch.autocast(z_e.device.type, enabled=False):
            flat = z_e.detach().float().permute(0, 2, 3, 1).reshape(-1, D)  # (N, D), N = B·g·g
            codes = self.codebook.weight.detach().float()  # (K, D)
            # ‖z - e‖² = ‖z‖² - 2 z·e + ‖e‖², for all N × K pairs at once
            dist = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ codes.T + codes.pow(2).sum(1)[None]  # (N, K)
            return dist.argmin(dim=1).view(B, H, W)

    def quantize(self, z_e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Snap every latent vector to its nearest code, with the straight-through gradient.

        :param z_e: (B, D, g, g) encoder outputs.
        :return: ``(z_q, tokens, stats)``: z_q (B, D, g, g) equal in value to the chosen codes but with the gradient
            of z_e (z_q = z_e + sg(e - z_e)); tokens (B, g, g) int64 in [0, K); stats a dict of scalar tensors:
            ``codebook_loss`` ‖sg(z_e) - e‖², ``commitment_loss`` ‖z_e - sg(e)‖² (means over elements),
            ``perplexity`` exp(H) of the batch's code frequencies, ``codes_used`` how many distinct codes it chose.
        """
        tokens = self.nearest_codes(z_e)  # (B, g, g)
        e = self.codebook(tokens).permute(0, 3, 1, 2).to(z_e.dtype)  # (B, D, g, g), gradient to the codebook only
        stats = {
            "codebook_loss": F.mse_loss(e, z_e.detach()),
            "commitment_loss": F.mse_loss(z_e, e.detach()),
            **self.usage(tokens),
        }
        if z_e.requires_grad and torch.is_grad_enabled():
            z_q = z_e + (e - z_e).detach()  # straight-through: value e (up to rounding), gradient of z_e
        else:
            z_q = e  # nothing to differentiate: the codes exactly
        return z_q, tokens, stats

    def usage(self, tokens: torch.Tensor) -> dict:
        """``perplexity`` exp(-Σ p_k log p_k) of the code frequencies p in ``tokens``, and ``codes_used``."""
        counts = torch.bincount(tokens.reshape(-1), minlength=self.config.codebook_size).float()  # (K,)
        p = counts / counts.sum().clamp_min(1)
        entropy = -(p * torch.log(p.clamp_min(1e-12))).sum()
        return {"perplexity": entropy.exp(), "codes_used": (counts > 0).sum()}

    def decode_distribution(self, z_q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z_q (B, D, g, g) → (mean, log σ), each (B, 3, S, S); the mean is not clamped."""
        self._check_latents(z_q, "z_q")
        return self.decoder(z_q)

    def decode(self, z_q: torch.Tensor, clamp: bool = True) -> torch.Tensor:
        """Latents → pictures (B, 3, S, S), clamped to [-1, 1] unless ``clamp=False``."""
        mean, _ = self.decode_distribution(z_q)
        return mean.clamp(-1, 1) if clamp else mean

    def tokens_to_latents(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token grid (B, g, g) (or (B, g·g)) → z_q (B, D, g, g), the codes it names."""
        tokens = self.check_tokens(tokens)
        return self.codebook(tokens).permute(0, 3, 1, 2)

    def decode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token grid (B, g, g) → pictures (B, 3, S, S) in [-1, 1]."""
        return self.decode(self.tokens_to_latents(tokens))

    @torch.no_grad()
    def encode_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Pictures (B, 3, S, S) → tokens (B, g, g) int64 (no restarts, no statistics)."""
        return self.nearest_codes(self.encode(x))

    # -- training ------------------------------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> dict:
        """Encode, quantise, decode, and every loss term.

        In training mode, dead codes are restarted first (:meth:`restart_dead_codes`) and the usage counters are
        updated after quantisation.

        :param x: (B, 3, S, S) uint8 or float in [-1, 1].
        :return: dict with ``loss`` = ``recon_loss`` + ``codebook_loss`` + β ``commitment_loss``
            + ``nll_weight`` · ``scale_nll``;
            ``recon`` (B, 3, S, S) the decoder's mean (not clamped), ``log_scale`` (B, 3, S, S), ``z_e``, ``z_q``,
            ``tokens`` (B, g, g), ``recon_loss`` (MSE), ``scale_nll`` (discretised Gaussian NLL of the pixels given
            the detached mean, nats per dimension), ``bits_per_dim`` (the same in bits), ``perplexity``,
            ``codes_used``, ``restarted`` (codes restarted in this step).
        """
        x = self._pictures(x)
        z_e = self.encoder(x)  # (B, D, g, g)
        restarted = self.restart_dead_codes(z_e) if self.training else 0
        z_q, tokens, stats = self.quantize(z_e)
        if self.training:
            self._count_usage(tokens)
        mean, log_scale = self.decoder(z_q)  # (B, 3, S, S) each
        recon_loss = F.mse_loss(mean, x)
        target = to_float(to_uint8(x))  # the 256 pixel levels the discretised likelihood scores
        scale_nll = -discretized_gaussian_log_likelihood(target, mean.detach(), log_scale).mean()
        cfg = self.config
        loss = recon_loss + stats["codebook_loss"] + cfg.beta * stats["commitment_loss"] + cfg.nll_weight * scale_nll
        return {
            "loss": loss, "recon": mean, "log_scale": log_scale, "z_e": z_e, "z_q": z_q, "tokens": tokens,
            "recon_loss": recon_loss, "scale_nll": scale_nll, "bits_per_dim": scale_nll / math.log(2.0),
            "restarted": restarted, **stats,
        }  # fmt: skip

    @torch.no_grad()
    def restart_dead_codes(self, z_e: torch.Tensor) -> int:
        """Move every code unused for ``restart_window`` training steps onto a random encoder output of this batch.

        Draws from torch's global generator (the Trainer seeds and checkpoints it). Picks distinct outputs when the
        batch has enough; otherwise some are drawn twice and a little noise (1% of the outputs' spread) separates
        them.

        :param z_e: (B, D, g, g) this batch's encoder outputs.
        :return: how many codes were restarted.
        """
        window = self.config.restart_window
        if window <= 0:
            return 0
        dead = (self.unused_steps >= window).nonzero().flatten()  # (n,)
        n = dead.numel()
        if n == 0:
            return 0
        flat = z_e.detach().float().permute(0, 2, 3, 1).reshape(-1, z_e.shape[1])  # (N, D)
        N = flat.shape[0]
        if N >= n:
            pick = torch.randperm(N)[:n].to(flat.device)
            new = flat[pick]
        else:
            pick = torch.randint(0, N, (n,)).to(flat.device)
            new = flat[pick] + 0.01 * flat.std().clamp_min(1e-6) * torch.randn(n, flat.shape[1]).to(flat.device)
        self.codebook.weight.data[dead] = new.to(self.codebook.weight.dtype)
        self.unused_steps[dead] = 0
        return int(n)

    @torch.no_grad()
    def _count_usage(self, tokens: torch.Tensor) -> None:
        used = torch.bincount(tokens.reshape(-1), minlength=self.config.codebook_size) > 0  # (K,)
        self.unused_steps.add_(1).masked_fill_(used, 0)

    # -- likelihood ----------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def decoder_nll(self, images: torch.Tensor, tokens: torch.Tensor | None = None) -> torch.Tensor:
        """-log p(x | z_q) in nats per picture: the decoder's discretised Gaussian (mean and per-pixel σ it predicts)
        scored on the 8-bit pixels, summed over all 3·S·S values.

        :param images: (B, 3, S, S) uint8, or float in [-1, 1] (snapped to the nearest of the 256 levels).
        :param tokens: (B, g, g) codes to decode; default: the picture's own codes (:meth:`encode_tokens`).
        :return: (B,) nats, ≥ 0 (each bin's probability is at most 1).
        """
        x = to_float(to_uint8(self._pictures(images)))  # (B, 3, S, S) on the 256 levels
        tokens = self.encode_tokens(x) if tokens is None else self.check_tokens(tokens)
        if tokens.shape[0] != x.shape[0]:
            raise ValueError(f"{x.shape[0]} pictures but {tokens.shape[0]} token grids; pass one grid per picture")
        mean, log_scale = self.decode_distribution(self.tokens_to_latents(tokens))
        return -discretized_gaussian_log_likelihood(x, mean, log_scale).flatten(1).sum(1)

    # -- checks --------------------------------------------------------------------------------------------------------

    def check_tokens(self, tokens) -> torch.Tensor:
        """Validate a token grid, int64 (B, g, g) or (B, g·g) with values in [0, K): → (B, g, g) on the model's
        device."""
        g, K = self.config.grid_size, self.config.codebook_size
        if not torch.is_tensor(tokens) or tokens.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"tokens must be an int64 tensor (B, {g}, {g}), got {describe(tokens)}")
        if tokens.ndim == 2 and tokens.shape[1] == g * g:
            tokens = tokens.view(-1, g, g)
        if tokens.ndim != 3 or tuple(tokens.shape[1:]) != (g, g):
            raise ValueError(f"tokens must have shape (B, {g}, {g}) or (B, {g * g}), got {tuple(tokens.shape)}")
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= K):
            raise ValueError(f"tokens must lie in [0, {K}) (this codebook's size), got values in "
                             f"[{int(tokens.min())}, {int(tokens.max())}]")  # fmt: skip
        return tokens.long().to(self.codebook.weight.device)

    def _check_latents(self, z: torch.Tensor, name: str) -> None:
        D = self.config.code_dim
        if not torch.is_tensor(z) or z.ndim != 4 or z.shape[1] != D:
            raise ValueError(f"{name} must be a float tensor (B, {D}, g, g) (D = code_dim), got {describe(z)}")


# ----------------------------------------------------------------------------------------------------------------------
# training with the project's Trainer


def vqvae_loss_fn():
    """The Trainer's ``loss_fn(model, batch)`` for batches of pictures (B, 3, S, S) uint8 or float in [-1, 1] (a
    tuple whose first item is the pictures, or a dict with key ``image``, works too).

    :return: ``loss_fn`` returning ``loss`` and the scalars the Trainer logs: ``mse``, ``codebook``, ``commit``,
        ``bits_per_dim`` (the decoder's discretised NLL given the picture's own codes), ``perplexity``, ``codes_used``
        (in the batch) and ``restarted``.
    """

    def loss_fn(model: VQVAE, batch):
        images = batch["image"] if isinstance(batch, dict) else batch[0] if isinstance(batch, tuple | list) else batch
        out = model(images)
        return {"loss": out["loss"], "mse": out["recon_loss"], "codebook": out["codebook_loss"],
                "commit": out["commitment_loss"], "bits_per_dim": out["bits_per_dim"], "perplexity": out["perplexity"],
                "codes_used": out["codes_used"], "restarted": out["restarted"]}  # fmt: skip

    return loss_fn


def train_vqvae(
    images: torch.Tensor,
    config: VQVAEConfig | None = None,
    steps: int = 2000,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    out_dir=None,
    progress: bool = True,
    **trainer_kwargs,
):
    """Train a :class:`VQVAE` on pictures with the project's :class:`~dalle2_edu.train.Trainer` (AdamW, warm-up,
    gradient clipping, EMA, atomic resumable checkpoints in ``out_dir``).

    :param images: (N, 3, S, S) uint8 training pictures (e.g. ``ProductCatalogue(...).images``).
    :param steps: optimizer updates.
    :param batch_size: pictures per update.
    :param lr: peak learning rate.
    :param seed: seeds the weights, the batches and the code restarts.
    :param out_dir: resumable checkpoint folder (running again continues), or None.
    :param trainer_kwargs: more Trainer arguments (they win over the defaults here).
    :return: the trainer; encode and decode with ``trainer.ema_model``.
    """
    from dalle2_edu.train import Trainer
    from dalle2_edu.utils import set_seed

    config = config or VQVAEConfig()
    S = config.image_size
    if not torch.is_tensor(images) or images.ndim != 4 or tuple(images.shape[1:]) != (3, S, S):
        raise ValueError(f"images must be a tensor (N, 3, {S}, {S}), got {describe(images)}")
    set_seed(seed)
    model = VQVAE(config)
    kwargs = dict(warmup_steps=min(100, max(steps // 10, 1)), ema_decay=0.995, ckpt_every=250 if out_dir else None,
                  desc="training vqvae")  # fmt: skip
    kwargs.update(trainer_kwargs)
    trainer = Trainer(
        model, vqvae_loss_fn(), images, batch_size=batch_size, lr=lr, seed=seed, out_dir=out_dir,
        config={"vqvae": config.to_dict(), "n_train": len(images)}, progress=progress, **kwargs,
    )  # fmt: skip
    trainer.fit(steps, resume=out_dir is not None)
    return trainer


@torch.no_grad()
def encode_tokens(model: VQVAE, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Token grids of a whole data set, in batches: (N, 3, S, S) → (N, g, g) int64 on the CPU."""
    was_training = model.training
    model.eval()
    try:
        return torch.cat([model.encode_tokens(images[i : i + batch_size]).cpu()
                          for i in range(0, len(images), batch_size)])  # fmt: skip
    finally:
        model.train(was_training)


@torch.no_grad()
def evaluate_vqvae(model: VQVAE, images: torch.Tensor, batch_size: int = 256) -> dict:
    """How well a VQ-VAE reconstructs pictures it is given.

    :param images: (N, 3, S, S) uint8 (or float in [-1, 1]) pictures, e.g. the catalogue's test split.
    :return: dict of floats: ``mse`` (on the [-1, 1] scale), ``psnr_db`` (10 log10(4 / MSE), peak-to-peak 2),
        ``decoder_bits_per_dim`` (-log₂ p(x | z_q) / 3·S·S with the picture's own codes: the decoder's half of the
        bound, not a likelihood of x by itself), ``perplexity`` and ``codes_used`` over all N pictures, ``n``.
    """
    was_training = model.training
    model.eval()
    try:
        sq, nll, tokens = 0.0, 0.0, []
        for i in range(0, len(images), batch_size):
            x = to_float(images[i : i + batch_size]).to(model.codebook.weight.device)
            tok = model.encode_tokens(x)
            sq += (model.decode_tokens(tok) - x).pow(2).sum().item()
            nll += model.decoder_nll(x, tok).sum().item()
            tokens.append(tok.cpu())
        n, dims = len(images), model.config.num_dims
        mse = sq / (n * dims)
        usage = model.usage(torch.cat(tokens))
        return {"n": n, "mse": mse, "psnr_db": 10 * math.log10(4.0 / max(mse, 1e-12)),
                "decoder_bits_per_dim": nll / (n * dims * math.log(2.0)),
                "perplexity": float(usage["perplexity"]), "codes_used": int(usage["codes_used"])}  # fmt: skip
    finally:
        model.train(was_training)


# ----------------------------------------------------------------------------------------------------------------------
# saving and loading


def default_vqvae_path() -> Path:
    from dalle2_edu.utils import data_dir

    return data_dir() / "checkpoints" / "vqvae.safetensors"


def save_vqvae(model: VQVAE, path=None, metrics: dict | None = None, half: bool = False) -> Path:
    """Safetensors weights (float32 by default: the codebook's distances decide the tokens, and fp16 rounding could
    flip near ties) with the config in the metadata, and ``metrics`` as JSON beside them."""
    from dalle2_edu.checkpoint import save_model

    if not isinstance(model, VQVAE):
        raise TypeError(f"save_vqvae needs a VQVAE, got {type(model).__name__}")
    return save_model(default_vqvae_path() if path is None else path, model, "vqvae", metrics, half)


def build_vqvae(config: dict) -> VQVAE:
    """An untrained VQ-VAE of a saved config (the checkpoint registry's builder)."""
    return VQVAE(VQVAEConfig.from_dict(config))


def load_vqvae(path=None, device="cpu") -> VQVAE:
    """Load a VQ-VAE written by :func:`save_vqvae` (default ``data/checkpoints/vqvae.safetensors``), in eval mode."""
    from dalle2_edu.checkpoint import load_model

    how = "train one with dalle2_edu.stages.vqvae.train_vqvae and save it with save_vqvae(trainer.ema_model, path)"
    return load_model(default_vqvae_path() if path is None else path, "vqvae", build_vqvae, how, device, "VQ-VAE")
