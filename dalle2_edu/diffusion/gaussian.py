"""Gaussian diffusion: the forward process q, the learned reverse process p, the losses, and the samplers.

One :class:`GaussianDiffusion` serves every model of the project — 2D toys, the image decoder and upsampler, and the
diffusion prior over CLIP embeddings. Only the network (any callable ``model(x_t, t, **model_kwargs)``) differs.

Notation follows DDPM (Ho et al. 2020) and Improved DDPM (Nichol & Dhariwal 2021), 0-based:
    q(x_t | x_0)          = N( √ᾱ_t x_0, (1 - ᾱ_t) I )
    q(x_{t-1} | x_t, x_0) = N( μ̃_t(x_t, x_0), β̃_t I ),  β̃_t = β_t (1 - ᾱ_{t-1}) / (1 - ᾱ_t)
    p(x_{t-1} | x_t)      = N( μ_θ(x_t, t), Σ_θ(x_t, t) )
where ᾱ_{-1} = 1, so ``t = 0`` is the last denoising step and produces x_0 itself.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator

import torch
from tqdm.auto import tqdm

from dalle2_edu.diffusion.losses import (
    discretized_gaussian_log_likelihood,
    gaussian_log_likelihood,
    mean_flat,
    normal_kl,
)
from dalle2_edu.diffusion.schedules import respaced_betas

MEAN_TYPES = ("eps", "x0", "v")
VAR_TYPES = ("fixed_small", "fixed_large", "learned_range")
LOSS_TYPES = ("simple", "hybrid", "kl")
DATA_TYPES = ("image", "continuous")

LN2 = math.log(2.0)


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(allowed)}")
    return value


def check_snr_gamma(value) -> float | None:
    """``None`` or γ > 0 of min-SNR-γ weighting, as a float; a clear error otherwise."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < float("inf"):
        raise ValueError(f"snr_gamma must be None or a finite number > 0 (e.g. 5), got {value!r}")
    return float(value)


def _last(steps: Iterator[dict]) -> dict:
    """Run a progressive sampler to the end and keep only its last step."""
    return deque(steps, maxlen=1)[0]


