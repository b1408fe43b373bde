import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from dalle2_edu.diffusion.losses import (
    approx_standard_normal_cdf,
    discretized_gaussian_log_likelihood,
    gaussian_log_likelihood,
    normal_kl,
)


def test_normal_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(1)
    m1, m2 = torch.randn(1000, generator=g, dtype=torch.float64), torch.randn(1000, generator=g, dtype=torch.float64)
    lv1, lv2 = (
        3 * torch.randn(1000, generator=g, dtype=torch.float64),
        3 * torch.randn(1000, generator=g, dtype=torch.float64),
    )
    ref = kl_divergence(Normal(m1, (0.5 * lv1).exp()), Normal(m2, (0.5 * lv2).exp()))
    assert torch.allclose(normal_kl(m1, lv1, m2, lv2), ref, rtol=1e-10, atol=1e-12)
    assert torch.allclose(normal_kl(m1, lv1, m1, lv1), torch.zeros(1000, dtype=torch.float64))


def test_normal_kl_promotes_half_precision():
    m = torch.zeros(4, dtype=torch.float16)
    lv = torch.full((4,), -20.0, dtype=torch.float16)  # e^{20} overflows fp16
    out = normal_kl(m + 1, lv, m, lv)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_gaussian_log_likelihood_matches_torch_distributions():
    x = torch.linspace(-3, 3, 50, dtype=torch.float64)
    mean, log_scale = torch.tensor(0.3, dtype=torch.float64), torch.tensor(-0.7, dtype=torch.float64)
    ref = Normal(mean, log_scale.exp()).log_prob(x)
    assert torch.allclose(gaussian_log_likelihood(x, mean, log_scale), ref, rtol=1e-12)


@pytest.mark.parametrize("mean,log_scale", [(0.0, -3.0), (0.37, -1.0), (-0.95, -5.0), (0.999, 0.5), (0.2, -9.0)])
def test_discretized_likelihood_sums_to_one_over_256_bins(mean, log_scale):
    x = torch.arange(256, dtype=torch.float64) * 2 / 255 - 1
    logp = discretized_gaussian_log_likelihood(
        x, torch.tensor(mean, dtype=torch.float64), torch.tensor(log_scale, dtype=torch.float64)
    )
    assert logp.exp().sum().item() == pytest.approx(1.0, abs=1e-6)
    assert (logp <= 0).all()


def test_discretized_likelihood_matches_cdf_differences_and_is_stable_in_tails():
    x = torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0], dtype=torch.float64)
    mean, ls = torch.zeros(5, dtype=torch.float64), torch.full((5,), -1.5, dtype=torch.float64)
    d = Normal(mean, ls.exp())
    h = 1 / 255
    ref = torch.stack(
        [
            d.cdf(x - h) * 0 + d.cdf(x + h),
            d.cdf(x + h) - d.cdf(x - h),
            d.cdf(x + h) - d.cdf(x - h),
            d.cdf(x + h) - d.cdf(x - h),
            1 - d.cdf(x - h),
        ]
    )
    ref = ref[torch.arange(5), torch.arange(5)]
    assert torch.allclose(discretized_gaussian_log_likelihood(x, mean, ls), ref.log(), rtol=1e-9)
    # far in the upper tail the naive difference of CDFs is exactly 0 in float32; the mirrored form is not
    x32 = torch.tensor([0.9], dtype=torch.float32)
    lp = discretized_gaussian_log_likelihood(x32, torch.tensor([0.0]), torch.tensor([-2.0]))
    ref_tail = (
        Normal(0.0, math.exp(-2.0)).cdf(torch.tensor(0.9 + h, dtype=torch.float64))
        - Normal(0.0, math.exp(-2.0)).cdf(torch.tensor(0.9 - h, dtype=torch.float64))
    ).log()
    assert lp.item() == pytest.approx(ref_tail.item(), rel=1e-3)


def test_discretized_likelihood_rejects_out_of_range_data():
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        discretized_gaussian_log_likelihood(torch.tensor([2.0]), torch.tensor([0.0]), torch.tensor([0.0]))


def test_approx_cdf_is_close_to_exact():
    x = torch.linspace(-6, 6, 1001)
    assert (approx_standard_normal_cdf(x) - torch.special.ndtr(x)).abs().max() < 1e-3
