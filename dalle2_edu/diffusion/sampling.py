"""The one sampling entry point: every stage, the pipeline, the widgets and the notebooks draw through :func:`sample`.

What used to be written once per stage lives here once: respacing to ``steps``, the seeded noise, the device, the
network in eval mode (and put back as it was), the choice of sampler, the final clamp, and a progress bar that names
what is being drawn::

    x = sample(model, gd, (4, 3, 32, 32), steps=25, seed=0, desc="decoder 32x32")

A stage adds only what is its own: how it wraps the network (guidance, conditioning) and what it does with the result.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import nn

from dalle2_edu.diffusion.gaussian import GaussianDiffusion, _last
from dalle2_edu.diffusion.schedules import space_timesteps

SAMPLERS = ("ddim", "ddpm", "dpmpp2m", "euler", "heun")
"""``"ddim"``: DDIM with η = ``eta`` (0: deterministic given x_T); ``"ddpm"``: ancestral, with the model's variance.
The fast ODE solvers of :mod:`~dalle2_edu.diffusion.solvers`, deterministic given x_T: ``"dpmpp2m"`` DPM-Solver++(2M),
``"euler"`` and ``"heun"`` (Karras et al. 2022, σ uniform in t).

What ``steps`` means: for ``ddim``/``ddpm`` the number of steps of the process respaced by Improved DDPM's rule (one
network call each); for the ODE solvers the number of NETWORK CALLS, on the full process (they pick their own noise
levels: DPM-Solver++ at integer steps, Euler and Heun at fractional t), so the same ``steps`` costs the same. Heun
makes 2 calls per noise level but the last: ``steps`` = N visits ⌊(N+1)/2⌋ levels (N - 1 calls when N is even).
Heun fails on a cosine schedule (σ_max ≈ 2·10⁴: on the shipped decoder at every budget up to 49 calls, see
:mod:`~dalle2_edu.diffusion.solvers`); use DPM-Solver++ or Euler there.
"""

ODE_SAMPLERS = ("dpmpp2m", "euler", "heun")


SPACINGS = ("even", "quad")
"""Which ``steps`` of the T original ones a respaced ``ddim``/``ddpm`` sampler visits (:func:`spaced_timesteps`):
``"even"``, Improved DDPM's rule, evenly from t = 0 to T - 1; ``"quad"``, DDIM's quadratic spacing, dense at low
noise. A model that is told most of the picture (the upsamplers, given the low-resolution one) has little to decide
at high noise and much fine detail to finish at low noise: there ``"quad"`` spends its few steps where they count."""


def spaced_timesteps(num_timesteps: int, steps: int, spacing: str = "even") -> list[int]:
    """The ``steps`` timesteps of T that :func:`respaced` keeps, increasing, from 0 to T - 1 (both kept when
    ``steps`` >= 2).

    ``"even"``: Improved DDPM's rule (``space_timesteps(T, [steps])``). ``"quad"``: t_j = round((T - 1)·(j / (K - 1))²)
    for j = 0 … K - 1 (K = ``steps``; DDIM's quadratic spacing, Song et al. 2021), each pushed one step past the one
    before where rounding would repeat it (so the K steps stay distinct for any K <= T).
    """
    if spacing not in SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}; choose one of {', '.join(SPACINGS)}")
    if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= num_timesteps:
        raise ValueError(f"steps must be a whole number in [1, {num_timesteps}], got {steps!r}")
    if spacing == "even" or steps == 1 or steps == num_timesteps:
        return sorted(space_timesteps(num_timesteps, [steps]))
    out: list[int] = []
    for j in range(steps):
        t = round((num_timesteps - 1) * (j / (steps - 1)) ** 2)
        # distinct, and leaving room for the steps still to come below T
        out.append(min(max(t, out[-1] + 1 if out else 0), num_timesteps - steps + j))
    return out


def respaced(gd: GaussianDiffusion, steps: int, spacing: str = "even") -> GaussianDiffusion:
    """``gd`` respaced to ``steps`` steps chosen by ``spacing`` (:func:`spaced_timesteps`; ``"even"``: Improved
    DDPM's rule, which keeps both t = 0 and t = T - 1)."""
    timesteps = spaced_timesteps(gd.num_timesteps, steps, spacing)
    return gd if steps == gd.num_timesteps else gd.respace(timesteps)


def check_sampler(sampler: str) -> str:
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    return sampler


def max_steps(sampler: str, num_timesteps: int) -> int:
    """The most ``steps`` :func:`sample` takes with ``sampler`` on a process of T steps: T for ddim, ddpm and
    euler, T - 1 for dpmpp2m (its steps are distinct integer steps, the jump to σ = 0 being the last), 2T - 1 for
    heun (T noise levels). Callers that clamp a requested count (``min(steps, max_steps(...))``) use it."""
    check_sampler(sampler)
    return {"dpmpp2m": max(1, num_timesteps - 1), "heun": 2 * num_timesteps - 1}.get(sampler, num_timesteps)


def _module_of(model: Callable) -> nn.Module | None:
    """The ``nn.Module`` behind ``model`` (itself, or the ``.net`` a guidance wrapper holds), for eval mode."""
    while model is not None and not isinstance(model, nn.Module):
        model = getattr(model, "net", None)
    return model


def _device_of(module: nn.Module | None, noise: torch.Tensor | None) -> torch.device:
    if module is not None:
        for p in module.parameters():
            return p.device
    return noise.device if noise is not None else torch.device("cpu")


def sample_progressive(
    model: Callable,
    gd: GaussianDiffusion,
    shape,
    *,
    sampler: str = "ddim",
    steps: int | None = None,
    eta: float = 0.0,
    seed: int = 0,
    noise: torch.Tensor | None = None,
    model_kwargs: dict | None = None,
    clip_denoised: bool | None = None,
    denoised_fn: Callable | None = None,
    progress: bool = False,
    desc: str | None = None,
    generator: torch.Generator | None = None,
    device=None,
    spacing: str = "even",
) -> Iterator[dict]:
    """:func:`sample`, yielding ``dict(sample, pred_x0, t)`` after every step (for the explorers and animations).

    The network is in eval mode while the iterator runs and put back as it was when it finishes.

    :param generator: a CPU ``torch.Generator`` to draw from instead of a fresh one seeded with ``seed`` (e.g. one
        that already drew the starting noise).
    :param device: where to sample (default: the network's device, else the noise's, else the CPU).
    :param spacing: which steps ``ddim``/``ddpm`` visit (:data:`SPACINGS`); the ODE solvers pick their own and take
        ``"even"`` only.
    """
    check_sampler(sampler)
    if spacing not in SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}; choose one of {', '.join(SPACINGS)}")
    if sampler in ODE_SAMPLERS:
        if eta != 0:
            raise ValueError(f"eta={eta} applies to sampler='ddim' only; the {sampler!r} sampler is deterministic")
        if spacing != "even":
            raise ValueError(f"spacing={spacing!r} applies to the ddim and ddpm samplers; {sampler!r} picks its own "
                             "noise levels")  # fmt: skip
        spaced, calls = gd, max_steps(sampler, gd.num_timesteps) if steps is None else steps  # checked there
    else:
        spaced = respaced(gd, gd.num_timesteps if steps is None else steps, spacing)
        calls = spaced.num_timesteps
    module = _module_of(model)
    device = torch.device(device) if device is not None else _device_of(module, noise)
    shape = tuple(shape)
    if noise is not None and tuple(noise.shape) != shape:
        raise ValueError(f"noise must have shape {shape}, got {tuple(noise.shape)}")
    generator = generator if generator is not None else torch.Generator().manual_seed(seed)
    kwargs = dict(noise=noise, clip_denoised=clip_denoised, model_kwargs=model_kwargs, denoised_fn=denoised_fn,
                  generator=generator, device=device, progress=progress,
                  desc=f"{desc} ({sampler.upper()} {calls} steps)" if desc else None)  # fmt: skip
    was_training = module.training if module is not None else False
    if module is not None:
        module.eval()
    try:
        if sampler == "ddim":
            yield from spaced.ddim_sample_loop_progressive(model, shape, eta=eta, **kwargs)
        elif sampler == "dpmpp2m":
            yield from spaced.dpm_solver_sample_loop_progressive(model, shape, steps=calls, order=2, **kwargs)
        elif sampler == "euler":
            yield from spaced.euler_sample_loop_progressive(model, shape, steps=calls, **kwargs)
        elif sampler == "heun":
            yield from spaced.heun_sample_loop_progressive(model, shape, steps=calls, **kwargs)
        else:
            yield from spaced.p_sample_loop_progressive(model, shape, **kwargs)
    finally:
        if module is not None:
            module.train(was_training)


@torch.no_grad()
def sample(model: Callable, gd: GaussianDiffusion, shape, *, clamp: bool = True, **kwargs) -> torch.Tensor:
    """Draw ``shape`` from ``model`` with the process ``gd``: the one sampling path of the project.

    :param model: ``model(x_t, t, **model_kwargs)``: a network or a wrapper around one (e.g. a
        :class:`~dalle2_edu.diffusion.guidance.GuidedModel`; the network behind its ``.net`` is put in eval mode).
    :param gd: the model's diffusion over all its T steps; respaced here to ``steps``.
    :param shape: of the result, e.g. ``(B, 3, 32, 32)`` or ``(B, d)``.
    :param sampler: one of :data:`SAMPLERS`.
    :param steps: steps of the respaced process for ``ddim``/``ddpm``, network calls for the ODE solvers (see
        :data:`SAMPLERS`; ``None``: all T steps, the most :func:`max_steps` allows for the solvers).
    :param eta: DDIM's η (0: deterministic given the starting noise); must stay 0 for the ODE solvers.
    :param seed: fixes the starting noise and every step's noise (drawn on the CPU, so the same on any device).
    :param noise: a starting x_T instead of seeded noise (e.g. from DDIM inversion).
    :param clamp: clamp the result to [-1, 1] (pictures); pass False for vectors.
    :param progress: show a progress bar labelled ``desc``.
    :return: the sample, on the model's device.
    """
    out = _last(sample_progressive(model, gd, shape, **kwargs))["sample"]
    return out.clamp(-1, 1) if clamp else out
