"""The pieces behind unCLIP's picture edits (:class:`dalle2_edu.pipeline.UnCLIP` ``variations``, ``interpolate``,
``text_diff``, ``inpaint``): spherical interpolation, RePaint-style inpainting, and checking the pictures and masks
a user passes in.

- :func:`slerp` walks along the great circle between two vectors. DALL·E 2 (§3) interpolates CLIP image embeddings
  this way (they live on a sphere) and also the DDIM-inverted noises x_T (high-dimensional Gaussian draws all have
  norm ≈ √D, so they too sit near a sphere, and a straight line between two of them passes through less likely,
  shorter vectors).
- :func:`repaint` fills a masked region with an unconditionally-trained diffusion model (Lugmayr et al. 2022): at
  every step the known pixels are replaced by a forward-noised copy of the original at that step's noise level, and
  each step is repeated ``resample`` times (one forward step back up, then down again) so the generated region has
  time to agree with what surrounds it. Any decoder works as it is, with no mask-conditioned training; that is why
  this toolkit uses it rather than GLIDE's mask-conditioned decoder, which would need a fifth model trained.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from dalle2_edu.validate import check_count


def slerp(a: torch.Tensor, b: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between the rows of ``a`` and ``b`` (each row flattened), at fraction ``t``.

    slerp(a, b, t) = sin((1-t)Ω)/sin Ω · a + sin(tΩ)/sin Ω · b with Ω the angle between a and b. For unit vectors the
    result is a unit vector at angle tΩ from a; t = 0 gives a, t = 1 gives b. Nearly parallel rows fall back to the
    straight line (the two agree there).

    :param a, b: tensors of the same shape (B, ...) (or one row without a batch dimension).
    :param t: a number, or a tensor of shape (B,) with one fraction per row.
    """
    if a.shape != b.shape:
        raise ValueError(f"slerp needs a and b of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    squeeze = a.ndim == 1
    a2, b2 = (a[None], b[None]) if squeeze else (a, b)
    fa, fb = a2.reshape(a2.shape[0], -1).double(), b2.reshape(b2.shape[0], -1).double()
    t = torch.as_tensor(t, dtype=torch.float64, device=a.device).reshape(-1, 1)
    cos = (F.normalize(fa, dim=1) * F.normalize(fb, dim=1)).sum(1, keepdim=True).clamp(-1, 1)
    omega = torch.acos(cos)
    sin = torch.sin(omega)
    near = sin.abs() < 1e-6
    safe = torch.where(near, torch.ones_like(sin), sin)
    wa = torch.where(near, 1 - t, torch.sin((1 - t) * omega) / safe)
    wb = torch.where(near, t, torch.sin(t * omega) / safe)
    out = (wa * fa + wb * fb).to(a.dtype).reshape(a2.shape)
    return out[0] if squeeze else out


def inversion_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """The ``steps`` of the T original ones that DDIM inversion runs on, and that inverted noise is decoded on:
    t_j = ⌊j T / K⌋ for j = 0 … K-1, DDIM's even stride (``space_timesteps(T, f"ddim{K}")`` whenever K divides T).

    It stops one stride short of T on purpose. Decoding starts with x̂_0 = (x_T - √(1-ᾱ_T) ε̂)/√ᾱ_T, so the
    inversion's small error in ε̂ is multiplied by 1/√ᾱ_T: about 6 at the top of this spacing for K = 10 (ᾱ = 0.024
    at t = 900 with the cosine schedule, T = 1000), but about 20 000 at t = T - 1 (ᾱ ≈ 2·10⁻⁹), where Improved
    DDPM's rule (:func:`~dalle2_edu.diffusion.sampling.respaced`, which :meth:`UnCLIP.generate` samples with) ends.
    That amplification is an ε-network's: measured with the ε-predicting decoder shipped until 2026-12-04 on 16 test
    pictures, inverted at guidance 1 and decoded at 3 as the edits do, the reconstruction's MSE was 0.027 (10 steps)
    and 0.038 (25 steps) on this spacing, 0.18 and 0.14 on Improved DDPM's (notebook 07 §7). A v-network forms
    x̂_0 = √ᾱ_t x_t - √(1-ᾱ_t) v̂ and divides by nothing: the shipped v-predicting decoder reconstructs to 0.022 on
    this spacing and 0.027 on Improved DDPM's at 25 steps (notebook 13 §1), so this spacing is kept, by a smaller
    margin.
    """
    num_timesteps, steps = check_count("num_timesteps", num_timesteps), check_count("steps", steps)
    if steps > num_timesteps:
        raise ValueError(f"steps must be at most num_timesteps = {num_timesteps}, got {steps}")
    return [j * num_timesteps // steps for j in range(steps)]


# ------------------------------------------------------------------------------------------------ pictures in
def images_to_tensor(image, name: str = "image") -> torch.Tensor:
    """A user's picture(s) → float32 (B, 3, H, H) in [-1, 1].

    Takes a PIL image or a list of them, a uint8 array (H, W, 3) or (B, H, W, 3) of 0..255, or a tensor (3, H, W) /
    (B, 3, H, W), uint8 in 0..255 or float in [-1, 1] (what :meth:`UnCLIP.generate` returns). PIL images of another
    mode (RGBA, greyscale, palette) are converted to RGB with a warning.

    :raises ValueError: a shape that is not a picture, an empty batch, channels-last tensors, non-square pictures,
        floats outside [-1, 1], NaN; each message says what to pass instead.
    """
    from PIL import Image

    if isinstance(image, Image.Image):
        image = [image]
    if isinstance(image, list | tuple):
        if not image:
            raise ValueError(f"{name} is an empty list; pass at least one picture")
        if not all(isinstance(im, Image.Image) for im in image):
            raise TypeError(f"a list {name} must hold PIL images; stack tensors into one (B, 3, H, W) tensor instead")
        arrays = []
        for im in image:
            if im.mode != "RGB":
                warnings.warn(f"{name} has mode {im.mode!r}; converting it to RGB", stacklevel=3)
                im = im.convert("RGB")
            arrays.append(np.array(im))
        sizes = {a.shape for a in arrays}
        if len(sizes) > 1:
            raise ValueError(f"the pictures in {name} differ in size ({sorted(sizes)}); resize them to one size first")
        image = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    elif isinstance(image, np.ndarray):
        if image.ndim not in (3, 4) or image.shape[-1] != 3:
            raise ValueError(f"a numpy {name} must be (H, W, 3) or (B, H, W, 3) with 0..255 values, got {image.shape}")
        image = torch.from_numpy(np.ascontiguousarray(image)).movedim(-1, -3)
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"{name} must be a PIL image, a numpy array or a tensor, got {type(image).__name__}")
    x = image[None] if image.ndim == 3 else image
    shape = tuple(image.shape)
    if x.ndim != 4:
        raise ValueError(f"{name} must be (3, H, W) or (B, 3, H, W), got {shape}")
    if x.shape[1] != 3:
        hint = "; it looks channels-last: use .permute(0, 3, 1, 2)" if x.shape[-1] == 3 else ""
        raise ValueError(f"{name} must have 3 colour channels first, (B, 3, H, W), got {shape}{hint}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch, shape {shape}: pass at least one picture")
    if x.shape[2] == 0 or x.shape[3] == 0:
        raise ValueError(f"{name} has no pixels, shape {shape}: pass pictures of at least 1×1")
    if x.shape[2] != x.shape[3]:
        raise ValueError(
            f"{name} is {x.shape[3]}×{x.shape[2]} (width×height) but must be square; crop it first, e.g. "
            f"PIL.ImageOps.fit(image, (64, 64))"
        )
    if x.dtype == torch.uint8:
        return x.float() / 127.5 - 1
    if not x.is_floating_point():
        raise ValueError(f"{name} must be uint8 (0..255) or float in [-1, 1], got dtype {x.dtype}")
    x = x.float()
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf")
    if x.min() < -1.001 or x.max() > 1.001:
        raise ValueError(
            f"float {name} must lie in [-1, 1], got values in [{x.min():.3g}, {x.max():.3g}]; for [0, 1] pictures "
            "pass 2 * x - 1, for 0..255 ones pass uint8"
        )
    return x.clamp(-1, 1)


def fit_size(x: torch.Tensor, size: int, name: str = "image") -> torch.Tensor:
    """(B, C, H, H) → (B, C, size, size): exact box-filter averaging when H is a multiple of ``size`` (how the
    catalogue makes its 32×32 pictures), bilinear upscaling when ``size`` is a multiple of H, otherwise an
    antialiased resize with a warning (the picture's detail will not line up with the model's pixel grid)."""
    h = x.shape[-1]
    if h == size:
        return x
    if h % size == 0:
        return F.avg_pool2d(x, h // size)
    if size % h:
        warnings.warn(f"{name} is {h}×{h}; resizing it to {size}×{size}", stacklevel=3)
        return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def mask_to_tensor(mask, batch: int, size: int) -> torch.Tensor:
    """A user's mask → float32 (batch, 1, size, size) in [0, 1], 1 marking the pixels to repaint.

    Takes a PIL image (mode "L" or "1"; white = repaint), an array or tensor (H, W), (1, H, W), (B, H, W) or
    (B, 1, H, W): bool, uint8 0/255 (or 0/1), or float in [0, 1]. One mask is shared by every picture.

    :raises ValueError: the mask is not ``size``×``size`` (the picture's size), holds values outside [0, 1], or
        marks no pixel.
    """
    from PIL import Image

    if isinstance(mask, Image.Image):
        mask = np.array(mask.convert("L"))
    if isinstance(mask, np.ndarray):
        mask = torch.from_numpy(np.ascontiguousarray(mask))
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a PIL image, a numpy array or a tensor, got {type(mask).__name__}")
    shape = tuple(mask.shape)
    m = mask
    if m.ndim == 2:
        m = m[None, None]
    elif m.ndim == 3:
        m = m[:, None] if m.shape[0] == batch and batch > 1 else m[None] if m.shape[0] == 1 else m[:, None]
    if m.ndim != 4 or m.shape[1] != 1 or m.shape[0] not in (1, batch):
        raise ValueError(f"mask must be (H, W), (1, H, W) or ({batch}, 1, H, W) with one channel, got {shape}")
    if m.shape[-2:] != (size, size):
        raise ValueError(
            f"mask is {m.shape[-1]}×{m.shape[-2]} but the picture is {size}×{size}; make the mask the picture's size "
            f"(e.g. mask.resize(({size}, {size}), PIL.Image.NEAREST))"
        )
    if m.dtype == torch.bool:
        m = m.float()
    elif m.dtype == torch.uint8:
        m = m.float() / (255.0 if m.max() > 1 else 1.0)
    elif m.is_floating_point():
        m = m.float()
        if not torch.isfinite(m).all() or m.min() < 0 or m.max() > 1:
            raise ValueError(
                f"a float mask must lie in [0, 1] (1 = repaint, 0 = keep), got values in [{m.min():.3g}, {m.max():.3g}]"
            )
    else:
        raise ValueError(f"mask must be bool, uint8 (0/255) or float in [0, 1], got dtype {m.dtype}")
    if not (m > 0).any():
        raise ValueError("mask marks no pixel to repaint (it is all 0); 1 (or white) marks the region to repaint")
    return m.expand(batch, 1, size, size).contiguous()


def mask_to_size(mask: torch.Tensor, size: int) -> torch.Tensor:
    """(B, 1, H, H) mask → (B, 1, size, size), binary: a low-resolution pixel is repainted when any pixel of the
    block it covers is (max pooling), so the repainted region always covers the requested one."""
    h = mask.shape[-1]
    if h == size:
        return (mask > 0).float()
    if h % size == 0:
        return (F.max_pool2d(mask, h // size) > 0).float()
    return (F.interpolate(mask, size=(size, size), mode="bilinear", align_corners=False) > 0).float()


# ------------------------------------------------------------------------------------------------ RePaint
@torch.no_grad()
def repaint(
    gd,
    model: Callable,
    known: torch.Tensor,
    mask: torch.Tensor,
    resample: int = 4,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Fill ``mask`` (1 = repaint) of ``known`` by ancestral sampling with RePaint's known-region replacement.

    For t = T-1 … 0 (the steps of ``gd``, usually a respaced process):

    - unknown part: x_{t-1} ~ p(x_{t-1} | x_t) from the model;
    - known part:   x_{t-1} ~ q(x_{t-1} | x_0 = known), i.e. √ᾱ_{t-1} known + √(1-ᾱ_{t-1}) ε (exactly ``known`` at
      the last step);
    - x_{t-1} = m ⊙ unknown + (1 - m) ⊙ known;
    - ``resample`` - 1 times: go back up one step, x_t ~ q(x_t | x_{t-1}) = √(1-β_t) x_{t-1} + √β_t ε, and redo the
      step (``resample=1`` is plain replacement, which leaves visible seams).

    :param gd: the :class:`~dalle2_edu.diffusion.GaussianDiffusion` to run.
    :param model: ``model(x_t, t)`` (e.g. a guided decoder).
    :param known: (B, C, H, W) pictures in [-1, 1].
    :param mask: (B, 1, H, W) or (B, C, H, W), 1 where to repaint, 0 where ``known`` stays.
    :param resample: how often each step is run (RePaint's U).
    :param generator: seeds every draw.
    :return: (B, C, H, W); equal to ``known`` wherever ``mask`` is 0.
    """
    resample = check_count("resample", resample)
    device = known.device
    randn = lambda: torch.randn(known.shape, generator=generator).to(device)  # noqa: E731
    x = randn()
    m = mask.to(device=device, dtype=known.dtype)
    steps = range(gd.num_timesteps - 1, -1, -1)
    for i in tqdm(steps, desc="RePaint inpainting", disable=not progress, leave=False):
        t = torch.full((known.shape[0],), i, device=device, dtype=torch.long)
        for u in range(resample):
            unknown = gd.p_sample(model, x, t, randn())["sample"]
            known_prev = gd.q_sample(known, t - 1, randn()) if i > 0 else known
            x_prev = m * unknown + (1 - m) * known_prev
            if u == resample - 1 or i == 0:
                x = x_prev
                break
            beta = gd.betas[i].item()
            x = (1 - beta) ** 0.5 * x_prev + beta**0.5 * randn()
    return x
