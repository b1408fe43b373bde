"""Fast deterministic samplers: the probability-flow ODE solved in a few network calls.

DDIM with η = 0 already follows the probability-flow ODE of the process; these solvers follow the same ODE with
higher-order steps or better-placed noise levels, so that 10-25 network calls give pictures as good as DDIM's 50-100.
Everything works in the noise level σ of Karras et al. (2022):

    σ_t = √((1 - ᾱ_t) / ᾱ_t),    x̃ = x_t / √ᾱ_t = x_t √(1 + σ²)        (so x̃ = x_0 + σ ε)

where the ODE is simply  dx̃/dσ = (x̃ - D(x̃; σ)) / σ  with the denoiser D = x̂_0 (Karras et al. eq. 3 with s = 1). The
network is still called with x_t = x̃ / √(1 + σ²), the VP input it was trained on, whatever it predicts (ε, x_0 or v).

* :func:`dpm_solver_progressive`: DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2), multistep on the
  x̂_0 predictions in λ = log(α/σ_VP) = -log σ, at the integer steps of the schedule, first order at the last step.
* :func:`euler_progressive` and :func:`heun_progressive`: Karras et al. (2022) Algorithm 1 (Heun's 2nd-order method,
  the last step to σ = 0 done by Euler) and its first-order half, on σ spaced uniformly in t or by Karras' ρ = 7 rule.

Continuous time. Euler and Heun visit noise levels between the schedule's steps, so they need the network at
fractional t: :class:`ContinuousSchedule` makes log σ piecewise linear in t between the steps (the knots are the
original step indices, and the model is called with the fractional original index t, which every network of the
package accepts through its sinusoidal timestep embedding). This is how diffusers maps a σ back to a timestep
(``_sigma_to_t``); the likelihood of :mod:`~dalle2_edu.diffusion.likelihood` uses the same map.

``steps`` counts NETWORK CALLS, the honest cost: DPM-Solver++ and Euler make one per step. Heun's corrector needs a
second call on every step but the last (which goes to σ = 0, where the corrector is undefined), so Heun with m noise
levels costs 2m - 1 calls; ``steps`` = N gives m = ⌊(N + 1) / 2⌋ levels, i.e. N calls when N is odd and N - 1 when
it is even.

A limit of Heun on VP schedules: its first step spans σ_max → σ_1 and assumes dx̃/dσ = ε̂ linear in between, but
ε̂ only changes at small σ, so the step multiplies the change of x̂_0 by about (σ_max - σ_1)/(2σ_1). The cosine
schedule's last β is capped at 0.999, so σ_max ≈ 2·10⁴ (σ_1 ≈ 5.7 for 10 levels): Heun then gives saturated
garbage (so does diffusers' HeunDiscreteScheduler, the same algorithm); on the shipped decoder at every budget
measured, 5 to 49 calls (FID ≈ 350-430 against DDIM's 20-23, docs/BENCHMARKS.md §9). The linear schedule (σ_max ≈ 157)
needs about 40 calls or more. Euler and DPM-Solver++ have no such problem: prefer them on such schedules.

The samplers start from x_T ~ N(0, I) at the process's last step, exactly like DDPM and DDIM (x̃ = √(1 + σ_max²) x_T),
so that the same noise gives comparable pictures across samplers. They end at σ = 0 with x̃ = x_0 = the last x̂_0.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

KARRAS_RHO = 7.0
"""ρ of Karras et al.'s spacing σ_i = (σ_max^(1/ρ) + i/(n-1) (σ_min^(1/ρ) - σ_max^(1/ρ)))^ρ, their eq. 5."""


