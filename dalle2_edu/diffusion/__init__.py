"""The Gaussian diffusion process and everything about it that does not depend on a network or a data set.

* :mod:`~dalle2_edu.diffusion.gaussian`: ``GaussianDiffusion`` (q, the posterior, p, the VLB, the sampling loops)
* :mod:`~dalle2_edu.diffusion.schedules`: β schedules and respacing
* :mod:`~dalle2_edu.diffusion.losses`: Gaussian KL and log-likelihoods
* :mod:`~dalle2_edu.diffusion.resample`: sampling t uniformly or by importance
* :mod:`~dalle2_edu.diffusion.guidance`: classifier-free guidance around any conditional network
* :mod:`~dalle2_edu.diffusion.config`: ``DiffusionConfig``, embedded in every stage's config
* :mod:`~dalle2_edu.diffusion.sampling`: ``sample``, the one sampling entry point every stage uses
* :mod:`~dalle2_edu.diffusion.training`: ``diffusion_loss``, the one training loss every diffusion stage uses
* :mod:`~dalle2_edu.diffusion.solvers`: fast ODE samplers (DPM-Solver++, Euler, Heun), ``sampler=`` of ``sample``
* :mod:`~dalle2_edu.diffusion.likelihood`: the exact log-likelihood by the probability-flow ODE
"""

from dalle2_edu.diffusion.config import DiffusionConfig
from dalle2_edu.diffusion.gaussian import (
    DATA_TYPES,
    LOSS_TYPES,
    MEAN_TYPES,
    VAR_TYPES,
    GaussianDiffusion,
    diffusion_from_config,
)
from dalle2_edu.diffusion.sampling import SAMPLERS, respaced, sample
from dalle2_edu.diffusion.training import diffusion_loss

__all__ = [
    "DATA_TYPES", "LOSS_TYPES", "MEAN_TYPES", "VAR_TYPES", "SAMPLERS", "DiffusionConfig", "GaussianDiffusion",
    "diffusion_from_config", "diffusion_loss", "respaced", "sample",
]  # fmt: skip
