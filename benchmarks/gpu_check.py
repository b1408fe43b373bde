"""Train every pipeline stage a few hundred steps on the CPU and on CUDA from one seed; compare losses and speed.

    python benchmarks/gpu_check.py --steps 200                 # CPU and, when there is one, the GPU
    python benchmarks/gpu_check.py --steps 200 --devices cuda  # the GPU alone (e.g. on a lent machine)

Each device trains clip → prior → decoder → upsampler with the chosen recipe's settings (``--recipe fast`` by
default) but ``--steps`` steps each, into ``OUT/<device>``, through the same runner as ``python -m dalle2_edu train``.
The two runs see the same batches and the same initial weights; on CUDA the Trainer uses bf16 autocast (fp16 with a
gradient scaler where bf16 is missing), so the losses agree closely but not bit for bit. Reported per stage: the mean
loss of the last quarter of the steps on each device, their relative difference, seconds and steps per second.
Writes ``OUT/gpu_check.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

STAGES = ("clip", "prior", "decoder", "upsampler")


def tail_loss(run: Path, stage: str) -> float | None:
    """Mean logged loss over the last quarter of a stage's run (from its Trainer checkpoint's history)."""
    from dalle2_edu.checkpoint import load_checkpoint

    history = (load_checkpoint(run / "runs" / stage / "checkpoint.pt").get("extra") or {}).get("history") or {}
    losses = history.get("loss") or []
    if not losses:
        return None
    tail = losses[-max(1, len(losses) // 4) :]
    return sum(tail) / len(tail)


def main() -> None:
    import torch

    from dalle2_edu.recipes import Runner

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--recipe", default="fast")
    parser.add_argument("--devices", default="cpu,cuda", help="comma list; cuda is skipped when there is none")
    parser.add_argument("--out", default="out/gpu_check")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    devices = [d for d in args.devices.split(",") if d != "cuda" or torch.cuda.is_available()]
    skipped = [d for d in args.devices.split(",") if d not in devices]
    out = Path(args.out)
    report = {"command": f"python benchmarks/gpu_check.py --steps {args.steps} --recipe {args.recipe} --devices "
                         f"{args.devices}", "steps": args.steps, "recipe": args.recipe, "skipped": skipped,
              "machine": f"{platform.machine()}, {torch.get_num_threads()} CPU threads, torch {torch.__version__}",
              "stages": {}}  # fmt: skip
    if torch.cuda.is_available():
        report["gpu"] = torch.cuda.get_device_name(0)
    for device in devices:
        run = out / device
        start = time.perf_counter()
        Runner(recipe=args.recipe, out=run, device=device, seed=args.seed, progress=False,
               steps=dict.fromkeys(STAGES, args.steps), command=report["command"]).run(",".join(STAGES))  # fmt: skip
        report[f"{device}_total_seconds"] = round(time.perf_counter() - start, 1)
        for stage in STAGES:
            summary = json.loads((run / "report.json").read_text())["stages"][stage]
            row = report["stages"].setdefault(stage, {})
            row[device] = {"tail_loss": tail_loss(run, stage), "train_seconds": summary.get("train_seconds"),
                           "steps_per_second": round(args.steps / summary["train_seconds"], 2)
                           if summary.get("train_seconds") else None}  # fmt: skip
    for row in report["stages"].values():
        if "cpu" in row and "cuda" in row and row["cpu"]["tail_loss"] and row["cuda"]["tail_loss"]:
            a, b = row["cpu"]["tail_loss"], row["cuda"]["tail_loss"]
            row["relative_loss_difference"] = round(abs(a - b) / abs(a), 4)
            row["speedup"] = round(row["cpu"]["train_seconds"] / row["cuda"]["train_seconds"], 1)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["stages"], indent=1))
    if skipped:
        print(f"skipped {', '.join(skipped)}: torch.cuda.is_available() is False on this machine")


if __name__ == "__main__":
    main()