class ContinuousSchedule:
    """The process's noise levels at any real t between its first and last step.

    log σ is linear in t between consecutive steps (knots at the original step indices, ``gd.timestep_map``), so
    σ(t) is exact at every integer step of the process, and t(σ) is its inverse (σ is strictly increasing in t because
    every β > 0). ᾱ(t) = 1 / (1 + σ(t)²). All float64.
    """

    def __init__(self, gd):
        abar = gd.alphas_cumprod.to(torch.float64)
        self.knots = gd.timestep_map.to(torch.float64).numpy()  # original step indices, increasing
        self.log_sigmas = (0.5 * (torch.log1p(-abar) - torch.log(abar))).numpy()  # log σ at each step, increasing
        self.t_min, self.t_max = float(self.knots[0]), float(self.knots[-1])
        self.sigma_min, self.sigma_max = math.exp(self.log_sigmas[0]), math.exp(self.log_sigmas[-1])

    def sigma(self, t) -> np.ndarray:
        """σ(t) for original (fractional) step indices t, clamped to [t_min, t_max]."""
        return np.exp(np.interp(np.asarray(t, dtype=np.float64), self.knots, self.log_sigmas))

    def t(self, sigma) -> np.ndarray:
        """The inverse map t(σ): linear interpolation of t in log σ, clamped to [t_min, t_max]."""
        log_sigma = np.log(np.maximum(np.asarray(sigma, dtype=np.float64), 1e-300))
        return np.interp(log_sigma, self.log_sigmas, self.knots)

    def alpha_bar(self, t) -> np.ndarray:
        """ᾱ(t) = 1 / (1 + σ(t)²)."""
        return 1.0 / (1.0 + self.sigma(t) ** 2)


# ------------------------------------------------------------------------------------------------- checks and grids
def check_steps(steps, most: int, what: str) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= most:
        raise ValueError(f"{what}: steps (network calls) must be a whole number in [1, {most}], got {steps!r}")
    return steps


def dpm_solver_steps(num_timesteps: int, steps: int) -> np.ndarray:
    """The process step indices DPM-Solver++ evaluates the network at, from T-1 down, then it jumps to σ = 0.

    ``round(linspace(0, T-1, steps+1))`` reversed, without its last entry 0: the final step goes from the smallest of
    them straight to clean data (diffusers' ``timestep_spacing="linspace"``, ``final_sigmas_type="zero"``). Needs
    ``steps <= T - 1`` (for T > 1) so that no index repeats.
    """
    most = max(1, num_timesteps - 1)
    check_steps(steps, most, "dpmpp2m")
    return np.linspace(0, num_timesteps - 1, steps + 1).round()[::-1][:-1].astype(np.int64)


def heun_levels(steps: int) -> int:
    """How many noise levels Heun visits for ``steps`` network calls: m = ⌊(steps + 1)/2⌋, costing 2m - 1 calls."""
    return (steps + 1) // 2


