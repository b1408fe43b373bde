"""One small training loop shared by every model in the project (2D MLP, UNet decoder, CLIP, prior, upsampler).

The ``Trainer`` knows nothing about diffusion or CLIP: a model-specific ``loss_fn(model, batch)`` turns a batch into a
loss, and the trainer does the rest:

* draws batches itself (shuffled epochs, from its own seeded ``torch.Generator``) and moves them to the device,
* AdamW with a linear learning-rate warm-up (then constant, or a cosine decay), gradient-norm clipping,
* an exponential moving average (EMA) of the weights, which is what sampling code should use,
* mixed precision on CUDA (bf16 where supported, else fp16 with a gradient scaler); plain fp32 elsewhere,
* a progress bar, a loss history, sample grids every ``sample_every`` steps,
* atomic checkpoints that resume *exactly* (same batches, same dropout masks, same noise) as an unbroken run,
* a clear stop on NaN/inf losses, and a checkpoint on Ctrl-C so that nothing trained is lost.

Example::

    trainer = Trainer(model, loss_fn, data, batch_size=256, lr=1e-3, out_dir="runs/moons")
    history = trainer.fit(5000)                 # later, after a crash or Ctrl-C: trainer.fit(5000, resume=True)
    samples = sample(trainer.ema_model, ...)
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import random
import signal
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from dalle2_edu.checkpoint import _check_json, load_checkpoint, save_checkpoint, save_weights
from dalle2_edu.utils import get_device, set_seed

CHECKPOINT_NAME = "checkpoint.pt"
LR_SCHEDULES = ("constant", "cosine")
# Trainer settings that may change between a run and its resumption without a warning.
_NOT_COMPARED_ON_RESUME = {"device", "log_every", "ckpt_every", "sample_every"}

LossFn = Callable[[nn.Module, Any], "torch.Tensor | dict[str, torch.Tensor]"]


class Trainer:
    """Train ``model`` by minimising ``loss_fn(model, batch)`` over batches drawn from ``data``.

    :param model: any ``nn.Module``; it is moved to ``device`` in place.
    :param loss_fn: ``loss_fn(model, batch)`` returning a scalar tensor, or a dict with key ``"loss"`` plus other
        scalars to log (e.g. ``{"loss": l, "mse": m}``). It runs under autocast when mixed precision is on.
    :param data: a tensor ``(N, ...)`` (batches are ``data[indices]``), a tuple of equally long tensors (batches are
        tuples), or a Dataset-like object with ``__len__`` and ``__getitem__`` returning tensors, tuples or dicts
        (tensors are stacked, strings listed, numbers made tensors).
    :param batch_size: examples per update. Batches run through shuffled epochs back to back (a batch may straddle two
        epochs), so ``batch_size`` may exceed ``len(data)``.
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
    :param device: ``"auto"`` (CUDA, then MPS, then CPU), or any torch device.
    :param amp: mixed precision, used only on CUDA (bf16 if the GPU supports it, otherwise fp16 with a GradScaler).
    :param seed: one seed for everything: Python's, NumPy's and torch's generators (seeded here, at construction) and
        the trainer's own batch generator.
    :param out_dir: folder for ``checkpoint.pt`` and ``samples/``; ``None`` saves nothing.
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
        amp: bool = True,
        seed: int = 0,
        out_dir: str | os.PathLike | None = None,
        ckpt_every: int | None = 1000,
        sample_every: int | None = None,
        sample_fn: Callable[[nn.Module, int], torch.Tensor | None] | None = None,
        config: dict | None = None,
        log_every: int = 50,
        progress: bool = True,
    ):
        if batch_size < 1 or log_every < 1 or warmup_steps < 0 or ema_start < 0:
            raise ValueError("batch_size and log_every must be >= 1, warmup_steps and ema_start >= 0")
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr}")
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}")
        if lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {lr_schedule!r}")
        self.model, self.loss_fn, self.data = model, loss_fn, data
        self.batch_size, self.lr, self.warmup_steps = batch_size, lr, warmup_steps
        self.weight_decay, self.betas = weight_decay, tuple(betas)
        self.lr_schedule, self.total_steps, self.grad_clip = lr_schedule, total_steps, grad_clip
        self.ema_decay, self.ema_start, self.ema_warmup = ema_decay, ema_start, ema_warmup
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.ckpt_every, self.sample_every, self.sample_fn = ckpt_every, sample_every, sample_fn
        self.log_every, self.progress = log_every, progress
        if sample_fn is not None and sample_every and self.out_dir is None:
            warnings.warn(
                "sample_fn and sample_every are set but out_dir is None: no samples will be saved", stacklevel=2
            )

        # one seed fixes every random source; the batch generator gets a stream of its own (not the same numbers as
        # torch's global generator, which the model uses for dropout and the loss for noise)
        set_seed(seed)
        self._batch_gen = torch.Generator().manual_seed((seed * 0x9E3779B97F4A7C15 + 1) % 2**63)
        self._num_examples = _data_length(data)
        self._queue = torch.empty(0, dtype=torch.long)  # indices of the current epoch not yet used

        self.device = get_device(device)
        self.model.to(self.device)
        self.ema_model = copy.deepcopy(self.model).eval().requires_grad_(False)
        self._params = [p for p in self.model.parameters() if p.requires_grad]
        if not self._params:
            raise ValueError("the model has no parameters that require gradients: nothing to train")
        self.optimizer = torch.optim.AdamW(self._params, lr=lr, betas=self.betas, weight_decay=weight_decay)

        use_amp = amp and self.device.type == "cuda"
        self.amp_dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if use_amp else None
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)

        hparams = dict(
            batch_size=batch_size, lr=lr, weight_decay=weight_decay, betas=list(self.betas),
            warmup_steps=warmup_steps, lr_schedule=lr_schedule, total_steps=total_steps, grad_clip=grad_clip,
            ema_decay=ema_decay, ema_start=ema_start, ema_warmup=ema_warmup, amp=amp, seed=seed, device=str(device),
            log_every=log_every, ckpt_every=ckpt_every, sample_every=sample_every,
        )  # fmt: skip
        self.config = {**(config or {}), "trainer": hparams}
        _check_json(self.config, "config")

        self.step = 0  # optimizer updates done so far
        self.history: dict[str, list] = {}  # column name -> values, one per logged step
        self._window: dict[str, float] = {}  # sums of logged scalars since the last history row
        self._window_count = 0
        self._fit_steps: int | None = None
        self._saved_step: int | None = None
        self._warned_overwrite = False

    # ------------------------------------------------------------------------------------------------------------------
    # the training loop

    def fit(self, steps: int, resume: bool = False) -> dict[str, list]:
        """Train until ``self.step == steps`` (a total, not a number of extra steps).

        :param steps: the step count to reach; calling ``fit`` again with a larger number continues training.
        :param resume: first load ``out_dir/checkpoint.pt`` if it exists, and continue exactly where it stopped.
        :return: ``self.history``, a dict of equally long lists: ``step``, ``loss``, any extra scalars returned by
            ``loss_fn``, ``grad_norm`` (before clipping) and ``lr``.
        """
        if resume:
            self._resume()
        elif self.step == 0:
            self._warn_if_overwriting()
        self._fit_steps = steps
        if self.step >= steps:
            self._say(f"Already at step {self.step} >= {steps}: nothing to train.")
            return self.history
        self.model.train()
        bar = tqdm(total=steps, initial=self.step, disable=not self.progress, desc="training", dynamic_ncols=True)
        try:
            while self.step < steps:
                with _defer_keyboard_interrupt():  # Ctrl-C takes effect between steps, never half-way through one
                    self._accumulate(self._train_step())
                    bar.update(1)
                    if self.step % self.log_every == 0 or self.step == steps:
                        self._log_window(bar)
                if self.sample_fn and self.sample_every and self.out_dir and self.step % self.sample_every == 0:
                    self._save_samples()
                if self.out_dir is not None and self.ckpt_every and self.step % self.ckpt_every == 0:
                    self.save()
        except KeyboardInterrupt:
            self._save_after_interrupt()
            raise
        finally:
            bar.close()
        if self.out_dir is not None and self._saved_step != self.step:
            self.save()
        return self.history

    def _train_step(self) -> dict[str, float]:
        """One update: batch, forward, backward, clip, AdamW step, EMA. Returns the scalars to log."""
        lr = self.lr_at(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        batch = self._next_batch()
        self.optimizer.zero_grad(set_to_none=True)  # gradients stay in .grad after the step, handy for inspection
        autocast = torch.autocast("cuda", dtype=self.amp_dtype) if self.amp_dtype else contextlib.nullcontext()
        with autocast:
            loss, logs = _split_loss(self.loss_fn(self.model, batch))
        if not math.isfinite(logs["loss"]):
            raise FloatingPointError(self._nonfinite_message(f"the loss is {logs['loss']}"))

        self.scaler.scale(loss).backward()
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
        for ema_p, p in zip(self.ema_model.parameters(), self.model.parameters()):
            if decay == 0.0:
                ema_p.copy_(p)
            else:
                ema_p.lerp_(p, 1.0 - decay)
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

    # ------------------------------------------------------------------------------------------------------------------
    # batches

    def _next_batch(self) -> Any:
        """The next ``batch_size`` examples of an endless sequence of shuffled epochs, on the trainer's device."""
        while len(self._queue) < self.batch_size:
            epoch = torch.randperm(self._num_examples, generator=self._batch_gen)
            self._queue = torch.cat([self._queue, epoch])
        indices, self._queue = self._queue[: self.batch_size], self._queue[self.batch_size :]
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
        """Call ``sample_fn(ema_model, step)`` without disturbing the training run's random streams; save the result."""
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
        if self.progress:
            tqdm.write(message)

    # ------------------------------------------------------------------------------------------------------------------
    # checkpoints

    @property
    def checkpoint_path(self) -> Path | None:
        """``out_dir/checkpoint.pt``, or ``None`` without an ``out_dir``."""
        return None if self.out_dir is None else self.out_dir / CHECKPOINT_NAME

    def save(self, path: str | os.PathLike | None = None) -> Path:
        """Atomically save everything needed to resume: weights, EMA, optimizer, scaler, step, config, RNG states.

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
            optimizer_state=self.optimizer.state_dict(), step=self.step, config=self.config, rng_state=rng, extra=extra,
        )  # fmt: skip
        if path == self.checkpoint_path:
            self._saved_step = self.step
        return path

    def load(self, path: str | os.PathLike | None = None) -> Trainer:
        """Restore this trainer's full state (as written by ``save``), so that training continues exactly.

        The model must have the same architecture as the one that was saved. Trainer settings given to this
        trainer's constructor win over the saved ones; differences are reported with a warning.

        :param path: defaults to ``out_dir/checkpoint.pt``.
        :return: ``self``.
        """
        path = self._checkpoint_path(path)
        ckpt = load_checkpoint(path)
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

        :param path: destination, e.g. ``data/checkpoints/moons.safetensors``.
        :param ema: export the EMA weights (what sampling should use) rather than the raw ones.
        :param half: store floating-point tensors as float16.
        """
        model = self.ema_model if ema else self.model
        return save_weights(path, model.state_dict(), self.config, half=half)

    def _checkpoint_path(self, path: str | os.PathLike | None) -> Path:
        if path is not None:
            return Path(path)
        if self.out_dir is None:
            raise ValueError("no path given and the Trainer has no out_dir")
        return self.checkpoint_path

    def _resume(self) -> None:
        if self.out_dir is None:
            raise ValueError("fit(resume=True) needs out_dir: that is where the checkpoint is looked for")
        if self.checkpoint_path.exists():
            self.load()
            self._say(f"Resumed from '{self.checkpoint_path}' at step {self.step}.")
        else:
            self._say(f"No checkpoint at '{self.checkpoint_path}': starting from step {self.step}.")

    def _warn_if_overwriting(self) -> None:
        if self._warned_overwrite or self.checkpoint_path is None or not self.checkpoint_path.exists():
            return
        self._warned_overwrite = True
        warnings.warn(
            f"'{self.checkpoint_path}' already exists and will be overwritten by this new run; "
            "use fit(steps, resume=True) to continue it instead",
            stacklevel=3,
        )

    def _warn_about_config_changes(self, saved: dict, path: Path) -> None:
        saved_trainer, now_trainer = saved.get("trainer", {}), self.config["trainer"]
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
        _set_global_rng_state(rng)
        batches = rng.get("batches")
        if batches is None:
            return
        self._batch_gen.set_state(batches["generator"])
        queue = batches["queue"].long()
        if len(queue) and int(queue.max()) >= self._num_examples:
            warnings.warn(
                "the dataset is smaller than when the checkpoint was saved; starting a new epoch", stacklevel=3
            )
            queue = queue[:0]
        self._queue = queue

    def _save_after_interrupt(self) -> None:
        if self.out_dir is None:
            self._say(f"Interrupted at step {self.step}; no out_dir, so nothing was saved (this object still has it).")
            return
        try:
            path = self.save()
        except FloatingPointError as err:
            warnings.warn(f"Interrupted, and not saved: {err}", stacklevel=3)
            return
        self._say(f"Interrupted: step {self.step} saved to '{path}'. Continue with fit(steps, resume=True).")


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


@contextlib.contextmanager
def _defer_keyboard_interrupt() -> Iterator[None]:
    """Hold a Ctrl-C until the block ends, so that a checkpoint saved on interrupt holds a whole training step.

    A second Ctrl-C interrupts at once. Outside the main thread (where signals cannot be caught) this does nothing.
    """
    pending = []

    def handler(signum, frame):
        if pending:
            raise KeyboardInterrupt
        pending.append((signum, frame))

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except (ValueError, OSError):
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if pending:
        if callable(previous):
            previous(*pending[0])  # the default handler raises KeyboardInterrupt
        elif previous != signal.SIG_IGN:
            raise KeyboardInterrupt


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
