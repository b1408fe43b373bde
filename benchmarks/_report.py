"""The JSON report the benchmark scripts share: pick runs by name, record the command and machine, and write each
run's row as soon as it finishes (so an interrupted benchmark keeps what it measured)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def select_runs(runs_arg: str, runs: dict) -> list[str]:
    """``"a,b"`` → ``["a", "b"]``, each checked against the script's ``RUNS``."""
    names = runs_arg.split(",")
    unknown = [r for r in names if r not in runs]
    if unknown:
        raise SystemExit(f"unknown runs {unknown}; choose among {list(runs)}")
    return names


def open_report(args: argparse.Namespace, script: str, leave_out: tuple[str, ...] = ("out",)) -> dict:
    """Load ``args.out`` if it exists (earlier rows stay), set the thread count, note the command and the machine."""
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    report = json.loads(out.read_text()) if out.exists() else {}
    report["command"] = f"python benchmarks/{script} " + " ".join(
        f"--{k} {v}" for k, v in vars(args).items() if k not in leave_out
    )
    report["machine"] = f"{torch.get_num_threads()} CPU threads, torch {torch.__version__}"
    return report


def save_row(args: argparse.Namespace, report: dict, name: str, row: dict) -> None:
    """Put ``row`` under ``report["runs"][name]`` and write the whole report to ``args.out``."""
    report.setdefault("runs", {})[name] = row
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
