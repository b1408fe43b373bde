"""Training on several processes at once (GPUs, or CPU cores; one machine or many) with PyTorch's own engine.

``torchrun`` starts one process per GPU and tells each, through environment variables, who it is: ``RANK`` (0 to
``WORLD_SIZE - 1`` over all machines), ``LOCAL_RANK`` (its GPU on this machine), ``WORLD_SIZE``, ``MASTER_ADDR`` and
``MASTER_PORT``. :func:`init_distributed` reads them and joins the processes into one group; the
:class:`~dalle2_edu.train.Trainer` then sees the group and trains with ``DistributedDataParallel`` by itself::

    torchrun --standalone --nproc-per-node=4 -m dalle2_edu train decoder --out runs/dec     # 4 GPUs, one machine
    torchrun --nnodes=2 --nproc-per-node=8 --rdzv-backend=c10d --rdzv-endpoint=HOST0:29500 --rdzv-id=dec \\
        -m dalle2_edu train decoder --out runs/dec                                           # run on both machines

and in the command's code::

    info = init_distributed(args.device)       # without torchrun: nothing to do, rank 0 of 1
    trainer = Trainer(model, loss_fn, data, device=info.device, out_dir=args.out, ...)
    trainer.fit(steps, resume=True)            # every rank calls fit; only rank 0 writes files
    cleanup()

Processes on CUDA talk through NCCL, processes on the CPU through gloo. Without torchrun (``WORLD_SIZE`` unset or 1)
every helper here answers as the only process of a group of one, so the same code runs in a notebook.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from dalle2_edu.utils import get_device

BACKENDS = ("gloo", "nccl")
_LAUNCH_HINT = "launch with `torchrun --standalone --nproc-per-node=N -m dalle2_edu ...` (torchrun sets them)"


@dataclass(frozen=True)
class DistInfo:
    """Who this process is in the training group.

    :ivar rank: 0 to ``world_size - 1`` over all machines; rank 0 writes checkpoints, logs and pictures.
    :ivar world_size: number of processes training together (1 without torchrun).
    :ivar local_rank: this process's index on its own machine (its GPU).
    :ivar device: the device this process should train on (``cuda:<local_rank>`` on GPUs).
    :ivar backend: ``"nccl"``, ``"gloo"``, or ``None`` when there is no group.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when more than one process trains together."""
        return self.world_size > 1


def is_initialized() -> bool:
    """True when this process belongs to a process group (``init_distributed`` or ``init_process_group`` ran)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank (0 without a group)."""
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    """Number of processes in the group (1 without a group)."""
    return dist.get_world_size() if is_initialized() else 1


def local_rank() -> int:
    """This process's index on its own machine: ``LOCAL_RANK`` as set by torchrun, else 0."""
    return _env_int("LOCAL_RANK", 0) if is_initialized() else 0


def is_main() -> bool:
    """True on rank 0, and always without a group: the process that should write files and print."""
    return rank() == 0


def backend() -> str | None:
    """The group's backend (``"nccl"`` or ``"gloo"``), or ``None`` without a group."""
    return str(dist.get_backend()) if is_initialized() else None


