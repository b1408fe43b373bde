"""The exact log-likelihood of a diffusion model, through its probability-flow ODE (Song et al. 2021, §4.3 and app. D).

The deterministic sampler is an invertible map from the noise x_T to the data, so the change-of-variables formula
gives the model's density exactly, not a bound like the VLB. In the σ-coordinates of :mod:`.solvers`
(x̃ = x_t / √ᾱ = x_0 + σ ε, σ = √((1 - ᾱ)/ᾱ)) and with s = log σ as time, the ODE and the log-density along it are

    dx̃/ds = f(x̃, s) = x̃ - D(x̃; σ)                    (σ dx̃/dσ, D = x̂_0 the denoiser)
    d log p_s(x̃(s))/ds = -∇·f = -(d - tr ∂D/∂x̃)        (instantaneous change of variables, Chen et al. 2018)

so, integrating from the data at σ_min to σ_max,

    log p(x_0) = log N(x̃(σ_max); 0, (1 + σ_max²) I) + ∫ ∇·f ds,

the first term being the prior x_T ~ N(0, I) of the sampler written in x̃ = x_T √(1 + σ_max²).

Choices, stated once:

* Continuous time. σ runs continuously from σ_min = σ(step 0) to σ_max = σ(step T-1); the network is called at the
  fractional original step t(σ) of :class:`~.solvers.ContinuousSchedule` (log σ linear in t between steps), i.e.
  ᾱ(t) = 1/(1 + σ(t)²) from the discrete ᾱ by interpolating log σ. The ODE starts at the smallest noise level the model
  was trained on, so the density computed is that of x̃ at σ_min, the data blurred by N(0, σ_min² I) (σ_min = 0.01
  for DDPM's linear β): log p of a smooth continuous density changes by O(σ_min²) per dimension (Song et al.
  likewise stop at ε = 1e-5 in their time).
* Precision. ``scipy.integrate.solve_ivp`` (RK45, adaptive) integrates in float64; the network runs in x0's dtype.
* The divergence. ``trace="exact"``: d backward passes per function evaluation (fine for 2D points and embeddings,
  slow for pictures); ``trace="hutchinson"``: zᵀ(∂f/∂x̃)z with one Rademacher z per example drawn once per solve
  (Hutchinson 1989; FFJORD, Grathwohl et al. 2019), unbiased, one backward pass.
* Pictures (``data_type="image"``). 8-bit values k ∈ {0..255} map to x = k/127.5 - 1, bins of width 1/127.5. Uniform
  dequantisation y = x + u/127.5, u ~ U(-½, ½)^d (``dequantize=True``, the default for pictures) turns the density
  p_y of the [-1, 1]-scaled data into a bound on the probability of the 8-bit picture:
  log P(k) ≥ E_u[log p_y(y)] + d log(1/127.5), so the bits per dimension reported are
  bpd = (nll / d + log 127.5) / log 2, comparable with the discretized VLB of ``calc_bpd_loop`` and with the
  literature. For continuous data (``data_type="continuous"``) bpd = nll / (d log 2), no offset.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from dalle2_edu.diffusion.solvers import ContinuousSchedule, denoise

TRACES = ("exact", "hutchinson")
LOG_BIN = math.log(127.5)
"""log 127.5: what uniform dequantisation of 8-bit data scaled to [-1, 1] adds per dimension to the NLL in nats."""


def divergence(fn: Callable, x: torch.Tensor, trace: str = "exact", probe: torch.Tensor | None = None):
    """``fn(x)`` and, per example, the divergence ∇·fn = tr(∂fn/∂x) over all but the batch dimension.

    :param fn: maps (N, …) to (N, …) of the same shape, each example on its own.
    :param trace: ``"exact"`` (d backward passes) or ``"hutchinson"`` (probeᵀ J probe, one backward pass).
    :param probe: the Hutchinson probe, shaped like x (Rademacher ±1 or standard normal); needed for "hutchinson".
    :return: ``(fn(x) detached, divergence (N,))``.
    """
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        out = fn(x)
        flat = out.reshape(out.shape[0], -1)
        if trace == "hutchinson":
            (g,) = torch.autograd.grad((out * probe).sum(), x)
            div = (g * probe).reshape(x.shape[0], -1).sum(1)
        else:
            div = torch.zeros(x.shape[0], dtype=out.dtype, device=x.device)
            for i in range(flat.shape[1]):
                (g,) = torch.autograd.grad(flat[:, i].sum(), x, retain_graph=i + 1 < flat.shape[1])
                div = div + g.reshape(x.shape[0], -1)[:, i]
    return out.detach(), div.detach()


def ode_log_likelihood(
    gd,
    model: Callable,
    x0: torch.Tensor,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    trace: str = "exact",
    model_kwargs: dict | None = None,
    generator: torch.Generator | None = None,
    dequantize: bool | None = None,
) -> dict:
    """−log p_θ(x0) per example, exactly (up to the ODE solver's tolerance), by the probability-flow ODE.

    :param gd: the model's process (any mean type; a learned variance output is ignored: the ODE does not use it).
    :param model: ``model(x_t, t, **model_kwargs)``, called at fractional original steps t.
    :param x0: (N, …) data; pictures (``gd.data_type == "image"``) must lie in [-1, 1].
    :param rtol, atol: RK45's tolerances, both > 0.
    :param trace: ``"exact"`` or ``"hutchinson"`` (see the module docstring).
    :param generator: CPU generator for the Hutchinson probes and the dequantisation noise.
    :param dequantize: add uniform noise of one 8-bit bin; ``None``: yes for pictures, no for continuous data.
    :return: dict with ``nll`` (N,) in nats (−log p of the continuous density of the, possibly dequantised,
        [-1, 1]-scaled input, summed over dimensions), ``bpd`` (N,) bits per dimension (module docstring),
        ``prior_logp`` (N,) and ``delta_logp`` (N,) (nll = −(prior_logp + delta_logp)), ``x_T`` the noise the ODE maps
        x0 to (VP scale, like a sampler's start), and ``nfe`` the number of network evaluations.
    """
    from scipy.integrate import solve_ivp

    from dalle2_edu.diffusion.sampling import _module_of

    if trace not in TRACES:
        raise ValueError(f"unknown trace {trace!r}; choose one of {', '.join(TRACES)}")
    for name, tol in (("rtol", rtol), ("atol", atol)):
        if not isinstance(tol, int | float) or isinstance(tol, bool) or not tol > 0:
            raise ValueError(f"{name} must be a number > 0 (e.g. 1e-5), got {tol!r}")
    if not isinstance(x0, torch.Tensor) or x0.ndim < 2 or x0.shape[0] == 0:
        raise ValueError("x0 must be a (N, ...) tensor with N >= 1 examples")
    image = gd.data_type == "image"
    if image and (x0.min() < -1 or x0.max() > 1):
        raise ValueError(
            f"pictures must lie in [-1, 1], got values in [{x0.min().item():.3g}, {x0.max().item():.3g}]; "
            "scale 8-bit data with x / 127.5 - 1"
        )
    dequantize = image if dequantize is None else bool(dequantize)
    dtype = x0.dtype if x0.dtype in (torch.float32, torch.float64) else torch.float32
    device, shape = x0.device, tuple(x0.shape)
    n, dim = shape[0], math.prod(shape[1:])

    x = x0.detach().to(torch.float64)
    if dequantize:
        x = x + (torch.rand(shape, generator=generator, dtype=torch.float64) - 0.5).to(device) / 127.5
    probe = None
    if trace == "hutchinson":
        probe = (torch.randint(0, 2, shape, generator=generator) * 2 - 1).to(device=device, dtype=dtype)

    schedule = ContinuousSchedule(gd)
    nfe = 0

    def rhs(s: float, y: np.ndarray) -> np.ndarray:
        nonlocal nfe
        nfe += 1
        sigma = math.exp(s)
        t = torch.full((n,), float(schedule.t(sigma)), dtype=torch.float64 if dtype == torch.float64 else torch.float32,
                       device=device)  # fmt: skip
        xt = torch.from_numpy(y[: n * dim]).reshape(shape).to(device=device, dtype=dtype)
        scale = 1.0 / math.sqrt(1.0 + sigma * sigma)

        def f(xt):  # dx̃/ds = x̃ - D(x̃; σ)
            return xt - denoise(gd, model, xt * scale, t, sigma, model_kwargs)

        dx, div = divergence(f, xt, trace, probe)
        return np.concatenate([dx.double().cpu().numpy().ravel(), div.double().cpu().numpy()])

    s0, s1 = math.log(schedule.sigma_min), math.log(schedule.sigma_max)
    y0 = np.concatenate([x.cpu().numpy().ravel(), np.zeros(n)])
    module = _module_of(model)
    was_training = module.training if module is not None else False
    if module is not None:
        module.eval()
    try:
        sol = solve_ivp(rhs, (s0, s1), y0, method="RK45", rtol=rtol, atol=atol)
    finally:
        if module is not None:
            module.train(was_training)
    if not sol.success:
        raise RuntimeError(f"the probability-flow ODE did not integrate: {sol.message}")
    y1 = sol.y[:, -1]
    xt_end = torch.from_numpy(y1[: n * dim]).reshape(n, dim)
    delta = torch.from_numpy(y1[n * dim :].copy())
    var_T = 1.0 + schedule.sigma_max**2  # x̃_T = x_T √(1 + σ_max²), x_T ~ N(0, I)
    prior = -0.5 * dim * math.log(2 * math.pi * var_T) - (xt_end**2).sum(1) / (2 * var_T)
    nll = -(prior + delta)
    bpd = (nll / dim + (LOG_BIN if image else 0.0)) / math.log(2.0)
    return {
        "nll": nll,
        "bpd": bpd,
        "prior_logp": prior,
        "delta_logp": delta,
        "x_T": (xt_end / math.sqrt(var_T)).reshape(shape),
        "nfe": nfe,
    }
