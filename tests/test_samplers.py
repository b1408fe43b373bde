"""The fast ODE samplers (DPM-Solver++, Euler, Heun) against diffusers, against DDIM, and against the exact ODE.

diffusers options that make its schedulers the same algorithm as ours (and why):

* every scheduler: ``trained_betas`` = our betas and ``prediction_type`` = epsilon / sample / v_prediction for our
  mean types eps / x0 / v; thresholding and ``clip_sample`` off, so we pass ``clip_denoised=False``; no churn.
* ``DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint",
  timestep_spacing="linspace", final_sigmas_type="zero", lower_order_final=True)``: the network at the integer steps
  round(linspace(0, T-1, n+1)) reversed without 0, the last step straight to σ = 0 and of first order (diffusers
  lowers the final order whenever the final σ is 0, whatever ``lower_order_final``); "midpoint" is Lu et al.'s
  D = m0 + (m0 - m1)/(2r), which is ours.
* ``EulerDiscreteScheduler`` / ``HeunDiscreteScheduler(timestep_spacing="linspace")``: t uniform from T-1 to 0 and a
  final σ = 0. At fractional t diffusers interpolates σ linearly in t (``interpolation_type="linear"``) where we
  interpolate log σ, so the two grids coincide exactly when the t grid is integer ((T-1)/(n-1) whole: n = 10, 28, …),
  or when diffusers is handed our σ's (``set_timesteps(sigmas=...)``, from which it finds t by log-σ interpolation,
  as we do), or with ``use_karras_sigmas=True`` (both place σ by Karras' ρ = 7 and find t by log-σ interpolation).
* Starting noise: diffusers starts from x̃ = σ_max · z (``init_noise_sigma``), we from x_T = z at the process's last
  step, i.e. x̃ = √(1 + σ_max²) · z, as DDIM does; the test hands diffusers our x̃.

Euler and Heun cast to float32 inside diffusers (and its σ's are float32), so loops agree to float32 accuracy. The
linear schedule is used for Euler and Heun: the cosine schedule's last β is capped at 0.999, σ_max ≈ 2·10⁴, and a
first step that long amplifies float32 rounding beyond any useful tolerance (the grids are compared separately).
"""

import numpy as np
import pytest
import torch

from dalle2_edu.datasets.toys import GaussianMixture2D
from dalle2_edu.diffusion import GaussianDiffusion
from dalle2_edu.diffusion.guidance import GuidedModel
from dalle2_edu.diffusion.sampling import SAMPLERS, sample, sample_progressive
from dalle2_edu.diffusion.schedules import cosine_betas, linear_betas
from dalle2_edu.diffusion.solvers import ContinuousSchedule, dpm_solver_steps, karras_sigmas, sigma_grid

PRED = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}
SHAPE = (3, 2, 4, 4)
D64 = torch.float64
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # diffusers + numpy 2


def toy_model(learned: bool = False):
    """A fixed nonlinear function of (x_t, t), float t welcome; with learned=True it also outputs a variance half."""

    def model(x, t):
        tt = torch.as_tensor(t, dtype=x.dtype).reshape(-1, 1, 1, 1) / 1000.0
        mean = torch.tanh(1.3 * x + tt) - 0.2 * x
        if not learned:
            return mean
        return torch.cat([mean, torch.sin(5 * x + 3 * tt)], dim=1)

    return model


def x_T(seed=5, shape=SHAPE):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=D64)


def close(ours, theirs, rtol=2e-6):
    """Agreement relative to the result's scale: an ε toy model is no real denoiser, so x̂_0 can be large."""
    return (ours - theirs).abs().max().item() <= rtol * theirs.abs().max().item() + 1e-6


def betas_of(schedule):
    return linear_betas(1000) if schedule == "linear" else cosine_betas(1000)


def diffusers_loop(ref, x, model):
    for t in ref.timesteps:
        x = ref.step(model(ref.scale_model_input(x, t), t.repeat(x.shape[0])), t, x).prev_sample
    return x


