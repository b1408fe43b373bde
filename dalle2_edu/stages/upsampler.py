"""DALL·E 2's first upsampler at toy scale: a diffusion model that draws a 64×64 picture given a 32×32 one.

unCLIP generates in a cascade: the decoder draws a small picture, and diffusion upsamplers add the detail. Here the
decoder's 32×32 output goes to an upsampler that samples x_0 (B, 3, 64, 64) from p(x_0 | low_res), with the same
:class:`~dalle2_edu.diffusion.GaussianDiffusion` and :class:`~dalle2_edu.train.Trainer` as every other stage. Only
the network's input changes: the UNet sees the noisy 64×64 image x_t with the low-resolution picture, resized
bilinearly to 64×64, concatenated along channels.

Three choices follow the DALL·E 2 paper (Ramesh et al. 2022, §2 and appendix C):

* **Blur augmentation.** In training the 32×32 conditioning picture is blurred with a Gaussian of random width
  (σ ~ U(``blur_sigma``)) with probability ``blur_prob``: the decoder's outputs are never as crisp as real
  downsampled photographs, and an upsampler trained only on perfect inputs copies their flaws at 64×64.
* **No attention.** The upsampler's work is local (sharpen this edge, continue this stripe); the UNet here has no
  attention layers at all, the middle one included (``mid_attention=False``), so it is a pure convolutional network.
* **Random crops.** A fully convolutional network does not care about the picture's size, so it trains on random
  ``crop_size`` × ``crop_size`` crops of the 64×64 picture (with the matching crop of the conditioning picture) and
  samples at the full 64×64. A 32×32 crop costs a quarter of a full picture. Measured at equal
  cost (300 steps of 32 crops of 32×32 against 8 whole pictures, v-prediction): 28.1 dB against 26.3 dB PSNR on test
  pictures; 128 crops of 16×16 reached 27.4 dB.

One choice departs from the paper, for training budgets of minutes:

* **v-prediction.** The network predicts v = √ᾱ_t ε - √(1-ᾱ_t) x_0 (Salimans & Ho 2022), not ε. At high noise an
  ε-network's guess x̂_0 = (x_t - √(1-ᾱ_t) ε̂) / √ᾱ_t divides its error by √ᾱ_t ≈ 0, so the first sampling steps
  start from garbage, although the low-resolution picture already tells the upsampler almost all of x_0. A v-network
  states x_0 at every noise level with an error no larger than its own. Measured after 300 training steps (same
  settings otherwise): ε-prediction upsampled test pictures at 13 dB PSNR (noise), v-prediction at 28 dB.

The crop is cut from the conditioning picture *after* it is resized to 64×64, so that a crop's border pixels get
exactly the values they have in the full picture (cutting a 16×16 crop of the 32×32 picture and resizing it would
smear its borders differently). The UNet resizes its ``low_res`` input to x_t's size, which is the identity for a
picture already at that size; :class:`Upsampler` therefore accepts ``low_res`` at half x_t's size or at x_t's size.

The 32×32 pictures are made from the 64×64 ones exactly as the catalogue makes its own (:func:`downsample2x`, the
same 2×2 box filter as :func:`dalle2_edu.datasets.catalogue.downsample`).

Train it again with ``python -m dalle2_edu train upsampler --recipe full --out FOLDER`` (:data:`TRAIN_COMMAND`; the
settings are in :mod:`dalle2_edu.recipes`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dalle2_edu.diffusion import GaussianDiffusion, diffusion_loss, sample
from dalle2_edu.diffusion.config import DiffusionConfig, coerce_diffusion, diffusion_field, lift_legacy_fields
from dalle2_edu.images import box_downsample, check_images, describe, to_float
from dalle2_edu.nets.unet import UNet, UNetConfig

TRAIN_COMMAND = "python -m dalle2_edu train upsampler --recipe full"
"""The command that trains, grades and saves the upsampler again (add ``--out FOLDER``)."""

EVAL_SET = dict(split="test", seed=1)
"""The real 64×64 pictures the upsampler is measured on (never seen in training: another split and seed)."""


def default_unet(image_size: int = 64) -> dict:
    """About 1.1M parameters, three levels (64, 32 and 16 px for a 64×64 input), one ResBlock per level, no
    attention. Convolutional, so the same network draws 128×128 pictures from 64×64 ones with ``image_size=128``."""
    return UNetConfig(
        model_channels=32,
        channel_mult=(1, 2, 2),
        num_res_blocks=1,
        attention_resolutions=(),
        num_heads=4,
        low_res_channels=3,
        image_size=image_size,
    ).to_dict()


def second_upsampler_config(**changes) -> UpsamplerConfig:
    """The cascade's last stage, 64 → 128: the first upsampler's network and v-prediction at ``image_size=128``,
    trained on 32×32 crops of 128×128 pictures (the same cost per step as the first), with one change to what it
    is given in training: the 64×64 conditioning is blurred a little less often (p = 0.3: at 64 px the first
    upsampler's outputs are nearly as sharp as real ones) and gets Gaussian noise (σ ~ U(0, 0.04), p = 0.5) — the
    first upsampler leaves faint grain, unlike a box-filtered real picture, and an upsampler trained only on clean
    inputs would enlarge that grain into texture. DALL·E 2's second upsampler used a harsher mix (BSR degradation)
    for the same reason."""
    base = dict(unet=default_unet(128), blur_prob=0.3, noise_std=(0.0, 0.04), noise_prob=0.5)
    return UpsamplerConfig.from_dict({**base, **changes})


@dataclass
class UpsamplerConfig:
    """What defines an upsampler (saved beside its weights).

    :param unet: a :class:`~dalle2_edu.nets.unet.UNetConfig` dict; ``image_size`` is the output size and
        ``low_res_channels`` must be 3. ``learned_sigma`` is set from ``var_type``.
    :param mid_attention: keep the UNet's middle attention block; False (DALL·E 2's choice for upsamplers) replaces
        it by the identity, so that the network is purely convolutional and crops train it for every size.
    :param diffusion: the process; the UNet predicts ``"v"`` by default (see the module docstring) with the
        ``"simple"`` loss (MSE) and the fixed variance β̃.
    :param blur_sigma: (low, high): the Gaussian blur's σ in low-resolution pixels is drawn uniformly from this range.
    :param blur_prob: probability that a training example's conditioning picture is blurred.
    :param crop_size: train on random crops of this side (pixels of the high-resolution picture); None trains on
        whole pictures. Must be a multiple of ``2 ** (len(channel_mult) - 1)``.
    :param noise_std: (low, high): Gaussian noise of standard deviation σ ~ U(low, high) (on the [-1, 1] scale) is
        added to the conditioning picture with probability ``noise_prob`` (after the blur).
    :param noise_prob: probability of that noise; 0 (the first upsampler's setting) draws no random numbers for it.
    """

    unet: dict = field(default_factory=default_unet)
    mid_attention: bool = False
    diffusion: DiffusionConfig = diffusion_field(mean_type="v")
    blur_sigma: tuple[float, float] = (0.4, 0.6)
    blur_prob: float = 0.5
    crop_size: int | None = 32
    noise_std: tuple[float, float] = (0.0, 0.0)
    noise_prob: float = 0.0

    def __post_init__(self):
        coerce_diffusion(self)
        self.blur_sigma = tuple(float(s) for s in self.blur_sigma)
        _check_sigma_range(self.blur_sigma)
        _check_probability(self.blur_prob)
        self.noise_std = tuple(float(s) for s in self.noise_std)
        if len(self.noise_std) != 2 or not 0.0 <= self.noise_std[0] <= self.noise_std[1] < 1.0:
            raise ValueError(f"noise_std must be a pair 0 <= low <= high < 1, got {self.noise_std!r}")
        _check_probability(self.noise_prob)
        unet = self.unet_config()  # validates the UNet dict
        if unet.low_res_channels != 3 or unet.in_channels != 3 or unet.out_channels != 3:
            raise ValueError(
                "an upsampler's UNet needs in_channels=3, out_channels=3 and low_res_channels=3, got "
                f"{unet.in_channels}, {unet.out_channels} and {unet.low_res_channels}"
            )
        if self.crop_size is not None:
            m = unet.size_multiple
            if not m <= self.crop_size <= unet.image_size or self.crop_size % m:
                raise ValueError(
                    f"crop_size must be None or a multiple of {m} between {m} and image_size={unet.image_size}, "
                    f"got {self.crop_size}"
                )

    def unet_config(self) -> UNetConfig:
        return UNetConfig.from_dict(
            {**self.unet, "learned_sigma": self.diffusion.learned_sigma, "mid_attention": self.mid_attention}
        )

    @property
    def image_size(self) -> int:
        """Side of the pictures the upsampler draws (64, or 128 for the second upsampler)."""
        return int(self.unet["image_size"])

    @property
    def low_res_size(self) -> int:
        """Side of the conditioning pictures (32, or 64): half of :attr:`image_size`."""
        return self.image_size // 2

    def to_dict(self) -> dict:
        d = asdict(self)
        d["blur_sigma"] = list(self.blur_sigma)
        d["noise_std"] = list(self.noise_std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> UpsamplerConfig:
        return cls(**lift_legacy_fields(d))


class Upsampler(nn.Module):
    """``model(x_t, t, low_res)``: the UNet's prediction (ε, x_0 or v) for a noisy high-resolution picture.

    :param config: an :class:`UpsamplerConfig`; the default draws 64×64 from 32×32.
    """

    def __init__(self, config: UpsamplerConfig | None = None):
        super().__init__()
        self.config = config = config or UpsamplerConfig()
        self.unet = UNet.from_config(config.unet_config())

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, low_res: torch.Tensor) -> torch.Tensor:
        """
        :param x_t: (B, 3, H, W) noisy picture: the whole 64×64 picture, or a crop; H, W multiples of
            ``2 ** (len(channel_mult) - 1)``.
        :param t: (B,) timesteps.
        :param low_res: (B, 3, H/2, W/2) conditioning picture in [-1, 1], or the same already resized to (B, 3, H, W)
            bilinearly (how training crops pass it).
        :return: (B, 3, H, W) prediction, (B, 6, H, W) with a learned variance.
        """
        if not torch.is_tensor(low_res) or low_res.ndim != 4:
            raise ValueError(f"low_res must be a tensor of shape (B, 3, h, w), got {describe(low_res)}")
        if x_t.ndim == 4 and low_res.shape[0] == x_t.shape[0]:
            H, W = x_t.shape[-2:]
            if tuple(low_res.shape[-2:]) not in ((H // 2, W // 2), (H, W)):
                raise ValueError(
                    f"low_res is {tuple(low_res.shape[-2:])} for x_t of {H}x{W}: pass the matching half-size picture "
                    f"({H // 2}x{W // 2}) or the same resized to {H}x{W}"
                )
        return self.unet(x_t, t, low_res=low_res.to(x_t.dtype))


# ----------------------------------------------------------------------------------------------------------------------
# data: the 2×2 box filter, Gaussian blur, crops


def downsample2x(images: torch.Tensor) -> torch.Tensor:
    """Halve pictures (B, C, H, W) by averaging 2×2 blocks, the catalogue's own box filter
    (:func:`dalle2_edu.images.box_downsample`; uint8 halves round up, float is averaged)."""
    return box_downsample(images, 2)


def gaussian_kernel1d(sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Normalised 1-D Gaussian kernels, one per σ: k[i] ∝ exp(-x_i² / 2σ²) at x = -K//2 .. K//2, Σ_i k[i] = 1.

    :param sigma: (B,) widths in pixels, all > 0.
    :param kernel_size: K, odd.
    :return: (B, K) float32.
    """
    sigma = torch.as_tensor(sigma, dtype=torch.float32).reshape(-1)
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd int, got {kernel_size}")
    if not (sigma > 0).all():
        raise ValueError(f"every sigma must be > 0, got {sigma.tolist()}")
    x = torch.arange(kernel_size, dtype=torch.float32, device=sigma.device) - kernel_size // 2  # (K,)
    k = torch.exp(-0.5 * (x[None] / sigma[:, None]) ** 2)  # (B, K)
    return k / k.sum(dim=1, keepdim=True)


def kernel_size_for(sigma: float) -> int:
    """The odd kernel size that covers ±3σ: 2⌈3σ⌉ + 1."""
    return 2 * math.ceil(3 * sigma) + 1


def gaussian_blur(images: torch.Tensor, sigma, kernel_size: int | None = None) -> torch.Tensor:
    """Blur each picture with its own Gaussian, separably (rows, then columns), with reflected borders.

    Agrees with ``torchvision.transforms.v2.functional.gaussian_blur`` for the same kernel size and σ.

    :param images: (B, C, H, W) float.
    :param sigma: one σ for all pictures, or (B,) one each, in pixels, > 0.
    :param kernel_size: odd; default :func:`kernel_size_for` of the largest σ.
    :return: (B, C, H, W).
    """
    if not torch.is_tensor(images) or images.ndim != 4 or not images.is_floating_point():
        raise ValueError(f"images must be a float tensor of shape (B, C, H, W), got {describe(images)}")
    B, C, H, W = images.shape
    sigma = torch.as_tensor(sigma, dtype=torch.float32).reshape(-1)
    if sigma.numel() not in (1, B):
        raise ValueError(f"sigma must be one number or one per picture ({B}), got {sigma.numel()} values")
    sigma = sigma.expand(B)
    if B == 0:
        return images.clone()
    K = kernel_size_for(float(sigma.max())) if kernel_size is None else kernel_size
    pad = K // 2
    if pad >= min(H, W):
        raise ValueError(f"a {K}-tap blur needs pictures larger than {pad} pixels a side, got {H}x{W}; lower sigma")
    k = gaussian_kernel1d(sigma, K).to(images.device, images.dtype)  # (B, K)
    k = k.repeat_interleave(C, dim=0)  # (B*C, K): each picture's kernel for each of its channels
    x = images.reshape(1, B * C, H, W)  # pictures and channels as groups of a grouped convolution
    x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    x = F.conv2d(x, k[:, None, None, :], groups=B * C)  # along rows: (1, B*C, H + 2 pad, W)
    x = F.conv2d(x, k[:, None, :, None], groups=B * C)  # along columns: (1, B*C, H, W)
    return x.reshape(B, C, H, W)


def blur_augment(
    low_res: torch.Tensor,
    sigma_range: tuple[float, float] = (0.4, 0.6),
    p: float = 0.5,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """DALL·E 2's corruption of the upsampler's conditioning: blur each picture with probability p, with its own
    σ ~ U(sigma_range).

    The random numbers drawn (B coin flips, then B widths, on the CPU) do not depend on p, so changing p keeps the
    rest of a seeded run the same.

    :param low_res: (B, 3, h, w) float pictures.
    :param sigma_range: (low, high) blur widths in pixels of ``low_res``; 0 < low <= high.
    :param p: probability in [0, 1] of blurring a picture; p = 0 returns the input unchanged.
    :param generator: a seeded ``torch.Generator`` for reproducible draws; None uses torch's global one.
    :return: (B, 3, h, w), a new tensor.
    """
    if not torch.is_tensor(low_res) or low_res.ndim != 4 or not low_res.is_floating_point():
        raise ValueError(f"low_res must be a float tensor of shape (B, C, h, w), got {describe(low_res)}")
    lo, hi = _check_sigma_range(sigma_range)
    _check_probability(p)
    B = low_res.shape[0]
    apply = torch.rand(B, generator=generator) < p  # (B,)
    sigma = lo + (hi - lo) * torch.rand(B, generator=generator)  # (B,)
    if not apply.any():
        return low_res.clone()
    blurred = gaussian_blur(low_res, sigma, kernel_size_for(hi))
    return torch.where(apply.to(low_res.device)[:, None, None, None], blurred, low_res)


def noise_augment(
    low_res: torch.Tensor,
    std_range: tuple[float, float],
    p: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Add Gaussian noise of standard deviation σ ~ U(std_range) to each picture with probability p (on the [-1, 1]
    scale), to imitate the grain a diffusion upsampler leaves in its outputs. Draws B coin flips, B widths and the
    noise (on the CPU), whatever p is, except that p = 0 returns a copy and draws nothing.

    :return: (B, C, h, w), a new tensor (not clamped: the network sees what it will see at sampling time).
    """
    if not torch.is_tensor(low_res) or low_res.ndim != 4 or not low_res.is_floating_point():
        raise ValueError(f"low_res must be a float tensor of shape (B, C, h, w), got {describe(low_res)}")
    _check_probability(p)
    lo, hi = (float(s) for s in std_range)
    if not 0.0 <= lo <= hi:
        raise ValueError(f"std_range must satisfy 0 <= low <= high, got ({lo}, {hi})")
    if p == 0:
        return low_res.clone()
    B = low_res.shape[0]
    apply = (torch.rand(B, generator=generator) < p).float()  # (B,)
    sigma = lo + (hi - lo) * torch.rand(B, generator=generator)  # (B,)
    noise = torch.randn(low_res.shape, generator=generator)
    return low_res + (apply * sigma).to(low_res)[:, None, None, None] * noise.to(low_res)


def paired_random_crop(
    x: torch.Tensor, cond: torch.Tensor, size: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut the same random ``size`` × ``size`` window out of each picture of x and of cond.

    :param x: (B, C, H, W). :param cond: (B, C', H, W), the same spatial size.
    :return: ``(x_crop, cond_crop)``, (B, C, size, size) and (B, C', size, size).
    """
    B, _, H, W = x.shape
    if tuple(cond.shape[-2:]) != (H, W) or cond.shape[0] != B:
        raise ValueError(f"x {tuple(x.shape)} and cond {tuple(cond.shape)} need the same batch and spatial size")
    if not 1 <= size <= min(H, W):
        raise ValueError(f"crop size {size} must lie in [1, {min(H, W)}]")
    top = torch.randint(0, H - size + 1, (B,), generator=generator).tolist()
    left = torch.randint(0, W - size + 1, (B,), generator=generator).tolist()
    xs = torch.stack([x[i, :, a : a + size, b : b + size] for i, (a, b) in enumerate(zip(top, left))])
    cs = torch.stack([cond[i, :, a : a + size, b : b + size] for i, (a, b) in enumerate(zip(top, left))])
    return xs, cs


to_float_images = to_float  # the name earlier code used; the convention lives in dalle2_edu.images


# ----------------------------------------------------------------------------------------------------------------------
# training


def upsampler_loss_fn(gd: GaussianDiffusion, config: UpsamplerConfig):
    """The Trainer's ``loss_fn`` for batches of high-resolution pictures (B, 3, S, S) (S = 64, or 128), uint8 or
    float in [-1, 1] (a tuple or a dict with key ``image`` works too).

    Per batch: low_res = box-filter halving (:func:`downsample2x`) → :func:`blur_augment` → :func:`noise_augment`
    (when ``config.noise_prob`` > 0) → bilinear resize back to S×S → the same random crop of picture and
    conditioning (``config.crop_size``) → the diffusion loss at uniform t.
    Random numbers come from torch's global generator, which the Trainer seeds and checkpoints.
    """

    def prepare(batch):
        images = batch["image"] if isinstance(batch, dict) else batch[0] if isinstance(batch, tuple | list) else batch
        x0 = to_float(images)  # (B, 3, S, S)
        low = to_float(downsample2x(images))  # (B, 3, S/2, S/2), rounded like the catalogue's when uint8
        low = blur_augment(low, config.blur_sigma, config.blur_prob)
        if config.noise_prob > 0:
            low = noise_augment(low, config.noise_std, config.noise_prob)
        cond = F.interpolate(low, size=x0.shape[-2:], mode="bilinear", align_corners=False)  # (B, 3, S, S)
        if config.crop_size is not None and config.crop_size < min(x0.shape[-2:]):
            x0, cond = paired_random_crop(x0, cond, config.crop_size)  # (B, 3, crop, crop) each
        return x0, {"low_res": cond}

    return diffusion_loss(gd, prepare)


def train_upsampler(
    config: UpsamplerConfig | None = None,
    steps: int = 500,
    batch_size: int = 32,
    lr: float = 1e-3,
    n_train: int = 20000,
    seed: int = 0,
    out_dir=None,
    progress: bool = True,
    images: torch.Tensor | None = None,
    **trainer_kwargs,
):
    """Train an :class:`Upsampler` on the catalogue's training split at its ``image_size`` (64, or 128 for
    :func:`second_upsampler_config`) with the project's Trainer.

    :param steps: optimizer updates.
    :param batch_size: pictures (crops) per update.
    :param lr: peak AdamW learning rate (200 warm-up steps, then constant).
    :param n_train: training pictures, drawn at ``config.image_size`` (the half-size ones are made from them).
    :param out_dir: checkpoint here (resumable: running again continues); None keeps nothing.
    :param images: (N, 3, S, S) uint8 pictures to train on instead of the catalogue (e.g. a user's folder).
    :param trainer_kwargs: more :class:`~dalle2_edu.train.Trainer` arguments (they win over the defaults above).
    :return: ``(trainer, diffusion)``; upsample with ``trainer.ema_model`` and :func:`upsample`.
    """
    from dalle2_edu.datasets.catalogue import ProductCatalogue
    from dalle2_edu.train import Trainer
    from dalle2_edu.utils import set_seed

    config = config or UpsamplerConfig()
    set_seed(seed)
    if images is None:
        cat = ProductCatalogue(n_train, split="train", seed=0, resolution=config.image_size, progress=progress)
        images = cat.images
    if images.ndim != 4 or tuple(images.shape[1:]) != (3, config.image_size, config.image_size):
        raise ValueError(f"images must have shape (N, 3, {config.image_size}, {config.image_size}), "
                         f"got {tuple(images.shape)}")  # fmt: skip
    model, gd = Upsampler(config), config.diffusion.build()
    kwargs = dict(warmup_steps=min(200, steps), ema_decay=0.999, ckpt_every=250 if out_dir else None)
    kwargs.update(trainer_kwargs)
    trainer = Trainer(
        model, upsampler_loss_fn(gd, config), images, batch_size=batch_size, lr=lr, seed=seed, out_dir=out_dir,
        config={"upsampler": config.to_dict(), "n_train": len(images)}, progress=progress, **kwargs,
    )  # fmt: skip
    trainer.fit(steps, resume=out_dir is not None)
    return trainer, gd


# ----------------------------------------------------------------------------------------------------------------------
# sampling


def check_low_res(low_res, size: int = 32) -> torch.Tensor:
    """Validate a conditioning batch and bring it to float [-1, 1] (:func:`dalle2_edu.images.check_images`).

    :param low_res: (B, 3, h, w) uint8 in 0..255, or float in [-1, 1]; a single (3, h, w) picture is made a batch.
    :param size: the side the upsampler expects (32, or 64 for the second one), named in the error message.
    :return: (B, 3, h, w) float32.
    """
    return check_images(low_res, name="low_res", allow_single=True, shape=f"(B, 3, {size}, {size})")


@torch.no_grad()
def upsample(
    model: Upsampler,
    gd: GaussianDiffusion,
    low_res: torch.Tensor,
    steps: int = 25,
    sampler: str = "ddim",
    eta: float = 0.0,
    seed: int = 0,
    progress: bool = False,
    spacing: str = "even",
) -> torch.Tensor:
    """Draw one high-resolution picture for each low-resolution one.

    :param low_res: (B, 3, h, w) uint8 or float in [-1, 1]: 32×32 for the first upsampler, 64×64 for the second.
        The network is convolutional, so other sizes whose double is a multiple of the UNet's ``size_multiple`` run
        too (but it learned the detail of its own scale).
    :param steps: steps of the respaced process (``gd.num_timesteps`` for the full chain).
    :param sampler: ``"ddim"`` (η = ``eta``), ``"ddpm"`` (ancestral, with the model's variance), or an ODE solver,
        ``"dpmpp2m"``, ``"euler"``, ``"heun"``, for which ``steps`` counts network calls on the full process (see
        :data:`~dalle2_edu.diffusion.sampling.SAMPLERS`).
    :param seed: fixes the starting noise and every step's noise.
    :param spacing: which steps ``ddim``/``ddpm`` visit (:data:`~dalle2_edu.diffusion.sampling.SPACINGS`):
        ``"quad"`` spends few steps on the fine detail an upsampler finishes at low noise (``generate`` uses it).
    :return: (B, 3, 2h, 2w) float in [-1, 1], on the model's device.
    """
    low = check_low_res(low_res, model.config.low_res_size)
    B, _, h, w = low.shape
    m = model.unet.config.size_multiple
    if (2 * h) % m or (2 * w) % m:
        raise ValueError(f"low_res is {h}x{w}; twice that must be divisible by {m} (this UNet's size multiple)")
    low = low.to(next(model.parameters()).device)
    return sample(model, gd, (B, 3, 2 * h, 2 * w), sampler=sampler, steps=steps, eta=eta, seed=seed,
                  model_kwargs={"low_res": low}, progress=progress, desc=f"upsampler {2 * h}x{2 * w}",
                  spacing=spacing)  # fmt: skip


def interpolate_upsample(low_res: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """The baseline: resize (B, 3, h, w) to (B, 3, 2h, 2w) with ``F.interpolate`` (``"bilinear"``, ``"bicubic"`` or
    ``"nearest"``), clamped to [-1, 1]."""
    low = check_low_res(low_res)
    kwargs = {} if mode == "nearest" else {"align_corners": False}
    return F.interpolate(low, scale_factor=2, mode=mode, **kwargs).clamp(-1, 1)


# ----------------------------------------------------------------------------------------------------------------------
# measuring


def psnr(images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio per picture, in dB: 10 log10(1 / MSE) on the [0, 1] scale.

    :param images: (B, C, H, W) in [-1, 1] (or uint8). :param reference: the same shape.
    :return: (B,).
    """
    a, b = to_float_images(images).float(), to_float_images(reference).float()
    if a.shape != b.shape:
        raise ValueError(f"images {tuple(a.shape)} and reference {tuple(b.shape)} must have the same shape")
    mse = ((a - b) / 2).pow(2).flatten(1).mean(dim=1)  # [-1, 1] → [0, 1] halves differences
    return 10 * torch.log10(1 / mse.clamp_min(1e-10))


LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
"""The 5-point discrete Laplacian: large where intensity changes sharply (edges, stripes, wood grain)."""


def laplacian_energy(images: torch.Tensor) -> torch.Tensor:
    """A sharpness meter: the mean squared 5-point Laplacian of each picture (interior pixels, every channel).

    Blurry pictures score low. Compare with the real pictures' score: a ratio of 1 means as much fine detail as the
    real ones, below 1 too smooth, above 1 noisier or sharper.

    :param images: (B, C, H, W) in [-1, 1] (or uint8). :return: (B,).
    """
    x = to_float_images(images).float()
    C = x.shape[1]
    kernel = LAPLACIAN.to(x.device)[None, None].expand(C, 1, 3, 3)
    return F.conv2d(x, kernel, groups=C).pow(2).flatten(1).mean(dim=1)


@torch.no_grad()
def evaluate_upsampler(
    model: Upsampler,
    gd: GaussianDiffusion,
    n: int = 256,
    steps: int = 25,
    input_blur: float = 0.0,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = False,
    real: torch.Tensor | None = None,
    sampler: str = "ddim",
    spacing: str = "even",
) -> dict:
    """Upsample the test split's half-size pictures (32×32, or 64×64 for the second upsampler) and compare with the
    real ones at the model's ``image_size``, beside bilinear and bicubic.

    :param n: test pictures (the catalogue's "test" split, seed 1, drawn at the model's size; the half-size ones by
        :func:`downsample2x`).
    :param steps: DDIM steps (η = 0), or network calls for the ODE samplers.
    :param sampler: one of :data:`~dalle2_edu.diffusion.sampling.SAMPLERS` (deterministic ones: ddim, dpmpp2m,
        euler, heun).
    :param real: (N, 3, S, S) uint8 pictures to measure on instead of the catalogue's test split.
    :param input_blur: blur the half-size inputs with this σ first (0: none), to imitate a decoder's softer outputs.
    :return: dict of floats: ``psnr_db`` (mean per-picture PSNR vs the real pictures, and its standard error, for
        ``diffusion``, ``bilinear``, ``bicubic``), ``sharpness_ratio`` (mean :func:`laplacian_energy` over the real
        pictures'), ``consistency_psnr_db`` (PSNR of the upsampled picture box-filtered back to half size against
        its input: does it keep what it was given?), and the settings.
    """
    from dalle2_edu.datasets.catalogue import ProductCatalogue

    if real is None:
        size = model.config.image_size if model.config.image_size in (64, 128) else 64  # the catalogue's sizes
        real_u8 = ProductCatalogue(n, resolution=size, progress=progress, **EVAL_SET).images
    else:
        real_u8, n = real[:n], min(n, len(real))
    real, low = to_float_images(real_u8), to_float_images(downsample2x(real_u8))  # (n, 3, S, S), (n, 3, S/2, S/2)
    if input_blur > 0:
        low = gaussian_blur(low, input_blur)
    outs = {"diffusion": [], "bilinear": [], "bicubic": []}
    for i in range(0, n, batch_size):
        chunk = low[i : i + batch_size]
        outs["diffusion"].append(upsample(model, gd, chunk, steps=steps, seed=seed + i, progress=progress,
                                          sampler=sampler, spacing=spacing).cpu())  # fmt: skip
        outs["bilinear"].append(interpolate_upsample(chunk, "bilinear"))
        outs["bicubic"].append(interpolate_upsample(chunk, "bicubic"))
    outs = {k: torch.cat(v) for k, v in outs.items()}
    real_energy = laplacian_energy(real).mean().item()
    report = {"n": n, "steps": steps, "sampler": sampler, "spacing": spacing, "eta": 0.0, "input_blur": input_blur,
              "seed": seed}  # fmt: skip
    for name, x in outs.items():
        p = psnr(x, real)
        report[name] = {
            "psnr_db": round(p.mean().item(), 3),
            "psnr_db_se": round((p.std() / math.sqrt(n)).item(), 3),
            "sharpness_ratio": round(laplacian_energy(x).mean().item() / real_energy, 3),
            "consistency_psnr_db": round(psnr(downsample2x(x), low).mean().item(), 3),
        }
    return report


# ----------------------------------------------------------------------------------------------------------------------
# saving and loading


def default_upsampler_path(size: int = 64) -> Path:
    """``data/checkpoints/upsampler64.safetensors`` (``size=128``: ``upsampler128``) under
    :func:`dalle2_edu.utils.data_dir`."""
    from dalle2_edu.utils import data_dir

    if size not in (64, 128):
        raise ValueError(f"the shipped upsamplers draw 64 or 128 pixels, got size={size!r}")
    return data_dir() / "checkpoints" / f"upsampler{size}.safetensors"


def save_upsampler(model: Upsampler, path=None, metrics: dict | None = None, half: bool = True) -> Path:
    """Ship a trained upsampler: safetensors weights (fp16 by default) with its config in the file's metadata, and a
    JSON beside it (same name, ``.json``) with ``metrics`` (how it was trained and how good it is).

    :return: the weights' path.
    """
    from dalle2_edu.checkpoint import save_model

    if not isinstance(model, Upsampler):
        raise TypeError(f"save_upsampler needs an Upsampler, got {type(model).__name__}")
    return save_model(default_upsampler_path() if path is None else path, model, "upsampler", metrics, half)


def build_upsampler(config: dict) -> Upsampler:
    """An untrained upsampler of a saved config (the checkpoint registry's builder)."""
    return Upsampler(UpsamplerConfig.from_dict(config))


def load_upsampler(path=None, device="cpu") -> tuple[Upsampler, GaussianDiffusion]:
    """Load saved weights (default ``data/checkpoints/upsampler64.safetensors``) in eval mode, in float32.

    :return: ``(model, diffusion)``.
    :raises FileNotFoundError: no file there.
    :raises ValueError: the file is not an upsampler's, or its weights do not fit its config.
    """
    from dalle2_edu.checkpoint import load_model

    how = (f"train one with `{TRAIN_COMMAND}` (or dalle2_edu.stages.upsampler.train_upsampler) and save it with "
           "save_upsampler(trainer.ema_model, path)")  # fmt: skip
    model = load_model(default_upsampler_path() if path is None else path, "upsampler",
                       build_upsampler, how, device)  # fmt: skip
    return model, model.config.diffusion.build()


# ----------------------------------------------------------------------------------------------------------------------
# helpers


def _check_sigma_range(sigma_range) -> tuple[float, float]:
    try:
        lo, hi = (float(s) for s in sigma_range)
    except (TypeError, ValueError) as err:
        raise ValueError(f"sigma_range must be a pair (low, high), got {sigma_range!r}") from err
    if not 0 < lo <= hi:
        raise ValueError(f"sigma_range must satisfy 0 < low <= high, got ({lo}, {hi})")
    return lo, hi


def _check_probability(p: float) -> None:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"blur probability must lie in [0, 1], got {p}")
