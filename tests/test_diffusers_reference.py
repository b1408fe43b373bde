"""Our DDPM and DDIM steps against Hugging Face diffusers' schedulers: same betas, inputs and noise, same outputs.

diffusers is an independent implementation (a test-only dependency); agreement to float32 tolerance checks the
posterior coefficients, the three parameterisations, clipping, the variance types and DDIM's update and respacing.
"""

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
from diffusers import DDIMScheduler, DDPMScheduler  # noqa: E402

from dalle2_edu.diffusion import GaussianDiffusion  # noqa: E402
from dalle2_edu.diffusion.schedules import cosine_betas, linear_betas, space_timesteps  # noqa: E402

PRED = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}
SHAPE = (3, 2, 4, 4)
D64 = torch.float64


def in_float64(ref, betas):
    """diffusers keeps ᾱ in float32, where 1 - ᾱ_1 ≈ 1e-4 has only ~3 significant digits; recompute its tables in
    float64 so that the comparison tests the formulas, not float32 rounding."""
    ref.betas = betas.to(D64)
    ref.alphas = 1.0 - ref.betas
    ref.alphas_cumprod = torch.cumprod(ref.alphas, dim=0)
    ref.one = torch.tensor(1.0, dtype=D64)
    if hasattr(ref, "final_alpha_cumprod"):
        ref.final_alpha_cumprod = torch.tensor(1.0, dtype=D64)
    return ref


def toy_model(learned: bool):
    """A fixed nonlinear function of (x_t, t) standing in for a network; with learned=True it also outputs v."""

    def model(x, t):
        tt = torch.as_tensor(t, dtype=x.dtype).reshape(-1, 1, 1, 1) / 1000.0
        mean = torch.tanh(1.3 * x + tt) - 0.2 * x
        if not learned:
            return mean
        return torch.cat([mean, torch.tanh(x * tt - 0.3)], dim=1)

    return model


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("mean_type", ["eps", "x0", "v"])
@pytest.mark.parametrize("var_type", ["fixed_small", "fixed_large", "learned_range"])
@pytest.mark.parametrize("clip", [True, False])
def test_ddpm_steps_match_diffusers(schedule, mean_type, var_type, clip):
    betas = linear_betas(1000) if schedule == "linear" else cosine_betas(1000)
    gd = GaussianDiffusion(betas, mean_type=mean_type, var_type=var_type)
    ref = DDPMScheduler(
        num_train_timesteps=1000,
        trained_betas=betas.numpy(),
        variance_type=var_type,
        clip_sample=clip,
        clip_sample_range=1.0,
        prediction_type=PRED[mean_type],
    )
    in_float64(ref, betas)
    model = toy_model(var_type == "learned_range")
    g = torch.Generator().manual_seed(0)
    x = 1.5 * torch.randn(SHAPE, generator=g, dtype=D64)
    # diffusers' learned_range and fixed_large differ from Improved DDPM only at t = 0, where no noise is added and
    # the variance is unused; every step t ≥ 1 is compared, and t = 0 for the mean.
    for t in [999, 700, 250, 30, 1, 0]:
        out = model(x, torch.full((SHAPE[0],), t))
        seed = 1000 + t
        noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed), dtype=D64)
        ours = gd.p_sample(model, x, t, noise=noise, clip_denoised=clip)
        theirs = ref.step(out, t, x, generator=torch.Generator().manual_seed(seed))
        assert torch.allclose(ours["pred_x0"], theirs.pred_original_sample, atol=1e-10, rtol=1e-9), t
        assert torch.allclose(ours["sample"], theirs.prev_sample, atol=1e-10, rtol=1e-9), t


@pytest.mark.parametrize("mean_type", ["eps", "x0", "v"])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("clip", [True, False])
def test_ddim50_loop_matches_diffusers(mean_type, eta, clip):
    betas = cosine_betas(1000)
    gd = GaussianDiffusion(betas, mean_type=mean_type).respace(space_timesteps(1000, "ddim50"))
    ref = DDIMScheduler(
        num_train_timesteps=1000,
        trained_betas=betas.numpy(),
        clip_sample=clip,
        clip_sample_range=1.0,
        set_alpha_to_one=True,
        steps_offset=0,
        prediction_type=PRED[mean_type],
        timestep_spacing="leading",
    )
    in_float64(ref, betas)
    ref.set_timesteps(50)
    assert ref.timesteps.tolist() == [int(t) for t in gd.timestep_map.flip(0)]
    model = toy_model(False)
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(5), dtype=D64)

    ours = gd.ddim_sample_loop(
        model, SHAPE, eta=eta, noise=x_T, clip_denoised=clip, generator=torch.Generator().manual_seed(6)
    )
    # diffusers, fed the per-step noise our loop draws: one float32 N(0, I) draw per step from the same generator
    g = torch.Generator().manual_seed(6)
    x = x_T.clone()
    for t in ref.timesteps:
        z = torch.randn(SHAPE, generator=g).to(D64)
        x = ref.step(
            model(x, t.repeat(SHAPE[0])), t, x, eta=eta, use_clipped_model_output=True, variance_noise=z
        ).prev_sample
    assert torch.allclose(ours, x, atol=1e-9, rtol=1e-9)


def test_float32_agreement_with_stock_diffusers():
    """Unmodified diffusers in float32 agrees to float32 accuracy away from t ≈ 0."""
    betas = linear_betas(1000)
    gd = GaussianDiffusion(betas)
    ref = DDPMScheduler(num_train_timesteps=1000, trained_betas=betas.numpy(), variance_type="fixed_small")
    model = toy_model(False)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    for t in [999, 500, 100]:
        noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(t))
        ours = gd.p_sample(model, x, t, noise=noise)["sample"]
        theirs = ref.step(model(x, torch.full((3,), t)), t, x, generator=torch.Generator().manual_seed(t)).prev_sample
        assert torch.allclose(ours, theirs, atol=1e-5, rtol=1e-4)
