"""Pictures people would rather look at than numbers: point clouds over a trajectory, image grids, per-t curves."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import torch


def scatter_row(clouds: Sequence[torch.Tensor], titles: Sequence[str], lim: float = 1.5, size: float = 2.6):
    """One scatter plot per 2D point cloud, side by side; returns the matplotlib Figure."""
    fig, axes = plt.subplots(1, len(clouds), figsize=(size * len(clouds), size), squeeze=False)
    for ax, pts, title in zip(axes[0], clouds, titles):
        pts = torch.as_tensor(pts).detach().cpu()
        ax.scatter(pts[:, 0], pts[:, 1], s=1, alpha=0.5)
        ax.set(xlim=(-lim, lim), ylim=(-lim, lim), title=title, xticks=[], yticks=[], aspect="equal")
    fig.tight_layout()
    return fig


def trajectory_frames(steps: Sequence[dict], num_frames: int = 6) -> tuple[list[torch.Tensor], list[str]]:
    """Pick ``num_frames`` evenly spaced steps of a progressive sampler's output (a list of dict(sample, t))."""
    if not steps:
        raise ValueError("the trajectory is empty")
    idx = torch.linspace(0, len(steps) - 1, num_frames).round().long().unique().tolist()
    return [steps[i]["sample"] for i in idx], [f"t = {steps[i]['t']}" for i in idx]


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float images (N, C, H, W) -> uint8 in [0, 255]."""
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def image_grid(images: torch.Tensor, nrow: int = 8, padding: int = 2) -> torch.Tensor:
    """[-1, 1] images (N, C, H, W) -> one uint8 grid (H', W', C) ready for ``plt.imshow`` or PIL."""
    from torchvision.utils import make_grid

    grid = make_grid(to_uint8(images).float(), nrow=nrow, padding=padding, pad_value=255)
    return grid.to(torch.uint8).permute(1, 2, 0)


def plot_per_t(values: torch.Tensor, label: str = "L_t (bits/dim)", ax=None):
    """A per-timestep curve (e.g. the VLB terms) on a log-scaled t axis."""
    ax = ax or plt.subplots(figsize=(5, 3))[1]
    t = torch.arange(1, len(values) + 1)
    ax.plot(t, torch.as_tensor(values).detach().cpu())
    ax.set(xscale="log", xlabel="t (1-based)", ylabel=label)
    return ax
