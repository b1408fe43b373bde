"""Render the course: execute notebooks and write executed copies, with their outputs, to ``docs/book/``.

The sources in ``notebooks/`` stay output-free (CI runs them in fast mode); the copies here are for reading without
running anything. ``tests/test_book.py`` fails when a copy's cells differ from its source or when a copy holds an
error, so a stale rendering cannot hide.

    python scripts/book.py                 # every notebook, full mode (what a learner runs): about two hours on 2 cores
    python scripts/book.py 07 13           # only these (by number or name)
    python scripts/book.py --times-only --fast   # time the fast mode, write nothing but the timing table

Each run records its wall time per notebook and mode in ``docs/book/runtimes.json``; ``--table`` prints the README's
runtime table from it. (``make book`` and ``make book NB=07`` call this script.)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ROOT / "notebooks"
BOOK = ROOT / "docs" / "book"
RUNTIMES = BOOK / "runtimes.json"


def notebooks(selection: list[str]) -> list[Path]:
    """The source notebooks named by ``selection`` (numbers like "07" or file names); all when empty."""
    paths = sorted(SOURCES.glob("[0-9][0-9]_*.ipynb"))
    if not selection:
        return paths
    chosen = []
    for key in selection:
        key = key.strip()
        hits = [p for p in paths if p.name == key or p.stem == key or p.name[:2] == key.zfill(2)[:2]]
        if not hits:
            names = ", ".join(p.name[:2] for p in paths)
            raise SystemExit(f"error: no notebook {key!r} in {SOURCES} (numbers: {names})")
        chosen += [p for p in hits if p not in chosen]
    return chosen


def execute(path: Path, fast: bool, timeout: int):
    """Run ``path`` top to bottom in a fresh kernel in notebooks/ (as a learner's JupyterLab does); the executed
    notebook and its wall time in seconds."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    env_before = dict(os.environ)
    # The kernel inherits this process's environment: full mode unless --fast, inline figures (no Agg override).
    os.environ.pop("MPLBACKEND", None)
    if fast:
        os.environ["DALLE2_EDU_FAST"] = "1"
    else:
        os.environ.pop("DALLE2_EDU_FAST", None)
    try:
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                                resources={"metadata": {"path": str(SOURCES)}})  # fmt: skip
        start = time.perf_counter()
        client.execute()
        return nb, time.perf_counter() - start
    finally:
        os.environ.clear()
        os.environ.update(env_before)


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent, delete=False, suffix=".tmp") as f:
        f.write(text)
    os.replace(f.name, path)


def load_runtimes() -> dict:
    return json.loads(RUNTIMES.read_text(encoding="utf-8")) if RUNTIMES.exists() else {}


def record(name: str, mode: str, seconds: float) -> None:
    table = load_runtimes()
    table.setdefault(name, {})[mode] = {
        "seconds": round(seconds, 1),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
    }
    write_atomic(RUNTIMES, json.dumps(dict(sorted(table.items())), indent=1) + "\n")


def fmt(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def table() -> str:
    """The README's table: each notebook, its full- and fast-mode times, a link to its rendered copy."""
    runtimes = load_runtimes()
    lines = ["| notebook | full mode | fast mode | rendered |", "|---|---:|---:|---|"]
    total = {"full": 0.0, "fast": 0.0}
    for path in notebooks([]):
        entry = runtimes.get(path.name, {})
        full, fast = (entry.get(m, {}).get("seconds") for m in ("full", "fast"))
        for mode, s in (("full", full), ("fast", fast)):
            total[mode] += s or 0.0
        copy = BOOK / path.name
        link = f"[docs/book/{path.name}](docs/book/{path.name})" if copy.exists() else "not rendered yet"
        lines.append(f"| `{path.stem}` | {fmt(full)} | {fmt(fast)} | {link} |")
    lines.append(f"| **all** | **{fmt(total['full'])}** | **{fmt(total['fast'])}** | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("notebooks", nargs="*", help="numbers (07) or names; default: all")
    parser.add_argument("--fast", action="store_true", help="fast mode (DALLE2_EDU_FAST=1) instead of full mode")
    parser.add_argument("--times-only", action="store_true", help="only time the run; do not write executed copies")
    parser.add_argument("--timeout", type=int, default=7200, help="seconds per cell before giving up")
    parser.add_argument("--table", action="store_true", help="print the runtime table from runtimes.json and stop")
    args = parser.parse_args(argv)
    if args.table:
        print(table())
        return 0
    if args.fast and not args.times_only:
        raise SystemExit("error: the rendered copies are full-mode runs; use --fast only with --times-only")
    mode = "fast" if args.fast else "full"
    from nbclient.exceptions import CellExecutionError

    failed = []
    for path in notebooks(args.notebooks):
        print(f"{path.name}: running in {mode} mode ...", flush=True)
        try:
            nb, seconds = execute(path, args.fast, args.timeout)
        except CellExecutionError as err:  # keep going: one broken notebook should not cost the others' hours
            failed.append(path.name)
            print(f"{path.name}: FAILED, nothing written for it\n{str(err)[-3000:]}", flush=True)
            continue
        record(path.name, mode, seconds)
        if not args.times_only:
            import nbformat

            stamp = {"mode": mode, "seconds": round(seconds, 1), "date": time.strftime("%Y-%m-%d")}
            nb.metadata["dalle2_edu_book"] = stamp
            write_atomic(BOOK / path.name, nbformat.writes(nb) + "\n")
        print(f"{path.name}: {fmt(seconds)}", flush=True)
    if failed:
        print(f"error: {len(failed)} notebook(s) failed: {', '.join(failed)}; fix them and run "
              f"`make book NB=\"{' '.join(n[:2] for n in failed)}\"`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
