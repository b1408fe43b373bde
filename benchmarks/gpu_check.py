"""Train every pipeline stage a few hundred steps on the CPU and on CUDA from one seed; compare losses and speed.

    python benchmarks/gpu_check.py --steps 200                 # CPU and, when there is one, the GPU
    python benchmarks/gpu_check.py --steps 200 --devices cuda  # the GPU alone (e.g. on a lent machine)

Each device trains clip → prior → decoder → upsampler with the chosen recipe's settings (``--recipe fast`` by
default) but ``--steps`` steps each, into ``OUT/<device>``, through the same runner as ``python -m dalle2_edu train``.
The two runs see the same batches and the same initial weights, but the diffusion noise and timesteps come from each
device's own generator, and on CUDA the Trainer uses bf16 autocast (fp16 with a gradient scaler where bf16 is
missing): the losses agree in distribution, not bit for bit. Judge a difference against the spread of two CPU runs
with different ``--seed`` (docs/TRAINING.md §3 has both). Reported per stage: the mean
loss of the last quarter of the steps on each device and their relative difference; ``train_seconds``, the stage's
training call (drawing the data and CLIP-embedding it included, grading not) and ``loop_steps_per_second``, the
training loop's own speed (recorded since 2026-12-04; the first CUDA run has only ``train_seconds``).
Writes ``OUT/gpu_check.json``.

The two devices can also run on two machines (the CPU column on the machine you develop on, the CUDA one on a lent
GPU machine): run each with ``--devices`` and its own ``--out``, then combine the two reports, training nothing::

    python benchmarks/gpu_check.py --merge out/gpu_check_cpu/gpu_check.json out/gpu_check_cuda/gpu_check.json
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


def _loss_gap(row: dict, base: str, other: str) -> float | None:
    """|loss(other) − loss(base)| / loss(base) of one stage row, or None when either run is missing or has no loss."""
    a, b = (row.get(key, {}).get("tail_loss") for key in (base, other))
    return round(abs(a - b) / abs(a), 4) if a and b else None


def compare(report: dict) -> None:
    """Add the CPU-vs-CUDA relative loss difference and speed-up to every stage row that has both devices, and the
    relative difference between two CPU runs of different seeds (``seed_spread``) where there are two."""
    for row in report["stages"].values():
        other = next((k for k in row if k.startswith("cpu_seed")), None)
        if other and (spread := _loss_gap(row, "cpu", other)) is not None:
            row["seed_spread"] = spread
        if (gap := _loss_gap(row, "cpu", "cuda")) is not None:
            row["relative_loss_difference"] = gap
            row["stage_speedup"] = round(row["cpu"]["train_seconds"] / row["cuda"]["train_seconds"], 1)
            if row["cpu"].get("loop_steps_per_second") and row["cuda"].get("loop_steps_per_second"):
                cpu, cuda = row["cpu"]["loop_steps_per_second"], row["cuda"]["loop_steps_per_second"]
                row["loop_speedup"] = round(cuda / cpu, 1)


def merge(paths: list[str]) -> dict:
    """One report from the reports of runs of the same steps and recipe on different devices (or machines)."""
    reports = [json.loads(Path(p).read_text()) for p in paths]
    for key in ("steps", "recipe"):
        if len({r[key] for r in reports}) != 1:
            raise SystemExit(f"these reports ran different {key}: {[r[key] for r in reports]}; merge one setting")
    merged = {"command": [r["command"] for r in reports], "steps": reports[0]["steps"],
              "recipe": reports[0]["recipe"], "machine": {}, "stages": {}}  # fmt: skip
    for r in reports:
        devices = {d for row in r["stages"].values() for d in row if d in ("cpu", "cuda")}
        for device in devices:
            # a second run on a device already merged (another --seed) is kept beside the first: the yardstick
            key = device if device not in merged["machine"] else f"{device}_seed{r.get('seed', 0)}"
            merged["machine"][key] = r["machine"] if isinstance(r["machine"], str) else r["machine"][device]
            merged[f"{key}_total_seconds"] = r[f"{device}_total_seconds"]
            for stage, row in r["stages"].items():
                merged["stages"].setdefault(stage, {})[key] = row[device]
        if "gpu" in r:
            merged["gpu"] = r["gpu"]
    compare(merged)
    return merged


def main() -> None:
    import torch

    from dalle2_edu.recipes import Runner

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--recipe", default="fast")
    parser.add_argument("--devices", default="cpu,cuda", help="comma list; cuda is skipped when there is none")
    parser.add_argument("--out", default="out/gpu_check")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--merge", nargs="+", metavar="JSON", default=None,
                        help="combine the gpu_check.json of earlier runs into OUT/gpu_check.json (trains nothing)")
    args = parser.parse_args()
    if args.merge:
        report = merge(args.merge)
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps(report["stages"], indent=1))
        return

    devices = [d for d in args.devices.split(",") if d != "cuda" or torch.cuda.is_available()]
    skipped = [d for d in args.devices.split(",") if d not in devices]
    out = Path(args.out)
    report = {"command": f"python benchmarks/gpu_check.py --steps {args.steps} --recipe {args.recipe} --devices "
                         f"{args.devices} --seed {args.seed}", "steps": args.steps, "recipe": args.recipe,
              "seed": args.seed, "skipped": skipped,
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
                           "loop_steps_per_second": summary.get("steps_per_second")}  # fmt: skip
    compare(report)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["stages"], indent=1))
    if skipped:
        print(f"skipped {', '.join(skipped)}: torch.cuda.is_available() is False on this machine")


if __name__ == "__main__":
    main()
