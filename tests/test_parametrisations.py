"""ε, x_0 and v: one noised picture, the three targets, and the conversions between them, against hand formulas."""

from __future__ import annotations

import pytest
import torch

from dalle2_edu.diffusion.gaussian import GaussianDiffusion
from dalle2_edu.diffusion.schedules import get_betas


def _setup(mean_type: str, schedule: str = "cosine"):
    gd = GaussianDiffusion(get_betas(schedule, 1000), mean_type=mean_type, var_type="fixed_small")
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(6, 3, 8, 8, generator=g) * 2 - 1
    eps = torch.randn(6, 3, 8, 8, generator=g)
    t = torch.tensor([0, 1, 250, 500, 998, 999])
    abar = torch.as_tensor(gd.alphas_cumprod, dtype=torch.float64)[t].view(-1, 1, 1, 1)
    x_t = gd.q_sample(x0, t, eps)
    by_hand = {"eps": eps, "x0": x0, "v": (abar.sqrt() * eps - (1 - abar).sqrt() * x0).float()}
    return gd, x0, eps, t, x_t, by_hand


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
@pytest.mark.parametrize("mean_type", ["eps", "x0", "v"])
def test_each_parametrisation_recovers_eps_and_x0_from_its_ideal_output(mean_type, schedule):
    gd, x0, eps, t, x_t, by_hand = _setup(mean_type, schedule)
    out = by_hand[mean_type]
    if mean_type == "v":
        assert torch.allclose(gd.v_target(x0, t, eps), out, atol=1e-6)
    got_eps = gd.eps_from_output(x_t, t, out)
    # x_0-networks lose ε where √(1-ᾱ_t) is tiny (t = 0): compare there in x_t's units instead
    ok = (t > 0).view(-1) if mean_type == "x0" else torch.ones(len(t), dtype=torch.bool)
    assert torch.allclose(got_eps[ok], eps[ok], atol=2e-4)
    pred = gd.p_mean_variance_from_output(out, x_t, t, clip_denoised=False)["pred_x0"]
    assert torch.equal(pred, gd.pred_x0_from_output(x_t, t, out))
    ok = (t < 998).view(-1) if mean_type == "eps" else torch.ones(len(t), dtype=torch.bool)  # ε → x_0 divides by √ᾱ_t
    assert torch.allclose(pred[ok], x0[ok], atol=2e-4)


def test_v_to_eps_is_stable_where_alpha_bar_vanishes():
    gd, x0, eps, t, x_t, by_hand = _setup("v")
    assert gd.alphas_cumprod[999] < 1e-8  # the cosine schedule's last step: almost pure noise
    assert torch.allclose(gd.eps_from_output(x_t, t, by_hand["v"])[-1], eps[-1], atol=1e-5)
    assert torch.isfinite(gd.eps_from_output(x_t, t, torch.randn_like(x_t))).all()
