"""How long ``generate`` takes for 4 pictures after loading: today's defaults against the settings of 2026-12-03
and of 2026-12-04.

Issue 13, goal 3: ``UnCLIP.generate(prompt, n=4)`` (prior + decoder + upsampler, shipped weights) at least 2× faster
than the defaults it had on 2026-12-03 (DDIM: decoder 25 guided steps, upsampler 10 steps; prior 64 DDIM steps,
best of 2), measured side by side in one run. Both settings are timed in the same process, interleaved round-robin
(old, new, old, new, ...) so that a change in the machine's load hits both alike; the median of ``--repeats`` runs
is reported, with each stage's share (``Generation.timings``), after one untimed warm-up run of each.

``--upsampler-quality N`` also grades the 32→64 upsampler at each setting's sampler and steps on N test pictures
(blurred by σ = 0.5 first, as a decoder's softer pictures: :func:`~dalle2_edu.stages.upsampler.evaluate_upsampler`):
PSNR against the real 64×64 pictures, sharpness and consistency. The rest of the pictures' quality at each setting is
measured by ``benchmarks/unclip_eval.py`` (rows ``main``: the current defaults, and ``main-2026-12-03``: the old
ones) and ``benchmarks/sampler_sweep.py`` (the decoder's FID per network call); docs/BENCHMARKS.md §3.5 puts them
together.

    python benchmarks/generate_speed.py --upsampler-quality 128   # 2 threads, 5 repeats: about two minutes
    python benchmarks/generate_speed.py --threads 1 --repeats 3
"""

from __future__ import annotations

import argparse
import inspect
import json
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch

from dalle2_edu.pipeline import UnCLIP

OLD_DEFAULTS = dict(sampler="ddim", steps=25, upsample_steps=10, prior_steps=64, n_candidates=2, guidance_scale=3.0,
                    upsample_spacing="even")
"""``generate``'s defaults on 2026-12-03, before issue 13 (written out, so the comparison survives later changes)."""

DEFAULTS_2026_12_04 = dict(sampler="ddpm", steps=20, upsample_steps=10, prior_steps=64, n_candidates=2,
                           guidance_scale=3.0, upsample_spacing="even")
"""``generate``'s defaults from 2026-12-04 (ancestral DDPM-20) until the faster ones of the same day's evening."""

COMPARED = tuple(OLD_DEFAULTS)


def current_defaults() -> dict:
    """``generate``'s defaults now, for the settings :data:`OLD_DEFAULTS` names (read from its signature; the
    upsampler's spacing as ``generate`` resolves its default for the default sampler)."""
    from dalle2_edu.pipeline import _upsample_spacing

    params = inspect.signature(UnCLIP.generate).parameters
    current = {k: params[k].default for k in COMPARED}
    current["upsample_spacing"] = _upsample_spacing(current["upsample_spacing"], current["sampler"])
    return current


def time_once(pipe: UnCLIP, prompt: str, n: int, seed: int, settings: dict) -> dict:
    start = time.perf_counter()
    out = pipe.generate(prompt, n=n, seed=seed, **settings)
    total = time.perf_counter() - start
    return {"total_s": total, **{k: float(v) for k, v in out.timings.items()}}


def median_row(runs: list[dict]) -> dict:
    return {k: round(statistics.median(r[k] for r in runs), 4) for k in runs[0]}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoints", default="data/checkpoints")
    parser.add_argument("--prompt", default="a red mug on a white background")
    parser.add_argument("--n", type=int, default=4, help="pictures per call (default 4, as the issue asks)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each setting (median reported)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--upsampler-quality", type=int, default=0, metavar="N",
                        help="also grade the upsampler at each setting on N test pictures (default 0: skip)")
    parser.add_argument("--json", default="docs/benchmarks/generate_speed.json")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.n < 1 or args.threads < 1 or args.upsampler_quality < 0:
        parser.error("--repeats, --n and --threads must each be at least 1, --upsampler-quality at least 0")
    torch.set_num_threads(args.threads)
    pipe = UnCLIP.from_pretrained(args.checkpoints)
    settings = {"2026-12-03 defaults": dict(OLD_DEFAULTS), "2026-12-04 defaults": dict(DEFAULTS_2026_12_04),
                "current defaults": current_defaults()}  # fmt: skip
    with torch.no_grad():
        for s in settings.values():  # warm-up: first calls pay for lazy initialisation
            time_once(pipe, args.prompt, args.n, args.seed, s)
        runs: dict[str, list[dict]] = {name: [] for name in settings}
        for _ in range(args.repeats):
            for name, s in settings.items():
                runs[name].append(time_once(pipe, args.prompt, args.n, args.seed, s))
    rows = {name: {"settings": settings[name], **median_row(r)} for name, r in runs.items()}
    if args.upsampler_quality:
        from dalle2_edu.stages.upsampler import evaluate_upsampler

        model, gd = pipe.upsampler
        for name, s in settings.items():
            graded = evaluate_upsampler(model, gd, n=args.upsampler_quality, steps=s["upsample_steps"],
                                        sampler=s["sampler"], input_blur=0.5, seed=args.seed,
                                        spacing=s["upsample_spacing"])  # fmt: skip
            rows[name]["upsampler_quality"] = graded
            d = graded["diffusion"]
            print(f"{name}: upsampler {s['sampler']}-{s['upsample_steps']} ({s['upsample_spacing']}): PSNR "
                  f"{d['psnr_db']:.2f} ± "
                  f"{d['psnr_db_se']:.2f} dB, sharpness {d['sharpness_ratio']:.2f}, consistency "
                  f"{d['consistency_psnr_db']:.1f} dB")  # fmt: skip
    old, new = rows["2026-12-03 defaults"]["total_s"], rows["current defaults"]["total_s"]
    stages = [k for k, v in rows["current defaults"].items() if isinstance(v, float) and k != "total_s"]
    mid = rows["2026-12-04 defaults"]["total_s"]
    lines = ["| settings | " + " | ".join(stages) + " | total (s) | speed-up vs 2026-12-03 | vs 2026-12-04 |",
             "|---|" + "---:|" * (len(stages) + 3)]
    for name, row in rows.items():
        described = ", ".join(f"{k}={v}" for k, v in row["settings"].items())
        lines.append(f"| {name}: {described} | " + " | ".join(f"{row[k]:.3f}" for k in stages)
                     + f" | {row['total_s']:.3f} | {old / row['total_s']:.2f}× | {mid / row['total_s']:.2f}× |")
    report = {
        "command": "python benchmarks/generate_speed.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {args.threads} torch threads, torch {torch.__version__}",
        "prompt": args.prompt, "n": args.n, "repeats": args.repeats,
        "rows": rows, "speedup": round(old / new, 3), "speedup_vs_2026_12_04": round(mid / new, 3),
        "markdown": "\n".join(lines),
    }  # fmt: skip
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(report["markdown"])
    print(f"speed-up of the current defaults: {report['speedup']:.2f}× against 2026-12-03's, "
          f"{report['speedup_vs_2026_12_04']:.2f}× against 2026-12-04's (written to {out})")
    return report


if __name__ == "__main__":
    main()
