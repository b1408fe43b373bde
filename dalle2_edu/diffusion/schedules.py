"""Noise schedules β_1..β_T and timestep respacing.

Everything here is float64: products of a thousand numbers near 1 lose precision fast in float32, and the VLB
needs log-variances of tiny posterior variances near t = 0.

Index convention: arrays are 0-based, ``betas[t]`` is the β of step t+1 in the papers' 1-based notation, and the
model is fed these 0-based indices.
"""

from __future__ import annotations

import math

import torch


def _check_num_steps(num_timesteps: int) -> None:
    if not isinstance(num_timesteps, int) or isinstance(num_timesteps, bool) or num_timesteps < 1:
        raise ValueError(f"num_timesteps must be a positive int, got {num_timesteps!r}")


def linear_betas(num_timesteps: int) -> torch.Tensor:
    """DDPM's linear schedule (Ho et al. 2020): β from 1e-4 to 0.02 over 1000 steps.

    For other T both ends are scaled by 1000/T (Improved DDPM's rule), so that ᾱ_T, the signal left at the end,
    stays about the same whatever the number of steps.

    :param num_timesteps: T, the number of diffusion steps.
    :return: float64 tensor (T,).
    """
    _check_num_steps(num_timesteps)
    scale = 1000.0 / num_timesteps
    if scale * 0.02 >= 1.0:
        raise ValueError(
            f"linear_betas needs num_timesteps > 20 (β_T = 0.02·1000/T must stay below 1), got {num_timesteps}"
        )
    return torch.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=torch.float64)


def betas_from_alpha_bar(alpha_bar, num_timesteps: int, max_beta: float = 0.999) -> torch.Tensor:
    """Betas whose cumulative product follows a continuous ``alpha_bar(s)`` for s in [0, 1].

    β_t = 1 - ᾱ((t+1)/T) / ᾱ(t/T), capped at ``max_beta`` so the last steps are not singular.
    """
    _check_num_steps(num_timesteps)
    s = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    abar = torch.tensor([alpha_bar(float(x)) for x in s], dtype=torch.float64)
    return (1.0 - abar[1:] / abar[:-1]).clamp(max=max_beta)


def cosine_betas(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Improved DDPM's cosine schedule (Nichol & Dhariwal 2021): ᾱ(t) = cos²((t/T + s)/(1 + s) · π/2).

    Destroys information more slowly than the linear schedule at the start and end, which matters at low
    resolution. The offset s keeps β_1 from being vanishingly small.

    :param num_timesteps: T.
    :param s: small offset, 0.008 in the paper.
    :param max_beta: cap on each β (0.999) to avoid a singularity at t = T.
    :return: float64 tensor (T,).
    """

    def alpha_bar(u: float) -> float:
        return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    return betas_from_alpha_bar(alpha_bar, num_timesteps, max_beta)


SCHEDULES = ("cosine", "linear")


def get_betas(name: str, num_timesteps: int) -> torch.Tensor:
    """Look a schedule up by name: ``"linear"`` or ``"cosine"``."""
    table = {"linear": linear_betas, "cosine": cosine_betas}
    if name not in table:
        raise ValueError(f"unknown noise schedule {name!r}; choose one of {sorted(table)}")
    return table[name](num_timesteps)


def space_timesteps(num_timesteps: int, section_counts) -> list[int]:
    """Choose which of the original T steps a shorter sampler visits (Improved DDPM's respacing rule).

    :param num_timesteps: T of the original process.
    :param section_counts: either ``"ddimN"`` — N steps with a fixed integer stride, as DDIM does, i.e.
        ``range(0, T, stride)`` for the stride that gives exactly N — or a list of ints / comma-separated string
        such as ``"10,15,20"``: split [0, T) into that many equal sections (the first ones one step longer when T
        does not divide) and take that many evenly spaced steps (rounded) in each section.
    :return: sorted list of the kept 0-based step indices.
    """
    _check_num_steps(num_timesteps)
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            try:
                desired = int(section_counts[len("ddim") :])
            except ValueError:
                raise ValueError(f"bad respacing {section_counts!r}: expected 'ddimN' with an integer N") from None
            for stride in range(1, num_timesteps + 1):
                if len(range(0, num_timesteps, stride)) == desired:
                    return list(range(0, num_timesteps, stride))
            raise ValueError(
                f"cannot visit exactly {desired} of {num_timesteps} steps with an integer stride; "
                f"use a count list such as '{desired}' instead of 'ddim{desired}'"
            )
        try:
            section_counts = [int(x) for x in section_counts.split(",")]
        except ValueError:
            raise ValueError(f"bad respacing {section_counts!r}: use 'ddimN' or comma-separated ints") from None
    counts = [int(c) for c in section_counts]
    if not counts or any(c < 0 for c in counts):
        raise ValueError(f"section counts must be non-negative ints, got {section_counts!r}")
    size_per, extra = divmod(num_timesteps, len(counts))
    start = 0
    kept: list[int] = []
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if count > size:
            raise ValueError(f"cannot take {count} steps from a section of {size} steps (T={num_timesteps})")
        if count == 0:
            start += size
            continue
        stride = 1.0 if count == 1 else (size - 1) / (count - 1)
        kept.extend(start + round(stride * j) for j in range(count))
        start += size
    return sorted(set(kept))


def respaced_betas(betas: torch.Tensor, use_timesteps) -> torch.Tensor:
    """Betas of the shorter process that visits only ``use_timesteps``, with the same ᾱ at those steps.

    For kept steps k_0 < k_1 < …, the new ᾱ'_i = ᾱ_{k_i}, so β'_i = 1 - ᾱ_{k_i} / ᾱ_{k_{i-1}} (and ᾱ_{k_{-1}} = 1).
    """
    steps = sorted(set(int(s) for s in use_timesteps))
    if not steps:
        raise ValueError("use_timesteps is empty: keep at least one step")
    if steps[0] < 0 or steps[-1] >= len(betas):
        raise ValueError(f"use_timesteps must lie in [0, {len(betas)}), got {steps[0]}..{steps[-1]}")
    abar = torch.cumprod(1.0 - betas.to(torch.float64), dim=0)[steps]
    prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    return 1.0 - abar / prev
