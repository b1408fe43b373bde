"""A compact UNet that predicts noise (or x0, or v) for the image diffusion models: decoder and upsamplers.

The architecture is the improved-DDPM / GLIDE UNet shrunk to toy scale. With ``image_size=32``,
``channel_mult=(1, 2, 2)`` and ``model_channels=C`` the feature maps go:

    x (B, 3, 32, 32) [+ low_res upsampled to 32x32, concatenated]
    input conv             -> (B, C, 32, 32)
    down level 0 (32 px)   -> (B, C, 32, 32)    num_res_blocks x [ResBlock (+ attention)], then Downsample
    down level 1 (16 px)   -> (B, 2C, 16, 16)   ...
    down level 2 (8 px)    -> (B, 2C, 8, 8)     last level: no Downsample
    middle (8 px)          -> (B, 2C, 8, 8)     ResBlock, AttentionBlock, ResBlock
    up levels (8 -> 32 px) -> (B, C, 32, 32)    num_res_blocks + 1 ResBlocks per level, each fed one skip
                                                  connection from the down path; Upsample between levels
    out: norm, SiLU, conv  -> (B, out_channels (x2 if learned_sigma), 32, 32)

Conditioning enters in three ways, each optional and fixed when the model is built:

- ``cond`` (B, cond_dim): a vector (e.g. a CLIP image embedding) projected and ADDED to the timestep embedding, so it
  reaches every ResBlock through the scale-shift modulation.
- ``context`` (B, L, context_dim): tokens (e.g. 4 CLIP tokens + caption tokens) that every AttentionBlock attends to,
  next to the pixels themselves.
- ``low_res`` (B, low_res_channels, h, w): for an upsampler, the small image is resized to (H, W) bilinearly and
  concatenated to the noisy image along channels.

``patch_size=p`` > 1 folds every p x p block of pixels into channels first (``pixel_unshuffle``: (B, 3, 32, 32) ->
(B, 12, 16, 16) for p = 2) and unfolds the output the same way (``pixel_shuffle``), so the levels run at H/p: the
same layer costs p² times fewer operations. With p = 2 and two 64-wide levels at 16 and 8 positions, a decoder's
training step ran 1.6-1.7x faster than the default's on a 2-core CPU, but learnt less per step: at equal training time
it graded below the unfolded network (docs/BENCHMARKS.md §2.1), so no recipe uses it.

All output layers of residual branches and the final conv start at zero: a freshly built UNet outputs exactly zeros.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from dalle2_edu.nets.layers import (
    AttentionBlock,
    Downsample,
    ResBlock,
    Upsample,
    group_norm,
    timestep_embedding,
    zero_module,
)


class NoAttention(nn.Module):
    """Stands in for an :class:`AttentionBlock` (``mid_attention=False``): returns the features unchanged."""

    def forward(self, h, context=None, context_mask=None):
        return h


@dataclass
class UNetConfig:
    """Every hyperparameter of a ``UNet``; ``UNet.from_config(cfg)`` builds one, ``to_dict`` saves one.

    :param in_channels: channels of the noisy image x (NOT counting ``low_res_channels``).
    :param model_channels: base width C; level i has ``C * channel_mult[i]`` channels; the embedding has 4C.
    :param out_channels: channels of the prediction (eps, x0 or v); doubled in the output if ``learned_sigma``.
    :param channel_mult: width multiplier per resolution level; H is halved between consecutive levels.
    :param num_res_blocks: ResBlocks per level on the way down (the way up has one more per level).
    :param attention_resolutions: feature-map sizes in pixels (for an ``image_size`` input) that get attention after
        each ResBlock, e.g. (16, 8).
    :param mid_attention: give the middle block attention (the default); False makes it a pure convolution, as DALL·E
        2's upsamplers are, so that the network does not care about the picture's size and trains on crops.
    :param num_heads: attention heads; must divide the width of every level with attention and of the middle.
    :param dropout: dropout probability inside ResBlocks.
    :param learned_sigma: also output ``out_channels`` raw channels for the variance interpolation (improved DDPM).
    :param cond_dim: size of the conditioning vector added to the timestep embedding, or None for no vector.
    :param context_dim: width of the context tokens attended to in every AttentionBlock, or None for none.
    :param low_res_channels: channels of the low-resolution image an upsampler is conditioned on (0: not an upsampler).
        The input conv sees ``in_channels + low_res_channels`` channels.
    :param image_size: the training resolution; decides where ``attention_resolutions`` puts attention. Other sizes
        divisible by ``size_multiple`` still run, with attention at the same depths.
    :param narrow_upsample: each Upsample's conv outputs the finer level's width (``C * channel_mult[i - 1]``)
        instead of keeping the coarser level's. It changes nothing when neighbouring levels are equally wide; with a
        narrow top level, e.g. widths (16, 64, 64), the costliest conv of the network (64 -> 64 channels at full size)
        becomes 64 -> 16 and the first full-size ResBlock reads 32 channels instead of 80. In the fast decoder that
        made a step 1.13x faster and cost 10 points of category (docs/BENCHMARKS.md §2.1): no recipe uses it.
    :param patch_size: p: fold each p x p block of pixels into channels before the first conv and unfold the output
        after the last (1: no folding). The levels then run at ``image_size / p``: ``feature_sizes`` and
        ``attention_resolutions`` count positions of that grid, e.g. (16, 8) for a 32-px picture with p = 2.
    """

    in_channels: int = 3
    model_channels: int = 64
    out_channels: int = 3
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (16,)
    num_heads: int = 4
    dropout: float = 0.0
    learned_sigma: bool = False
    cond_dim: int | None = None
    context_dim: int | None = None
    low_res_channels: int = 0
    image_size: int = 32
    mid_attention: bool = True
    patch_size: int = 1
    narrow_upsample: bool = False

    def __post_init__(self):
        self.channel_mult = tuple(int(m) for m in self.channel_mult)  # lists from JSON become tuples
        self.attention_resolutions = tuple(int(r) for r in self.attention_resolutions)
        for name in ("in_channels", "model_channels", "out_channels", "num_res_blocks", "num_heads", "image_size",
                     "patch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"UNetConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not self.channel_mult or min(self.channel_mult) < 1:
            raise ValueError(f"channel_mult must be a non-empty tuple of positive ints, got {self.channel_mult}")
        if self.low_res_channels < 0:
            raise ValueError(f"low_res_channels must be >= 0, got {self.low_res_channels}")
        for name in ("cond_dim", "context_dim"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"UNetConfig.{name} must be None or >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.image_size % self.size_multiple != 0:
            raise ValueError(
                f"image_size={self.image_size} must be divisible by patch_size * 2**(len(channel_mult)-1) = "
                f"{self.size_multiple}"
            )
        sizes = self.feature_sizes
        unreachable = [r for r in self.attention_resolutions if r not in sizes]
        if unreachable:
            raise ValueError(
                f"attention_resolutions {unreachable} are not feature-map sizes of this UNet; with image_size="
                f"{self.image_size} and {len(self.channel_mult)} levels they are {sizes}"
            )
        attn_widths = {
            self.model_channels * m for m, s in zip(self.channel_mult, sizes) if s in self.attention_resolutions
        }
        attn_widths.add(self.model_channels * self.channel_mult[-1])  # the middle block
        bad = sorted(w for w in attn_widths if w % self.num_heads != 0)
        if bad:
            raise ValueError(f"num_heads={self.num_heads} must divide every attention width; it does not divide {bad}")

    @property
    def size_multiple(self) -> int:
        """H and W must be multiples of this: the image is folded by ``patch_size``, then halved
        ``len(channel_mult) - 1`` times."""
        return self.patch_size * 2 ** (len(self.channel_mult) - 1)

    @property
    def feature_sizes(self) -> tuple[int, ...]:
        """Feature-map size at each level for an ``image_size`` input, e.g. (32, 16, 8); positions of the folded grid
        when ``patch_size`` > 1, e.g. (16, 8) for 32 px with p = 2."""
        return tuple(self.image_size // self.patch_size // 2**i for i in range(len(self.channel_mult)))

    def to_dict(self) -> dict:
        """Plain JSON-friendly dict (tuples become lists)."""
        d = asdict(self)
        d["channel_mult"] = list(self.channel_mult)
        d["attention_resolutions"] = list(self.attention_resolutions)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> UNetConfig:
        """Inverse of ``to_dict``; unknown keys are an error (they usually mean a typo or a version mismatch)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown UNetConfig keys {unknown}; known keys are {sorted(known)}")
        return cls(**d)

    @classmethod
    def tiny(cls, **overrides) -> UNetConfig:
        """A ~50k-parameter UNet for 8x8 tests: 2 levels (8 px, 4 px), attention at 4 px."""
        base = dict(
            model_channels=8,
            channel_mult=(1, 2),
            num_res_blocks=1,
            attention_resolutions=(4,),
            num_heads=2,
            image_size=8,
        )
        return cls(**{**base, **overrides})

    @classmethod
    def default32(cls, **overrides) -> UNetConfig:
        """The CPU-trainable default for 32x32 images (about 2M parameters): levels at 32, 16 and 8 px."""
        base = dict(
            model_channels=32,
            channel_mult=(1, 2, 2),
            num_res_blocks=2,
            attention_resolutions=(16,),
            num_heads=4,
            image_size=32,
        )
        return cls(**{**base, **overrides})


