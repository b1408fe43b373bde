"""The grain meter (issue 13, goal 5): fine detail in the flat backgrounds of generated pictures."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dalle2_edu.datasets.catalogue import BACKGROUNDS, CATEGORIES, render_product
from dalle2_edu.metrics import FLAT_BACKGROUNDS, background_grain, corner_squares, grain_ratio


def _real(n: int, size: int = 64, seed: int = 0, backgrounds=FLAT_BACKGROUNDS):
    """n real catalogue pictures (float, [-1, 1]) on the given backgrounds, every category, and their alpha masks."""
    pictures, masks, bgs = [], [], []
    for i in range(n):
        rng = np.random.default_rng(seed + i)
        bg = backgrounds[i % len(backgrounds)]
        img, alpha = render_product(CATEGORIES[i % len(CATEGORIES)], int(rng.integers(8)), int(rng.integers(3)), bg,
                                    rng=rng, size=size, return_alpha=True)  # fmt: skip
        pictures.append(torch.from_numpy(img).permute(2, 0, 1).float() / 127.5 - 1)
        masks.append(torch.from_numpy(alpha))
        bgs.append(bg)
    return torch.stack(pictures), torch.stack(masks)[:, None], bgs


def test_the_corner_squares_hold_background_only_on_real_pictures():
    _, alpha, _ = _real(400, backgrounds=BACKGROUNDS)
    squares = corner_squares(alpha)
    assert squares.shape == (400, 4, 1, 8, 8)  # side 64 / 8
    touched = squares.flatten(1).sum(dim=1) > 0
    assert touched.float().mean() <= 0.02  # a rare large product reaches into a corner
    assert squares.mean() < 1e-4  # covering < 0.01% of the corner pixels


def test_grain_is_zero_on_smooth_pictures_and_20_sigma_squared_on_white_noise():
    y, x = torch.meshgrid(torch.linspace(-1, 1, 64), torch.linspace(-1, 1, 64), indexing="ij")
    ramp = (0.3 * x - 0.2 * y + 0.1).expand(2, 3, 64, 64)
    assert background_grain(torch.full((2, 3, 64, 64), 0.9)).abs().max() < 1e-12
    assert background_grain(ramp).abs().max() < 1e-10  # the Laplacian of a plane is 0
    sigma = 0.05
    noise = sigma * torch.randn(64, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    # 5-point Laplacian of i.i.d. noise: variance (4 · 1 + 16) σ² = 20 σ²
    assert background_grain(noise).mean().item() == pytest.approx(20 * sigma**2, rel=0.03)


def test_grain_reads_only_the_corners():
    pictures = torch.zeros(1, 3, 32, 32)
    pictures[:, :, 8:24, 8:24] = torch.randn(1, 3, 16, 16)  # speckle on the product, none on the background
    assert background_grain(pictures).item() == 0.0
    pictures[:, :, :2, :2] = 1.0
    assert background_grain(pictures).item() > 0


def test_grain_ratio_against_real_pictures():
    real, _, bgs = _real(48, seed=0)
    other, _, other_bgs = _real(48, seed=1000)
    same = grain_ratio(other, other_bgs, real, bgs)
    assert same["n"] == 48 and same["n_real"] == 48
    assert 0.7 < same["ratio"] < 1.4  # two samples of real pictures: about as smooth as each other
    sigma = 0.03
    noisy = other + sigma * torch.randn(other.shape, generator=torch.Generator().manual_seed(0))
    grainy = grain_ratio(noisy, other_bgs, real, bgs)
    assert grainy["generated"] == pytest.approx(same["generated"] + 20 * sigma**2, rel=0.1)
    assert grainy["ratio"] > 3
    # pictures on wood do not count: their background has real fine detail
    wood = grain_ratio(torch.cat([other, noisy]), other_bgs + ["wood"] * 48, real, bgs)
    assert wood["n"] == 48 and wood["generated"] == pytest.approx(same["generated"])


def test_grain_ratio_refuses_bad_input():
    real, _, bgs = _real(4, size=32)
    with pytest.raises(ValueError, match="one size"):
        grain_ratio(torch.zeros(4, 3, 64, 64), bgs, real, bgs)
    with pytest.raises(ValueError, match="flat background"):
        grain_ratio(real, ["wood"] * 4, real, bgs)
    with pytest.raises(ValueError, match="one background per picture"):
        grain_ratio(real, bgs[:3], real, bgs)
    with pytest.raises(ValueError, match=r"shape \(N, C, H, W\)"):
        background_grain(torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match="too small"):
        background_grain(torch.zeros(1, 3, 4, 4))


class _SmoothPipe:
    """Stands in for UnCLIP in evaluate_pipeline: flat mid-grey pictures, with speckle in the corners if asked."""

    def __init__(self, speckle: float):
        self.speckle = speckle

    def generate(self, prompts, n, seed=0, **kwargs):
        g = torch.Generator().manual_seed(seed)
        x = torch.zeros(len(prompts) * n, 3, 32, 32)
        x[:, :, :4] += self.speckle * torch.randn(x[:, :, :4].shape, generator=g)
        return type("Out", (), {"tensors": x.clamp(-1, 1)})()


def test_evaluate_pipeline_reports_the_grain_of_the_flat_backgrounds_it_asked_for():
    from dalle2_edu.evaluate import eval_prompts, evaluate_pipeline

    prompts, labels = eval_prompts("seen")
    flat = sum(BACKGROUNDS[int(b)] in FLAT_BACKGROUNDS for b in labels[:, 3])
    smooth = evaluate_pipeline(_SmoothPipe(0.0), n=1, fid_real=len(prompts), progress=False)
    grainy = evaluate_pipeline(_SmoothPipe(0.2), n=1, fid_real=len(prompts), progress=False)
    assert smooth["grain"]["n"] == grainy["grain"]["n"] == flat
    assert smooth["grain"]["generated"] == 0.0
    assert grainy["grain"]["ratio"] > 10
    assert smooth["grain"]["real"] == grainy["grain"]["real"] > 0