def karras_sigmas(sigma_min: float, sigma_max: float, n: int, rho: float = KARRAS_RHO) -> np.ndarray:
    """Karras et al. (2022) eq. 5: n levels from σ_max down to σ_min, dense near σ_min (n = 1: just σ_max)."""
    ramp = np.linspace(0.0, 1.0, n)
    return (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho


def sigma_grid(schedule: ContinuousSchedule, n: int, karras: bool) -> tuple[np.ndarray, np.ndarray]:
    """n noise levels from σ_max down, plus the final 0, and the (fractional, original) t of each of the n.

    Uniform: t_i = linspace(t_max, t_min, n) (diffusers' ``timestep_spacing="linspace"``) and σ_i = σ(t_i).
    Karras: σ_i by :func:`karras_sigmas` between the schedule's σ_min and σ_max, and t_i = t(σ_i).
    """
    if karras:
        sigmas = karras_sigmas(schedule.sigma_min, schedule.sigma_max, n)
        ts = schedule.t(sigmas)
    else:
        ts = np.linspace(schedule.t_max, schedule.t_min, n)
        sigmas = schedule.sigma(ts)
    return np.append(sigmas, 0.0), ts


# ------------------------------------------------------------------------------------------------------ denoiser
def denoise(
    gd,
    model: Callable,
    x: torch.Tensor,
    t_model: torch.Tensor,
    sigma: float,
    model_kwargs: dict | None = None,
    clip_denoised: bool = False,
    denoised_fn: Callable | None = None,
) -> torch.Tensor:
    """x̂_0 = D(x̃; σ) from one network call at VP input ``x`` = x̃ / √(1 + σ²) and timestep ``t_model``.

    With α = 1/√(1 + σ²) = √ᾱ and s = σ α = √(1 - ᾱ):  ε-model: x̂_0 = (x - s ε̂)/α;  x_0-model: x̂_0 is the output;
    v-model: x̂_0 = α x - s v̂. A learned-variance output's second half is ignored.
    """
    out = gd._call_model(model, x, t_model, model_kwargs)
    mean_out, _ = gd._split_output(out)
    alpha = 1.0 / math.sqrt(1.0 + sigma * sigma)
    s = sigma * alpha
    if gd.mean_type == "eps":
        pred_x0 = (x - s * mean_out) / alpha
    elif gd.mean_type == "x0":
        pred_x0 = mean_out
    else:
        pred_x0 = alpha * x - s * mean_out
    if denoised_fn is not None:
        pred_x0 = denoised_fn(pred_x0)
    if clip_denoised:
        pred_x0 = pred_x0.clamp(-1, 1)
    return pred_x0


def _start(gd, model, shape, noise, generator, device) -> torch.Tensor:
    device = gd._device_of(model, noise, device)
    if noise is None:
        return torch.randn(*shape, generator=generator, device="cpu").to(device)
    if tuple(noise.shape) != tuple(shape):
        raise ValueError(f"noise has shape {tuple(noise.shape)} but shape={tuple(shape)} was asked for")
    return noise.to(device)


def _float_t(t: float, x: torch.Tensor) -> torch.Tensor:
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    return torch.full((x.shape[0],), float(t), dtype=dtype, device=x.device)


# ------------------------------------------------------------------------------------------------------ samplers
def dpm_solver_progressive(
    gd,
    model: Callable,
    shape,
    steps: int = 20,
    order: int = 2,
    noise: torch.Tensor | None = None,
    clip_denoised: bool | None = None,
    model_kwargs: dict | None = None,
    denoised_fn: Callable | None = None,
    generator: torch.Generator | None = None,
    device=None,
    progress: bool = False,
    desc: str | None = None,
) -> Iterator[dict]:
    """DPM-Solver++ (Lu et al. 2022), multistep, order 1 or 2, yielding ``dict(sample, pred_x0, t)`` per step.

    With λ = log(√ᾱ/√(1-ᾱ)) = -log σ, h_i = λ_i - λ_{i-1}, α = √ᾱ and s = √(1-ᾱ), from x_{i-1} with x̂_0 predictions
    m_{i-1} (and m_{i-2}):
        order 1:  x_i = (s_i/s_{i-1}) x_{i-1} - α_i (e^(-h_i) - 1) m_{i-1}          (exactly a DDIM step)
        order 2:  the same with m_{i-1} replaced by  (1 + 1/(2r)) m_{i-1} - 1/(2r) m_{i-2},  r = h_{i-1}/h_i
    The first step (no m_{i-2} yet) and the last one, to σ = 0 where h = ∞ and x_0 = m_{i-1}, are first order.
    ``steps`` network calls at the integer steps of :func:`dpm_solver_steps`; ``t`` yielded is the original index.
    """
    if order not in (1, 2) or isinstance(order, bool):
        raise ValueError(f"order must be 1 or 2 (DPM-Solver++ 1 = DDIM, 2 = 2M), got {order!r}")
    idx = dpm_solver_steps(gd.num_timesteps, steps)  # checks steps now, not at the first next()
    return _dpm_loop(gd, model, shape, idx, order, noise, gd._resolve_clip(clip_denoised), model_kwargs,
                     denoised_fn, generator, device, progress, desc)  # fmt: skip


def _dpm_loop(gd, model, shape, idx, order, noise, clip, model_kwargs, denoised_fn, generator, device, progress,
              desc) -> Iterator[dict]:  # fmt: skip
    abar = gd.alphas_cumprod[torch.as_tensor(idx)].numpy()
    sigmas = np.append(np.sqrt((1.0 - abar) / abar), 0.0)
    x = _start(gd, model, shape, noise, generator, device)
    prev_m, prev_h = None, None
    for i in tqdm(range(len(idx)), desc=desc or "DPM-Solver++ sampling", disable=not progress, leave=False):
        t_orig = int(gd.timestep_map[int(idx[i])])
        t = torch.full((shape[0],), t_orig, dtype=torch.long, device=x.device)
        sig, sig_next = float(sigmas[i]), float(sigmas[i + 1])
        with torch.no_grad():
            m = denoise(gd, model, x, t, sig, model_kwargs, clip, denoised_fn)
        if sig_next == 0.0:
            x_next, h = m, None  # λ = ∞: the step lands on x̂_0 itself
        else:
            a_next = 1.0 / math.sqrt(1.0 + sig_next**2)
            s_ratio = (sig_next * a_next) / (sig / math.sqrt(1.0 + sig**2))
            h = math.log(sig / sig_next)
            phi = a_next * math.expm1(-h)  # α_i (e^(-h) - 1)
            d = m
            if order == 2 and prev_m is not None:
                r = prev_h / h
                d = (1 + 0.5 / r) * m - (0.5 / r) * prev_m
            x_next = s_ratio * x - phi * d
        prev_m, prev_h = m, h
        x = x_next
        yield {"sample": x, "pred_x0": m, "t": t_orig}


def _karras_loop(gd, model, shape, steps, second_order, karras, noise, clip_denoised, model_kwargs, denoised_fn,
                 generator, device, progress, desc) -> Iterator[dict]:  # fmt: skip
    schedule = ContinuousSchedule(gd)
    n = heun_levels(steps) if second_order else steps
    sigmas, ts = sigma_grid(schedule, n, karras)
    clip = gd._resolve_clip(clip_denoised)
    x_vp = _start(gd, model, shape, noise, generator, device)
    xt = x_vp * math.sqrt(1.0 + sigmas[0] ** 2)  # x̃ = x_T / √ᾱ

    def D(xt, sig, t):
        x_in = xt / math.sqrt(1.0 + sig * sig)
        return denoise(gd, model, x_in, _float_t(t, x_in), sig, model_kwargs, clip, denoised_fn)

    for i in tqdm(range(n), desc=desc, disable=not progress, leave=False):
        sig, sig_next = float(sigmas[i]), float(sigmas[i + 1])
        with torch.no_grad():
            m = D(xt, sig, ts[i])
            d = (xt - m) / sig
            x_next = xt + (sig_next - sig) * d  # Euler
            if second_order and sig_next > 0:  # Heun's correction, with one more call at σ_{i+1}
                d_next = (x_next - D(x_next, sig_next, ts[i + 1])) / sig_next
                x_next = xt + (sig_next - sig) * 0.5 * (d + d_next)
        xt = x_next
        yield {"sample": xt / math.sqrt(1.0 + sig_next**2), "pred_x0": m, "t": float(ts[i])}


def euler_progressive(gd, model, shape, steps=20, karras_sigmas=False, noise=None, clip_denoised=None,
                      model_kwargs=None, denoised_fn=None, generator=None, device=None, progress=False,
                      desc=None) -> Iterator[dict]:  # fmt: skip
    """Euler's method on dx̃/dσ = (x̃ - D)/σ over ``steps`` noise levels (one network call each), then σ = 0.

    x̃_{i+1} = x̃_i + (σ_{i+1} - σ_i) (x̃_i - D(x̃_i; σ_i))/σ_i. On the schedule's integer steps this is exactly DDIM
    (η = 0); in between it needs the network at fractional t. Yields ``dict(sample, pred_x0, t)``, sample at VP scale
    x = x̃ √ᾱ and t the fractional original index the network was called with.
    """
    check_steps(steps, gd.num_timesteps, "euler")
    return _karras_loop(gd, model, shape, steps, False, karras_sigmas, noise, clip_denoised, model_kwargs,
                        denoised_fn, generator, device, progress, desc or "Euler sampling")  # fmt: skip


def heun_progressive(gd, model, shape, steps=20, karras_sigmas=False, noise=None, clip_denoised=None,
                     model_kwargs=None, denoised_fn=None, generator=None, device=None, progress=False,
                     desc=None) -> Iterator[dict]:  # fmt: skip
    """Heun's 2nd-order method (Karras et al. 2022, Algorithm 1 without churn): ``steps`` network calls in all.

    Per noise level: the Euler guess x̃' at σ_{i+1}, then x̃_{i+1} = x̃_i + (σ_{i+1} - σ_i) (d_i + d'_{i+1})/2 with
    d' from a second call at (x̃', σ_{i+1}); the last step, to σ = 0, is Euler. m = ⌊(steps + 1)/2⌋ levels cost
    2m - 1 calls. Yields once per level, like :func:`euler_progressive`. Poor with few calls when σ_max is huge
    (the cosine schedule: ≈ 2·10⁴), see the module docstring.
    """
    check_steps(steps, 2 * gd.num_timesteps - 1, "heun")
    return _karras_loop(gd, model, shape, steps, True, karras_sigmas, noise, clip_denoised, model_kwargs,
                        denoised_fn, generator, device, progress, desc or "Heun sampling")  # fmt: skip
