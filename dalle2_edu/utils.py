"""Small shared helpers: seeding every random source at once, device choice, fast mode."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

FAST_ENV = "DALLE2_EDU_FAST"
DATA_ENV = "DALLE2_EDU_DATA"


def data_dir() -> Path:
    """The project's ``data/`` folder (caches, checkpoints), wherever the code is run from.

    ``$DALLE2_EDU_DATA`` if set; else ``data/`` beside the package in a source checkout; else ``~/.cache/dalle2_edu``
    for an installed copy.
    """
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser()
    checkout = Path(__file__).resolve().parents[1] / "data"
    if checkout.is_dir():
        return checkout
    return Path.home() / ".cache" / "dalle2_edu"


def set_seed(seed: int) -> torch.Generator:
    """Seed Python's, NumPy's and PyTorch's (CPU and CUDA) random generators with one number.

    :param seed: any non-negative integer.
    :return: a fresh ``torch.Generator`` seeded with ``seed`` too, for code that prefers an explicit generator.
    """
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device
    return torch.Generator().manual_seed(seed)


def get_device(device: str | torch.device = "auto") -> torch.device:
    """Resolve ``"auto"`` to the best available device: CUDA, then Apple's MPS, then the CPU."""
    if isinstance(device, torch.device):
        return device
    if device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def fast_mode() -> bool:
    """True when the environment variable ``DALLE2_EDU_FAST`` is set to a true value (1, true, yes).

    Notebooks and demos read it to shrink datasets, step counts and models so that CI runs them in seconds.
    """
    return os.environ.get(FAST_ENV, "").strip().lower() in {"1", "true", "yes", "on"}