class GaussianDiffusion:
    """A diffusion process over a fixed noise schedule, with its training losses and samplers.

    :param betas: (T,) noise schedule, every β in (0, 1), e.g. :func:`dalle2_edu.diffusion.schedules.cosine_betas`.
    :param mean_type: what the network predicts — ``"eps"`` (the noise, DDPM), ``"x0"`` (the clean data, as the
        DALL·E 2 prior does) or ``"v"`` (v = √ᾱ ε - √(1-ᾱ) x_0, Salimans & Ho 2022).
    :param var_type: the reverse variance Σ_θ — ``"fixed_small"`` (β̃_t, the posterior variance),
        ``"fixed_large"`` (β_t) or ``"learned_range"`` (the network outputs r ∈ [-1, 1] per element after its mean
        channels, and log Σ = f · log β_t + (1-f) · log β̃_t with f = (1+r)/2, Improved DDPM eq. 15; the paper calls
        r "v", the course keeps v for v-prediction).
    :param loss_type: ``"simple"`` (MSE on the mean output, DDPM's L_simple), ``"hybrid"`` (L_simple + λ L_vlb, the
        VLB training only the variance) or ``"kl"`` (the VLB alone).
    :param data_type: ``"image"`` (8-bit pixels in [-1, 1]: discretized decoder NLL, predictions of x_0 clipped to
        [-1, 1] by default) or ``"continuous"`` (2D points, embeddings: Gaussian density decoder term, no clipping).
    :param hybrid_lambda: λ of the hybrid loss, see :meth:`training_losses`.
    :param snr_gamma: ``None`` (every step's L_simple term counts equally, DDPM) or γ > 0 for min-SNR-γ weighting
        (Hang et al. 2023): step t's mean-squared error is weighted so that it counts as an error on x_0 weighted by
        min(SNR(t), γ), SNR(t) = ᾱ_t / (1 - ᾱ_t). That caps the weight of the nearly noise-free steps, whose x_0 errors
        dominate otherwise, and lets the noisy steps (where shape and colour are decided) be learnt sooner.
    :param timestep_map: for a respaced process, the original step index of each of its steps; the model is always
        called with these original indices. Normally left ``None``; :meth:`respace` sets it.
    """

    def __init__(
        self,
        betas: torch.Tensor,
        mean_type: str = "eps",
        var_type: str = "fixed_small",
        loss_type: str = "simple",
        data_type: str = "image",
        hybrid_lambda: float = 0.001,
        timestep_map: torch.Tensor | None = None,
        snr_gamma: float | None = None,
    ):
        self.mean_type = _check_choice("mean_type", mean_type, MEAN_TYPES)
        self.var_type = _check_choice("var_type", var_type, VAR_TYPES)
        self.loss_type = _check_choice("loss_type", loss_type, LOSS_TYPES)
        self.data_type = _check_choice("data_type", data_type, DATA_TYPES)
        self.hybrid_lambda = float(hybrid_lambda)
        self.snr_gamma = check_snr_gamma(snr_gamma)

        betas = torch.as_tensor(betas, dtype=torch.float64).detach().cpu()
        if betas.ndim != 1 or len(betas) == 0:
            raise ValueError(f"betas must be a non-empty 1-D tensor, got shape {tuple(betas.shape)}")
        if not torch.isfinite(betas).all() or (betas <= 0).any() or (betas >= 1).any():
            raise ValueError(
                f"every beta must lie in (0, 1), got min {betas.min().item():.3g}, max {betas.max().item():.3g}; "
                "build them with linear_betas(T) or cosine_betas(T)"
            )
        self.betas = betas
        self.num_timesteps = T = len(betas)
        if timestep_map is None:
            timestep_map = torch.arange(T)
        self.timestep_map = torch.as_tensor(timestep_map, dtype=torch.long)
        if self.timestep_map.shape != (T,):
            raise ValueError(f"timestep_map must have one entry per step ({T}), got {tuple(self.timestep_map.shape)}")

        # Everything below is float64 (T,).
        alphas = 1.0 - betas
        self.alphas_cumprod = abar = torch.cumprod(alphas, dim=0)  # ᾱ_t
        self.alphas_cumprod_prev = abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])  # ᾱ_{t-1}
        self.alphas_cumprod_next = torch.cat([abar[1:], torch.zeros(1, dtype=torch.float64)])  # ᾱ_{t+1}
        self.sqrt_alphas_cumprod = abar.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - abar).sqrt()
        self.sqrt_recip_alphas_cumprod = (1.0 / abar).sqrt()
        self.sqrt_recipm1_alphas_cumprod = (1.0 / abar - 1.0).sqrt()
        # posterior q(x_{t-1} | x_t, x_0): variance β̃_t and mean μ̃_t = coef1 · x_0 + coef2 · x_t
        self.posterior_variance = betas * (1.0 - abar_prev) / (1.0 - abar)
        # β̃_0 = 0: its log is clipped to log β̃_1 (log β_0 when T = 1) so that p at t = 0 has a usable variance.
        first = self.posterior_variance[1:2] if T > 1 else betas[:1]
        self.posterior_log_variance_clipped = torch.log(torch.cat([first, self.posterior_variance[1:]]))
        self.posterior_mean_coef1 = betas * abar_prev.sqrt() / (1.0 - abar)
        self.posterior_mean_coef2 = (1.0 - abar_prev) * alphas.sqrt() / (1.0 - abar)

    # ------------------------------------------------------------------------------------------------ helpers
    def __repr__(self) -> str:
        return (
            f"GaussianDiffusion(T={self.num_timesteps}, mean_type={self.mean_type!r}, var_type={self.var_type!r}, "
            f"loss_type={self.loss_type!r}, data_type={self.data_type!r})"
        )

    @property
    def learned_variance(self) -> bool:
        return self.var_type == "learned_range"

    def _check_t(self, t, x: torch.Tensor) -> torch.Tensor:
        """Turn ``t`` (an int, or (N,) integer tensor) into a (N,) long tensor on x's device, range-checked."""
        t = torch.as_tensor(t, device=x.device)
        if t.is_floating_point() or t.dtype == torch.bool:
            raise TypeError(f"t must hold integer step indices, got dtype {t.dtype}")
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must have shape ({x.shape[0]},), one step per example, got {tuple(t.shape)}")
        if t.numel() and (t.min() < 0 or t.max() >= self.num_timesteps):
            raise ValueError(
                f"t must lie in [0, {self.num_timesteps}), got values in [{t.min().item()}, {t.max().item()}]"
            )
        return t.long()

    def _extract(self, arr: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """arr[t] reshaped to (N, 1, 1, …) to broadcast against x, in x's dtype (float32 at least)."""
        dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
        out = arr.to(device=t.device)[t].to(dtype)
        return out.reshape(t.shape[0], *([1] * (x.ndim - 1)))

    def _model_output(self, model: Callable, x_t: torch.Tensor, t: torch.Tensor, model_kwargs: dict | None):
        """Call the network with the ORIGINAL step indices and check its output's shape."""
        return self._call_model(model, x_t, self.timestep_map.to(t.device)[t], model_kwargs)

    def _call_model(self, model: Callable, x_t: torch.Tensor, t_model: torch.Tensor, model_kwargs: dict | None):
        """Call the network at ``t_model`` as given (original indices; fractional ones for the ODE solvers of
        :mod:`~dalle2_edu.diffusion.solvers`) and check its output's shape."""
        out = model(x_t, t_model, **(model_kwargs or {}))
        expected = list(x_t.shape)
        if self.learned_variance:
            expected[1] *= 2
        if not isinstance(out, torch.Tensor) or list(out.shape) != expected:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            hint = (
                "with var_type='learned_range' the model must output twice the input channels along dim 1 "
                "(the mean output, then r in [-1, 1]); build it with learned_sigma=True or use a fixed var_type"
                if self.learned_variance
                else f"with var_type={self.var_type!r} the model must output the same shape as x_t "
                "(if it outputs doubled channels, use var_type='learned_range')"
            )
            raise ValueError(f"model output has shape {got}, expected {tuple(expected)}: {hint}")
        return out

    def _split_output(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not self.learned_variance:
            return out, None
        c = out.shape[1] // 2
        return out[:, :c], out[:, c:]

    # ------------------------------------------------------------------------------------------ forward process
    def q_mean_variance(self, x0: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and log-variance of q(x_t | x_0) = N(√ᾱ_t x_0, (1 - ᾱ_t) I)."""
        t = self._check_t(t, x0)
        mean = self._extract(self.sqrt_alphas_cumprod, t, x0) * x0
        var = self._extract(1.0 - self.alphas_cumprod, t, x0).expand_as(x0)
        logvar = self._extract(torch.log(1.0 - self.alphas_cumprod), t, x0).expand_as(x0)
        return mean, var, logvar

    def q_sample(self, x0: torch.Tensor, t, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Draw x_t ~ q(x_t | x_0) in one jump: x_t = √ᾱ_t x_0 + √(1 - ᾱ_t) ε."""
        t = self._check_t(t, x0)
        if noise is None:
            noise = torch.randn_like(x0)
        elif noise.shape != x0.shape:
            raise ValueError(f"noise must have x0's shape {tuple(x0.shape)}, got {tuple(noise.shape)}")
        return (
            self._extract(self.sqrt_alphas_cumprod, t, x0) * x0
            + self._extract(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise
        )

    def q_posterior(self, x0: torch.Tensor, x_t: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and (clipped) log-variance of the posterior q(x_{t-1} | x_t, x_0).

        μ̃_t = β_t √ᾱ_{t-1} / (1 - ᾱ_t) · x_0 + (1 - ᾱ_{t-1}) √α_t / (1 - ᾱ_t) · x_t,   β̃_t as in the module docstring.
        """
        if x0.shape != x_t.shape:
            raise ValueError(f"x0 and x_t must have the same shape, got {tuple(x0.shape)} and {tuple(x_t.shape)}")
        t = self._check_t(t, x_t)
        mean = (
            self._extract(self.posterior_mean_coef1, t, x_t) * x0
            + self._extract(self.posterior_mean_coef2, t, x_t) * x_t
        )
        var = self._extract(self.posterior_variance, t, x_t).expand_as(x_t)
        logvar = self._extract(self.posterior_log_variance_clipped, t, x_t).expand_as(x_t)
        return mean, var, logvar

    # --------------------------------------------------------------- conversions between eps, x0 and v
    def pred_x0_from_eps(self, x_t, t, eps):
        """x_0 = (x_t - √(1-ᾱ_t) ε) / √ᾱ_t."""
        return (
            self._extract(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t
            - self._extract(self.sqrt_recipm1_alphas_cumprod, t, x_t) * eps
        )

    def eps_from_pred_x0(self, x_t, t, x0):
        """ε = (x_t - √ᾱ_t x_0) / √(1-ᾱ_t)."""
        return (self._extract(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t - x0) / self._extract(
            self.sqrt_recipm1_alphas_cumprod, t, x_t
        )

    def pred_x0_from_v(self, x_t, t, v):
        """x_0 = √ᾱ_t x_t - √(1-ᾱ_t) v."""
        return (
            self._extract(self.sqrt_alphas_cumprod, t, x_t) * x_t
            - self._extract(self.sqrt_one_minus_alphas_cumprod, t, x_t) * v
        )

    def v_target(self, x0, t, noise):
        """v = √ᾱ_t ε - √(1-ᾱ_t) x_0."""
        return (
            self._extract(self.sqrt_alphas_cumprod, t, x0) * noise
            - self._extract(self.sqrt_one_minus_alphas_cumprod, t, x0) * x0
        )

    def pred_x0_from_output(self, x_t, t, mean_out):
        """The network's mean channels as x̂_0, whatever it predicts (:attr:`mean_type`); not clipped."""
        if self.mean_type == "eps":
            return self.pred_x0_from_eps(x_t, t, mean_out)
        if self.mean_type == "x0":
            return mean_out
        return self.pred_x0_from_v(x_t, t, mean_out)

    def eps_from_output(self, x_t, t, mean_out):
        """The network's mean channels as ε̂, whatever it predicts (:attr:`mean_type`): the ε of the formulas that
        are written for an ε-network (guidance as a score, the implicit classifier). For a v-network
        ε = √ᾱ_t v + √(1-ᾱ_t) x_t; for an x_0-network ε = (x_t - √ᾱ_t x_0) / √(1-ᾱ_t)."""
        if self.mean_type == "eps":
            return mean_out
        if self.mean_type == "x0":
            return self.eps_from_pred_x0(x_t, t, mean_out)
        return (
            self._extract(self.sqrt_alphas_cumprod, t, x_t) * mean_out
            + self._extract(self.sqrt_one_minus_alphas_cumprod, t, x_t) * x_t
        )

    # ------------------------------------------------------------------------------------------ reverse process
    def _resolve_clip(self, clip_denoised: bool | None) -> bool:
        return self.data_type == "image" if clip_denoised is None else bool(clip_denoised)

    def p_mean_variance_from_output(
        self,
        model_output: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor,
        clip_denoised: bool | None = None,
        denoised_fn: Callable | None = None,
    ) -> dict[str, torch.Tensor]:
        """Turn a raw network output into p(x_{t-1} | x_t): see :meth:`p_mean_variance`."""
        mean_out, var_out = self._split_output(model_output)
        if self.var_type == "learned_range":
            frac = (var_out + 1) / 2  # f = (1 + r)/2: the raw output r ∈ [-1, 1] → [0, 1]
            log_small = self._extract(self.posterior_log_variance_clipped, t, x_t)  # log β̃_t
            log_large = self._extract(torch.log(self.betas), t, x_t)  # log β_t
            log_variance = frac * log_large + (1 - frac) * log_small
        else:
            if self.var_type == "fixed_large":
                # β_t, except β̃_1 at t = 0 so that the decoder term has a sensible width (Improved DDPM).
                table = (
                    torch.cat([self.posterior_variance[1:2], self.betas[1:]]) if self.num_timesteps > 1 else self.betas
                )
            else:
                table = torch.exp(self.posterior_log_variance_clipped)
            log_variance = self._extract(torch.log(table), t, x_t).expand_as(x_t)

        pred_x0 = self.pred_x0_from_output(x_t, t, mean_out)
        if denoised_fn is not None:
            pred_x0 = denoised_fn(pred_x0)
        if self._resolve_clip(clip_denoised):
            pred_x0 = pred_x0.clamp(-1, 1)
        mean, _, _ = self.q_posterior(pred_x0, x_t, t)
        return {
            "mean": mean,
            "variance": torch.exp(log_variance),
            "log_variance": log_variance,
            "pred_x0": pred_x0,
            "model_output": model_output,
        }

    def p_mean_variance(
        self,
        model: Callable,
        x_t: torch.Tensor,
        t,
        clip_denoised: bool | None = None,
        model_kwargs: dict | None = None,
        denoised_fn: Callable | None = None,
    ) -> dict[str, torch.Tensor]:
        """p(x_{t-1} | x_t) from the network: its mean μ_θ = μ̃_t(x_t, x̂_0) and its variance Σ_θ.

        :param model: ``model(x_t, t, **model_kwargs)``; see the class docstring for its output shape.
        :param x_t: (N, …) noisy inputs.
        :param t: (N,) step indices of this process (an int is broadcast).
        :param clip_denoised: clip the predicted x̂_0 to [-1, 1] before forming the mean; ``None`` means True for
            images and False for continuous data.
        :param denoised_fn: optional function applied to x̂_0 before clipping (used by inpainting).
        :return: dict with ``mean``, ``variance``, ``log_variance``, ``pred_x0`` (all shaped like x_t) and the raw
            ``model_output``.
        """
        t = self._check_t(t, x_t)
        out = self._model_output(model, x_t, t, model_kwargs)
        return self.p_mean_variance_from_output(out, x_t, t, clip_denoised, denoised_fn)

    def p_sample(
        self,
        model: Callable,
        x_t: torch.Tensor,
        t,
        noise: torch.Tensor | None = None,
        clip_denoised: bool | None = None,
        model_kwargs: dict | None = None,
        denoised_fn: Callable | None = None,
    ) -> dict[str, torch.Tensor]:
        """One ancestral step x_{t-1} = μ_θ + σ_θ z, z ~ N(0, I) (no noise at t = 0).

        :return: dict with ``sample`` (x_{t-1}) and ``pred_x0``.
        """
        t = self._check_t(t, x_t)
        out = self.p_mean_variance(model, x_t, t, clip_denoised, model_kwargs, denoised_fn)
        if noise is None:
            noise = torch.randn_like(x_t)
        nonzero = (t != 0).to(x_t.dtype).reshape(-1, *([1] * (x_t.ndim - 1)))
        sample = out["mean"] + nonzero * torch.exp(0.5 * out["log_variance"]) * noise
        return {"sample": sample, "pred_x0": out["pred_x0"]}

    def ddim_sample(
        self,
        model: Callable,
        x_t: torch.Tensor,
        t,
        eta: float = 0.0,
        noise: torch.Tensor | None = None,
        clip_denoised: bool | None = None,
        model_kwargs: dict | None = None,
        denoised_fn: Callable | None = None,
    ) -> dict[str, torch.Tensor]:
        """One DDIM step (Song et al. 2021, eq. 12) from x_t to x_{t-1}.

        x_{t-1} = √ᾱ_{t-1} x̂_0 + √(1 - ᾱ_{t-1} - σ²) ε̂ + σ z,  σ = η √((1-ᾱ_{t-1})/(1-ᾱ_t)) √(1 - ᾱ_t/ᾱ_{t-1}).
        ε̂ is re-derived from the (possibly clipped) x̂_0 so that both agree. η = 0 is deterministic; η = 1 has the
        variance β̃_t of ancestral sampling. A learned variance output is ignored.
        """
        t = self._check_t(t, x_t)
        out = self.p_mean_variance(model, x_t, t, clip_denoised, model_kwargs, denoised_fn)
        eps = self.eps_from_pred_x0(x_t, t, out["pred_x0"])
        abar = self._extract(self.alphas_cumprod, t, x_t)
        abar_prev = self._extract(self.alphas_cumprod_prev, t, x_t)
        sigma = eta * torch.sqrt((1 - abar_prev) / (1 - abar)) * torch.sqrt(1 - abar / abar_prev)
        sample = out["pred_x0"] * abar_prev.sqrt() + (1 - abar_prev - sigma**2).clamp(min=0).sqrt() * eps
        if eta > 0:
            if noise is None:
                noise = torch.randn_like(x_t)
            sample = sample + sigma * noise  # σ = 0 at t = 0 since ᾱ_{-1} = 1
        return {"sample": sample, "pred_x0": out["pred_x0"]}

    def ddim_reverse_sample(
        self, model: Callable, x_prev: torch.Tensor, t, model_kwargs: dict | None = None
    ) -> dict[str, torch.Tensor]:
        """Run one DDIM (η = 0) step backwards: from x_{t-1} (at noise level ᾱ_{t-1}) up to x_t (level ᾱ_t).

        Exactly inverting :meth:`ddim_sample` would need ε̂(x_t, t), which depends on the unknown x_t; as usual it is
        approximated by ε̂(x_{t-1}, t). Then x̂_0 = (x_{t-1} - √(1-ᾱ_{t-1}) ε̂)/√ᾱ_{t-1} and
        x_t = √ᾱ_t x̂_0 + √(1-ᾱ_t) ε̂. No clipping, so the step stays invertible.
        """
        t = self._check_t(t, x_prev)
        out = self.p_mean_variance(model, x_prev, t, clip_denoised=False, model_kwargs=model_kwargs)
        eps = self.eps_from_pred_x0(x_prev, t, out["pred_x0"])
        abar = self._extract(self.alphas_cumprod, t, x_prev)
        abar_prev = self._extract(self.alphas_cumprod_prev, t, x_prev)
        pred_x0 = (x_prev - (1 - abar_prev).sqrt() * eps) / abar_prev.sqrt()
        return {"sample": abar.sqrt() * pred_x0 + (1 - abar).sqrt() * eps, "pred_x0": pred_x0}

    # --------------------------------------------------------------------------------------------- sample loops
    @staticmethod
    def _device_of(model: Callable, noise: torch.Tensor | None, device) -> torch.device:
        if device is not None:
            return torch.device(device)
        if noise is not None:
            return noise.device
        params = getattr(model, "parameters", None)
        if callable(params):
            for p in params():
                return p.device
        return torch.device("cpu")

    def _loop(self, step_fn, model, shape, noise, generator, device, progress, desc) -> Iterator[dict]:
        device = self._device_of(model, noise, device)
        if noise is None:
            x = torch.randn(*shape, generator=generator, device="cpu").to(device)
        else:
            if tuple(noise.shape) != tuple(shape):
                raise ValueError(f"noise has shape {tuple(noise.shape)} but shape={tuple(shape)} was asked for")
            x = noise.to(device)
        steps = range(self.num_timesteps - 1, -1, -1)
        for i in tqdm(steps, desc=desc, disable=not progress, leave=False, unit="step"):
            t = torch.full((shape[0],), i, device=device, dtype=torch.long)
            z = torch.randn(*shape, generator=generator, device="cpu").to(device=device, dtype=x.dtype)
            with torch.no_grad():
                out = step_fn(x, t, z)
            x = out["sample"]
            yield {"sample": x, "pred_x0": out["pred_x0"], "t": i}

    def p_sample_loop_progressive(
        self,
        model: Callable,
        shape,
        noise: torch.Tensor | None = None,
        clip_denoised: bool | None = None,
        model_kwargs: dict | None = None,
        denoised_fn: Callable | None = None,
        generator: torch.Generator | None = None,
        device=None,
        progress: bool = False,
        desc: str | None = None,
    ) -> Iterator[dict]:
        """Ancestral sampling from x_T ~ N(0, I), yielding ``dict(sample, pred_x0, t)`` after every step.

        :param generator: a seeded ``torch.Generator`` makes the whole trajectory reproducible (noise drawn on CPU).
        :param desc: the progress bar's label (default "DDPM sampling").
        """

        def step(x, t, z):
            return self.p_sample(model, x, t, z, clip_denoised, model_kwargs, denoised_fn)

        return self._loop(step, model, shape, noise, generator, device, progress, desc or "DDPM sampling")

    def p_sample_loop(self, model: Callable, shape, noise=None, **kwargs) -> torch.Tensor:
        """Ancestral sampling; returns the final x_0. Takes the keywords of :meth:`p_sample_loop_progressive`."""
        return _last(self.p_sample_loop_progressive(model, shape, noise=noise, **kwargs))["sample"]

    def ddim_sample_loop_progressive(
        self,
        model: Callable,
        shape,
        eta: float = 0.0,
        noise: torch.Tensor | None = None,
        clip_denoised: bool | None = None,
        model_kwargs: dict | None = None,
        denoised_fn: Callable | None = None,
        generator: torch.Generator | None = None,
        device=None,
        progress: bool = False,
        desc: str | None = None,
    ) -> Iterator[dict]:
        """DDIM sampling over this process's steps (respace first for fewer), yielding ``dict(sample, pred_x0, t)``."""

        def step(x, t, z):
            return self.ddim_sample(model, x, t, eta, z, clip_denoised, model_kwargs, denoised_fn)

        return self._loop(step, model, shape, noise, generator, device, progress, desc or "DDIM sampling")

    def ddim_sample_loop(self, model: Callable, shape, eta: float = 0.0, noise=None, **kwargs) -> torch.Tensor:
        """DDIM sampling; returns the final x_0. Takes the keywords of :meth:`ddim_sample_loop_progressive`."""
        return _last(self.ddim_sample_loop_progressive(model, shape, eta=eta, noise=noise, **kwargs))["sample"]

    def dpm_solver_sample_loop_progressive(self, model: Callable, shape, steps: int = 20, order: int = 2,
                                           **kwargs) -> Iterator[dict]:  # fmt: skip
        """DPM-Solver++ (Lu et al. 2022), multistep of order 1 or 2, in ``steps`` network calls on this process's
        integer steps; yields ``dict(sample, pred_x0, t)``. Takes the keywords of :meth:`ddim_sample_loop_progressive`
        but ``eta``; see :func:`~dalle2_edu.diffusion.solvers.dpm_solver_progressive`.
        """
        from dalle2_edu.diffusion.solvers import dpm_solver_progressive

        return dpm_solver_progressive(self, model, shape, steps=steps, order=order, **kwargs)

    def dpm_solver_sample_loop(self, model: Callable, shape, steps: int = 20, order: int = 2, **kwargs) -> torch.Tensor:
        """DPM-Solver++; returns the final x_0. See :meth:`dpm_solver_sample_loop_progressive`."""
        loop = self.dpm_solver_sample_loop_progressive(model, shape, steps=steps, order=order, **kwargs)
        return _last(loop)["sample"]

    def euler_sample_loop_progressive(self, model: Callable, shape, steps: int = 20, karras_sigmas: bool = False,
                                      **kwargs) -> Iterator[dict]:  # fmt: skip
        """Euler on the probability-flow ODE in σ (Karras et al. 2022), ``steps`` network calls, σ uniform in t or
        Karras-spaced; see :func:`~dalle2_edu.diffusion.solvers.euler_progressive`."""
        from dalle2_edu.diffusion.solvers import euler_progressive

        return euler_progressive(self, model, shape, steps=steps, karras_sigmas=karras_sigmas, **kwargs)

    def euler_sample_loop(self, model: Callable, shape, steps: int = 20, karras_sigmas: bool = False,
                          **kwargs) -> torch.Tensor:  # fmt: skip
        """Euler; returns the final x_0. See :meth:`euler_sample_loop_progressive`."""
        loop = self.euler_sample_loop_progressive(model, shape, steps=steps, karras_sigmas=karras_sigmas, **kwargs)
        return _last(loop)["sample"]

    def heun_sample_loop_progressive(self, model: Callable, shape, steps: int = 19, karras_sigmas: bool = False,
                                     **kwargs) -> Iterator[dict]:  # fmt: skip
        """Heun (Karras et al. 2022, Algorithm 1) in ``steps`` network calls (⌊(steps+1)/2⌋ noise levels, 2 calls each
        but the last); see :func:`~dalle2_edu.diffusion.solvers.heun_progressive`."""
        from dalle2_edu.diffusion.solvers import heun_progressive

        return heun_progressive(self, model, shape, steps=steps, karras_sigmas=karras_sigmas, **kwargs)

    def heun_sample_loop(self, model: Callable, shape, steps: int = 19, karras_sigmas: bool = False,
                         **kwargs) -> torch.Tensor:  # fmt: skip
        """Heun; returns the final x_0. See :meth:`heun_sample_loop_progressive`."""
        loop = self.heun_sample_loop_progressive(model, shape, steps=steps, karras_sigmas=karras_sigmas, **kwargs)
        return _last(loop)["sample"]

    def ddim_invert(
        self, model: Callable, x0: torch.Tensor, model_kwargs: dict | None = None, progress: bool = False
    ) -> torch.Tensor:
        """DDIM inversion: run the deterministic sampler backwards from data x_0 to the noise x_T it came from.

        ``ddim_sample_loop(model, x0.shape, noise=ddim_invert(model, x0))`` reconstructs x0 up to the
        approximation explained in :meth:`ddim_reverse_sample`; the variations of DALL·E 2 start from this noise.
        """
        x = x0
        for i in tqdm(range(self.num_timesteps), desc="DDIM inversion", disable=not progress, leave=False):
            t = torch.full((x0.shape[0],), i, device=x0.device, dtype=torch.long)
            with torch.no_grad():
                x = self.ddim_reverse_sample(model, x, t, model_kwargs)["sample"]
        return x

    # ----------------------------------------------------------------------------------------- bound and losses
    def prior_bpd(self, x0: torch.Tensor) -> torch.Tensor:
        """L_T = KL(q(x_T | x_0) ‖ N(0, I)) in bits per dimension, (N,). Needs no model: it only checks that the
        schedule destroys the data; near 0 for a good schedule."""
        t = torch.full((x0.shape[0],), self.num_timesteps - 1, device=x0.device, dtype=torch.long)
        mean, _, logvar = self.q_mean_variance(x0, t)
        return mean_flat(normal_kl(mean, logvar, 0.0, 0.0)) / LN2

    def vb_terms_bpd(
        self,
        model_output: torch.Tensor,
        x0: torch.Tensor,
        x_t: torch.Tensor,
        t,
        clip_denoised: bool | None = None,
    ) -> dict[str, torch.Tensor]:
        """One term of the variational bound per example, in bits per dimension, from a raw network output.

        L_{t-1} = KL(q(x_{t-1} | x_t, x_0) ‖ p(x_{t-1} | x_t)) for t > 0, and the decoder term L_0 = -log p(x_0 | x_1)
        at t = 0: the discretized Gaussian for images, the Gaussian density for continuous data. Computed in at least
        float32, whatever the network's precision.
        """
        if model_output.dtype in (torch.float16, torch.bfloat16):
            model_output = model_output.float()
        if x0.dtype in (torch.float16, torch.bfloat16):
            x0, x_t = x0.float(), x_t.float()
        t = self._check_t(t, x_t)
        true_mean, _, true_logvar = self.q_posterior(x0, x_t, t)
        out = self.p_mean_variance_from_output(model_output, x_t, t, clip_denoised)
        kl = mean_flat(normal_kl(true_mean, true_logvar, out["mean"], out["log_variance"])) / LN2
        if self.data_type == "image":
            ll = discretized_gaussian_log_likelihood(x0, out["mean"], 0.5 * out["log_variance"])
        else:
            ll = gaussian_log_likelihood(x0, out["mean"], 0.5 * out["log_variance"])
        decoder_nll = -mean_flat(ll) / LN2
        return {"output": torch.where(t == 0, decoder_nll, kl), "pred_x0": out["pred_x0"]}

    def snr_weight(self, t: torch.Tensor) -> torch.Tensor:
        """min-SNR-γ weights of the mean-squared error at steps t (N,), float64; ones without ``snr_gamma``.

        With SNR = ᾱ/(1-ᾱ): an ε error equals an x_0 error times SNR, a v error an x_0 error times (SNR + 1). The
        weight turns each into an x_0 error weighted by min(SNR, γ): min(SNR, γ)/SNR for ε, min(SNR, γ) for x_0,
        min(SNR, γ)/(SNR + 1) for v.
        """
        t = torch.as_tensor(t, dtype=torch.long).cpu()
        if self.snr_gamma is None:
            return torch.ones(t.shape, dtype=torch.float64)
        abar = self.alphas_cumprod[t]
        snr = abar / (1.0 - abar)
        capped = snr.clamp(max=self.snr_gamma)
        return {"eps": capped / snr, "x0": capped, "v": capped / (snr + 1.0)}[self.mean_type]

    def training_losses(
        self,
        model: Callable,
        x0: torch.Tensor,
        t,
        noise: torch.Tensor | None = None,
        model_kwargs: dict | None = None,
    ) -> dict[str, torch.Tensor]:
        """Per-example training losses at steps t, each (N,).

        - ``mse``: mean over dimensions of (target - mean output)², the target being ε, x_0 or v (L_simple); times
          :meth:`snr_weight` with ``snr_gamma``.
        - ``vb``: the VLB term L_{t} for this t in bits/dim (:meth:`vb_terms_bpd`). With ``hybrid`` the mean output is
          detached here, so the VLB trains only the variance while L_simple trains the mean (Improved DDPM §3.1).
        - ``loss``: ``simple`` → mse; ``kl`` → T · vb, with t uniform an unbiased estimate of the whole bound minus
          the constant L_T; ``hybrid`` → mse + λ T · vb. λ = 0.001 by default: Improved DDPM's
          L_hybrid = L_simple + λ L_vlb with L_vlb the sum over all T terms; T · vb is its one-sample estimate, and
          both terms are per-dimension means (vb in bits), exactly the paper's scale. At T = 1000 this is vb itself.

        :param x0: (N, …) clean data. :param t: (N,) steps, usually uniform over [0, T).
        :param noise: optional ε for q_sample, else drawn from torch's global generator.
        """
        t = self._check_t(t, x0)
        if noise is None:
            noise = torch.randn_like(x0)
        x_t = self.q_sample(x0, t, noise)
        out = self._model_output(model, x_t, t, model_kwargs)
        mean_out, var_out = self._split_output(out)
        target = {"eps": noise, "x0": x0, "v": None}[self.mean_type]
        if target is None:
            target = self.v_target(x0, t, noise)
        mse = mean_flat((target.to(mean_out.dtype) - mean_out) ** 2)
        if self.snr_gamma is not None:
            mse = mse * self.snr_weight(t).to(device=mse.device, dtype=mse.dtype)

        if self.loss_type == "kl":
            vb_input = out  # the bound trains mean and variance
        elif self.loss_type == "hybrid" and self.learned_variance:
            vb_input = torch.cat([mean_out.detach(), var_out], dim=1)  # the bound trains only the variance
        else:
            vb_input = out.detach()  # reported only
        vb = self.vb_terms_bpd(vb_input, x0, x_t, t, clip_denoised=False)["output"]

        if self.loss_type == "simple":
            loss = mse
        elif self.loss_type == "kl":
            loss = vb * self.num_timesteps
        else:
            loss = mse + self.hybrid_lambda * self.num_timesteps * vb
        return {"loss": loss, "mse": mse, "vb": vb}

    def calc_bpd_loop(
        self,
        model: Callable,
        x0: torch.Tensor,
        clip_denoised: bool | None = None,
        model_kwargs: dict | None = None,
        generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> dict[str, torch.Tensor]:
        """The whole variational bound −log p(x_0) ≤ L_0 + Σ_t L_t + L_T, term by term, in bits per dimension.

        Each L_t is evaluated at one x_t ~ q(x_t | x_0) per example (so the total is a one-sample Monte-Carlo
        estimate of the bound, exact in expectation); multiply by ln 2 for nats per dimension.

        :return: dict with ``total_bpd`` (N,), ``prior_bpd`` (N,), ``vb`` (N, T) — column t holds L_t (L_0 in column 0)
            — ``x0_mse`` (N, T) the error of x̂_0, and ``mse`` (N, T) the error of the implied ε̂.
        """
        n, T = x0.shape[0], self.num_timesteps
        vb, x0_mse, eps_mse = [], [], []
        for i in tqdm(range(T - 1, -1, -1), desc="VLB", disable=not progress, leave=False):
            t = torch.full((n,), i, device=x0.device, dtype=torch.long)
            noise = torch.randn(*x0.shape, generator=generator, device="cpu").to(device=x0.device, dtype=x0.dtype)
            x_t = self.q_sample(x0, t, noise)
            with torch.no_grad():
                out = self._model_output(model, x_t, t, model_kwargs)
                terms = self.vb_terms_bpd(out, x0, x_t, t, clip_denoised)
            vb.append(terms["output"])
            x0_mse.append(mean_flat((terms["pred_x0"] - x0) ** 2))
            eps_mse.append(mean_flat((self.eps_from_pred_x0(x_t, t, terms["pred_x0"]) - noise) ** 2))
        vb = torch.stack(vb[::-1], dim=1)
        prior = self.prior_bpd(x0)
        return {
            "total_bpd": vb.sum(dim=1) + prior,
            "prior_bpd": prior,
            "vb": vb,
            "x0_mse": torch.stack(x0_mse[::-1], dim=1),
            "mse": torch.stack(eps_mse[::-1], dim=1),
        }

    def ode_log_likelihood(self, model: Callable, x0: torch.Tensor, rtol: float = 1e-5, atol: float = 1e-5,
                           trace: str = "exact", **kwargs) -> dict:  # fmt: skip
        """The model's exact log-likelihood of x0 through the probability-flow ODE (nats and bits/dim); see
        :func:`~dalle2_edu.diffusion.likelihood.ode_log_likelihood`."""
        from dalle2_edu.diffusion.likelihood import ode_log_likelihood

        return ode_log_likelihood(self, model, x0, rtol=rtol, atol=atol, trace=trace, **kwargs)

    # -------------------------------------------------------------------------------------------------- respacing
    def respace(self, use_timesteps) -> GaussianDiffusion:
        """A process over a subset of this one's steps with the same ᾱ there, for the same network.

        :param use_timesteps: indices of this process's steps to keep, e.g. ``space_timesteps(1000, "ddim50")``.
        :return: a new :class:`GaussianDiffusion` with the same types; it calls the model with the original indices.
        """
        steps = sorted(set(int(s) for s in use_timesteps))
        return GaussianDiffusion(
            respaced_betas(self.betas, steps),
            mean_type=self.mean_type,
            var_type=self.var_type,
            loss_type=self.loss_type,
            data_type=self.data_type,
            hybrid_lambda=self.hybrid_lambda,
            timestep_map=self.timestep_map[steps],
            snr_gamma=self.snr_gamma,
        )


def diffusion_from_config(config, data_type: str | None = None) -> GaussianDiffusion:
    """The process a model's config describes: ``config.diffusion`` (a
    :class:`~dalle2_edu.diffusion.config.DiffusionConfig`), or a ``DiffusionConfig`` itself.

    :param data_type: overrides the config's ``data_type`` when given.
    """
    dc = getattr(config, "diffusion", config)
    if data_type is not None:
        dc = dc.replace(data_type=data_type)
    return dc.build()
