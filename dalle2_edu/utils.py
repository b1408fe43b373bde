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


PRECISIONS = ("auto", "fp32", "bf16", "fp16")
"""What ``Trainer(amp=...)`` and ``train --precision`` take (``True`` means "auto", ``False`` means "fp32")."""


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU computes bf16 matrix products in hardware: the ``amx_bf16`` (Intel AMX tiles) or
    ``avx512_bf16`` flag in /proc/cpuinfo. Without either, torch still runs bf16 on the CPU but converts to fp32 in
    software: on an AVX2-only CPU a 256² bf16 matmul measured about 20× slower than fp32 (docs/BENCHMARKS.md §2).
    ``cpuinfo``: the text to read instead of /proc/cpuinfo (tests)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    lines = [line for line in cpuinfo.splitlines() if line.startswith("flags") and ":" in line]
    flags = {flag for line in lines for flag in line.split(":", 1)[1].split()}
    return bool(flags & {"amx_bf16", "avx512_bf16"})


def resolve_precision(amp: bool | str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``amp`` on ``device``, or ``None`` for plain fp32.

    * ``"auto"`` (or ``True``): on CUDA bf16 where the GPU supports it, otherwise fp16 (with a gradient scaler); on
      the CPU bf16 where it computes bf16 in hardware (:func:`cpu_has_native_bf16`: AMX or AVX-512 BF16), where the
      decoder's default training step runs 1.58× faster than fp32 with loss curves within fp32's seed-to-seed
      spread (docs/BENCHMARKS.md §2.1), and fp32 on other CPUs (there bf16 is emulated, many times slower) and on MPS.
    * ``"fp32"`` (or ``False``): no autocast anywhere.
    * ``"bf16"``: bf16 autocast on CUDA and on the CPU (a warning on a CPU without native bf16: it runs, slowly).
    * ``"fp16"``: CUDA only.

    Losses stay in fp32 either way: the diffusion losses upcast the network's output before any VLB term.
    """
    name = {True: "auto", False: "fp32"}.get(amp, amp) if isinstance(amp, bool) else amp
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision {amp!r}; use one of {', '.join(PRECISIONS)} (or True / False)")
    if name == "fp32":
        return None
    if device.type not in ("cuda", "cpu"):
        if name == "auto":
            return None
        raise ValueError(f"precision {name!r} is not supported on {device.type}; use 'auto' or 'fp32'")
    if device.type == "cuda":
        if name == "bf16" and not torch.cuda.is_bf16_supported():
            raise ValueError("this GPU does not support bf16; use --precision fp16 or auto")
        if name == "auto":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if name == "bf16" else torch.float16
    if name == "fp16":
        raise ValueError("fp16 autocast is for CUDA GPUs; on the CPU use --precision bf16 or fp32")
    if name == "bf16":
        if not cpu_has_native_bf16():
            import warnings

            warnings.warn(
                "bf16 was asked for on a CPU without native bf16 (no amx_bf16 / avx512_bf16 in /proc/cpuinfo): it runs "
                "in software, many times slower than fp32; use --precision fp32 (or auto) on this CPU",
                stacklevel=3,
            )
        return torch.bfloat16
    return torch.bfloat16 if cpu_has_native_bf16() else None  # auto on the CPU


def fast_mode() -> bool:
    """True when the environment variable ``DALLE2_EDU_FAST`` is set to a true value (1, true, yes).

    Notebooks and demos read it to shrink datasets, step counts and models so that CI runs them in seconds.
    """
    return os.environ.get(FAST_ENV, "").strip().lower() in {"1", "true", "yes", "on"}