# --------------------------------------------------------------------------------------------- against diffusers
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("mean_type", ["eps", "x0", "v"])
@pytest.mark.parametrize("steps", [12, 20])  # diffusers' lower_order_final rule changes at 15 steps
def test_dpm_solver_pp_2m_matches_diffusers(schedule, mean_type, steps):
    from diffusers import DPMSolverMultistepScheduler

    betas = betas_of(schedule)
    gd = GaussianDiffusion(betas, mean_type=mean_type)
    ref = DPMSolverMultistepScheduler(
        num_train_timesteps=1000, trained_betas=betas.numpy(), algorithm_type="dpmsolver++", solver_order=2,
        solver_type="midpoint", prediction_type=PRED[mean_type], thresholding=False, lower_order_final=True,
        final_sigmas_type="zero", timestep_spacing="linspace",
    )  # fmt: skip
    ref.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)  # float64 tables, as in test_diffusers_reference
    ref.set_timesteps(steps)
    assert ref.timesteps.tolist() == dpm_solver_steps(1000, steps).tolist()
    model = toy_model()
    ours = gd.dpm_solver_sample_loop(model, SHAPE, steps=steps, order=2, noise=x_T(), clip_denoised=False)
    theirs = diffusers_loop(ref, x_T().float(), model)
    assert close(ours, theirs.double())


@pytest.mark.parametrize("mean_type", ["eps", "x0", "v"])
@pytest.mark.parametrize("karras", [False, True])
@pytest.mark.parametrize("method", ["euler", "heun"])
def test_euler_and_heun_match_diffusers(mean_type, karras, method):
    from diffusers import EulerDiscreteScheduler, HeunDiscreteScheduler

    betas = linear_betas(1000)
    gd = GaussianDiffusion(betas, mean_type=mean_type)
    cls = EulerDiscreteScheduler if method == "euler" else HeunDiscreteScheduler
    ref = cls(num_train_timesteps=1000, trained_betas=betas.numpy(), prediction_type=PRED[mean_type],
              use_karras_sigmas=karras, timestep_spacing="linspace")  # fmt: skip
    ref.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    levels = 10  # (T-1)/(levels-1) = 111: an integer t grid
    ref.set_timesteps(levels)
    calls = levels if method == "euler" else 2 * levels - 1
    assert len(ref.timesteps) == calls  # Heun: 2 calls per level but the last one
    loop = gd.euler_sample_loop if method == "euler" else gd.heun_sample_loop
    model = toy_model()
    ours = loop(model, SHAPE, steps=calls, karras_sigmas=karras, noise=x_T(), clip_denoised=False)
    sigma_max = float(ref.sigmas[0])
    theirs = diffusers_loop(ref, x_T() * (1 + sigma_max**2) ** 0.5, model)
    assert close(ours, theirs.double())


@pytest.mark.parametrize("mean_type", ["eps", "v"])
def test_euler_on_a_fractional_grid_matches_diffusers_given_our_sigmas(mean_type):
    """12 levels put t at fractional steps: diffusers, handed our σ's, finds the same t's by log-σ interpolation."""
    from diffusers import EulerDiscreteScheduler

    betas = linear_betas(1000)
    gd = GaussianDiffusion(betas, mean_type=mean_type)
    sigmas, ts = sigma_grid(ContinuousSchedule(gd), 12, karras=False)
    assert not np.allclose(ts, ts.round())
    ref = EulerDiscreteScheduler(num_train_timesteps=1000, trained_betas=betas.numpy(), prediction_type=PRED[mean_type])
    ref.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    ref.set_timesteps(sigmas=sigmas.tolist())
    np.testing.assert_allclose(ref.timesteps.numpy(), ts, atol=2e-3)
    model = toy_model()
    ours = gd.euler_sample_loop(model, SHAPE, steps=12, noise=x_T(), clip_denoised=False)
    theirs = diffusers_loop(ref, x_T() * (1 + sigmas[0] ** 2) ** 0.5, model)
    assert close(ours, theirs.double(), rtol=1e-5)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("karras", [False, True])
