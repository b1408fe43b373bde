"""One small training loop shared by every model in the project (2D MLP, UNet decoder, CLIP, prior, upsampler).

The ``Trainer`` knows nothing about diffusion or CLIP: a model-specific ``loss_fn(model, batch)`` turns a batch into a
loss, and the trainer does the rest:

* draws batches itself (shuffled epochs, from its own seeded ``torch.Generator``) and moves them to the device,
* AdamW with a linear learning-rate warm-up (then constant, or a cosine decay), gradient-norm clipping,
* an exponential moving average (EMA) of the weights, which is what sampling code should use,
* mixed precision on CUDA (bf16 where supported, else fp16 with a gradient scaler), bf16 on CPUs that have it in
  hardware (AMX / AVX-512 BF16); plain fp32 otherwise,
* a progress bar, a loss history, sample grids every ``sample_every`` steps,
* atomic checkpoints that resume *exactly* (same batches, same dropout masks, same noise) as an unbroken run,
* a clear stop on NaN/inf losses, and a checkpoint on Ctrl-C or SIGTERM so that nothing trained is lost,
* a lock on ``out_dir`` (:class:`~dalle2_edu.runlock.RunLock`), so that two runs never write one folder,
* several processes (GPUs, machines) under ``torchrun`` with ``DistributedDataParallel``: see the ``Trainer``'s
  docstring, section "Distributed training", and :mod:`dalle2_edu.distributed`.

Example::

    trainer = Trainer(model, loss_fn, data, batch_size=256, lr=1e-3, out_dir="runs/moons")
    history = trainer.fit(5000)                 # later, after a crash or Ctrl-C: trainer.fit(5000, resume=True)
    samples = sample(trainer.ema_model, ...)
"""

from __future__ import annotations

import contextlib
import copy
import glob
import hashlib
import math
import numbers
import os
import random
import signal
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from dalle2_edu import distributed as dist_utils
from dalle2_edu.checkpoint import _check_json, load_checkpoint, save_checkpoint, save_weights
from dalle2_edu.runlock import RunLock, RunLockError
from dalle2_edu.utils import get_device, resolve_precision, set_seed

CHECKPOINT_NAME = "checkpoint.pt"
LR_SCHEDULES = ("constant", "cosine")
# Trainer settings that may change between a run and its resumption without a warning.
_NOT_COMPARED_ON_RESUME = {"device", "log_every", "ckpt_every", "sample_every"}
# exit status of a run stopped by SIGTERM (after saving), as a shell reports a process killed by it: 128 + 15
SIGTERM_EXIT_CODE = 128 + int(signal.SIGTERM)

LossFn = Callable[[nn.Module, Any], "torch.Tensor | dict[str, torch.Tensor]"]


