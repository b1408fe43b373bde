"""The building blocks of the diffusion UNet: timestep embedding, residual block, attention block, resampling.

Every block keeps the image layout ``(B, C, H, W)``. The UNet in ``unet.py`` stacks them; each piece here can be read,
tested and reused on its own:

- ``timestep_embedding`` turns a diffusion step ``t`` into a vector of sines and cosines (as in the Transformer paper).
- ``ResBlock`` is two 3x3 convolutions with a skip connection; the embedding (time, plus any conditioning vector)
  modulates the features in between with a per-channel scale and shift ("FiLM", improved DDPM's scale-shift norm).
- ``AttentionBlock`` lets every pixel attend to every other pixel and, when given, to extra context tokens whose
  keys and values are concatenated to the pixels' own (how GLIDE and DALL·E 2 feed text and CLIP tokens to the UNet).
- ``Downsample`` / ``Upsample`` halve or double the spatial size.

Layers that write into a residual stream (the second conv of a ResBlock, the attention output projection) start at
zero, so a freshly built block is exactly the identity; training grows each branch from nothing.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (integer or float) timesteps.

    For ``half = dim // 2`` frequencies ``f_i = max_period ** (-i / half)``, ``i = 0 .. half-1``, the embedding is
    ``[cos(t f_0), ..., cos(t f_{half-1}), sin(t f_0), ..., sin(t f_{half-1})]``, plus one trailing zero when ``dim``
    is odd. Fast frequencies tell neighbouring steps apart, slow ones give the coarse position in the chain.
    Timesteps are expected on the scale of step indices (0 .. T-1); continuous times in [0, 1] should be scaled up
    (e.g. by 1000) first, or every frequency but the fastest sees almost the same value.

    :param t: (B,) timesteps, any real dtype; fractional values are fine.
    :param dim: size of each embedding vector, >= 1.
    :param max_period: the slowest wavelength, in timesteps.
    :return: (B, dim) float32 tensor on ``t``'s device.
    """
    if t.ndim != 1:
        raise ValueError(f"timestep_embedding expects t of shape (B,), got {tuple(t.shape)}")
    if dim < 1:
        raise ValueError(f"timestep_embedding needs dim >= 1, got {dim}")
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / max(half, 1))
    args = t.float()[:, None] * freqs[None, :]  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, 2*half)
    if dim % 2 == 1:
        emb = torch.cat([emb, emb.new_zeros(emb.shape[0], 1)], dim=-1)  # (B, dim)
    return emb