def test_sigma_and_t_grids_match_diffusers(schedule, karras):
    from diffusers import EulerDiscreteScheduler

    betas = betas_of(schedule)
    gd = GaussianDiffusion(betas)
    ref = EulerDiscreteScheduler(num_train_timesteps=1000, trained_betas=betas.numpy(), use_karras_sigmas=karras)
    ref.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    ref.set_timesteps(28)  # (T-1)/27 = 37: integer t when uniform, where linear and log-σ interpolation agree
    sigmas, ts = sigma_grid(ContinuousSchedule(gd), 28, karras)
    np.testing.assert_allclose(ref.sigmas.numpy(), sigmas, rtol=2e-6)
    np.testing.assert_allclose(ref.timesteps.numpy(), ts, atol=2e-3)


def test_continuous_schedule_is_exact_at_the_steps_and_log_linear_between():
    gd = GaussianDiffusion(cosine_betas(200))
    sch = ContinuousSchedule(gd)
    abar = gd.alphas_cumprod.numpy()
    steps = np.arange(200)
    np.testing.assert_allclose(sch.alpha_bar(steps), abar, rtol=1e-12)
    np.testing.assert_allclose(sch.t(np.sqrt((1 - abar) / abar)), steps, atol=1e-9)
    mid = np.log(sch.sigma(np.arange(199) + 0.5))
    np.testing.assert_allclose(mid, 0.5 * (np.log(sch.sigma(steps[:-1])) + np.log(sch.sigma(steps[1:]))), rtol=1e-12)
    # a respaced process keeps its steps' σ at their original indices
    spaced = gd.respace([0, 50, 120, 199])
    np.testing.assert_allclose(ContinuousSchedule(spaced).sigma([0, 50, 120, 199]), sch.sigma([0, 50, 120, 199]))
    s = karras_sigmas(0.01, 80.0, 5)
    assert s[0] == pytest.approx(80.0) and s[-1] == pytest.approx(0.01) and np.all(np.diff(s) < 0)


# -------------------------------------------------------------------------------------------- against DDIM itself
@pytest.mark.parametrize("mean_type", ["eps", "x0", "v"])
@pytest.mark.parametrize("clip", [False, True])
def test_first_order_dpm_solver_and_euler_on_integer_steps_are_ddim(mean_type, clip):
    """DPM-Solver++ of order 1 is DDIM (Lu et al. 2022); so is Euler in x̃ = x_0 + σ ε when its σ's are the
    schedule's own (Karras et al. 2022, §3): x̃' = x̂_0 + σ' ε̂ either way, clipping included."""
    gd = GaussianDiffusion(linear_betas(1000), mean_type=mean_type)
    model = toy_model()
    idx = dpm_solver_steps(1000, 8)
    ddim = gd.respace(idx.tolist()).ddim_sample_loop(model, SHAPE, noise=x_T(), clip_denoised=clip)
    dpm1 = gd.dpm_solver_sample_loop(model, SHAPE, steps=8, order=1, noise=x_T(), clip_denoised=clip)
    assert torch.allclose(dpm1, ddim, rtol=1e-9, atol=1e-9)
    dpm2 = gd.dpm_solver_sample_loop(model, SHAPE, steps=8, order=2, noise=x_T(), clip_denoised=clip)
    assert not torch.allclose(dpm2, ddim, atol=1e-3)

    grid = [0, 111, 222, 333, 444, 555, 666, 777, 888, 999]  # Euler's uniform t grid for 10 levels
    ddim = gd.respace(grid).ddim_sample_loop(model, SHAPE, noise=x_T(), clip_denoised=clip)
    euler = gd.euler_sample_loop(model, SHAPE, steps=10, noise=x_T(), clip_denoised=clip)
    assert torch.allclose(euler, ddim, rtol=1e-8, atol=1e-8)


