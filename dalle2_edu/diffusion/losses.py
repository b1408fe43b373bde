"""Log-likelihoods and KL divergences of Gaussians: the pieces of the variational bound.

All functions work elementwise with broadcasting and return **nats**; divide by ln 2 for bits. Inputs in half
precision are promoted to float32 first: the VLB of a learned variance overflows in fp16.
"""

from __future__ import annotations

import math

import torch


def _promote(*xs: torch.Tensor | float) -> list[torch.Tensor]:
    out = []
    for x in xs:
        x = torch.as_tensor(x)
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        out.append(x)
    return out


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL( N(mean1, e^logvar1) ‖ N(mean2, e^logvar2) ) per element, in nats.

    KL = ½ [ logvar2 - logvar1 + e^(logvar1 - logvar2) + (mean1 - mean2)² e^(-logvar2) - 1 ].
    Log-variances (not variances) are taken so that tiny posterior variances near t = 0 stay exact.
    """
    mean1, logvar1, mean2, logvar2 = _promote(mean1, logvar1, mean2, logvar2)
    return 0.5 * (logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2) - 1.0)


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """Φ(x) of the standard normal, through the tanh approximation used by Improved DDPM (error below 1e-3).

    Kept for comparison with the papers; :func:`discretized_gaussian_log_likelihood` uses the exact :func:`ndtr`.
    """
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def gaussian_log_likelihood(x, mean, log_scale) -> torch.Tensor:
    """log N(x; mean, σ²) per element in nats, with log σ = ``log_scale`` (a density: it can be positive).

    Used as the decoder term L_0 for continuous data (2D points, embedding vectors).
    """
    x, mean, log_scale = _promote(x, mean, log_scale)
    z = (x - mean) * torch.exp(-log_scale)
    return -0.5 * z**2 - log_scale - 0.5 * math.log(2 * math.pi)


def discretized_gaussian_log_likelihood(x, mean, log_scale, num_bins: int = 256) -> torch.Tensor:
    """log P(x) per element in nats, for 8-bit data scaled to [-1, 1] under a Gaussian binned into ``num_bins``.

    Pixel value k ∈ {0..255} sits at x = 2k/255 - 1, so bins are 2/255 wide: P(x) = Φ((x + 1/255 - μ)/σ) -
    Φ((x - 1/255 - μ)/σ), with the two edge bins stretched to -∞ and +∞ so the probabilities of all 256 bins sum to 1
    (DDPM's decoder, eq. 13). ``log_scale`` is log σ.

    :param x: targets in [-1, 1] lying on the 256 bin centres.
    :return: log-probabilities, same shape as ``x``.
    """
    x, mean, log_scale = _promote(x, mean, log_scale)
    if x.numel() and (x.min() < -1 - 1e-3 or x.max() > 1 + 1e-3):
        raise ValueError("discretized likelihood needs x in [-1, 1] (8-bit pixels scaled by 2k/255 - 1)")
    half_bin = 1.0 / (num_bins - 1)
    inv_std = torch.exp(-log_scale)
    lo = (x - mean - half_bin) * inv_std  # standardised lower bin edge
    hi = (x - mean + half_bin) * inv_std  # standardised upper bin edge
    log_ndtr = torch.special.log_ndtr
    # Φ(hi) - Φ(lo) cancels to nothing far above the mean; there use the mirror image Φ(-lo) - Φ(-hi), which is equal.
    mid = torch.where(lo > 0, ndtr(-lo) - ndtr(-hi), ndtr(hi) - ndtr(lo))
    log_mid = torch.log(mid.clamp(min=1e-12))
    edge = 1.0 - half_bin  # the outermost bin centres are exactly ±1
    log_first = log_ndtr(hi)  # the leftmost bin is (-∞, -1 + 1/255]
    log_last = log_ndtr(-lo)  # the rightmost bin is [1 - 1/255, +∞)
    return torch.where(x < -edge, log_first, torch.where(x > edge, log_last, log_mid))


def ndtr(x: torch.Tensor) -> torch.Tensor:
    """Φ(x) of the standard normal as ½ erfc(-x/√2): accurate far in the lower tail, where ``torch.special.ndtr``
    underflows to 0 in float32 (Φ(-6.6) ≈ 2e-11)."""
    return 0.5 * torch.special.erfc(-x / math.sqrt(2.0))


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the batch one: (N, ...) -> (N,)."""
    return x.reshape(x.shape[0], -1).mean(dim=1)


def nats_to_bits(x):
    """Divide by ln 2."""
    return x / math.log(2.0)
