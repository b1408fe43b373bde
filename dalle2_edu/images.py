"""The one pixel convention of the project, in one place.

Pictures travel as tensors (B, 3, H, W), channels first, either **uint8 in 0..255** (how data sets store them) or
**float in [-1, 1]** (what every diffusion model sees: x = u / 127.5 - 1). Everything that converts, checks, halves or
saves pictures goes through these functions, so the convention is written once:

* :func:`to_float` / :func:`to_uint8`: the two storage forms, exactly inverse on uint8;
* :func:`check_images`: validate a user's batch (shape, dtype, range, NaN) with a message that names the fix;
* :func:`box_downsample`: halve by averaging 2×2 blocks, the catalogue's own filter (uint8 rounding halves up);
* :func:`to_pil`: float pictures to PIL images for saving.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def describe(x) -> str:
    """A short description of a value for error messages: dtype and shape of a tensor, else the type's name."""
    if torch.is_tensor(x):
        return f"{x.dtype} tensor of shape {tuple(x.shape)}"
    return type(x).__name__


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 → float32 in [-1, 1]; floating-point pictures pass through unchanged (assumed in [-1, 1])."""
    return images.float() / 127.5 - 1 if images.dtype == torch.uint8 else images


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Float pictures in [-1, 1] → uint8 0..255 (clamped, rounded to the nearest level); uint8 passes through."""
    if images.dtype == torch.uint8:
        return images
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def check_images(
    images, name: str = "images", size: int | None = None, allow_single: bool = False, shape: str = "(B, 3, H, W)"
) -> torch.Tensor:
    """Validate a batch of pictures and bring it to float32 (B, 3, H, W) in [-1, 1].

    :param images: uint8 0..255 or float in [-1, 1], channels first.
    :param name: what to call the argument in error messages.
    :param size: if given, H and W must equal it.
    :param allow_single: accept one picture (3, H, W) and make it a batch of one.
    :param shape: the expected shape as the error messages write it, e.g. ``"(B, 3, 32, 32)"``.
    :raises ValueError: naming what is wrong and what to pass instead.
    """
    if not torch.is_tensor(images):
        raise ValueError(f"{name} must be a torch tensor {shape}, got {describe(images)}")
    if images.ndim == 3 and allow_single:
        images = images[None]
    if images.ndim == 4 and images.shape[1] != 3 and images.shape[-1] == 3:
        raise ValueError(f"{name} must be channels-first {shape}, got {tuple(images.shape)}; "
                         "use images.permute(0, 3, 1, 2)")  # fmt: skip
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[0] == 0:
        raise ValueError(f"{name} must have shape {shape} with B >= 1 (RGB, channels first), got "
                         f"{describe(images)}")  # fmt: skip
    if size is not None and tuple(images.shape[-2:]) != (size, size):
        raise ValueError(f"{name} must be {size}x{size}, got {tuple(images.shape[-2:])}")
    if images.dtype == torch.uint8:
        return to_float(images)
    if not images.is_floating_point():
        raise ValueError(f"{name} must be uint8 (0..255) or float in [-1, 1], got dtype {images.dtype}")
    x = images.float()
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} holds NaN or inf values")
    lo, hi = x.min().item(), x.max().item()
    if lo < -1.001 or hi > 1.001:
        hint = " (it looks like 0..255: divide by 127.5 and subtract 1, or pass uint8)" if hi > 2 else ""
        raise ValueError(f"float {name} must lie in [-1, 1], got values in [{lo:.3g}, {hi:.3g}]{hint}")
    return x.clamp(-1, 1)


def box_downsample(images: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Shrink pictures (B, C, H, W) by ``factor`` by averaging factor×factor blocks (a box filter).

    uint8 pictures are rounded exactly like the catalogue's own halving, (sum + n/2) // n, so that halves round up;
    float pictures are averaged without rounding. H and W must be multiples of ``factor``.
    """
    if not torch.is_tensor(images) or images.ndim != 4:
        raise ValueError(f"images must be a tensor of shape (B, C, H, W), got {describe(images)}")
    if images.shape[-1] % factor or images.shape[-2] % factor:
        need = "even" if factor == 2 else f"multiples of {factor}"
        raise ValueError(f"H and W must be {need} to shrink them {factor}x, got {tuple(images.shape[-2:])}")
    if factor == 1:
        return images
    if images.dtype == torch.uint8:
        n = factor * factor
        total = F.avg_pool2d(images.float(), factor) * n  # the sum of each block, exact in float32
        return torch.div(total + n // 2, n, rounding_mode="floor").to(torch.uint8)
    if not images.is_floating_point():
        raise ValueError(f"images must be uint8 or floating point, got {images.dtype}")
    return F.avg_pool2d(images, factor)


def to_pil(images: torch.Tensor) -> list:
    """(B, 3, H, W) pictures (float in [-1, 1] or uint8) → a list of RGB ``PIL.Image``."""
    from PIL import Image

    arrays = to_uint8(images).cpu().permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a, mode="RGB") for a in arrays]
