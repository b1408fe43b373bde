"""2D toy datasets: points you can plot, and a Gaussian mixture whose exact density lets us grade the VLB.

Every function takes a ``seed`` and returns a float32 tensor (n, 2) with values roughly in [-1, 1].
"""

from __future__ import annotations

import math

import torch


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def _check_n(n: int) -> None:
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")


def make_moons(n: int, noise: float = 0.05, seed: int = 0) -> torch.Tensor:
    """Two interleaving half circles (as in scikit-learn), centred and scaled to about [-1, 1]²."""
    _check_n(n)
    g = _generator(seed)
    upper = torch.rand(n, generator=g) < 0.5
    angle = torch.rand(n, generator=g) * math.pi
    x = torch.where(upper, torch.cos(angle), 1 - torch.cos(angle))
    y = torch.where(upper, torch.sin(angle), 0.5 - torch.sin(angle))
    pts = torch.stack([x - 0.5, y - 0.25], dim=1) * 0.7
    return pts + noise * torch.randn(n, 2, generator=g)


def make_swiss_roll(n: int, noise: float = 0.03, seed: int = 0) -> torch.Tensor:
    """A 2D spiral (the swiss roll seen from its side), scaled to about [-1, 1]²."""
    _check_n(n)
    g = _generator(seed)
    turn = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=g))
    pts = torch.stack([turn * torch.cos(turn), turn * torch.sin(turn)], dim=1) / 15.0
    return pts + noise * torch.randn(n, 2, generator=g)


class GaussianMixture2D:
    """A mixture of isotropic 2D Gaussians, with sampling and its exact log-density.

    :param means: (K, 2) component centres. :param stds: (K,) standard deviations.
    :param weights: (K,) mixture weights (normalised here); uniform if omitted.
    """

    def __init__(self, means, stds, weights=None):
        self.means = torch.as_tensor(means, dtype=torch.float64)
        self.stds = torch.as_tensor(stds, dtype=torch.float64).reshape(-1)
        k = self.means.shape[0]
        if self.means.shape != (k, 2) or self.stds.shape != (k,) or (self.stds <= 0).any():
            raise ValueError("means must be (K, 2) and stds (K,) positive")
        w = torch.ones(k, dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        if w.shape != (k,) or (w <= 0).any():
            raise ValueError("weights must be (K,) positive")
        self.weights = w / w.sum()

    @classmethod
    def default(cls) -> GaussianMixture2D:
        """Six blobs on a ring of radius 0.6 with a seventh in the middle, of different widths and weights."""
        angles = torch.arange(6, dtype=torch.float64) * math.pi / 3
        ring = 0.6 * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
        means = torch.cat([ring, torch.zeros(1, 2, dtype=torch.float64)])
        stds = torch.tensor([0.08, 0.12, 0.08, 0.12, 0.08, 0.12, 0.15], dtype=torch.float64)
        weights = torch.tensor([1, 1, 1, 1, 1, 1, 2], dtype=torch.float64)
        return cls(means, stds, weights)

    def sample(self, n: int, seed: int = 0) -> torch.Tensor:
        """n points, float32 (n, 2)."""
        _check_n(n)
        g = _generator(seed)
        comp = torch.multinomial(self.weights, n, replacement=True, generator=g)
        pts = self.means[comp] + self.stds[comp, None] * torch.randn(n, 2, generator=g, dtype=torch.float64)
        return pts.float()

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log-density log p(x) in nats (total over the two dimensions), (n,)."""
        x = torch.as_tensor(x, dtype=torch.float64)
        if x.ndim != 2 or x.shape[1] != 2:
            raise ValueError(f"x must have shape (n, 2), got {tuple(x.shape)}")
        d2 = ((x[:, None, :] - self.means[None]) ** 2).sum(-1)  # (n, K)
        log_comp = -d2 / (2 * self.stds**2) - 2 * torch.log(self.stds) - math.log(2 * math.pi)
        return torch.logsumexp(log_comp + torch.log(self.weights), dim=1)

    def exact_eps_model(self, gd):
        """The ideal denoiser of this mixture under ``gd``'s forward process, as an ε-model ``model(x_t, t)``.

        Given component k, x_t = √ᾱ x_0 + √(1-ᾱ) ε is Gaussian: N(√ᾱ μ_k, (ᾱ s_k² + 1 - ᾱ) I), so the posterior
        component weights w_k(x_t) and E[x_0 | x_t, k] = μ_k + √ᾱ s_k² (x_t - √ᾱ μ_k) / (ᾱ s_k² + 1 - ᾱ) are exact;
        E[x_0 | x_t] = Σ_k w_k E[x_0 | x_t, k] and ε̂ = (x_t - √ᾱ E[x_0 | x_t]) / √(1 - ᾱ). What a perfectly trained
        network would output: a 2D explorer or sampler needs no training with it. ``t`` is the original step index;
        a fractional t (the Euler/Heun samplers, the ODE likelihood) reads ᾱ(t) from the continuous schedule of
        :class:`~dalle2_edu.diffusion.solvers.ContinuousSchedule`, as those do.
        """
        from dalle2_edu.diffusion.solvers import ContinuousSchedule

        if not torch.equal(gd.timestep_map, torch.arange(gd.num_timesteps)):
            raise ValueError("exact_eps_model needs the original process, not a respaced one (it reads t as original)")
        abar_table = torch.as_tensor(gd.alphas_cumprod, dtype=torch.float64)
        schedule = ContinuousSchedule(gd)

        def model(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            x = x_t.to(torch.float64)
            if t.is_floating_point():
                ab = torch.from_numpy(schedule.alpha_bar(t.detach().cpu().double().numpy()))
            else:
                ab = abar_table[t.cpu()]
            ab = ab.to(x.device)[:, None, None]  # (n, 1, 1)
            var = ab * self.stds[None, :, None] ** 2 + 1 - ab  # (n, K, 1)
            centre = ab.sqrt() * self.means[None]  # (n, K, 2)
            d2 = ((x[:, None, :] - centre) ** 2).sum(-1, keepdim=True)  # (n, K, 1)
            log_w = torch.log(self.weights)[None, :, None] - d2 / (2 * var) - torch.log(var)  # 2D: log of var^(2/2)
            w = torch.softmax(log_w, dim=1)
            x0_k = self.means[None] + ab.sqrt() * self.stds[None, :, None] ** 2 * (x[:, None, :] - centre) / var
            x0 = (w * x0_k).sum(1)
            ab1 = ab[:, 0]
            return ((x - ab1.sqrt() * x0) / (1 - ab1).sqrt()).to(x_t.dtype)

        return model

    def entropy(self, n: int = 200_000, seed: int = 1) -> float:
        """Monte-Carlo differential entropy H = -E[log p(x)] in nats (over both dimensions)."""
        return -self.log_prob(self.sample(n, seed)).mean().item()


TOYS = ("moons", "swiss_roll", "mixture")


def toy_dataset(name: str, n: int, seed: int = 0) -> torch.Tensor:
    """Look a toy set up by name: ``"moons"``, ``"swiss_roll"`` or ``"mixture"`` (:meth:`GaussianMixture2D.default`)."""
    if name == "moons":
        return make_moons(n, seed=seed)
    if name == "swiss_roll":
        return make_swiss_roll(n, seed=seed)
    if name == "mixture":
        return GaussianMixture2D.default().sample(n, seed)
    raise ValueError(f"unknown toy dataset {name!r}; choose one of {', '.join(TOYS)}")
