"""The exact likelihood by the probability-flow ODE, against closed forms: Gaussian data, the 2D mixture, and the
divergence estimators against an analytic Jacobian trace."""

import math

import numpy as np
import pytest
import torch

from dalle2_edu.datasets.toys import GaussianMixture2D
from dalle2_edu.diffusion import GaussianDiffusion
from dalle2_edu.diffusion.likelihood import LOG_BIN, divergence
from dalle2_edu.diffusion.schedules import cosine_betas, linear_betas
from dalle2_edu.diffusion.solvers import ContinuousSchedule

D64 = torch.float64
LN2 = math.log(2.0)


def gaussian_model(gd, mu: torch.Tensor, std: float):
    """The exact network for data x_0 ~ N(mu, std² I), for gd's mean type, at integer or fractional t.

    x_t ~ N(√ᾱ mu, (ᾱ std² + 1 - ᾱ) I), so E[x_0 | x_t] = mu + √ᾱ std² (x_t - √ᾱ mu) / (ᾱ std² + 1 - ᾱ); the ε and v
    outputs follow from it. Fractional t reads ᾱ(t) from the same continuous schedule as the ODE.
    """
    schedule = ContinuousSchedule(gd)

    def model(x, t):
        ab = torch.from_numpy(schedule.alpha_bar(t.double().numpy())).to(x.dtype).reshape(-1, *[1] * (x.ndim - 1))
        x0 = mu + ab.sqrt() * std**2 * (x - ab.sqrt() * mu) / (ab * std**2 + 1 - ab)
        eps = (x - ab.sqrt() * x0) / (1 - ab).sqrt()
        return {"eps": eps, "x0": x0, "v": ab.sqrt() * eps - (1 - ab).sqrt() * x0}[gd.mean_type]

    return model


def gaussian_logp(x, mu, var):
    d = x[0].numel()
    return -0.5 * d * math.log(2 * math.pi * var) - ((x - mu) ** 2).flatten(1).sum(1) / (2 * var)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("mean_type", ["eps", "x0", "v"])
def test_gaussian_data_with_the_exact_score_gives_the_analytic_density(schedule, mean_type):
    betas = linear_betas(1000) if schedule == "linear" else cosine_betas(1000)
    gd = GaussianDiffusion(betas, mean_type=mean_type, data_type="continuous")
    mu, std = torch.tensor([0.3, -0.2, 0.1], dtype=D64), 0.5
    x = mu + std * torch.randn(16, 3, generator=torch.Generator().manual_seed(0), dtype=D64)
    out = gd.ode_log_likelihood(gaussian_model(gd, mu, std), x)
    exact_bpd = -gaussian_logp(x, mu, std**2) / (3 * LN2)
    assert (out["bpd"] - exact_bpd).abs().max() < 0.02  # the data density itself
    # the model's own density in closed form: for Gaussian data the ODE flow is affine, x̃(σ) - mu ∝ √(std² + σ²),
    # from x̃ = x0 at σ_min to σ_max, where the prior N(0, (1 + σ_max²) I) takes over (it differs from the true
    # N(mu, std² + σ_max²) by O(√ᾱ_T), the part of the gap to the data density that is not the blur by σ_min)
    sch = ContinuousSchedule(gd)
    c = math.sqrt((std**2 + sch.sigma_max**2) / (std**2 + sch.sigma_min**2))
    model_nll = -(gaussian_logp(mu + c * (x - mu), 0.0, 1 + sch.sigma_max**2) + 3 * math.log(c))
    assert (out["nll"] - model_nll).abs().max() < 2e-4
    assert torch.allclose(out["nll"], -(out["prior_logp"] + out["delta_logp"]))
    assert torch.allclose(out["bpd"], out["nll"] / (3 * LN2))
    assert 20 < out["nfe"] < 2000
    # the ODE maps x0 to the noise N(0, I): here x_T = √ᾱ_T x̃_T is known in closed form to be ≈ (x0 - mu)/std
    assert torch.allclose(out["x_T"], (x - mu) / std, atol=0.02)