def test_solvers_on_a_respaced_process_call_the_model_with_original_steps():
    gd = GaussianDiffusion(linear_betas(1000)).respace(range(0, 1000, 10))
    seen = []

    def model(x, t):
        seen.append(t.clone())
        return toy_model()(x, t)

    gd.dpm_solver_sample_loop(model, SHAPE, steps=5, noise=x_T())
    assert [int(t[0]) for t in seen] == [990, 790, 590, 400, 200]  # round(linspace(0, 99, 6)) · 10, reversed
    seen.clear()
    gd.euler_sample_loop(model, SHAPE, steps=4, noise=x_T())
    assert [float(t[0]) for t in seen] == pytest.approx([990, 660, 330, 0])


# ------------------------------------------------------------------------------------------- model and guidance
@pytest.mark.parametrize("method", ["dpmpp2m", "euler", "heun"])
@pytest.mark.parametrize("mean_type", ["eps", "x0", "v"])
def test_a_learned_variance_half_is_ignored(method, mean_type):
    fixed = GaussianDiffusion(linear_betas(1000), mean_type=mean_type)
    learned = GaussianDiffusion(linear_betas(1000), mean_type=mean_type, var_type="learned_range")
    a = sample(toy_model(False), fixed, SHAPE, sampler=method, steps=7, noise=x_T(), clamp=False)
    b = sample(toy_model(True), learned, SHAPE, sampler=method, steps=7, noise=x_T(), clamp=False)
    assert torch.equal(a, b)


@pytest.mark.parametrize("method", ["dpmpp2m", "euler", "heun"])
def test_guidance_wrapper_just_works(method):
    """GuidedModel around net(x, t, c) = toy(x, t) + c with c = 1 / 0 and scale 3 is toy(x, t) + 3."""
    net = lambda x, t, c: toy_model()(x, t) + c.reshape(-1, 1, 1, 1)
    guided = GuidedModel(net, {"c": torch.ones(3, dtype=D64)}, {"c": torch.zeros(3, dtype=D64)}, scale=3.0)
    shifted = lambda x, t: toy_model()(x, t) + 3.0
    gd = GaussianDiffusion(linear_betas(1000), mean_type="x0")
    a = sample(guided, gd, SHAPE, sampler=method, steps=5, noise=x_T(), clamp=False)
    b = sample(shifted, gd, SHAPE, sampler=method, steps=5, noise=x_T(), clamp=False)
    assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------ the one sampling entry point
def test_samplers_list_default_and_limits():
    import inspect

    from dalle2_edu.diffusion.sampling import max_steps

    assert SAMPLERS == ("ddim", "ddpm", "dpmpp2m", "euler", "heun")
    assert inspect.signature(sample_progressive).parameters["sampler"].default == "ddim"
    assert [max_steps(s, 1000) for s in SAMPLERS] == [1000, 1000, 999, 1000, 1999]
    assert max_steps("dpmpp2m", 1) == 1
    gd = GaussianDiffusion(linear_betas(1000))
    for s in SAMPLERS:  # the limit is exactly what each sampler takes
        sample(toy_model(), gd, (1, 1, 1, 1), sampler=s, steps=1)
        if s in ("dpmpp2m", "heun"):
            with pytest.raises(ValueError, match="steps"):
                sample(toy_model(), gd, (1, 1, 1, 1), sampler=s, steps=max_steps(s, 1000) + 1)


