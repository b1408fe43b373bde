"""Classifier-free guidance (Ho & Salimans 2022), as a wrapper that turns one network into a guided model.

The network is trained with its conditioning sometimes replaced by a "null" value, so it learns both p(x | c) and
p(x). At sampling, the two predictions are extrapolated:  ε̂ = ε̂(x_t, ∅) + s · (ε̂(x_t, c) - ε̂(x_t, ∅)).
s = 0 is the unconditional model, s = 1 the conditional one, s > 1 trades diversity for fidelity to c.
With a learned variance, only the mean channels are guided; the variance comes from the conditional pass (GLIDE).
"""

from __future__ import annotations

from collections.abc import Callable

import torch


class GuidedModel:
    """``model(x_t, t)`` that runs ``net`` with conditional and null keyword arguments and mixes the two.

    :param net: the network, ``net(x_t, t, **kwargs)``.
    :param cond_kwargs: keyword arguments carrying the conditioning (e.g. ``labels=...``), batch N.
    :param null_kwargs: the same keywords carrying the null conditioning, batch N.
    :param scale: guidance scale s.
    :param mean_channels: how many leading channels along dim 1 are the guided mean output; ``None`` for all (no
        learned variance). Pass ``x.shape[1]`` for a ``learned_range`` network.
    """

    def __init__(
        self,
        net: Callable,
        cond_kwargs: dict,
        null_kwargs: dict,
        scale: float,
        mean_channels: int | None = None,
    ):
        if set(cond_kwargs) != set(null_kwargs):
            raise ValueError(
                f"cond_kwargs and null_kwargs must name the same inputs: {set(cond_kwargs)} vs {set(null_kwargs)}"
            )
        self.net, self.cond_kwargs, self.null_kwargs = net, cond_kwargs, null_kwargs
        self.scale, self.mean_channels = float(scale), mean_channels

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **extra) -> torch.Tensor:
        if self.scale == 1.0:
            return self.net(x, t, **self.cond_kwargs, **extra)
        if self.scale == 0.0:
            uncond = self.net(x, t, **self.null_kwargs, **extra)
            if self.mean_channels is None:
                return uncond
            cond_var = self.net(x, t, **self.cond_kwargs, **extra)[:, self.mean_channels :]
            return torch.cat([uncond[:, : self.mean_channels], cond_var], dim=1)
        # one batched pass over [conditional; null]
        both = {k: _cat(self.cond_kwargs[k], self.null_kwargs[k]) for k in self.cond_kwargs}
        out = self.net(torch.cat([x, x]), torch.cat([t, t]), **both, **{k: _cat(v, v) for k, v in extra.items()})
        cond, uncond = out.chunk(2, dim=0)
        c = self.mean_channels if self.mean_channels is not None else cond.shape[1]
        guided = uncond[:, :c] + self.scale * (cond[:, :c] - uncond[:, :c])
        return torch.cat([guided, cond[:, c:]], dim=1)


def _cat(a, b):
    if isinstance(a, torch.Tensor):
        return torch.cat([a, b], dim=0)
    if isinstance(a, list | tuple):
        return type(a)(list(a) + list(b))
    raise TypeError(f"cannot batch a conditioning input of type {type(a).__name__}; pass tensors or lists")