def _check_presence(name: str, value: torch.Tensor | None, size: int | None, shape: str) -> None:
    """A conditioning input must be given exactly when the model was built for it (its size is not None / 0)."""
    build_arg = "low_res_channels" if name == "low_res" else f"{name}_dim"
    if not size and value is not None:
        raise ValueError(
            f"{name} was given but this UNet was built without {build_arg}; set {build_arg} or drop {name}"
        )
    if size and value is None:
        raise ValueError(
            f"this UNet was built with {build_arg}={size}; pass {name} of shape {shape} "
            "(for unconditional samples pass null conditioning, e.g. zeros, rather than None)"
        )


class UNetStage(nn.Module):
    """One step of a UNet level: ResBlock, then attention if this resolution has it, then an optional Upsample.

    :param res: the ResBlock.
    :param attn: an AttentionBlock or None.
    :param upsample: an Upsample (last block of an up level) or None.
    """

    def __init__(self, res: ResBlock, attn: AttentionBlock | None = None, upsample: Upsample | None = None):
        super().__init__()
        self.res = res
        self.attn = attn
        self.upsample = upsample

    def forward(self, h, emb, context=None, context_mask=None):
        h = self.res(h, emb)
        if self.attn is not None:
            h = self.attn(h, context, context_mask)
        if self.upsample is not None:
            h = self.upsample(h)
        return h


