"""Resident memory of a default training run, step by step: its peak, and whether it grows (issue 13, goal 4).

Runs the command a user runs, ``python -m dalle2_edu train decoder --steps N --out DIR`` (the default recipe,
``fast``: batch 32, the catalogue's 20 000 training pictures, the shipped CLIP copied into DIR as its upstream), in a
child process, and samples the child's resident memory (``VmRSS`` in ``/proc/PID/status``, Linux only) every
``--every`` seconds against the step its progress bar last showed. Reported:

* the peak resident memory of the whole command (``VmHWM``, the kernel's own high-water mark: it includes embedding
  the catalogue with CLIP before the first step), the peak while training, and the resident memory at 10%, 50% and
  100% of the steps;
* growth: the least-squares slope of resident memory against step over the second half of the run, in MiB per 1 000
  steps (the first half holds the one-off costs: the catalogue, the CLIP embeddings, the optimiser's state, the first
  checkpoint), and the difference between the last and the middle sample;
* throughput in the same run: pictures per second between 10% and 100% of the steps, read from the progress bar's
  steps and the wall clock (checkpoint writes every 250 steps included, as a user sees them).

    python benchmarks/train_memory.py                   # 1 000 steps: about 6 minutes on 2 idle cores
    python benchmarks/train_memory.py --steps 40 --json runs/train_memory_smoke.json
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEP = re.compile(r"(\d+)/(\d+) \[")
MIB = 1024 * 1024


def read_status(pid: int) -> dict[str, int] | None:
    """``VmRSS`` and ``VmHWM`` of a process in bytes, or None once it has gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    out = {}
    for key in ("VmRSS", "VmHWM"):
        m = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
        if m:
            out[key] = int(m.group(1)) * 1024
    return out or None


def slope_per_1000(points: list[tuple[int, float]]) -> float:
    """Least-squares slope of y against x, times 1 000 (0 for fewer than two distinct x)."""
    if len({x for x, _ in points}) < 2:
        return 0.0
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    sxy = sum((x - mx) * (y - my) for x, y in points)
    return 1000 * sxy / sxx


def at_fraction(samples: list[dict], steps: int, fraction: float) -> dict:
    """The first sample at or past ``fraction`` of the steps (the last sample if none)."""
    target = fraction * steps
    return next((s for s in samples if s["step"] >= target), samples[-1])


def run(steps: int, every: float, threads: int, checkpoints: Path, seed: int) -> dict:
    work = Path(tempfile.mkdtemp(prefix="train_memory_"))
    try:
        for f in checkpoints.glob("clip_tiny.*"):
            shutil.copy(f, work / f.name)
        if not (work / "clip_tiny.safetensors").exists():
            raise SystemExit(f"no clip_tiny.safetensors in {checkpoints}: the decoder needs its CLIP upstream")
        command = [sys.executable, "-m", "dalle2_edu", "train", "decoder", "--steps", str(steps), "--out", str(work),
                   "--seed", str(seed)]  # fmt: skip
        env = {**__import__("os").environ, "OMP_NUM_THREADS": str(threads), "TQDM_MININTERVAL": "0.2"}
        start = time.perf_counter()
        child = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        state = {"step": 0, "total": steps, "marks": {}}  # marks: step -> first wall-clock second it was shown
        log: list[str] = []

        def reader() -> None:
            buffer = b""
            while chunk := child.stdout.read1(4096):
                buffer += chunk
                *parts, buffer = re.split(rb"[\r\n]", buffer)
                for part in parts:
                    line = part.decode(errors="replace")
                    m = STEP.search(line)
                    if m and int(m.group(2)) == steps:
                        state["step"] = int(m.group(1))
                        state["marks"].setdefault(state["step"], time.perf_counter() - start)
                    elif line.strip():
                        log.append(line)

        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        samples, peak = [], 0
        while child.poll() is None:
            status = read_status(child.pid)
            if status:
                peak = max(peak, status.get("VmHWM", 0))
                samples.append({"t": round(time.perf_counter() - start, 2), "step": state["step"],
                                "rss_mib": round(status["VmRSS"] / MIB, 1)})  # fmt: skip
            time.sleep(every)
        thread.join(timeout=10)
        wall = time.perf_counter() - start
        if child.returncode != 0:
            raise SystemExit(f"training failed (exit {child.returncode}):\n" + "\n".join(log[-20:]))
        report = json.loads((work / "decoder32.json").read_text())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    # while training: from the first step to the last sample before the bar showed the last step (after it the
    # command saves, exports and frees its memory, which is not the training loop's)
    training = [s for s in samples if 0 < s["step"] < steps] or [s for s in samples if s["step"] > 0]
    second_half = [(s["step"], s["rss_mib"]) for s in training if s["step"] >= steps / 2]
    marks = state["marks"]
    first = min((k for k in marks if k >= steps / 10), default=None)
    last = max(marks, default=None)
    batch = report["settings"]["batch_size"]
    throughput = (batch * (last - first) / (marks[last] - marks[first])) if first and last and last > first else None
    p10, p50, p100 = (at_fraction(training, steps, f) for f in (0.1, 0.5, 1.0))
    return {
        "command": "python -m dalle2_edu train decoder --steps " + f"{steps} --out DIR (DIR holding the shipped CLIP)",
        "recipe": report["recipe"], "batch_size": batch, "steps": steps, "threads": threads,
        "wall_seconds": round(wall, 1), "train_seconds_reported": report.get("train_seconds"),
        "pictures_per_second": round(throughput, 1) if throughput else None,
        "peak_rss_mib": round(peak / MIB, 1),
        "peak_rss_mib_while_training": max(s["rss_mib"] for s in training),
        "rss_mib_at": {"10%": p10["rss_mib"], "50%": p50["rss_mib"], "100%": p100["rss_mib"]},
        "growth_mib_per_1000_steps_second_half": round(slope_per_1000(second_half), 2),
        "growth_mib_last_minus_middle": round(p100["rss_mib"] - p50["rss_mib"], 1),
        "samples": samples,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--every", type=float, default=0.5, help="seconds between memory samples")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoints", default=str(ROOT / "data" / "checkpoints"))
    parser.add_argument("--json", default=str(ROOT / "docs" / "benchmarks" / "train_memory.json"))
    args = parser.parse_args(argv)
    if args.steps < 10 or args.every <= 0 or args.threads < 1:
        parser.error("--steps must be at least 10, --every positive, --threads at least 1")
    if not Path("/proc/self/status").exists():
        parser.error("this benchmark reads /proc/PID/status: Linux only")
    result = {"date": date.today().isoformat(), **run(args.steps, args.every, args.threads, Path(args.checkpoints),
                                                      args.seed)}  # fmt: skip
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=1, ensure_ascii=False))
    return result


if __name__ == "__main__":
    main()
