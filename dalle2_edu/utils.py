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


def writable_folder(path, what: str = "--out") -> Path:
    """``path`` as a folder that exists and can be written (created if missing), checked before any work starts.

    :raises ValueError: ``path`` is a file or a device, or cannot be written; the message names ``what``.
    """
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{what} '{path}' is a file (or a device), not a folder; pass a folder name")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ValueError(
            f"cannot write into {what} '{path}' ({err.strerror or err}); pick a folder you can write to, e.g. "
            f"{what} runs/mine"
        ) from None
    return folder


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
    if device != "auto" and not isinstance(device, torch.device):
        try:
            device = torch.device(device)
        except (RuntimeError, TypeError) as err:
            raise ValueError(f"unknown device {device!r}; use 'auto', 'cpu', 'cuda', 'cuda:1' or 'mps'") from err
    if isinstance(device, torch.device):
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(
                f"device {str(device)!r} was asked for, but PyTorch sees no CUDA GPU here (torch.cuda.is_available() "
                "is False: no GPU, no driver, or a CPU-only build of torch); use --device cpu, or --device auto to "
                "take a GPU when there is one"
            )
        if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {str(device)!r} does not exist: this machine has {torch.cuda.device_count()} "
                             "CUDA GPU(s), numbered from 0")  # fmt: skip
        return device
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