class UNet(nn.Module):
    """The diffusion UNet; see the module docstring for the stage-by-stage shapes and ``UNetConfig`` for the arguments.

    ``UNet(**kwargs)`` and ``UNet.from_config(UNetConfig(...))`` are equivalent; ``model.config`` keeps the config.
    """

    def __init__(
        self,
        in_channels: int = 3,
        model_channels: int = 64,
        out_channels: int = 3,
        channel_mult: tuple[int, ...] = (1, 2, 2),
        num_res_blocks: int = 2,
        attention_resolutions: tuple[int, ...] = (16,),
        num_heads: int = 4,
        dropout: float = 0.0,
        learned_sigma: bool = False,
        cond_dim: int | None = None,
        context_dim: int | None = None,
        image_size: int = 32,
        low_res_channels: int = 0,
        mid_attention: bool = True,
        patch_size: int = 1,
        narrow_upsample: bool = False,
    ):
        super().__init__()
        cfg = UNetConfig(
            in_channels=in_channels,
            model_channels=model_channels,
            out_channels=out_channels,
            channel_mult=channel_mult,
            num_res_blocks=num_res_blocks,
            attention_resolutions=attention_resolutions,
            num_heads=num_heads,
            dropout=dropout,
            learned_sigma=learned_sigma,
            cond_dim=cond_dim,
            context_dim=context_dim,
            low_res_channels=low_res_channels,
            image_size=image_size,
            mid_attention=mid_attention,
            patch_size=patch_size,
            narrow_upsample=narrow_upsample,
        )
        self.config = cfg
        C = cfg.model_channels
        emb_dim = 4 * C

        # timestep -> sinusoid (C) -> MLP -> (emb_dim); an optional conditioning vector is added to it
        self.time_embed = nn.Sequential(nn.Linear(C, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.cond_proj = nn.Linear(cfg.cond_dim, emb_dim) if cfg.cond_dim is not None else None

        def res(ch_in: int, ch_out: int) -> ResBlock:
            return ResBlock(ch_in, ch_out, emb_dim, dropout=cfg.dropout)

        def attn(ch: int, size: int) -> AttentionBlock | None:
            if size not in cfg.attention_resolutions:
                return None
            return AttentionBlock(ch, num_heads=cfg.num_heads, context_dim=cfg.context_dim)

        folded = cfg.patch_size**2  # channels per input channel after pixel_unshuffle
        self.input_conv = nn.Conv2d((cfg.in_channels + cfg.low_res_channels) * folded, C, kernel_size=3, padding=1)

        # down path: remember the width of every output, each becomes a skip connection for the up path
        self.down = nn.ModuleList()
        skip_widths = [C]
        ch = C
        for level, (mult, size) in enumerate(zip(cfg.channel_mult, cfg.feature_sizes)):
            for _ in range(cfg.num_res_blocks):
                self.down.append(UNetStage(res(ch, C * mult), attn(C * mult, size)))
                ch = C * mult
                skip_widths.append(ch)
            if level < len(cfg.channel_mult) - 1:
                self.down.append(Downsample(ch))
                skip_widths.append(ch)

        self.mid_res1 = res(ch, ch)
        if cfg.mid_attention:
            self.mid_attn = AttentionBlock(ch, num_heads=cfg.num_heads, context_dim=cfg.context_dim)
        else:
            self.mid_attn = NoAttention()
        self.mid_res2 = res(ch, ch)

        # up path: each ResBlock takes the current features concatenated with one skip connection
        self.up = nn.ModuleList()
        for level in reversed(range(len(cfg.channel_mult))):
            mult, size = cfg.channel_mult[level], cfg.feature_sizes[level]
            for i in range(cfg.num_res_blocks + 1):
                block = res(ch + skip_widths.pop(), C * mult)
                ch, upsample = C * mult, None
                if level > 0 and i == cfg.num_res_blocks:
                    finer = C * cfg.channel_mult[level - 1] if cfg.narrow_upsample else ch
                    upsample = Upsample(ch, finer)
                self.up.append(UNetStage(block, attn(ch, size), upsample))
                if upsample is not None:
                    ch = finer

        out_ch = cfg.out_channels * (2 if cfg.learned_sigma else 1)
        out_conv = zero_module(nn.Conv2d(ch, out_ch * folded, kernel_size=3, padding=1))
        self.out = nn.Sequential(group_norm(ch), nn.SiLU(), out_conv)

    @classmethod
    def from_config(cls, config: UNetConfig) -> UNet:
        """Build a UNet from a ``UNetConfig``."""
        return cls(**asdict(config))

    def num_parameters(self) -> int:
        """Total number of parameters."""
        return sum(p.numel() for p in self.parameters())

    def _check_inputs(self, x, t, cond, context, context_mask, low_res) -> torch.Tensor:
        """Raise a ValueError that names the fix for every malformed input; return t as a (B,) tensor."""
        cfg = self.config
        if x.ndim != 4:
            raise ValueError(f"x must have shape (B, {cfg.in_channels}, H, W), got {tuple(x.shape)}")
        B, C, H, W = x.shape
        if C != cfg.in_channels:
            hint = " (pass the low-resolution image as low_res=..., not inside x)" if cfg.low_res_channels else ""
            raise ValueError(f"x has {C} channels but this UNet has in_channels={cfg.in_channels}{hint}")
        m = cfg.size_multiple
        if H % m != 0 or W % m != 0:
            raise ValueError(
                f"x spatial size {H}x{W} must be divisible by {m} (patch_size * 2**(len(channel_mult)-1)); resize or "
                "pad the image"
            )

        if not torch.is_tensor(t):
            t = torch.tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(B)  # one timestep for the whole batch
        if t.ndim != 1 or t.shape[0] != B:
            raise ValueError(f"t must have shape (B,) = ({B},) to match x's batch, got {tuple(t.shape)}")

        _check_presence("cond", cond, cfg.cond_dim, f"(B, {cfg.cond_dim})")
        _check_presence("context", context, cfg.context_dim, f"(B, L, {cfg.context_dim})")
        _check_presence("low_res", low_res, cfg.low_res_channels, f"(B, {cfg.low_res_channels}, h, w)")
        if cond is not None and tuple(cond.shape) != (B, cfg.cond_dim):
            raise ValueError(f"cond must have shape (B, cond_dim) = ({B}, {cfg.cond_dim}), got {tuple(cond.shape)}")
        if context is not None:
            if (
                context.ndim != 3
                or context.shape[0] != B
                or context.shape[1] < 1
                or context.shape[2] != cfg.context_dim
            ):
                raise ValueError(
                    f"context must have shape (B, L, context_dim) = ({B}, L>=1, {cfg.context_dim}), "
                    f"got {tuple(context.shape)}"
                )
        if context_mask is not None:
            if context is None:
                raise ValueError("context_mask was given without context; pass both or neither")
            if tuple(context_mask.shape) != tuple(context.shape[:2]):
                raise ValueError(
                    f"context_mask must have shape (B, L) = {tuple(context.shape[:2])}, got {tuple(context_mask.shape)}"
                )
        if low_res is not None:
            if low_res.ndim != 4 or low_res.shape[0] != B or low_res.shape[1] != cfg.low_res_channels:
                raise ValueError(
                    f"low_res must have shape (B, low_res_channels, h, w) = ({B}, {cfg.low_res_channels}, h, w), "
                    f"got {tuple(low_res.shape)}"
                )
        return t.to(x.device)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        low_res: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict from a noisy image at timestep t.

        Conditioning inputs are required exactly when the model was built for them (``cond_dim``, ``context_dim``,
        ``low_res_channels``); for classifier-free guidance pass explicit null conditioning rather than None.

        :param x: (B, in_channels, H, W) noisy image; H and W divisible by ``2 ** (len(channel_mult) - 1)``.
        :param t: (B,) timesteps (int or float, on the 0 .. T-1 scale), or a scalar used for the whole batch.
        :param cond: (B, cond_dim) conditioning vector, added to the timestep embedding.
        :param context: (B, L, context_dim) tokens attended to in every AttentionBlock.
        :param low_res: (B, low_res_channels, h, w) image for an upsampler; resized to (H, W) bilinearly.
        :param context_mask: optional (B, L) bool, False marks padding context tokens that must be ignored.
        :return: (B, out_channels * (2 if learned_sigma else 1), H, W) raw outputs. With ``learned_sigma`` the first
            ``out_channels`` channels are the mean prediction (eps, x0 or v: the diffusion object decides) and the
            rest the raw variance interpolation value; no tanh or other squashing is applied here.
        """
        t = self._check_inputs(x, t, cond, context, context_mask, low_res)
        cfg = self.config

        first = self.time_embed[0].weight
        emb = self.time_embed(timestep_embedding(t, cfg.model_channels).to(first.dtype))  # (B, 4C)
        if cond is not None:
            emb = emb + self.cond_proj(cond)  # (B, 4C)

        if low_res is not None:
            low_res = F.interpolate(low_res, size=x.shape[-2:], mode="bilinear", align_corners=False)  # (B, C_lr, H, W)
            x = torch.cat([x, low_res.to(x.dtype)], dim=1)  # (B, in_channels + C_lr, H, W)

        if cfg.patch_size > 1:
            x = F.pixel_unshuffle(x, cfg.patch_size)  # (B, channels * p², H / p, W / p)
        h = self.input_conv(x)  # (B, C, H / p, W / p)
        skips = [h]
        for block in self.down:
            h = block(h) if isinstance(block, Downsample) else block(h, emb, context, context_mask)
            skips.append(h)
        # h: (B, C * channel_mult[-1], H / 2**(levels-1), W / 2**(levels-1))

        h = self.mid_res1(h, emb)
        h = self.mid_attn(h, context, context_mask)
        h = self.mid_res2(h, emb)

        for block in self.up:
            skip = skips.pop()
            h = block(torch.cat([h, skip.to(h.dtype)], dim=1), emb, context, context_mask)
        # h: (B, C * channel_mult[0], H / p, W / p)
        h = self.out(h)
        if cfg.patch_size > 1:
            h = F.pixel_shuffle(h, cfg.patch_size)
        return h  # (B, out_channels * (2 if learned_sigma else 1), H, W)