class Trainer:
    """Train ``model`` by minimising ``loss_fn(model, batch)`` over batches drawn from ``data``.

    :param model: any ``nn.Module``; it is moved to ``device`` in place.
    :param loss_fn: ``loss_fn(model, batch)`` returning a scalar tensor, or a dict with key ``"loss"`` plus other
        scalars to log (e.g. ``{"loss": l, "mse": m}``). It runs under autocast when mixed precision is on.
    :param data: a tensor ``(N, ...)`` (batches are ``data[indices]``), a tuple of equally long tensors (batches are
        tuples), or a Dataset-like object with ``__len__`` and ``__getitem__`` returning tensors, tuples or dicts
        (tensors are stacked, strings listed, numbers made tensors).
    :param batch_size: examples per update (over all processes together in distributed training). Batches run through
        shuffled epochs back to back (a batch may straddle two epochs), so ``batch_size`` may exceed ``len(data)``.
    :param lr: peak learning rate of AdamW.
    :param weight_decay: AdamW's decoupled weight decay.
    :param betas: AdamW's moment decay rates.
    :param warmup_steps: the learning rate grows linearly from ``lr / warmup_steps`` to ``lr`` over this many updates.
    :param lr_schedule: ``"constant"`` after the warm-up, or ``"cosine"`` decay to 0 at ``total_steps``.
    :param total_steps: end of the cosine decay; defaults to the ``steps`` given to ``fit`` (set it when a run will be
        resumed or extended, so that the schedule does not change under it).
    :param grad_clip: clip the global gradient norm to this value; ``None`` or 0 turns clipping off.
    :param ema_decay: the EMA moves ``1 - ema_decay`` of the way towards the weights after every update.
    :param ema_start: for the first ``ema_start`` updates the EMA is a plain copy of the weights.
    :param ema_warmup: use decay min(``ema_decay``, (1 + n) / (10 + n)) at the n-th EMA update, so that the EMA forgets
        the initial weights within a few hundred steps; without it, a short run's EMA (decay 0.999 for 1500 steps
        keeps 0.999^1500 ≈ 22% of a zero-output UNet's start) predicts too little noise and samples stay noisy.
    :param device: ``"auto"`` (CUDA, then MPS, then CPU), or any torch device. In distributed training on GPUs,
        ``"auto"`` and ``"cuda"`` mean this process's GPU (``cuda:LOCAL_RANK``, set by ``init_distributed``).
    :param amp: mixed precision: ``True`` / ``"auto"`` (bf16 on CUDA if the GPU supports it, otherwise fp16 with a
        GradScaler; on the CPU bf16 where it has AMX / AVX-512 BF16, else fp32), ``False`` / ``"fp32"``, ``"bf16"``
        (CUDA or CPU) or ``"fp16"`` (CUDA). See :func:`dalle2_edu.utils.resolve_precision`.
    :param seed: one seed for everything: Python's, NumPy's and torch's generators (seeded here, at construction) and
        the trainer's own batch generator.
    :param out_dir: folder for ``checkpoint.pt`` and ``samples/``; ``None`` saves nothing. ``fit`` locks it (see
        :class:`~dalle2_edu.runlock.RunLock`) and removes temporary files that killed saves left there.
    :param ckpt_every: save a checkpoint every this many steps (and always at the end of ``fit``); ``None``: only at
        the end.
    :param sample_every: call ``sample_fn`` every this many steps and save what it returns under ``out_dir/samples``.
    :param sample_fn: ``sample_fn(ema_model, step)`` returning images ``(N, C, H, W)`` in [-1, 1] (saved as a grid)
        or 2D points ``(N, 2)`` (saved as a scatter plot), or ``None`` if it saved something itself. Random numbers it
        draws do not change the training run.
    :param config: JSON-serialisable description of the model (e.g. its constructor arguments), stored in checkpoints
        together with the trainer's own settings under the key ``"trainer"``.
    :param log_every: append the mean of every logged scalar over the last ``log_every`` steps to ``history``.
    :param progress: show a tqdm progress bar and short messages.
    :param desc: the progress bar's label, e.g. ``"training decoder"``.
    :param distributed: ``None`` (default): train with ``DistributedDataParallel`` when this process belongs to a
        process group of more than one process (``dalle2_edu.distributed.init_distributed`` under torchrun), else
        alone. ``True``: require such a group. ``False``: train alone even inside a group (each rank then trains
        its own copy, and only rank 0 writes files).
    :param ddp_options: extra keyword arguments for ``DistributedDataParallel``, e.g.
        ``{"find_unused_parameters": True}`` for a model whose loss leaves some parameters unused in some steps.

    **Stopping.** Ctrl-C (SIGINT) and SIGTERM (what ``timeout``, Docker, Slurm and torchrun send) take effect at the
    end of the step in progress: the trainer saves a checkpoint of that step, then raises ``KeyboardInterrupt``
    (Ctrl-C) or ``SystemExit(143)`` (SIGTERM; the process exits with status 143). A second signal stops at once,
    without saving (the last checkpoint is kept).

    **Distributed training.** Start one process per GPU (or several on the CPU) with torchrun, call
    ``dalle2_edu.distributed.init_distributed(device)`` in each, then build the same ``Trainer`` on every rank and
    call ``fit`` on every rank:

    * ``trainer.model`` stays the plain module; the loss runs inside a ``DistributedDataParallel`` wrapper, whose
      averaged gradients make one step on ``W`` processes equal one single-process step on the ``W`` shares put
      together (for a loss that is a mean over the batch's examples). Losses that compare examples within a batch
      (CLIP's contrastive loss) or BatchNorm statistics see only the rank's share.
    * ``batch_size`` is the global batch. Every rank keeps the same batch generator (same seed), so all draw the
      same global batch from the same shuffled epochs (epochs reshuffle identically everywhere), and rank ``r``
      takes the contiguous slice ``[r * batch_size / W, (r + 1) * batch_size / W)`` of it: the shares are disjoint and
      together they are the global batch. ``batch_size`` must be divisible by ``W`` and ``data`` hold at least ``W``
      examples.
    * Model-side randomness (noise, dropout, ``t``) differs between ranks: at every step each rank reseeds Python's,
      NumPy's and torch's generators from (``seed``, rank, step). The EMA follows the unwrapped module; the logged
      scalars are averaged over the ranks, so ``history`` is the same on every rank.
    * Only rank 0 takes the ``out_dir`` lock, writes checkpoints, sample pictures and messages, and shows the
      progress bar; the other ranks wait at a barrier while it saves. ``save``, ``export_weights`` and
      ``_save_samples`` do nothing on other ranks. ``load`` and ``fit(resume=True)`` read the file on rank 0 and
      send it to the others, so other machines need not see rank 0's disk.
    * Resuming after a kill continues exactly with the same number of processes (the batch queue is global and the
      per-rank random streams depend only on (seed, rank, step)). With another number of processes the run
      continues with the same sequence of global batches, split into the new number of shares, and each rank's
      noise comes from its own (seed, rank, step) stream: a valid continuation, not the one an unbroken run would
      have made; the trainer warns (``world_size: 2 -> 4``).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        data: Any,
        *,
        batch_size: int = 128,
        lr: float = 2e-4,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 100,
        lr_schedule: str = "constant",
        total_steps: int | None = None,
        grad_clip: float | None = 1.0,
        ema_decay: float = 0.999,
        ema_start: int = 0,
        ema_warmup: bool = True,
        device: str | torch.device = "auto",
        amp: bool | str = True,
        seed: int = 0,
        out_dir: str | os.PathLike | None = None,
        ckpt_every: int | None = 1000,
        sample_every: int | None = None,
        sample_fn: Callable[[nn.Module, int], torch.Tensor | None] | None = None,
        config: dict | None = None,
        log_every: int = 50,
        progress: bool = True,
        desc: str = "training",
        distributed: bool | None = None,
        ddp_options: dict | None = None,
    ):
        batch_size = _whole("batch_size", batch_size, 1, "examples per update, e.g. 128")
        lr = _real("lr", lr, "the peak learning rate, e.g. 2e-4", positive=True)
        weight_decay = _real("weight_decay", weight_decay, "AdamW's weight decay, e.g. 0.0 or 0.05")
        betas = _betas(betas)
        warmup_steps = _whole("warmup_steps", warmup_steps, 0, "updates of learning-rate warm-up, e.g. 100")
        total_steps = None if total_steps is None else _whole("total_steps", total_steps, 0, "0 or None: fit's steps")
        grad_clip = _grad_clip(grad_clip)
        ema_decay = _real("ema_decay", ema_decay, "e.g. 0.999", below_one=True)
        ema_start = _whole("ema_start", ema_start, 0, "updates before the EMA starts averaging, e.g. 0")
        log_every = _whole("log_every", log_every, 1, "steps per history row, e.g. 50")
        ckpt_every = None if ckpt_every is None else _whole("ckpt_every", ckpt_every, 0, "None or 0: only at the end")
        sample_every = None if sample_every is None else _whole("sample_every", sample_every, 0, "None or 0: never")
        seed = _whole("seed", seed, 0, "any whole number in [0, 2**63)")
        if seed >= 2**63:
            raise ValueError(f"seed must be below 2**63 (torch's generators take 64-bit signed seeds), got {seed}")
        if lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {lr_schedule!r}")
        self.model, self.loss_fn, self.data = model, loss_fn, data
        self.batch_size, self.lr, self.warmup_steps = batch_size, lr, warmup_steps
        self.weight_decay, self.betas = weight_decay, betas
        self.lr_schedule, self.total_steps, self.grad_clip = lr_schedule, total_steps, grad_clip
        self.ema_decay, self.ema_start, self.ema_warmup = ema_decay, ema_start, ema_warmup
        self.seed = seed
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.ckpt_every, self.sample_every, self.sample_fn = ckpt_every, sample_every, sample_fn
        self.log_every, self.progress, self.desc = log_every, progress, desc
        self._num_examples = _data_length(data)

        # who this process is: alone, or one rank of a DistributedDataParallel run
        self.device = get_device(device)
        self.distributed = self._use_ddp(distributed)
        self.rank = dist_utils.rank() if self.distributed else 0
        self.world_size = dist_utils.world_size() if self.distributed else 1
        # in a process group only global rank 0 writes files, even when this trainer trains alone
        self.is_main = dist_utils.is_main()
        if self.distributed:
            if self.device.type == "cuda":
                own = torch.cuda.current_device()  # cuda:LOCAL_RANK, set by init_distributed
                if self.device.index not in (None, own):
                    raise ValueError(
                        f"device {str(device)!r} on rank {self.rank}: in distributed training each process trains on "
                        f"its own GPU (here cuda:{own}); pass device='cuda' or init_distributed(...).device"
                    )
                self.device = torch.device("cuda", own)
            if batch_size % self.world_size:
                raise ValueError(
                    f"batch_size={batch_size} cannot be split evenly over {self.world_size} processes: use a multiple "
                    f"of {self.world_size} (e.g. {batch_size + self.world_size - batch_size % self.world_size}) or "
                    "another number of processes (--nproc-per-node)"
                )
            if self._num_examples < self.world_size:
                raise ValueError(
                    f"the data holds {self._num_examples} examples, fewer than the {self.world_size} processes "
                    "training on it: start fewer processes (--nproc-per-node) or use more data"
                )
        if sample_fn is not None and sample_every and self.out_dir is None and self.is_main:
            warnings.warn(
                "sample_fn and sample_every are set but out_dir is None: no samples will be saved", stacklevel=2
            )

        # one seed fixes every random source; the batch generator gets a stream of its own (not the same numbers as
        # torch's global generator, which the model uses for dropout and the loss for noise). In distributed training
        # the batch generator is the same on every rank; the global generators get a stream per rank.
        set_seed(self._rank_seed(0) if self.distributed else seed)
        self._batch_gen = torch.Generator().manual_seed((seed * 0x9E3779B97F4A7C15 + 1) % 2**63)
        self._queue = torch.empty(0, dtype=torch.long)  # indices of the current epoch not yet used (global batches)

        self.model.to(self.device)
        if self.device.type == "cuda" and (isinstance(data, torch.Tensor) or (
                isinstance(data, tuple) and all(isinstance(column, torch.Tensor) for column in data))):
            # tensors live on the GPU for the whole run: a batch is gathered there, not copied over each step
            self.data = _to_device(data, self.device)
        self.ema_model = copy.deepcopy(self.model).eval().requires_grad_(False)
        self._params = [p for p in self.model.parameters() if p.requires_grad]
        if not self._params:
            raise ValueError("the model has no parameters that require gradients: nothing to train")
        self._ddp = None
        if self.distributed:
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [self.device.index] if self.device.type == "cuda" else None
            # wraps the loss computation, so that loss_fn gets the plain model and may call any of its methods;
            # the constructor also copies rank 0's weights and buffers to every rank
            self._ddp = DistributedDataParallel(_LossModule(self.model), device_ids=device_ids, **(ddp_options or {}))
            self.ema_model.load_state_dict(self.model.state_dict())
        self.optimizer = torch.optim.AdamW(self._params, lr=lr, betas=self.betas, weight_decay=weight_decay)

        self.amp_dtype = resolve_precision(amp, self.device)
        amp = {"auto": True, "fp32": False}.get(amp, amp) if isinstance(amp, str) else amp  # as runs recorded it
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)

        hparams = dict(
            batch_size=batch_size, lr=lr, weight_decay=weight_decay, betas=list(self.betas),
            warmup_steps=warmup_steps, lr_schedule=lr_schedule, total_steps=total_steps, grad_clip=grad_clip,
            ema_decay=ema_decay, ema_start=ema_start, ema_warmup=ema_warmup, amp=amp, seed=seed, device=str(device),
            log_every=log_every, ckpt_every=ckpt_every, sample_every=sample_every,
        )  # fmt: skip
        if self.world_size > 1:
            hparams["world_size"] = self.world_size
        self.config = {**(config or {}), "trainer": hparams}
        _check_json(self.config, "config")

        self.step = 0  # optimizer updates done so far
        self.history: dict[str, list] = {}  # column name -> values, one per logged step
        # The last fit call's updates and wall-clock seconds in its loop (saves and samples included; resuming and the
        # final save not): a throughput figure kept out of ``history`` so that equal runs keep equal histories.
        self.last_fit: dict[str, float] = {"steps": 0, "seconds": 0.0}
        self._window: dict[str, float] = {}  # sums of logged scalars since the last history row
        self._window_count = 0
        self._fit_steps: int | None = None
        self._saved_step: int | None = None
        self._warned_overwrite = False
        self._signals: _StopSignals | None = None  # set while fit runs
        self._agreed_stop: int | None = None  # distributed: the stop signal all ranks agreed on in the last step

    def _use_ddp(self, distributed: bool | None) -> bool:
        """Decide whether this trainer uses DistributedDataParallel (see the ``distributed`` parameter)."""
        in_group = dist_utils.world_size() > 1
        if distributed is False or (distributed is None and not in_group):
            return False
        if not in_group:
            raise RuntimeError(
                "Trainer(distributed=True) needs a process group of more than one process: launch with `torchrun "
                "--nproc-per-node=N ...` and call dalle2_edu.distributed.init_distributed() before building the "
                "Trainer (or pass distributed=None to train alone when there is no group)"
            )
        if dist_utils.backend() == "nccl" and self.device.type != "cuda":
            message = (
                f"the process group talks through nccl, which needs CUDA, but this Trainer is on {self.device}: "
                "give it device='cuda' (each rank's own GPU), or start the group with gloo for CPU training"
            )
            if distributed:
                raise RuntimeError(message)
            if dist_utils.is_main():
                warnings.warn(f"not distributing this run ({message}); every rank trains its own copy", stacklevel=3)
            return False
        return True

    # ------------------------------------------------------------------------------------------------------------------
    # the training loop

    def fit(self, steps: int, resume: bool = False) -> dict[str, list]:
        """Train until ``self.step == steps`` (a total, not a number of extra steps).

        With an ``out_dir``, the folder is locked for the whole call (:class:`~dalle2_edu.runlock.RunLock`; another
        run already using it makes this call raise :class:`~dalle2_edu.runlock.RunLockError` before anything is
        written), and temporary files of killed saves (``.checkpoint.pt.*.tmp``) are removed at the start and the end.
        In distributed training every rank must call ``fit``.

        :param steps: the step count to reach; calling ``fit`` again with a larger number continues training.
        :param resume: first load ``out_dir/checkpoint.pt`` if it exists, and continue exactly where it stopped.
        :return: ``self.history``, a dict of equally long lists: ``step``, ``loss``, any extra scalars returned by
            ``loss_fn``, ``grad_norm`` (before clipping) and ``lr``.
        :raises KeyboardInterrupt: after Ctrl-C, once the step in progress is saved.
        :raises SystemExit: (status 143) after SIGTERM, once the step in progress is saved.
        """
        steps = _whole("steps", steps, 0, "the step count to reach, e.g. 1000")
        with contextlib.ExitStack() as stack:
            if self.out_dir is not None:
                self._lock_out_dir(stack)
            try:
                return self._fit(steps, resume)
            finally:
                if self.out_dir is not None and self.is_main:
                    remove_stale_temporary_files(self.out_dir)

    def _lock_out_dir(self, stack: contextlib.ExitStack) -> None:
        """Rank 0 locks ``out_dir`` and tidies it; every rank learns whether that worked (so none waits forever)."""
        failure = None
        if self.is_main:
            try:
                stack.enter_context(RunLock(self.out_dir, what=f"training {type(self.model).__name__}"))
                remove_stale_temporary_files(self.out_dir)
            except (RunLockError, OSError) as err:
                failure = err
        if self.distributed:
            failure = dist_utils.broadcast_object(failure)
        if failure is not None:
            raise failure

    def _fit(self, steps: int, resume: bool) -> dict[str, list]:
        with _StopSignals() as signals:
            self._signals = signals
            try:
                return self._fit_loop(steps, resume, signals)
            except BaseException:
                if signals.immediate:
                    where = "" if self._saved_step is None else f"; the last checkpoint is at step {self._saved_step}"
                    self._say(f"Stopped at once by a second signal during step {self.step + 1}: not saved{where}.")
                raise
            finally:
                self._signals = None

    def _fit_loop(self, steps: int, resume: bool, signals: _StopSignals) -> dict[str, list]:
        if resume:
            self._resume()
        elif self.step == 0:
            self._warn_if_overwriting()
        self._fit_steps = steps
        if self.step >= steps:
            self._say(f"Already at step {self.step} >= {steps}: nothing to train.")
            return self.history
        (self.model if self._ddp is None else self._ddp).train()
        bar = tqdm(
            total=steps, initial=self.step, disable=not (self.progress and self.is_main), desc=self.desc, unit="step",
            dynamic_ncols=True,
        )  # fmt: skip
        first_step, started = self.step, time.perf_counter()
        try:
            while self.step < steps:
                self._accumulate(self._train_step())  # signals wait for the step to end, never cut through it
                bar.update(1)
                if self.step % self.log_every == 0 or self.step == steps:
                    self._log_window(bar)
                stop = self._agreed_stop if self.distributed else signals.first()
                if stop is not None:
                    self._stop_after_signal(stop, signals)
                if self.sample_fn and self.sample_every and self.out_dir and self.step % self.sample_every == 0:
                    self._save_samples()
                    self._barrier()
                if self.out_dir is not None and self.ckpt_every and self.step % self.ckpt_every == 0:
                    self.save()
                    self._barrier()
        finally:
            bar.close()
            self.last_fit = {"steps": self.step - first_step, "seconds": time.perf_counter() - started}
        if self.out_dir is not None and self._saved_step != self.step:
            self.save()
            self._barrier()
        signum = signals.first()
        if signum is not None:  # a signal came during the last step or the final save: the run is done and saved
            signals.consume()
            self._say(f"Stopped by {_signal_name(signum)} after the last step ({self.step}); everything is saved.")
            raise _stop_exception(signum)
        return self.history

    def _stop_after_signal(self, signum: int, signals: _StopSignals) -> None:
        """Save the step just finished, then raise what the signal means: KeyboardInterrupt or SystemExit(143)."""
        signals.consume()
        name = _signal_name(signum)
        if self.out_dir is None:
            self._say(f"Stopped by {name} at step {self.step}; no out_dir, so nothing was saved (this object has it).")
        else:
            try:
                path = self.save() if self._saved_step != self.step else self.checkpoint_path
            except FloatingPointError as err:
                warnings.warn(f"Stopped by {name}, and not saved: {err}", stacklevel=3)
            else:
                self._say(
                    f"Stopped by {name}: step {self.step} saved to '{path}'. Continue with fit(steps, resume=True)."
                )
            self._barrier()
        raise _stop_exception(signum)

    def _train_step(self) -> dict[str, float]:
        """One update: batch, forward, backward, clip, AdamW step, EMA. Returns the scalars to log."""
        lr = self.lr_at(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        batch = self._next_batch()
        if self.distributed:
            set_seed(self._rank_seed(self.step))  # resumable per-rank noise: depends on (seed, rank, step) only
        self.optimizer.zero_grad(set_to_none=True)  # gradients stay in .grad after the step, handy for inspection
        autocast = (torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype
                    else contextlib.nullcontext())  # fmt: skip
        with autocast:
            out = self.loss_fn(self.model, batch) if self._ddp is None else self._ddp(batch, self.loss_fn)
            loss, logs = _split_loss(out)
        if self.distributed:
            logs = self._average_logs_and_agree_on_stop(logs)
        if not math.isfinite(logs["loss"]):
            raise FloatingPointError(self._nonfinite_message(f"the loss is {logs['loss']}"))

        try:
            self.scaler.scale(loss).backward()
        except RuntimeError as err:
            if self._ddp is not None and "find_unused_parameters" in str(err):
                raise RuntimeError(
                    f"{err}\n\nWith dalle2_edu: Trainer(..., ddp_options={{'find_unused_parameters': True}})"
                ) from err
            raise
        self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
        max_norm = self.grad_clip if self.grad_clip else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self._params, max_norm))
        if not math.isfinite(grad_norm) and not self.scaler.is_enabled():  # the fp16 scaler skips such steps itself
            raise FloatingPointError(self._nonfinite_message(f"the gradient norm is {grad_norm}"))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        self._update_ema()
        return {**logs, "grad_norm": grad_norm}

    def _average_logs_and_agree_on_stop(self, logs: dict[str, float]) -> dict[str, float]:
        """Distributed: average the logged scalars over the ranks (a NaN on any rank makes the mean NaN, so all ranks
        stop together) and count the ranks that got Ctrl-C or SIGTERM, so that all stop after the same step.

        ``loss_fn`` must return the same keys on every rank."""
        keys = sorted(logs)
        pending = self._signals.pending if self._signals is not None else []
        votes = [float(signal.SIGINT in pending), float(signal.SIGTERM in pending)]
        totals = dist_utils.all_reduce_sum(torch.tensor([logs[k] for k in keys] + votes, dtype=torch.float64))
        values = totals.tolist()
        sigint, sigterm = values[-2:]
        self._agreed_stop = signal.SIGTERM if sigterm > 0 else signal.SIGINT if sigint > 0 else None
        return {key: value / self.world_size for key, value in zip(keys, values)}

    def lr_at(self, step: int) -> float:
        """Learning rate of the update that takes the trainer from ``step`` to ``step + 1`` updates.

        Warm-up: ``lr * (step + 1) / warmup_steps`` while ``step < warmup_steps``; then ``lr`` (constant) or
        ``lr * (1 + cos(pi * (step - warmup_steps) / (total_steps - warmup_steps))) / 2`` (cosine).
        """
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if self.lr_schedule == "constant":
            return self.lr
        total = self.total_steps or self._fit_steps
        if total is None:
            raise ValueError("lr_schedule='cosine' needs total_steps (or call fit first)")
        progress = min(1.0, (step - self.warmup_steps) / max(1, total - self.warmup_steps))
        return self.lr * 0.5 * (1.0 + math.cos(math.pi * progress))

    def ema_decay_at(self, step: int) -> float:
        """The decay used by the EMA update after ``step`` optimizer updates (0 means: copy the weights)."""
        if step <= self.ema_start:
            return 0.0
        if not self.ema_warmup:
            return self.ema_decay
        n = step - self.ema_start  # EMA updates so far, this one included
        return min(self.ema_decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def _update_ema(self) -> None:
        """ema <- ema + (1 - decay) * (weights - ema) with :meth:`ema_decay_at`; a plain copy before ``ema_start``."""
        decay = self.ema_decay_at(self.step)
        ema_params, params = list(self.ema_model.parameters()), list(self.model.parameters())
        if decay == 0.0:
            torch._foreach_copy_(ema_params, params)
        else:  # one call for all the tensors instead of a Python loop over them (~400 in the decoder)
            torch._foreach_lerp_(ema_params, params, 1.0 - decay)
        for ema_b, b in zip(self.ema_model.buffers(), self.model.buffers()):
            ema_b.copy_(b)

    def _nonfinite_message(self, what: str) -> str:
        kept = ""
        if self.out_dir is not None and self._saved_step is not None:
            kept = f" The last good checkpoint (step {self._saved_step}) in '{self.out_dir}' was not overwritten."
        return (
            f"Training stopped at step {self.step + 1}: {what}. This update was not applied.{kept} Things to try: a "
            f"lower learning rate (lr={self.lr:g} now) or a longer warm-up, gradient clipping "
            f"(grad_clip={self.grad_clip}), checking the data range (images should be in [-1, 1]) and the loss for "
            "divisions by zero or log(0), and amp=False to train in fp32."
        )

    def _rank_seed(self, step: int) -> int:
        """The seed of this rank's global generators at ``step`` (distributed training)."""
        return _derived_seed(self.seed, "rank", self.rank, "step", step)

    def _barrier(self) -> None:
        if self.distributed:
            dist_utils.barrier()

    # ------------------------------------------------------------------------------------------------------------------
    # batches

    def _next_global_indices(self) -> torch.Tensor:
        """The next ``batch_size`` indices of an endless sequence of shuffled epochs (the same on every rank)."""
        while len(self._queue) < self.batch_size:
            epoch = torch.randperm(self._num_examples, generator=self._batch_gen)
            self._queue = torch.cat([self._queue, epoch])
        indices, self._queue = self._queue[: self.batch_size], self._queue[self.batch_size :]
        return indices

    def _next_batch(self) -> Any:
        """This rank's share of the next global batch (all of it when training alone), on the trainer's device."""
        indices = self._next_global_indices()
        if self.world_size > 1:
            share = self.batch_size // self.world_size
            indices = indices[self.rank * share : (self.rank + 1) * share]
        data = self.data
        if isinstance(data, torch.Tensor):
            batch = data[indices]
        elif isinstance(data, tuple):
            batch = tuple(_take(column, indices) for column in data)
        else:
            batch = _collate([data[i] for i in indices.tolist()])
        return _to_device(batch, self.device)

    # ------------------------------------------------------------------------------------------------------------------
    # logging and samples

    def _accumulate(self, logs: dict[str, float]) -> None:
        for key, value in logs.items():
            self._window[key] = self._window.get(key, 0.0) + value
        self._window_count += 1

    def _log_window(self, bar: tqdm) -> None:
        """Append the window's means as one row of ``history`` and show them on the progress bar."""
        if self._window_count == 0:
            return
        means = {key: total / self._window_count for key, total in self._window.items()}
        row = {"step": self.step, "loss": means.pop("loss"), **means, "lr": self.lr_at(self.step - 1)}
        _append_row(self.history, row)
        self._window, self._window_count = {}, 0
        bar.set_postfix(loss=f"{row['loss']:.4g}", lr=f"{row['lr']:.2e}", refresh=False)

    def _save_samples(self) -> Path | None:
        """Call ``sample_fn(ema_model, step)`` without disturbing the training run's random streams; save the result.

        Only rank 0 samples in distributed training."""
        if not self.is_main:
            return None
        rng = _get_global_rng_state()
        try:
            with torch.no_grad():
                samples = self.sample_fn(self.ema_model, self.step)
        finally:
            _set_global_rng_state(rng)
            self.ema_model.eval()
        if samples is None:
            return None
        path = self.out_dir / "samples" / f"step_{self.step:06d}.png"
        _save_sample_image(samples, path, title=f"step {self.step}")
        return path

    def _say(self, message: str) -> None:
        if self.progress and self.is_main:
            tqdm.write(message)

    # ------------------------------------------------------------------------------------------------------------------
    # checkpoints

    @property
    def checkpoint_path(self) -> Path | None:
        """``out_dir/checkpoint.pt``, or ``None`` without an ``out_dir``."""
        return None if self.out_dir is None else self.out_dir / CHECKPOINT_NAME

    def save(self, path: str | os.PathLike | None = None) -> Path:
        """Atomically save everything needed to resume: weights, EMA, optimizer, scaler, step, config, RNG states.

        In a process group only rank 0 writes; other ranks check the weights and return the path without writing.

        :param path: defaults to ``out_dir/checkpoint.pt``.
        :return: the path written.
        :raises FloatingPointError: the weights contain NaN/inf; the existing checkpoint is left untouched.
        """
        path = self._checkpoint_path(path)
        bad = [name for name, p in self.model.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            raise FloatingPointError(
                f"Not saving step {self.step} to '{path}': parameters {bad[:5]} contain NaN/inf. The previous "
                "checkpoint is kept; resume from it with a lower learning rate or amp=False."
            )
        if self.is_main:
            # clone: the queue is a slice, and saving a slice would drag its whole parent tensor into the file
            batches = {"generator": self._batch_gen.get_state(), "queue": self._queue.clone()}
            rng = {**_get_global_rng_state(), "batches": batches}
            extra = {
                "grad_scaler": self.scaler.state_dict(),
                "history": self.history,
                "log_window": {"sums": dict(self._window), "count": self._window_count},
            }
            save_checkpoint(
                path, model_state=self.model.state_dict(), ema_state=self.ema_model.state_dict(),
                optimizer_state=self.optimizer.state_dict(), step=self.step, config=self.config, rng_state=rng,
                extra=extra,
            )  # fmt: skip
        if path == self.checkpoint_path:
            self._saved_step = self.step
        return path

    def load(self, path: str | os.PathLike | None = None) -> Trainer:
        """Restore this trainer's full state (as written by ``save``), so that training continues exactly.

        The model must have the same architecture as the one that was saved. Trainer settings given to this
        trainer's constructor win over the saved ones; differences are reported with a warning. In distributed
        training call it on every rank: rank 0 reads the file and sends its content to the others.

        :param path: defaults to ``out_dir/checkpoint.pt``.
        :return: ``self``.
        """
        path = self._checkpoint_path(path)
        ckpt = self._read_checkpoint(path)
        if self.is_main:
            self._warn_about_config_changes(ckpt.get("config") or {}, path)
        try:
            self.model.load_state_dict(ckpt["model"])
            self.ema_model.load_state_dict(ckpt["ema"] if ckpt["ema"] is not None else ckpt["model"])
        except RuntimeError as err:
            raise RuntimeError(
                f"Checkpoint '{path}' does not fit this model (was it trained with another architecture or config? "
                f"saved config: {ckpt.get('config')}):\n{err}"
            ) from err
        if ckpt["optimizer"] is not None:
            self.optimizer.load_state_dict(ckpt["optimizer"])
            for group in self.optimizer.param_groups:  # this trainer's settings win over the saved ones
                group.update(betas=self.betas, weight_decay=self.weight_decay)
        extra = ckpt.get("extra") or {}
        if self.scaler.is_enabled() and extra.get("grad_scaler"):
            self.scaler.load_state_dict(extra["grad_scaler"])
        self.history = {key: list(values) for key, values in (extra.get("history") or {}).items()}
        window = extra.get("log_window") or {}
        self._window, self._window_count = dict(window.get("sums", {})), int(window.get("count", 0))
        self.step = int(ckpt["step"])
        if ckpt.get("rng"):
            self._set_rng_state(ckpt["rng"])
        if path == self.checkpoint_path:
            self._saved_step = self.step
        return self

    def export_weights(self, path: str | os.PathLike, *, ema: bool = True, half: bool = False) -> Path:
        """Save just the (EMA) weights and the config as ``.safetensors``: the small file to share.

        In a process group only rank 0 writes (the others return the path at once).

        :param path: destination, e.g. ``data/checkpoints/moons.safetensors``.
        :param ema: export the EMA weights (what sampling should use) rather than the raw ones.
        :param half: store floating-point tensors as float16.
        """
        if not self.is_main:
            return Path(path)
        model = self.ema_model if ema else self.model
        return save_weights(path, model.state_dict(), self.config, half=half)

    def _checkpoint_path(self, path: str | os.PathLike | None) -> Path:
        if path is not None:
            return Path(path)
        if self.out_dir is None:
            raise ValueError("no path given and the Trainer has no out_dir")
        return self.checkpoint_path

    def _read_checkpoint(self, path: Path) -> dict:
        """``load_checkpoint(path)``; in distributed training rank 0 reads and sends the result (or its error)."""
        if not self.distributed:
            return load_checkpoint(path)
        result: Any = None
        if self.is_main:
            try:
                result = load_checkpoint(path)
            except Exception as err:  # every rank must raise it, or the others would wait forever
                result = err
        result = dist_utils.broadcast_object(result)
        if isinstance(result, BaseException):
            raise result
        return result

    def _resume(self) -> None:
        if self.out_dir is None:
            raise ValueError("fit(resume=True) needs out_dir: that is where the checkpoint is looked for")
        if self.distributed:  # rank 0 looks, so that every rank decides alike even without a shared disk
            exists = dist_utils.broadcast_object(self.checkpoint_path.exists() if self.is_main else None)
        else:
            exists = self.checkpoint_path.exists()
        if exists:
            self.load()
            self._say(f"Resumed from '{self.checkpoint_path}' at step {self.step}.")
        else:
            self._say(f"No checkpoint at '{self.checkpoint_path}': starting from step {self.step}.")

    def _warn_if_overwriting(self) -> None:
        if self._warned_overwrite or self.checkpoint_path is None or not self.is_main:
            return
        if not self.checkpoint_path.exists():
            return
        self._warned_overwrite = True
        warnings.warn(
            f"'{self.checkpoint_path}' already exists and will be overwritten by this new run; "
            "use fit(steps, resume=True) to continue it instead",
            stacklevel=5,
        )

    def _warn_about_config_changes(self, saved: dict, path: Path) -> None:
        saved_trainer = {"world_size": 1, **saved.get("trainer", {})}
        now_trainer = {"world_size": 1, **self.config["trainer"]}
        changes = [
            f"{key}: {saved_trainer.get(key)!r} -> {now_trainer.get(key)!r}"
            for key in sorted(set(saved_trainer) | set(now_trainer))
            if key not in _NOT_COMPARED_ON_RESUME and saved_trainer.get(key) != now_trainer.get(key)
        ]
        saved_model = {k: v for k, v in saved.items() if k != "trainer"}
        now_model = {k: v for k, v in self.config.items() if k != "trainer"}
        if saved_model != now_model:
            changes.append(f"config: {saved_model} -> {now_model}")
        if changes:
            warnings.warn(
                f"Resuming from '{path}' with settings that differ from the saved run (the new ones are used, so "
                "the continuation will not match an unbroken run): " + "; ".join(changes),
                stacklevel=3,
            )

    def _set_rng_state(self, rng: dict) -> None:
        _set_global_rng_state(rng)  # in distributed training each step reseeds them from (seed, rank, step) anyway
        batches = rng.get("batches")
        if batches is None:
            return
        self._batch_gen.set_state(batches["generator"])
        queue = batches["queue"].long()
        if len(queue) and int(queue.max()) >= self._num_examples:
            if self.is_main:
                warnings.warn(
                    "the dataset is smaller than when the checkpoint was saved; starting a new epoch", stacklevel=3
                )
            queue = queue[:0]
        self._queue = queue


# ----------------------------------------------------------------------------------------------------------------------
# helpers


def _data_length(data: Any) -> int:
    if isinstance(data, torch.Tensor):
        if data.ndim == 0:
            raise ValueError("data is a 0-dimensional tensor; expected (N, ...)")
        n = data.shape[0]
    elif isinstance(data, tuple):
        lengths = {len(column) for column in data}
        if len(lengths) != 1:
            raise ValueError(f"the tensors in the data tuple must all have the same length, got {sorted(lengths)}")
        n = lengths.pop()
    elif hasattr(data, "__len__") and hasattr(data, "__getitem__"):
        n = len(data)
    else:
        raise TypeError(
            f"data must be a tensor (N, ...), a tuple of tensors, or a Dataset-like object with __len__ and "
            f"__getitem__; got {type(data).__name__}"
        )
    if n == 0:
        raise ValueError("data is empty")
    return n


def _take(column: Any, indices: torch.Tensor) -> Any:
    if isinstance(column, torch.Tensor):
        return column[indices]
    return _collate([column[i] for i in indices.tolist()])


def _collate(items: list) -> Any:
    """Stack a list of examples into a batch: tensors are stacked, strings listed, dicts and tuples done per field."""
    first = items[0]
    if isinstance(first, torch.Tensor):
        return torch.stack(items)
    if isinstance(first, np.ndarray):
        return torch.from_numpy(np.stack(items))
    if isinstance(first, dict):
        return {key: _collate([item[key] for item in items]) for key in first}
    if isinstance(first, tuple | list):
        columns = [_collate(list(column)) for column in zip(*items)]
        return tuple(columns) if isinstance(first, tuple) else columns
    if isinstance(first, bool | int | float):
        return torch.tensor(items)
    return list(items)  # strings and anything else


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {key: _to_device(value, device) for key, value in batch.items()}
    if isinstance(batch, tuple | list):
        return type(batch)(_to_device(value, device) for value in batch)
    return batch


def _split_loss(out: Any) -> tuple[torch.Tensor, dict[str, float]]:
    """Turn ``loss_fn``'s result into (loss to back-propagate, scalars to log)."""
    if isinstance(out, dict):
        if "loss" not in out:
            raise KeyError(f"loss_fn returned a dict without a 'loss' key (keys: {list(out)})")
        loss = out["loss"]
    else:
        loss = out
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise TypeError(f"loss_fn must return a scalar tensor (or a dict with one under 'loss'), got {loss!r:.80}")
    if not loss.requires_grad:
        raise ValueError("the loss does not depend on the model's parameters (was it detached, or made with .item()?)")
    logs = {"loss": float(loss.detach())}
    if isinstance(out, dict):
        for key, value in out.items():
            if key == "loss":
                continue
            if isinstance(value, torch.Tensor) and value.numel() == 1:
                logs[key] = float(value.detach())
            elif isinstance(value, int | float) and not isinstance(value, bool):
                logs[key] = float(value)
    return loss.reshape(()), logs


def _append_row(history: dict[str, list], row: dict[str, float]) -> None:
    """Add one row to a dict of columns, padding columns that are new or missing from this row with NaN."""
    length = len(history["step"]) if "step" in history else 0
    for key in row:
        history.setdefault(key, [math.nan] * length)
    for key, column in history.items():
        column.append(row.get(key, math.nan))


def _get_global_rng_state() -> dict:
    """States of Python's, NumPy's and torch's global generators, as tensors, numbers and tuples only."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_global_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") and torch.cuda.is_available():
        for index, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state.cpu(), index)


class _StopSignals:
    """While ``fit`` runs, hold Ctrl-C (SIGINT) and SIGTERM until the step in progress ends.

    The first signal is only noted in ``pending``; the training loop looks at :meth:`first` after each step, saves and
    raises (see :func:`_stop_exception`). A second signal raises at once (``immediate`` becomes True). Signals that
    were ignored (``SIG_IGN``) stay ignored. Outside the main thread, where Python cannot catch signals, this does
    nothing.
    """

    def __init__(self):
        self.pending: list[int] = []
        self.immediate = False
        self._consumed = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is not threading.main_thread():
            return self
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                previous = signal.getsignal(signum)
                if previous is None or previous == signal.SIG_IGN:  # None: a handler set outside Python; leave it
                    continue
                signal.signal(signum, self._handler)
            except (ValueError, OSError):
                continue
            self._previous[signum] = previous
        return self

    def __exit__(self, *exc) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()

    def _handler(self, signum: int, frame: Any) -> None:
        self.pending.append(signum)
        if len(self.pending) > 1:
            self.immediate = True
            raise _stop_exception(signum)

    def first(self) -> int | None:
        """The signal to act on (SIGTERM before Ctrl-C), or ``None``."""
        if self._consumed or not self.pending:
            return None
        return signal.SIGTERM if signal.SIGTERM in self.pending else signal.SIGINT

    def consume(self) -> None:
        self._consumed = True


def _signal_name(signum: int) -> str:
    return "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"


def _stop_exception(signum: int) -> BaseException:
    """What a stop signal becomes once the step is saved: ``KeyboardInterrupt`` for Ctrl-C, ``SystemExit(143)`` for
    SIGTERM (the status a shell reports for a process that SIGTERM ended)."""
    if signum == signal.SIGTERM:
        return SystemExit(SIGTERM_EXIT_CODE)
    return KeyboardInterrupt()


def remove_stale_temporary_files(folder: str | os.PathLike, names: tuple[str, ...] = (CHECKPOINT_NAME,)) -> list[Path]:
    """Delete the temporary files that saves killed half-way left in ``folder``: ``.{name}.*.tmp`` for each of
    ``names`` (the pattern of ``checkpoint.py``'s atomic writes; a ``kill -9`` during a save leaves one behind).

    Call it only while holding the folder's :class:`~dalle2_edu.runlock.RunLock`, so that no live save is writing
    one of them. ``Trainer.fit`` does so for ``checkpoint.pt`` when it starts and when it ends.

    :return: the files removed.
    """
    folder = Path(folder)
    removed = []
    for name in names:
        for path in folder.glob(f".{glob.escape(name)}.*.tmp"):
            if path.is_symlink() or not path.is_file():
                continue
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            removed.append(path)
    return removed


class _LossModule(nn.Module):
    """The model together with the loss computation, for ``DistributedDataParallel`` to wrap: DDP sees one forward
    per step (the whole loss), while ``loss_fn`` still gets the plain model and may call any of its methods."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: Any, loss_fn: LossFn) -> Any:
        return loss_fn(self.model, batch)


def _derived_seed(*parts: Any) -> int:
    """A seed in [0, 2**63) computed from ``parts`` (e.g. seed, rank, step): the same parts give the same seed on
    every machine, different parts unrelated seeds."""
    digest = hashlib.sha256("/".join(str(part) for part in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


# ----------------------------------------------------------------------------------------------------------------------
# checking settings


def _whole(name: str, value: Any, minimum: int, hint: str) -> int:
    """``value`` as an int >= ``minimum``, or a ValueError saying what is expected."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be a whole number >= {minimum} ({hint}), got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum} ({hint}), got {value}")
    return int(value)


def _real(name: str, value: Any, hint: str, *, positive: bool = False, below_one: bool = False) -> float:
    """``value`` as a finite float >= 0 (> 0 with ``positive``; < 1 with ``below_one``), or a ValueError."""
    rule = "a finite number " + ("> 0" if positive else "in [0, 1)" if below_one else ">= 0")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be {rule} ({hint}), got {value!r}")
    number = float(value)
    if not math.isfinite(number) or number < 0 or (positive and number == 0) or (below_one and number >= 1):
        raise ValueError(f"{name} must be {rule} ({hint}), got {number}")
    return number


def _betas(betas: Any) -> tuple[float, float]:
    try:
        first, second = betas
    except (TypeError, ValueError):
        raise ValueError(
            f"betas must be two numbers in [0, 1) (AdamW's moment decays, e.g. (0.9, 0.999)), got {betas!r}"
        ) from None
    return tuple(_real(f"betas[{i}]", b, "e.g. (0.9, 0.999)", below_one=True) for i, b in enumerate((first, second)))


def _grad_clip(grad_clip: Any) -> float | None:
    if grad_clip is None:
        return None
    if isinstance(grad_clip, bool) or not isinstance(grad_clip, numbers.Real) or not math.isfinite(grad_clip):
        raise ValueError(
            f"grad_clip must be None or 0 (no clipping) or a finite number > 0, got {grad_clip!r}: use e.g. "
            "grad_clip=1.0, or None to turn clipping off"
        )
    if grad_clip < 0:
        raise ValueError(
            f"grad_clip must be None or 0 (no clipping) or a number > 0, got {grad_clip}: it is the largest gradient "
            "norm allowed, and a negative one would flip the gradients so that training climbs the loss. Use e.g. "
            "grad_clip=1.0, or None to turn clipping off."
        )
    return float(grad_clip)


def _save_sample_image(samples: torch.Tensor, path: Path, title: str = "") -> None:
    """Save images ``(N, C, H, W)`` in [-1, 1] as one grid PNG, or 2D points ``(N, 2)`` as a scatter plot."""
    if not isinstance(samples, torch.Tensor):
        samples = torch.as_tensor(samples)
    samples = samples.detach().float().cpu()
    path.parent.mkdir(parents=True, exist_ok=True)
    if samples.ndim == 4:
        from torchvision.utils import save_image

        nrow = math.ceil(math.sqrt(len(samples)))
        save_image((samples.clamp(-1, 1) + 1) / 2, path, nrow=nrow, padding=2)
    elif samples.ndim == 2 and samples.shape[1] == 2:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(4, 4))
        ax = fig.add_subplot()
        ax.scatter(samples[:, 0], samples[:, 1], s=2, alpha=0.5)
        ax.set_aspect("equal")
        ax.set_title(title)
        fig.savefig(path, dpi=100)
    else:
        warnings.warn(
            f"sample_fn returned shape {tuple(samples.shape)}; expected images (N, C, H, W) or points (N, 2). "
            "Nothing saved.",
            stacklevel=3,
        )
