"""Time to quality: ``train all --recipe fast`` as one command, timed and graded, twice, and the loss-weighting control.

    python benchmarks/fast_recipe.py      # about 30 minutes on 2 CPU cores; writes docs/benchmarks/fast_recipe.json

Runs, one after another (never two at once: they would slow each other):

- ``seed0``: ``python -m dalle2_edu train all --recipe fast --out OUT/seed0`` in a subprocess, as a new user would run
  it: a fresh out folder and, by default, an empty catalogue cache (a temporary ``$DALLE2_EDU_DATA`` whose
  ``checkpoints`` is the project's, so the grading classifier is there but every picture is drawn anew);
- ``seed1``: the same with ``--seed 1``, for the spread between runs;
- ``control``: the decoder of ``seed0`` trained again without min-SNR-γ (the same CLIP and prior, copied; the same
  steps and grade), to show what the loss weighting is worth.

Each row holds the wall-clock seconds of the command, each stage's seconds, the evaluation (colour, category, pattern,
background on seen prompts and held-out pairs) and whether issue 13's targets are met (≤ 10 minutes; seen colour
≥ 90%, category ≥ 70%; held-out colour ≥ 85%, category ≥ 70%).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"minutes": 10.0, "seen": {"colour": 0.90, "category": 0.70}, "heldout": {"colour": 0.85, "category": 0.70}}


def targets_met(evaluation: dict, wall_seconds: float | None) -> dict:
    """Which of the targets a run meets (``time`` is None when the run's time is not its own, as for the control)."""
    met = {f"{split}_{k}": evaluation[split][k] >= v
           for split in ("seen", "heldout") for k, v in TARGETS[split].items()}  # fmt: skip
    met["time"] = None if wall_seconds is None else wall_seconds <= 60 * TARGETS["minutes"]
    met["all"] = all(v for v in met.values() if v is not None)
    return met


def row_from_report(report: dict, wall_seconds: float | None) -> dict:
    """One table row from a run's ``report.json``."""
    stages = {name: s.get("train_seconds") for name, s in report["stages"].items() if name != "evaluate"}
    evaluation = report["stages"]["evaluate"]
    keep = ("colour", "category", "pattern", "background", "n")
    return {"wall_seconds": wall_seconds, "stage_seconds": stages, "evaluation_seconds": evaluation.get("seconds"),
            "evaluation_settings": evaluation.get("settings"),
            "seen": {k: evaluation["seen"][k] for k in keep}, "heldout": {k: evaluation["heldout"][k] for k in keep},
            "targets_met": targets_met(evaluation, wall_seconds)}  # fmt: skip


def one_command(out: Path, seed: int, cold_cache: bool, recipe: str = "fast") -> dict:
    """``train all --recipe fast`` in a subprocess on a fresh folder; its row."""
    if out.exists():
        shutil.rmtree(out)
    env = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="dalle2_edu_data_") as data:
        if cold_cache:
            os.symlink(ROOT / "data" / "checkpoints", Path(data) / "checkpoints")
            env["DALLE2_EDU_DATA"] = data
        command = [sys.executable, "-m", "dalle2_edu", "train", "all", "--recipe", recipe, "--seed", str(seed),
                   "--out", str(out), "--no-progress"]  # fmt: skip
        start = time.perf_counter()
        subprocess.run(command, check=True, env=env, cwd=ROOT)
        wall = round(time.perf_counter() - start, 1)
    row = row_from_report(json.loads((out / "report.json").read_text()), wall)
    row["command"] = " ".join(["python"] + command[1:])
    row["cold_cache"] = cold_cache
    row["machine"] = machine()
    return row


def machine() -> dict:
    """The CPU a run timed on and the precision ``--precision auto`` gave there (bf16 where the CPU computes bf16 in
    hardware: AMX or AVX-512 BF16)."""
    import platform

    import torch

    from dalle2_edu.utils import cpu_has_native_bf16

    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        info = ""
    native = cpu_has_native_bf16(info)
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), None)
    return {"cpu": platform.processor() or platform.machine(), "cpu_model": model, "amx": "amx_bf16" in info,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "native_bf16": native,
            "auto_precision": "bf16" if native else "fp32", "threads": torch.get_num_threads(),
            "torch": torch.__version__}  # fmt: skip


def copy_clip_and_prior(source: Path, out: Path) -> None:
    """A fresh ``out`` holding ``source``'s CLIP and prior (weights and reports), to train another decoder against."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for name in ("clip_tiny", "prior"):
        for ext in (".safetensors", ".json"):
            shutil.copy(source / f"{name}{ext}", out / f"{name}{ext}")


def control(source: Path, out: Path, recipe: str = "fast") -> dict:
    """The decoder of ``source`` retrained without min-SNR-γ on a copy of its CLIP and prior, then graded the same."""
    from dataclasses import replace

    from dalle2_edu.recipes import Runner
    from dalle2_edu.recipes.settings import RECIPES

    copy_clip_and_prior(source, out)
    decoder = RECIPES[recipe]["decoder"]
    model = {k: v for k, v in decoder.model.items() if k != "diffusion"}
    model["diffusion"] = {k: v for k, v in decoder.model.get("diffusion", {}).items() if k != "snr_gamma"}
    RECIPES[recipe]["decoder"] = replace(decoder, model=model)
    try:
        start = time.perf_counter()
        report = Runner(recipe=recipe, out=out, device="cpu", seed=0, progress=False,
                        command="benchmarks/fast_recipe.py control").run("decoder,evaluate")  # fmt: skip
        seconds = round(time.perf_counter() - start, 1)
    finally:
        RECIPES[recipe]["decoder"] = decoder
    row = row_from_report(report, None)
    row["decoder_and_evaluation_seconds"] = seconds
    row["what"] = "seed0's CLIP and prior; the decoder without snr_gamma; the same steps and grade"
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="out/fast_recipe", help="folder for the runs")
    parser.add_argument("--runs", default="seed0,seed1,control")
    parser.add_argument("--warm-cache", action="store_true", help="keep the catalogue cache (not a new user's run)")
    parser.add_argument("--report", default="docs/benchmarks/fast_recipe.json")
    parser.add_argument("--recipe", default="fast", help="tiny: a smoke run of this script (seconds, no pictures)")
    args = parser.parse_args()
    out, path = Path(args.out), Path(args.report)
    result = json.loads(path.read_text()) if path.exists() else {}
    result.update(command="python benchmarks/fast_recipe.py", targets=TARGETS)
    result.setdefault("runs", {})
    for name in args.runs.split(","):
        if name == "control":
            row = control(out / "seed0", out / "control", args.recipe)
        else:
            row = one_command(out / name, int(name.removeprefix("seed")), not args.warm_cache, args.recipe)
        result["runs"][name] = {**row, "date": time.strftime("%Y-%m-%d")}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")  # after each run: an interrupted run keeps the others
        print(name, json.dumps({k: row[k] for k in ("wall_seconds", "seen", "heldout", "targets_met")}), flush=True)


if __name__ == "__main__":
    main()
