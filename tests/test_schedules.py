import math

import pytest
import torch

from dalle2_edu.diffusion.schedules import cosine_betas, get_betas, linear_betas, respaced_betas, space_timesteps


def test_linear_betas_match_ddpm_and_scale_with_T():
    b = linear_betas(1000)
    assert b.dtype == torch.float64 and b.shape == (1000,)
    assert b[0].item() == pytest.approx(1e-4) and b[-1].item() == pytest.approx(0.02)
    b250 = linear_betas(250)
    assert b250[0].item() == pytest.approx(4e-4) and b250[-1].item() == pytest.approx(0.08)
    # about the same signal left at the end, whatever T
    abar_T = lambda x: torch.prod(1 - x).item()
    assert abar_T(b250) == pytest.approx(abar_T(b), rel=0.6)
    assert abar_T(b) < 1e-4


def test_cosine_alpha_bar_follows_cos_squared():
    T, s = 1000, 0.008
    b = cosine_betas(T)
    abar = torch.cumprod(1 - b, 0)
    f = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    for t in [0, 10, 100, 500, 900]:
        assert abar[t].item() == pytest.approx(f((t + 1) / T) / f(0), rel=1e-9)
    assert b.max().item() <= 0.999 and (b > 0).all()
    assert torch.all(b[1:] >= b[:-1] - 1e-12)  # non-decreasing


def test_get_betas_and_bad_input():
    assert torch.equal(get_betas("cosine", 10), cosine_betas(10))
    with pytest.raises(ValueError, match="unknown noise schedule"):
        get_betas("quadratic", 10)
    with pytest.raises(ValueError, match="positive int"):
        linear_betas(0)
    with pytest.raises(ValueError, match="num_timesteps > 20"):
        linear_betas(10)


def improved_ddpm_rule(num_timesteps, section_counts):
    """Independent transcription of Improved DDPM's respacing description (section 4 and appendix): split into
    equal sections, the remainder going to the first ones, then stride (size-1)/(count-1), indices rounded."""
    size_per = num_timesteps // len(section_counts)
    extra = num_timesteps % len(section_counts)
    out, start = set(), 0
    for i, count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if count <= 1:
            frac = 1.0
        else:
            frac = (size - 1) / (count - 1)
        cur = 0.0
        for _ in range(count):
            out.add(start + round(cur))
            cur += frac
        start += size
    return out


@pytest.mark.parametrize(
    "T,counts",
    [(1000, [10]), (1000, [25]), (1000, [50]), (1000, [10, 15, 20]), (4000, [100]), (1000, [1]), (7, [3, 2])],
)
def test_space_timesteps_matches_improved_ddpm_rule(T, counts):
    got = space_timesteps(T, counts)
    assert set(got) == improved_ddpm_rule(T, counts)
    assert got == sorted(got) and len(got) == sum(counts)
    assert space_timesteps(T, ",".join(map(str, counts))) == got


def test_space_timesteps_ddim_uses_integer_stride():
    assert space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))
    assert space_timesteps(1000, "ddim10") == list(range(0, 1000, 100))
    assert space_timesteps(1000, "ddim1000") == list(range(1000))
    with pytest.raises(ValueError, match="integer stride"):
        space_timesteps(1000, "ddim999")
    with pytest.raises(ValueError, match="section of"):
        space_timesteps(10, [20])
    with pytest.raises(ValueError, match="ddimN"):
        space_timesteps(10, "ddimx")


def test_respaced_betas_keep_alpha_bar_at_kept_steps():
    b = cosine_betas(1000)
    keep = space_timesteps(1000, "ddim50")
    nb = respaced_betas(b, keep)
    assert torch.allclose(torch.cumprod(1 - nb, 0), torch.cumprod(1 - b, 0)[keep], rtol=1e-12)
    assert torch.equal(respaced_betas(b, range(1000)), b) or torch.allclose(respaced_betas(b, range(1000)), b)
    with pytest.raises(ValueError, match="lie in"):
        respaced_betas(b, [0, 1000])
