"""A small residual MLP denoiser for 2D points and other low-dimensional vectors."""

from __future__ import annotations

import torch
from torch import nn

from dalle2_edu.nets.layers import timestep_embedding


class MLPBlock(nn.Module):
    """h + W₂ SiLU(W₁ LN(h) + e_t): a residual block that sees the timestep embedding e_t."""

    def __init__(self, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.fc1 = nn.Linear(hidden, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.act = nn.SiLU()

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return h + self.fc2(self.act(self.fc1(self.norm(h)) + emb))


class MLPDenoiser(nn.Module):
    """model(x_t, t) for vectors: (B, dim) and (B,) step indices -> (B, dim), or (B, 2·dim) with ``learned_sigma``.

    The input goes through sinusoidal features at a few frequencies (a 2D point alone is a poor input for an MLP
    that has to draw sharp densities), then ``depth`` residual blocks, each told the step through its embedding.

    :param dim: data dimension (2 for the toys).
    :param hidden: width of the hidden layers.
    :param depth: number of residual blocks.
    :param learned_sigma: also output r ∈ [-1, 1] for ``var_type="learned_range"`` (squashed by tanh here).
    :param num_freqs: sinusoidal input features per coordinate and per sin/cos (0 to feed x alone).
    """

    def __init__(
        self, dim: int = 2, hidden: int = 256, depth: int = 4, learned_sigma: bool = False, num_freqs: int = 8
    ):
        super().__init__()
        self.dim, self.learned_sigma, self.hidden = dim, learned_sigma, hidden
        self.register_buffer("freqs", 2.0 ** torch.arange(num_freqs, dtype=torch.float32), persistent=False)
        in_features = dim * (1 + 2 * num_freqs)
        self.inp = nn.Linear(in_features, hidden)
        self.time = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.blocks = nn.ModuleList(MLPBlock(hidden) for _ in range(depth))
        self.out_norm = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, dim * (2 if learned_sigma else 1))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"MLPDenoiser expects x of shape (B, {self.dim}), got {tuple(x.shape)}")
        angles = x[:, :, None] * self.freqs  # (B, dim, F)
        feats = torch.cat([x, angles.sin().flatten(1), angles.cos().flatten(1)], dim=1)  # (B, dim·(1+2F))
        emb = self.time(timestep_embedding(t, self.hidden))  # (B, hidden)
        h = self.inp(feats)
        for block in self.blocks:
            h = block(h, emb)
        out = self.out(torch.nn.functional.silu(self.out_norm(h)))  # (B, dim) or (B, 2·dim)
        if self.learned_sigma:
            mean, v = out.chunk(2, dim=1)
            out = torch.cat([mean, torch.tanh(v)], dim=1)
        return out