def norm_groups(channels: int, max_groups: int = 32, min_group_size: int = 4) -> int:
    """How many GroupNorm groups to use for ``channels`` channels.

    The usual choice is 32 groups, which needs at least 32 channels. At toy widths we instead take the largest number
    of groups that divides ``channels``, is at most ``max_groups`` and leaves at least ``min_group_size`` channels per
    group (so statistics are not computed over a single channel); 1 group when nothing else fits.
    E.g. 128 -> 32, 64 -> 16, 48 -> 12, 16 -> 4, 9 -> 1, 3 -> 1.

    :param channels: number of channels to normalise, >= 1.
    :return: a number of groups that divides ``channels``.
    """
    upper = max(1, min(max_groups, channels // min_group_size))
    return next(g for g in range(upper, 0, -1) if channels % g == 0)


def group_norm(channels: int, groups: int | None = None) -> nn.GroupNorm:
    """A GroupNorm over ``channels`` channels, with ``norm_groups(channels)`` groups unless ``groups`` is given."""
    groups = norm_groups(channels) if groups is None else groups
    if channels % groups != 0:
        raise ValueError(f"GroupNorm groups={groups} must divide the channel count {channels}; pick a divisor or None")
    return nn.GroupNorm(groups, channels)


def zero_module(module: nn.Module) -> nn.Module:
    """Set every parameter of ``module`` to zero and return it (for output layers of residual branches)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """Residual block conditioned on an embedding through a per-channel scale and shift.

    ``out = skip(x) + conv2(dropout(SiLU(norm2(h) * (1 + scale) + shift)))`` with ``h = conv1(SiLU(norm1(x)))`` and
    ``(scale, shift) = Linear(SiLU(emb))``. ``conv2`` starts at zero, so a fresh block returns ``skip(x)``.

    :param in_ch: input channels.
    :param out_ch: output channels; a 1x1 conv maps the skip path when it differs from ``in_ch``.
    :param emb_dim: size of the embedding vector ``emb``.
    :param dropout: dropout probability before the last conv.
    :param groups: GroupNorm groups for both norms; None picks them per width with ``norm_groups``.
    """

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float = 0.0, groups: int | None = None):
        super().__init__()
        self.norm1 = group_norm(in_ch, groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, 2 * out_ch)  # one scale and one shift per output channel
        self.norm2 = group_norm(out_ch, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_module(nn.Conv2d(out_ch, out_ch, kernel_size=3, padding=1))
        self.skip = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, kernel_size=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """
        :param x: (B, in_ch, H, W) features.
        :param emb: (B, emb_dim) embedding (timestep, plus any conditioning vector).
        :return: (B, out_ch, H, W) features.
        """
        h = self.conv1(F.silu(self.norm1(x)))  # (B, out_ch, H, W)
        scale, shift = self.emb_proj(F.silu(emb))[:, :, None, None].chunk(2, dim=1)  # each (B, out_ch, 1, 1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))  # (B, out_ch, H, W)
        return self.skip(x) + h


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
              dropout_p: float = 0.0) -> torch.Tensor:
    """``softmax(q kᵀ / √d + mask) v`` through ``F.scaled_dot_product_attention``: q (B, heads, T, d), k and v
    (B, heads, S, d), a boolean ``mask`` (True: may attend) broadcastable to (B, heads, T, S) → (B, heads, T, d).

    On the CPU, bf16 inputs are computed in fp32 and the result cast back: torch's CPU flash-attention kernel is
    several times slower in bf16 than in fp32 at this project's sizes (64 pixel tokens, head width 16: 13.6 ms against
    2.0 ms for a batch of 32, forward and backward, on a 2-core AMX Xeon; docs/BENCHMARKS.md §2), and the attention
    matrices are too small for bf16's bandwidth saving to matter. Elsewhere (CUDA) the inputs' dtype is kept.
    """
    if q.device.type == "cpu" and q.dtype == torch.bfloat16:
        with torch.autocast("cpu", enabled=False):
            out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask, dropout_p=dropout_p)
        return out.to(torch.bfloat16)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the H*W pixels, optionally also attending to context tokens.

    Each pixel is a token. Queries come from the pixels only; keys and values come from the pixels AND, when
    ``context`` is given, from the context tokens (each projected from ``context_dim`` to ``ch``). Concatenating the
    two key/value sets is how GLIDE and DALL·E 2 condition the UNet on text and CLIP tokens: one softmax decides how
    much each pixel reads from other pixels versus from the conditioning. The context should already be on a sensible
    scale (e.g. layer-normed transformer outputs); it is not normalised here.

    The output projection starts at zero, so a fresh block is the identity: ``out = x + proj_out(attention)``.

    :param ch: channels of the image features (the token width).
    :param num_heads: number of heads; must divide ``ch``. Ignored when ``head_dim`` is given.
    :param head_dim: channels per head instead of a head count; must divide ``ch``.
    :param context_dim: width of the context tokens, or None for a block without context.
    :param groups: GroupNorm groups; None picks them with ``norm_groups``.
    """

    def __init__(
        self,
        ch: int,
        num_heads: int = 1,
        head_dim: int | None = None,
        context_dim: int | None = None,
        groups: int | None = None,
    ):
        super().__init__()
        if head_dim is not None:
            if head_dim < 1 or ch % head_dim != 0:
                raise ValueError(f"head_dim={head_dim} must divide the channel count {ch}")
            num_heads = ch // head_dim
        if num_heads < 1 or ch % num_heads != 0:
            raise ValueError(f"num_heads={num_heads} must divide the channel count {ch}; pick a divisor of {ch}")
        self.num_heads = num_heads
        self.context_dim = context_dim
        self.norm = group_norm(ch, groups)
        self.to_q = nn.Linear(ch, ch)
        self.to_k = nn.Linear(ch, ch)
        self.to_v = nn.Linear(ch, ch)
        if context_dim is not None:
            self.context_to_k = nn.Linear(context_dim, ch)
            self.context_to_v = nn.Linear(context_dim, ch)
        self.proj_out = zero_module(nn.Linear(ch, ch))

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, C) -> (B, heads, N, C // heads)"""
        B, N, C = x.shape
        return x.reshape(B, N, self.num_heads, C // self.num_heads).transpose(1, 2)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        :param x: (B, C, H, W) image features.
        :param context: optional (B, L, context_dim) tokens to attend to as well (only if built with ``context_dim``).
        :param context_mask: optional (B, L) bool, True for real tokens, False for padding that must not be read.
        :return: (B, C, H, W) features.
        """
        B, C, H, W = x.shape
        tokens = self.norm(x).reshape(B, C, H * W).transpose(1, 2)  # (B, T, C), T = H*W
        q, k, v = self.to_q(tokens), self.to_k(tokens), self.to_v(tokens)  # each (B, T, C)
        mask = None
        if context is None and context_mask is not None:
            raise ValueError("context_mask was given without context; pass both or neither")
        if context is not None:
            if self.context_dim is None:
                raise ValueError("this AttentionBlock was built without context_dim; build it with context_dim=...")
            ck = self.context_to_k(context).to(k.dtype)  # (B, L, C)
            cv = self.context_to_v(context).to(v.dtype)  # (B, L, C)
            k = torch.cat([ck, k], dim=1)  # (B, L + T, C)
            v = torch.cat([cv, v], dim=1)  # (B, L + T, C)
            if context_mask is not None:
                # pixels are always visible, padding context tokens never: (B, 1, 1, L + T), broadcast over heads
                pixels = torch.ones(B, H * W, dtype=torch.bool, device=x.device)
                mask = torch.cat([context_mask.to(torch.bool), pixels], dim=1)[:, None, None, :]
        q, k, v = self._split_heads(q), self._split_heads(k), self._split_heads(v)  # (B, heads, T or L+T, C/heads)
        out = attention(q, k.to(q.dtype), v.to(q.dtype), mask)  # (B, heads, T, C/heads)
        out = out.transpose(1, 2).reshape(B, H * W, C)  # (B, T, C)
        out = self.proj_out(out).transpose(1, 2).reshape(B, C, H, W)  # (B, C, H, W)
        return x + out


class Downsample(nn.Module):
    """Halve H and W with a stride-2 3x3 convolution: (B, C, H, W) -> (B, C_out, H/2, W/2)."""

    def __init__(self, ch: int, out_ch: int | None = None):
        super().__init__()
        self.conv = nn.Conv2d(ch, out_ch or ch, kernel_size=3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Double H and W by nearest-neighbour repetition, then a 3x3 conv: (B, C, H, W) -> (B, C_out, 2H, 2W)."""

    def __init__(self, ch: int, out_ch: int | None = None):
        super().__init__()
        self.conv = nn.Conv2d(ch, out_ch or ch, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