@pytest.mark.parametrize("method", ["dpmpp2m", "euler", "heun"])
def test_same_seed_same_pictures_and_steps_count_network_calls(method):
    gd = GaussianDiffusion(linear_betas(1000))
    calls = []

    def model(x, t):
        calls.append(t)
        return toy_model()(x, t)

    a = sample(model, gd, (2, 3, 8, 8), sampler=method, steps=9, seed=3)
    assert len(calls) == 9
    b = sample(model, gd, (2, 3, 8, 8), sampler=method, steps=9, seed=3)
    c = sample(model, gd, (2, 3, 8, 8), sampler=method, steps=9, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    # the seed fixes the starting noise, drawn on the CPU: the same as passing that noise
    z = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, sample(model, gd, (2, 3, 8, 8), sampler=method, steps=9, noise=z))
    steps = list(sample_progressive(model, gd, (2, 3, 8, 8), sampler=method, steps=9, seed=3))
    assert len(steps) == (5 if method == "heun" else 9)
    assert set(steps[0]) == {"sample", "pred_x0", "t"} and steps[0]["t"] == pytest.approx(999)
    assert torch.equal(steps[-1]["sample"].clamp(-1, 1), a)


def test_heun_with_an_even_budget_spends_one_call_less():
    gd = GaussianDiffusion(linear_betas(1000))
    calls = []
    gd.heun_sample_loop(lambda x, t: calls.append(1) or toy_model()(x, t), SHAPE, steps=10, noise=x_T())
    assert len(calls) == 9


# ------------------------------------------------------------------------------------- convergence to the ODE
@pytest.fixture(scope="module")
def mixture_problem():
    """The 2D mixture's exact denoiser: every sampler approximates the same probability-flow ODE, whose solution is
    taken from Heun on Karras σ's with 399 calls (its own error ≈ 2e-4 here, far below what is compared)."""
    gd = GaussianDiffusion(linear_betas(1000), data_type="continuous")
    model = GaussianMixture2D.default().exact_eps_model(gd)
    noise = x_T(0, (128, 2))
    ref = gd.heun_sample_loop(model, (128, 2), steps=399, karras_sigmas=True, noise=noise)
    err = lambda x: (x - ref).norm(dim=1).mean().item()
    return gd, model, noise, err


def test_more_steps_approach_the_ode_solution(mixture_problem):
    gd, model, noise, err = mixture_problem
    ddim = gd.ddim_sample_loop(model, (128, 2), noise=noise)  # all 1000 steps: the finest the process allows
    assert err(ddim) < 0.01
    for loop, kw in [(gd.dpm_solver_sample_loop, {}), (gd.euler_sample_loop, {}),
                     (gd.euler_sample_loop, {"karras_sigmas": True}), (gd.heun_sample_loop, {})]:  # fmt: skip
        errors = [err(loop(model, (128, 2), steps=n, noise=noise, **kw)) for n in (11, 21, 41, 81)]
        assert all(a > b for a, b in zip(errors, errors[1:])), (loop.__name__, kw, errors)
        assert errors[-1] < 0.4 * errors[0]


def test_second_order_beats_first_order_at_equal_network_calls(mixture_problem):
    gd, model, noise, err = mixture_problem
    for n in (20, 40):  # at 10 calls both are dominated by the last jump, from σ(t = 100) straight to 0
        dpm1 = err(gd.dpm_solver_sample_loop(model, (128, 2), steps=n, order=1, noise=noise))
        dpm2 = err(gd.dpm_solver_sample_loop(model, (128, 2), steps=n, order=2, noise=noise))
        assert dpm2 < 0.8 * dpm1, (n, dpm1, dpm2)
    # Heun pays two calls per level; with enough of them its second order wins over Euler at the same cost
    euler = err(gd.euler_sample_loop(model, (128, 2), steps=81, noise=noise))
    heun = err(gd.heun_sample_loop(model, (128, 2), steps=81, noise=noise))
    assert heun < 0.7 * euler
    # and halving Heun's step size divides its error by about 4
    heun41 = err(gd.heun_sample_loop(model, (128, 2), steps=41, karras_sigmas=True, noise=noise))
    heun81 = err(gd.heun_sample_loop(model, (128, 2), steps=81, karras_sigmas=True, noise=noise))
    assert 2.8 < heun41 / heun81 < 6


