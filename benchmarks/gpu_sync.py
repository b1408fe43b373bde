"""What the Trainer's per-step host reads cost: time decoder training steps with and without them.

    python benchmarks/gpu_sync.py --device cuda            # on a GPU (the question this answers is a GPU one)
    python benchmarks/gpu_sync.py --device cpu --steps 10  # the same code path on a CPU (a smoke run)

Every step of :class:`dalle2_edu.train.Trainer` reads the loss and the gradient norm on the host
(``float(loss)``, ``float(clip_grad_norm_(...))``): that is the guard that refuses to apply an update with a NaN loss
or gradient, and on a GPU it makes the host wait for the step to finish before it queues the next one. This script
trains the 32×32 decoder (the shipped architecture, random pictures and embeddings: speed does not depend on the
data) with the Trainer's own model, optimizer, batches, autocast and EMA, three ways, in one process:

- ``guard``: ``Trainer._train_step`` as it is (two host reads per step);
- ``no_sync``: the same work with no host read (the loss and the norm stay on the device);
- ``no_sync_foreach_ema``: the same, with the EMA as one fused ``torch._foreach_lerp_`` instead of a loop over
  parameters.

Reported per batch size: steps per second of each (median of ``--repeats`` timed runs of ``--steps`` steps, after a
warm-up), and each one's speed over ``guard``. Writes ``OUT/gpu_sync.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def _make_trainer(batch_size: int, device: str, seed: int = 0):
    import torch

    from dalle2_edu.stages.decoder import CLIPDecoder, DecoderConfig, decoder_loss_fn
    from dalle2_edu.train import Trainer

    torch.manual_seed(seed)
    config = DecoderConfig(clip_dim=64)
    model, gd = CLIPDecoder(config), config.diffusion.build()
    n = max(4 * batch_size, 1024)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8)
    emb = torch.nn.functional.normalize(torch.randn(n, 64), dim=-1)
    return Trainer(model, decoder_loss_fn(gd, config), (images, emb), batch_size=batch_size, lr=3e-4, seed=seed,
                   warmup_steps=10, device=device, progress=False, ckpt_every=None, log_every=10**9)  # fmt: skip


def _step_without_host_reads(trainer, foreach_ema: bool) -> None:
    """``Trainer._train_step`` minus its two host reads (and so minus the NaN guard)."""
    import contextlib

    import torch

    for group in trainer.optimizer.param_groups:
        group["lr"] = trainer.lr_at(trainer.step)
    batch = trainer._next_batch()
    trainer.optimizer.zero_grad(set_to_none=True)
    autocast = (torch.autocast(trainer.device.type, dtype=trainer.amp_dtype) if trainer.amp_dtype
                else contextlib.nullcontext())  # fmt: skip
    with autocast:
        out = trainer.loss_fn(trainer.model, batch)
    loss = out["loss"] if isinstance(out, dict) else out
    trainer.scaler.scale(loss).backward()
    trainer.scaler.unscale_(trainer.optimizer)
    torch.nn.utils.clip_grad_norm_(trainer._params, trainer.grad_clip or float("inf"))
    trainer.scaler.step(trainer.optimizer)
    trainer.scaler.update()
    trainer.step += 1
    if not foreach_ema:
        trainer._update_ema()
        return
    decay = trainer.ema_decay_at(trainer.step)
    with torch.no_grad():
        torch._foreach_lerp_(list(trainer.ema_model.parameters()), list(trainer.model.parameters()), 1.0 - decay)


def _time(trainer, step, steps: int, repeats: int, device: str) -> float:
    """Median steps per second over ``repeats`` runs of ``steps`` steps (the device drained before each clock read)."""
    import torch

    def drain():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    rates = []
    for _ in range(repeats):
        drain()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        drain()
        rates.append(steps / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=100, help="steps per timed run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps first (cuDNN autotune, allocator)")
    parser.add_argument("--batch-sizes", default="32,256")
    parser.add_argument("--out", default="out/gpu_sync")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda, but torch.cuda.is_available() is False here; try --device cpu")

    report = {"command": f"python benchmarks/gpu_sync.py --device {args.device} --steps {args.steps} --repeats "
                         f"{args.repeats} --batch-sizes {args.batch_sizes}",
              "device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu",
              "torch": torch.__version__, "rows": {}}  # fmt: skip
    for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
        trainer = _make_trainer(batch_size, args.device)
        variants = {
            "guard": trainer._train_step,
            "no_sync": lambda t=trainer: _step_without_host_reads(t, foreach_ema=False),
            "no_sync_foreach_ema": lambda t=trainer: _step_without_host_reads(t, foreach_ema=True),
        }
        for step in variants.values():  # warm every path up before any clock
            for _ in range(args.warmup):
                step()
        row = {name: round(_time(trainer, step, args.steps, args.repeats, args.device), 2)
               for name, step in variants.items()}  # fmt: skip
        row["precision"] = str(trainer.amp_dtype or torch.float32).replace("torch.", "")
        for name in ("no_sync", "no_sync_foreach_ema"):
            row[f"{name}_speedup"] = round(row[name] / row["guard"], 3)
        report["rows"][str(batch_size)] = row
        print(f"batch {batch_size}: {json.dumps(row)}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_sync.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
