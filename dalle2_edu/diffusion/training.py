"""The one diffusion training loss: every diffusion stage trains through :func:`diffusion_loss`.

A stage says only what is its own, in a ``prepare(batch) -> (x0, model_kwargs)`` function: which part of the batch is
the clean data x_0, and what the network is conditioned on (with the condition randomly dropped, for classifier-free
guidance). The rest is the same for every stage and written here once: uint8 pictures to [-1, 1], t drawn uniformly
(or by an importance sampler), :meth:`GaussianDiffusion.training_losses`, and the scalars the Trainer logs::

    def prepare(batch):
        images, image_emb = batch
        drop = torch.rand(len(images), device=images.device) < 0.1
        return images, {"image_emb": image_emb, "drop": drop}

    trainer = Trainer(model, diffusion_loss(gd, prepare), data, ...)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from dalle2_edu.diffusion.gaussian import GaussianDiffusion
from dalle2_edu.images import to_float

Prepare = Callable[[Any], "tuple[torch.Tensor, dict]"]


def diffusion_loss(gd: GaussianDiffusion, prepare: Prepare, t_sampler=None) -> Callable:
    """The Trainer's ``loss_fn(model, batch)`` for a diffusion model.

    :param gd: the process (its ``loss_type`` decides simple / hybrid / kl).
    :param prepare: ``prepare(batch) -> (x0, model_kwargs)``; uint8 x0 is converted to float in [-1, 1], float x0 is
        used as it is (embeddings, points, pictures already in [-1, 1]).
    :param t_sampler: ``None`` draws t uniformly from [0, T); or a sampler from
        :mod:`dalle2_edu.diffusion.resample` (importance sampling: the loss is reweighted and the sampler updated).
    :return: ``loss_fn(model, batch) -> {"loss", "mse", "vb_bpd"}`` (batch means).
    """

    def loss_fn(model, batch):
        x0, model_kwargs = prepare(batch)
        x0 = to_float(x0).float()
        if t_sampler is None:
            t = torch.randint(0, gd.num_timesteps, (x0.shape[0],), device=x0.device)
            weights = None
        else:
            t, weights = t_sampler.sample(x0.shape[0], device=x0.device)
        losses = gd.training_losses(model, x0, t, model_kwargs=model_kwargs)
        if t_sampler is not None:
            t_sampler.update(t, losses["loss"])
        loss = losses["loss"] if weights is None else weights * losses["loss"]
        return {"loss": loss.mean(), "mse": losses["mse"].mean(), "vb_bpd": losses["vb"].mean()}

    return loss_fn
