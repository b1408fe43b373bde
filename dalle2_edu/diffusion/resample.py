"""Which timesteps to train on: uniform, or importance-sampled by the VLB's own loss (Improved DDPM §3.3).

The VLB's terms L_t differ by orders of magnitude across t (the first few steps dominate), so a uniform draw of t
gives a very noisy estimate of Σ_t L_t. Drawing t with probability p_t ∝ √E[L_t²] and weighting the loss by
1 / (T p_t) keeps the estimate unbiased while shrinking its variance.
"""

from __future__ import annotations

import torch


class UniformSampler:
    """t ~ U{0..T-1}, weights 1."""

    def __init__(self, num_timesteps: int):
        self.num_timesteps = num_timesteps

    def probs(self) -> torch.Tensor:
        return torch.full((self.num_timesteps,), 1.0 / self.num_timesteps, dtype=torch.float64)

    def sample(self, batch_size: int, device=None, generator: torch.Generator | None = None):
        """:return: (t (B,) long, weights (B,) float32) with E[weight · L_t] = mean_t L_t."""
        p = self.probs()
        t = torch.multinomial(p, batch_size, replacement=True, generator=generator)
        weights = 1.0 / (self.num_timesteps * p[t])
        return t.to(device), weights.float().to(device)

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Uniform sampling learns nothing from the losses."""


class LossSecondMomentSampler(UniformSampler):
    """p_t ∝ √(mean of the last ``history`` values of L_t²), mixed with a little uniform mass.

    Stays uniform until every t has ``history`` recorded losses (the warm-up Improved DDPM uses).

    :param num_timesteps: T. :param history: losses kept per step. :param uniform_prob: uniform share of p.
    """

    def __init__(self, num_timesteps: int, history: int = 10, uniform_prob: float = 0.001):
        super().__init__(num_timesteps)
        self.history, self.uniform_prob = history, uniform_prob
        self._losses = torch.zeros(num_timesteps, history, dtype=torch.float64)
        self._counts = torch.zeros(num_timesteps, dtype=torch.long)  # losses recorded per step, up to `history`
        self._next = torch.zeros(num_timesteps, dtype=torch.long)  # ring-buffer slot written next

    def warmed_up(self) -> bool:
        return bool((self._counts == self.history).all())

    def probs(self) -> torch.Tensor:
        if not self.warmed_up():
            return super().probs()
        p = torch.sqrt((self._losses**2).mean(dim=1))
        p = p / p.sum()
        return (1 - self.uniform_prob) * p + self.uniform_prob / self.num_timesteps

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Record the per-example losses L_t seen at steps t in a ring buffer per step (oldest overwritten)."""
        t = t.detach().cpu().long()
        losses = losses.detach().cpu().double()
        order = torch.argsort(t, stable=True)
        t, losses = t[order], losses[order]
        steps, counts = torch.unique_consecutive(t, return_counts=True)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(len(t)) - torch.repeat_interleave(starts, counts)  # k-th occurrence of its step here
        keep = rank >= torch.repeat_interleave(counts, counts) - self.history  # only the newest `history` count
        slot = (self._next[t] + rank) % self.history
        self._losses[t[keep], slot[keep]] = losses[keep]
        self._next[steps] = (self._next[steps] + counts) % self.history
        self._counts[steps] = (self._counts[steps] + counts).clamp(max=self.history)


def make_sampler(name: str, num_timesteps: int) -> UniformSampler:
    """``"uniform"`` or ``"loss-second-moment"``."""
    if name == "uniform":
        return UniformSampler(num_timesteps)
    if name == "loss-second-moment":
        return LossSecondMomentSampler(num_timesteps)
    raise ValueError(f"unknown timestep sampler {name!r}; choose 'uniform' or 'loss-second-moment'")
