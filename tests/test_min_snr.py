"""min-SNR-γ loss weighting (Hang et al. 2023) against its definition: every mean type's weighted error equals the
x_0 error weighted by min(SNR(t), γ), with x̂_0 worked out by hand from the network's output."""

import math

import pytest
import torch

from dalle2_edu.diffusion import DiffusionConfig
from dalle2_edu.diffusion.gaussian import GaussianDiffusion
from dalle2_edu.diffusion.schedules import cosine_betas


class _Fixed(torch.nn.Module):
    """A 'network' whose output is a fixed tensor, so that x̂_0 can be computed by hand."""

    def __init__(self, out):
        super().__init__()
        self.out = out

    def forward(self, x, t, **kwargs):
        return self.out


@pytest.mark.parametrize("mean_type", ["eps", "x0", "v"])
def test_weighted_error_is_the_x0_error_times_min_snr_gamma(mean_type):
    gamma, T = 5.0, 1000
    gd = GaussianDiffusion(cosine_betas(T), mean_type=mean_type, loss_type="simple", data_type="continuous",
                           snr_gamma=gamma)  # fmt: skip
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(6, 3, 4, 4, generator=g, dtype=torch.float64)
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    out = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 5, 50, 300, 700, 999])  # from SNR ≫ γ to SNR ≪ 1
    losses = gd.training_losses(_Fixed(out), x0, t, noise=noise)

    abar = torch.cumprod(1 - cosine_betas(T).double(), 0)[t].view(-1, 1, 1, 1)
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
    x0_hat = {"eps": (x_t - (1 - abar).sqrt() * out) / abar.sqrt(), "x0": out,
              "v": abar.sqrt() * x_t - (1 - abar).sqrt() * out}[mean_type]  # fmt: skip
    snr = (abar / (1 - abar)).flatten()
    expected = snr.clamp(max=gamma) * ((x0 - x0_hat) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(losses["mse"], expected, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(losses["loss"], expected, rtol=1e-9, atol=1e-12)
    assert snr[0] > gamma > snr[-1]  # both sides of the cap were exercised


def test_without_gamma_the_loss_is_unchanged_and_the_weights_are_ones():
    plain = GaussianDiffusion(cosine_betas(100), loss_type="hybrid", var_type="learned_range")
    weighted = GaussianDiffusion(cosine_betas(100), loss_type="hybrid", var_type="learned_range", snr_gamma=5)
    x0 = torch.rand(4, 3, 8, 8) * 2 - 1
    noise = torch.randn_like(x0)
    out = torch.randn(4, 6, 8, 8)
    t = torch.tensor([1, 10, 50, 99])
    a = plain.training_losses(_Fixed(out), x0, t, noise=noise)
    b = weighted.training_losses(_Fixed(out), x0, t, noise=noise)
    torch.testing.assert_close(plain.snr_weight(t), torch.ones(4, dtype=torch.float64))
    torch.testing.assert_close(b["vb"], a["vb"])  # the variance's VLB term is not reweighted
    torch.testing.assert_close(b["mse"], a["mse"] * weighted.snr_weight(t).float())
    assert not torch.allclose(b["mse"], a["mse"])


def test_the_config_carries_gamma_through_build_and_respacing():
    config = DiffusionConfig(num_timesteps=100, snr_gamma=5)
    gd = config.build()
    assert gd.snr_gamma == 5.0 and gd.respace(range(0, 100, 10)).snr_gamma == 5.0
    assert DiffusionConfig(**config.to_dict()) == config  # saved with a checkpoint's config and read back
    assert DiffusionConfig().snr_gamma is None and DiffusionConfig().replace(snr_gamma=2).snr_gamma == 2


@pytest.mark.parametrize("bad", [0, -1.0, math.inf, math.nan, "5"])
def test_bad_gamma_is_refused(bad):
    with pytest.raises((ValueError, TypeError), match="snr_gamma"):
        DiffusionConfig(snr_gamma=bad)
    with pytest.raises(ValueError, match="snr_gamma"):
        GaussianDiffusion(cosine_betas(10), snr_gamma=bad)