def barrier() -> None:
    """Wait until every process of the group gets here (returns at once without a group)."""
    if world_size() > 1:
        if backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def broadcast_object(obj: Any = None, src: int = 0) -> Any:
    """Return rank ``src``'s ``obj`` on every rank (pickled; meant for small things: flags, messages, a state
    dict read from rank 0's disk). Without a group it returns ``obj``."""
    if world_size() <= 1:
        return obj
    box = [obj if rank() == src else None]
    dist.broadcast_object_list(box, src=src, device=_comm_device())
    return box[0]


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all ranks (a copy; the input is left alone). Without a group, a copy of the input."""
    if world_size() <= 1:
        return values.clone()
    out = values.detach().to(_comm_device(), copy=True)
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.to(values.device)


def cleanup() -> None:
    """Leave the process group (call it once at the end of a torchrun command); a no-op without a group."""
    if is_initialized():
        dist.destroy_process_group()


def launched_by_torchrun() -> bool:
    """True when the environment says this process is one of several (``WORLD_SIZE`` > 1)."""
    return _env_int("WORLD_SIZE", 1) > 1


def init_distributed(
    device: str | torch.device = "auto", backend: str | None = None, timeout_s: float = 1800.0
) -> DistInfo:
    """Join the group of processes that torchrun started, or do nothing when this process runs alone.

    :param device: ``"auto"`` (CUDA when available, else the CPU), ``"cuda"`` or ``"cpu"``. On CUDA each process
        takes the GPU ``LOCAL_RANK`` (any index given here is ignored) and makes it the current device.
    :param backend: ``"nccl"`` (the default on CUDA) or ``"gloo"`` (the default on the CPU).
    :param timeout_s: how long a collective operation (e.g. the wait at a barrier while rank 0 saves) may take
        before the group gives up.
    :return: a :class:`DistInfo`. Alone (no ``WORLD_SIZE`` > 1 in the environment): rank 0 of 1, no group, and the
        device resolved as ``get_device`` does. When a group exists already it is described, not joined again.
    :raises RuntimeError: the environment is incomplete, the device or backend is not available, or there are fewer
        GPUs than processes on this machine.
    """
    if is_initialized():
        info_backend = str(dist.get_backend())
        dev = torch.device("cuda", torch.cuda.current_device()) if info_backend == "nccl" else _resolve(device)
        return DistInfo(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", 0), dev, info_backend)
    size = _env_int("WORLD_SIZE", 1)
    if size <= 1:
        return DistInfo(device=get_device(device))
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 asks for distributed training, but this PyTorch has no torch.distributed")
    missing = [name for name in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name)]
    if missing:
        raise RuntimeError(
            f"WORLD_SIZE={size} asks for distributed training, but {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not set: {_LAUNCH_HINT}, or unset WORLD_SIZE to train alone."
        )
    the_rank = _env_int("RANK", 0)
    the_local_rank = _env_int("LOCAL_RANK", the_rank)
    if not 0 <= the_rank < size:
        raise RuntimeError(f"RANK={the_rank} is outside 0..WORLD_SIZE-1={size - 1}: {_LAUNCH_HINT}")

    dev = _resolve(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"device {str(device)!r} asks for CUDA, but no CUDA GPU is available to this process: use "
                "--device cpu (processes then talk through gloo), or run on a machine with GPUs."
            )
        count = torch.cuda.device_count()
        if the_local_rank >= count:
            raise RuntimeError(
                f"LOCAL_RANK={the_local_rank} needs a GPU of its own, but this machine shows {count}: start at most "
                f"--nproc-per-node={count} processes per machine (or check CUDA_VISIBLE_DEVICES)."
            )
        torch.cuda.set_device(the_local_rank)
        dev = torch.device("cuda", the_local_rank)
    elif dev.type != "cpu":
        raise RuntimeError(
            f"distributed training runs on CUDA (nccl) or the CPU (gloo), not on {dev.type!r}: use --device cuda "
            "or --device cpu."
        )

    chosen = backend or ("nccl" if dev.type == "cuda" else "gloo")
    if chosen not in BACKENDS:
        raise RuntimeError(f"backend must be one of {BACKENDS}, got {chosen!r}")
    if chosen == "nccl" and dev.type != "cuda":
        raise RuntimeError(
            "backend 'nccl' needs CUDA GPUs, and this process trains on the CPU: use backend 'gloo' (the default on "
            "the CPU), or --device cuda on a machine with GPUs."
        )
    if chosen == "nccl" and not dist.is_nccl_available():
        raise RuntimeError("this PyTorch build has no NCCL: use backend 'gloo', or install a CUDA build of PyTorch")
    if chosen == "gloo" and not dist.is_gloo_available():
        raise RuntimeError("this PyTorch build has no gloo backend: use backend 'nccl' on CUDA GPUs")

    dist.init_process_group(
        chosen, init_method="env://", rank=the_rank, world_size=size,
        timeout=datetime.timedelta(seconds=timeout_s),
    )  # fmt: skip
    return DistInfo(the_rank, size, the_local_rank, dev, chosen)


# ----------------------------------------------------------------------------------------------------------------------
# helpers


def _resolve(device: str | torch.device) -> torch.device:
    """The device asked for; ``"auto"`` means CUDA or the CPU (the devices that distributed training supports)."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise RuntimeError(f"unknown device {device!r}: use 'auto', 'cpu' or 'cuda'") from err


def _comm_device() -> torch.device:
    """Where tensors must be for the group's collectives: the current GPU with NCCL, else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if backend() == "nccl" else torch.device("cpu")


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise RuntimeError(f"environment variable {name}={value!r} is not a whole number: {_LAUNCH_HINT}") from None
