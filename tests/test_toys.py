import math

import pytest
import torch
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

from dalle2_edu.datasets import GaussianMixture2D, make_moons, make_swiss_roll, toy_dataset
from dalle2_edu.nets.mlp import MLPDenoiser
from dalle2_edu.stages.toy2d import train_toy2d, vlb_vs_exact_nll


def test_mixture_log_prob_matches_torch_distributions_and_integrates_to_one():
    mix = GaussianMixture2D.default()
    ref = MixtureSameFamily(
        Categorical(probs=mix.weights),
        Independent(Normal(mix.means, mix.stds[:, None].expand(-1, 2)), 1),
    )
    x = 0.8 * torch.randn(500, 2, dtype=torch.float64)
    assert torch.allclose(mix.log_prob(x), ref.log_prob(x), rtol=1e-10)
    # integral over a fine grid
    g = torch.linspace(-1.6, 1.6, 801, dtype=torch.float64)
    xx, yy = torch.meshgrid(g, g, indexing="ij")
    dens = mix.log_prob(torch.stack([xx.flatten(), yy.flatten()], 1)).exp()
    assert (dens.sum() * (g[1] - g[0]) ** 2).item() == pytest.approx(1.0, abs=1e-4)


def test_mixture_samples_follow_the_weights_and_the_entropy_is_consistent():
    mix = GaussianMixture2D.default()
    x = mix.sample(40000, seed=3).double()
    # E_x[p(k | x)] = w_k: the mean responsibility of each component equals its weight
    d2 = ((x[:, None] - mix.means[None]) ** 2).sum(-1)
    log_joint = torch.log(mix.weights) - d2 / (2 * mix.stds**2) - 2 * torch.log(mix.stds)
    resp = torch.softmax(log_joint, dim=1)
    assert (resp.mean(0) - mix.weights).abs().max() < 4 * 0.5 / math.sqrt(len(x))
    assert mix.entropy(n=50000, seed=4) == pytest.approx(-mix.log_prob(x).mean().item(), abs=0.03)


@pytest.mark.parametrize("name", ["moons", "swiss_roll", "mixture"])
def test_toys_are_seeded_and_shaped(name):
    a, b, c = toy_dataset(name, 300, seed=1), toy_dataset(name, 300, seed=1), toy_dataset(name, 300, seed=2)
    assert a.shape == (300, 2) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.abs().max() < 2.0


def test_toys_bad_input():
    with pytest.raises(ValueError, match="unknown toy dataset"):
        toy_dataset("spiral", 10)
    with pytest.raises(ValueError, match="positive int"):
        make_moons(0)
    with pytest.raises(ValueError, match="positive int"):
        make_swiss_roll(-5)
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        GaussianMixture2D.default().log_prob(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="positive"):
        GaussianMixture2D([[0.0, 0.0]], [0.0])


def test_mlp_denoiser_shapes_and_variance_range():
    m = MLPDenoiser(dim=2, hidden=32, depth=2, learned_sigma=True)
    out = m(torch.randn(5, 2) * 10, torch.tensor([0, 1, 2, 500, 999]))
    assert out.shape == (5, 4) and out[:, 2:].abs().max() <= 1.0
    assert MLPDenoiser(dim=3, hidden=16, depth=1)(torch.randn(2, 3), torch.tensor([1, 2])).shape == (2, 3)
    with pytest.raises(ValueError, match=r"\(B, 2\)"):
        m(torch.randn(5, 3), torch.zeros(5, dtype=torch.long))


def test_short_2d_training_lowers_the_bound_and_is_seeded():
    kw = dict(steps=150, hidden=32, depth=1, n_train=2000, num_timesteps=100, batch_size=256, progress=False)
    trainer, gd, data = train_toy2d(seed=0, **kw)
    again, _, _ = train_toy2d(seed=0, **kw)
    for p, q in zip(trainer.ema_model.parameters(), again.ema_model.parameters()):
        assert torch.equal(p, q)
    losses = trainer.history["loss"]
    assert losses[-1] < 0.5 * losses[0]
    res = vlb_vs_exact_nll(trainer.ema_model, gd, n=300)
    assert math.isfinite(res["vlb_nats"]) and res["per_t_bpd"].shape == (100,)
    # an untrained model's bound is far worse than the trained one's
    fresh = MLPDenoiser(hidden=32, depth=1, learned_sigma=True)
    assert vlb_vs_exact_nll(fresh, gd, n=300)["vlb_nats"] > res["vlb_nats"] + 1.0


def test_exact_mixture_denoiser_matches_the_gaussian_oracle_and_samples_the_mixture():
    from oracles import GaussianOracle

    from dalle2_edu.diffusion import GaussianDiffusion
    from dalle2_edu.diffusion.schedules import cosine_betas, space_timesteps

    betas = cosine_betas(200)
    gd = GaussianDiffusion(betas, data_type="continuous")
    x = torch.randn(64, 2, dtype=torch.float64)
    t = torch.randint(0, 200, (64,))
    one = GaussianMixture2D([[0.0, 0.0]], [0.3]).exact_eps_model(gd)  # one centred component: the oracle's case
    assert torch.allclose(one(x, t), GaussianOracle(betas, 0.3, learned_range=False)(x, t), atol=1e-10)
    mix = GaussianMixture2D.default()
    model = mix.exact_eps_model(gd)
    pts = gd.p_sample_loop(model, (4000, 2), generator=torch.Generator().manual_seed(0)).double()
    centre = (pts.norm(dim=1) < 0.3).double().mean().item()  # the middle blob holds 2/8 of the mass
    assert abs(centre - 0.25) < 0.04, centre
    assert mix.log_prob(pts).mean() > mix.log_prob(mix.sample(4000, seed=3)).mean() - 0.15
    with pytest.raises(ValueError, match="original process"):
        mix.exact_eps_model(gd.respace(space_timesteps(200, [10])))