# ------------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "method, steps, match",
    [("dpmpp2m", 0, r"\[1, 999\]"), ("dpmpp2m", 1000, r"\[1, 999\]"), ("euler", 0, r"\[1, 1000\]"),
     ("euler", 1001, r"\[1, 1000\]"), ("heun", 2000, r"\[1, 1999\]"), ("euler", 2.5, "whole number"),
     ("heun", True, "whole number")],
)  # fmt: skip
def test_bad_steps_are_refused(method, steps, match):
    gd = GaussianDiffusion(linear_betas(1000))
    with pytest.raises(ValueError, match=match):
        sample(toy_model(), gd, SHAPE, sampler=method, steps=steps)
    loop = {"dpmpp2m": gd.dpm_solver_sample_loop, "euler": gd.euler_sample_loop, "heun": gd.heun_sample_loop}[method]
    with pytest.raises(ValueError, match="steps"):
        loop(toy_model(), SHAPE, steps=steps)


def test_bad_order_sampler_model_and_eta_are_refused():
    gd = GaussianDiffusion(linear_betas(1000))
    for order in (0, 3, 1.5, True):
        with pytest.raises(ValueError, match="order must be 1 or 2"):
            gd.dpm_solver_sample_loop_progressive(toy_model(), SHAPE, order=order)
    with pytest.raises(ValueError, match="unknown sampler 'dpm'.*dpmpp2m, euler, heun"):
        sample(toy_model(), gd, SHAPE, sampler="dpm")
    with pytest.raises(ValueError, match="eta=0.5 applies to sampler='ddim' only"):
        sample(toy_model(), gd, SHAPE, sampler="euler", steps=3, eta=0.5)
    for method in ("dpmpp2m", "euler", "heun"):
        with pytest.raises(ValueError, match="model output has shape .* use var_type='learned_range'"):
            sample(toy_model(learned=True), gd, SHAPE, sampler=method, steps=3)
        with pytest.raises(ValueError, match="must output twice the input channels"):
            sample(toy_model(), GaussianDiffusion(linear_betas(1000), var_type="learned_range"), SHAPE,
                   sampler=method, steps=3)  # fmt: skip
    with pytest.raises(ValueError, match="noise has shape"):
        gd.euler_sample_loop(toy_model(), SHAPE, steps=3, noise=torch.zeros(1, 2, 4, 4))


# ----------------------------------------------------------------------------------------- pipeline and CLI wiring
@pytest.fixture(scope="module")
def tiny_pipe(tmp_path_factory):
    from tiny_unclip import write_tiny_checkpoints

    from dalle2_edu.pipeline import UnCLIP

    return UnCLIP.from_pretrained(write_tiny_checkpoints(tmp_path_factory.mktemp("checkpoints")))