def test_images_are_dequantised_and_offset_by_log_127_5():
    """8-bit pictures: bpd = (nll/d + log 127.5)/log 2 for the density of y = x + u/127.5, u ~ U(-½, ½)^d."""
    gd = GaussianDiffusion(linear_betas(1000), data_type="image")
    mu, std = torch.zeros(1, 2, 2, dtype=D64), 0.3
    k = torch.randint(0, 256, (6, 1, 2, 2), generator=torch.Generator().manual_seed(1))
    x = k.to(D64) / 127.5 - 1
    out = gd.ode_log_likelihood(gaussian_model(gd, mu, std), x, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(out["bpd"], (out["nll"] / 4 + LOG_BIN) / LN2)
    assert LOG_BIN == pytest.approx(math.log(127.5))
    # the density was taken at the dequantised points, which stay in their bins
    u = torch.rand(x.shape, generator=torch.Generator().manual_seed(2), dtype=D64) - 0.5
    y = x + u / 127.5
    sigma_min = ContinuousSchedule(gd).sigma_min
    assert torch.allclose(out["nll"], -gaussian_logp(y, mu, std**2 + sigma_min**2), atol=1e-3)
    plain = gd.ode_log_likelihood(gaussian_model(gd, mu, std), x, dequantize=False)
    assert torch.allclose(plain["nll"], -gaussian_logp(x, mu, std**2 + sigma_min**2), atol=1e-3)


# ------------------------------------------------------------------------------------------------- divergence
def test_exact_divergence_and_hutchinson_are_right_at_small_dimension():
    """fn(x) = tanh(x A): ∂fn_j/∂x_i = A_ij (1 - tanh²(xA)_j), so ∇·fn = Σ_i A_ii (1 - tanh²(xA)_i) exactly."""
    g = torch.Generator().manual_seed(0)
    A = torch.randn(4, 4, generator=g, dtype=D64)
    x = torch.randn(3, 4, generator=g, dtype=D64)
    fn = lambda z: torch.tanh(z @ A)
    analytic = ((1 - torch.tanh(x @ A) ** 2) * torch.diagonal(A)).sum(1)
    _, exact = divergence(fn, x, "exact")
    assert torch.allclose(exact, analytic, atol=1e-12)
    # Hutchinson: E[zᵀ J z] = tr J for Rademacher z; its mean over many probes within 4 standard errors
    n = 4000
    probes = (torch.randint(0, 2, (n, 3, 4), generator=g) * 2 - 1).to(D64)
    est = torch.stack([divergence(fn, x, "hutchinson", z)[1] for z in probes])
    se = est.std(0) / math.sqrt(n)
    assert ((est.mean(0) - analytic).abs() < 4 * se).all()
    assert (est.std(0) > 0.05).all()  # a real estimator, not the exact trace in disguise


def test_hutchinson_likelihood_is_unbiased_on_the_mixture():
    gd = GaussianDiffusion(linear_betas(1000), data_type="continuous")
    mix = GaussianMixture2D.default()
    model = mix.exact_eps_model(gd)
    x = mix.sample(96, seed=3).double()
    exact = gd.ode_log_likelihood(model, x, rtol=1e-4, atol=1e-4)
    hutch = gd.ode_log_likelihood(model, x, rtol=1e-4, atol=1e-4, trace="hutchinson",
                                  generator=torch.Generator().manual_seed(0))  # fmt: skip
    diff = hutch["nll"] - exact["nll"]
    assert diff.abs().mean() > 1e-3  # one probe per example: noisy
    assert diff.mean().abs() < 4 * diff.std() / math.sqrt(len(diff))


# ---------------------------------------------------------------------------------------------------- mixture
def test_mixture_ode_nll_against_the_exact_nll_and_the_vlb():
    """With the mixture's ideal denoiser the ODE density is the mixture blurred by N(0, σ_min²): exact to 1e-3 nats,
    and within 0.01 bits/dim of the mixture itself. The VLB (same ideal mean, fixed variance) is only a bound."""
    gd = GaussianDiffusion(linear_betas(1000), data_type="continuous")
    mix = GaussianMixture2D.default()
    model = mix.exact_eps_model(gd)
    x = mix.sample(64, seed=7).double()
    out = gd.ode_log_likelihood(model, x)
    exact = -mix.log_prob(x)
    s2 = ContinuousSchedule(gd).sigma_min ** 2
    blurred = -GaussianMixture2D(mix.means, (mix.stds**2 + s2).sqrt(), mix.weights).log_prob(x)
    assert (out["nll"] - blurred).abs().max() < 1e-3
    assert (out["bpd"] - exact / (2 * LN2)).mean().abs() < 0.005  # the blur costs most at the tails: 0.05 there
    vlb = gd.calc_bpd_loop(model, x, generator=torch.Generator().manual_seed(0))["total_bpd"]
    print(
        f"\nmixture, 64 points, bits/dim: exact {exact.mean() / (2 * LN2):.4f}  ODE {out['bpd'].mean():.4f} "
        f"({out['nfe']} evaluations)  VLB {vlb.mean():.4f}"
    )
    assert vlb.mean() > out["bpd"].mean()  # a bound, above the exact value on average


# -------------------------------------------------------------------------------------------------- bad input
def test_bad_input_is_refused_with_the_fix():
    gd = GaussianDiffusion(linear_betas(1000), data_type="continuous")
    model = gaussian_model(gd, torch.zeros(2, dtype=D64), 0.5)
    x = torch.zeros(3, 2, dtype=D64)
    for kw in ({"rtol": 0.0}, {"atol": -1e-5}, {"rtol": "small"}):
        with pytest.raises(ValueError, match=r"must be a number > 0"):
            gd.ode_log_likelihood(model, x, **kw)
    with pytest.raises(ValueError, match="unknown trace 'hutch'; choose one of exact, hutchinson"):
        gd.ode_log_likelihood(model, x, trace="hutch")
    with pytest.raises(ValueError, match="model output has shape"):
        gd.ode_log_likelihood(lambda x, t: x[:, :1], x)
    image = GaussianDiffusion(linear_betas(1000), data_type="image")
    with pytest.raises(ValueError, match=r"pictures must lie in \[-1, 1\].*x / 127.5 - 1"):
        image.ode_log_likelihood(model, torch.full((1, 3, 2, 2), 3.0))
    with pytest.raises(ValueError, match="N >= 1"):
        gd.ode_log_likelihood(model, torch.zeros(0, 2))
    assert np.isfinite(gd.ode_log_likelihood(model, x, rtol=1e-3, atol=1e-3)["nll"].numpy()).all()
