import pytest
import torch

from dalle2_edu.diffusion.resample import LossSecondMomentSampler, UniformSampler, make_sampler


def test_uniform_sampler_is_uniform_with_unit_weights():
    t, w = UniformSampler(10).sample(20000, generator=torch.Generator().manual_seed(0))
    assert torch.all(w == 1.0)
    freq = torch.bincount(t, minlength=10).float() / 20000
    assert (freq - 0.1).abs().max() < 0.01


def test_loss_sampler_keeps_the_newest_losses_like_a_plain_list():
    s = LossSecondMomentSampler(4, history=3)
    reference = {k: [] for k in range(4)}
    g = torch.Generator().manual_seed(1)
    for _ in range(30):
        t = torch.randint(0, 4, (7,), generator=g)
        losses = torch.rand(7, generator=g)
        s.update(t, losses)
        for k, v in zip(t.tolist(), losses.tolist()):
            reference[k] = (reference[k] + [v])[-3:]
    assert s.warmed_up()
    for k in range(4):
        assert sorted(s._losses[k].tolist()) == pytest.approx(sorted(reference[k]))


def test_loss_sampler_is_proportional_to_rms_loss_and_unbiased():
    T = 5
    s = LossSecondMomentSampler(T, history=2, uniform_prob=0.0)
    assert not s.warmed_up() and torch.allclose(s.probs(), torch.full((T,), 0.2, dtype=torch.float64))
    scale = torch.tensor([1.0, 2.0, 4.0, 8.0, 16.0])
    for _ in range(2):
        s.update(torch.arange(T), scale)
    assert torch.allclose(s.probs(), (scale / scale.sum()).double())
    # importance weights make the weighted mean an unbiased estimate of the plain mean over t
    t, w = s.sample(200000, generator=torch.Generator().manual_seed(2))
    est = (w * scale[t]).mean()
    assert est.item() == pytest.approx(scale.mean().item(), rel=0.01)


def test_make_sampler_names():
    assert isinstance(make_sampler("uniform", 3), UniformSampler)
    with pytest.raises(ValueError, match="unknown timestep sampler"):
        make_sampler("importance", 3)