@pytest.mark.parametrize("method", ["dpmpp2m", "euler", "heun"])
def test_pipeline_passes_the_sampler_to_decoder_and_upsampler(tiny_pipe, method):
    from tiny_unclip import PROMPTS

    from dalle2_edu.stages.decoder import sample_decoder
    from dalle2_edu.stages.upsampler import upsample

    kw = dict(n=2, steps=5, prior_steps=3, upsample_steps=3, seed=0)
    out = tiny_pipe.generate(PROMPTS[:1], sampler=method, **kw)
    again = tiny_pipe.generate(PROMPTS[:1], sampler=method, **kw)
    ddim = tiny_pipe.generate(PROMPTS[:1], sampler="ddim", **kw)
    assert out.tensors.shape == (2, 3, 16, 16) and torch.equal(out.tensors, again.tensors)
    assert torch.equal(out.image_emb, ddim.image_emb)  # the prior is not the decoder's sampler's business
    assert not torch.allclose(out.low_res, ddim.low_res, atol=1e-3)
    assert out.settings["sampler"] == method and ddim.settings["sampler"] == "ddim"
    # the decoder ran the solver on its full 20-step process with 5 network calls; the upsampler with 3
    decoder, gd = tiny_pipe.decoder
    noise = tiny_pipe.decoder_start_noise(2, seed=0)
    direct = sample_decoder(decoder, gd, out.image_emb, steps=5, sampler=method, noise=noise)
    via_pipe = tiny_pipe.decode(out.image_emb, steps=5, noise=noise, sampler=method)
    assert torch.equal(direct, via_pipe)
    model, up_gd = tiny_pipe.upsampler
    assert torch.equal(tiny_pipe.upsample(out.low_res, 3, seed=4, sampler=method),
                       upsample(model, up_gd, out.low_res, steps=3, seed=4, sampler=method))  # fmt: skip
    # more steps than the 20-step process allows are clamped, as for DDIM
    assert tiny_pipe.decode(out.image_emb, steps=500, noise=noise, sampler=method).shape == (2, 3, 8, 8)
    with pytest.raises(ValueError, match="spacing='ddim' applies to the ddim and ddpm samplers"):
        tiny_pipe.decode(out.image_emb, steps=5, sampler=method, spacing="ddim")
    with pytest.raises(ValueError, match="eta=0.5 applies to sampler='ddim' only"):
        tiny_pipe.decode(out.image_emb, steps=5, sampler=method, eta=0.5)


def test_pipeline_and_cli_refuse_an_unknown_sampler_at_once(tiny_pipe, capsys):
    from tiny_unclip import PROMPTS

    from dalle2_edu.cli import _parser

    with pytest.raises(ValueError, match="unknown sampler 'lms'"):
        tiny_pipe.generate_batches(PROMPTS[:1], n=1, sampler="lms")  # checked before the first next()
    from dalle2_edu.pipeline import GENERATE_SAMPLER

    defaults = {"generate": GENERATE_SAMPLER, "demo": GENERATE_SAMPLER, "evaluate": "ddim"}  # evaluate: as recorded
    for command in (["generate", "a mug"], ["demo"], ["evaluate", "decoder"]):
        assert _parser().parse_args(command).sampler == defaults[command[0]]
        assert _parser().parse_args([*command, "--sampler", "heun"]).sampler == "heun"
        with pytest.raises(SystemExit):
            _parser().parse_args([*command, "--sampler", "lms"])
        assert "invalid choice: 'lms'" in capsys.readouterr().err


def test_quadratic_spacing_against_its_formula_and_its_guards():
    from dalle2_edu.diffusion.sampling import respaced, spaced_timesteps
    from dalle2_edu.diffusion.schedules import space_timesteps

    assert spaced_timesteps(1000, 5, "quad") == [0, 62, 250, 562, 999]  # round(999 (j/4)²)
    assert spaced_timesteps(1000, 4, "quad") == [0, 111, 444, 999]
    assert spaced_timesteps(1000, 20, "even") == sorted(space_timesteps(1000, [20]))
    for T in (5, 20, 100):
        for K in range(1, T + 1):
            ts = spaced_timesteps(T, K, "quad")
            assert len(ts) == K and ts == sorted(set(ts)) and ts[0] == 0 and 0 <= ts[-1] <= T - 1
            if K >= 2:
                assert ts[-1] == T - 1
    gd = GaussianDiffusion(cosine_betas(100))
    quad = respaced(gd, 5, "quad")
    assert quad.num_timesteps == 5
    assert quad.timestep_map.tolist() == spaced_timesteps(100, 5, "quad")
    with pytest.raises(ValueError, match="unknown spacing 'cubic'"):
        spaced_timesteps(100, 5, "cubic")
    with pytest.raises(ValueError, match="spacing='quad' applies to the ddim and ddpm samplers"):
        sample(lambda x, t: torch.zeros_like(x), gd, (1, 2), sampler="dpmpp2m", steps=4, spacing="quad", clamp=False)
