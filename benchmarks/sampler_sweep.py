"""Fast samplers against DDPM-1000 on the shipped 32×32 decoder: FID/KID and fidelity per network call (issue 14).

One run measures the shipped decoder (``data/checkpoints/decoder32``, through :meth:`UnCLIP.decode`, the pipeline's
32×32 decode path, no upsampler) at 5, 10, 20 and 50 NETWORK CALLS with DDIM (η = 0), respaced ancestral DDPM (the
model's learned variance, Improved DDPM's respacing), DPM-Solver++(2M), Euler and Heun, each with guidance (the
shipped default scale, read from :meth:`UnCLIP.generate`'s signature: 3) and without, against DDPM with 1000 steps
(ancestral, the model's learned variance) at the same guidance as the reference row.

* **"Without guidance" means scale 1**: the plain conditional model, one network pass per call. (Scale 0, the
  unconditional model, would measure a different model, and with the learned variance it costs two passes per call.)
  Guided rows make one batched pass over [conditional; null] per call, so they cost about twice as much per call.
* **Conditioning: real CLIP image embeddings, not the prior.** The decoder is conditioned on the shipped CLIP's
  image embeddings of N real test pictures (split test, seed 2). This isolates the sampler: the prior's own sampling
  (its steps, its best-of-2, its errors) would add variance and bias to every row alike and blur the differences
  the sweep is after, and would cost time that says nothing about the decoder's sampler. It also makes the reference
  points exact: every generated picture has a real counterpart, so its fidelity (category / colour / pattern read by
  the attribute classifier) is scored against that picture's own labels, and the FID floor is FID(the N
  conditioning pictures, the N reference pictures): what a perfect decoder, one that gave back exactly the pictures
  it was conditioned on, would score at this N (real vs real at the same N). The text → image numbers with the
  prior are in docs/BENCHMARKS.md §3.2 (DDIM-10/25/50 only).
* FID/KID: the generated pictures against N other real test pictures (split test, seed 1, the project's usual
  reference set) on the attribute classifier's features (:mod:`dalle2_edu.metrics`). Every row starts from the same
  noise (batch i seeded ``--seed + i``), so rows differ only in the sampler, its calls and the guidance.
* ``calls`` is what was asked; ``network calls`` is what the sampler made, counted by a hook on the network (Heun
  with an even budget N makes N - 1). The goal line uses the counted calls.
* A second, cheap table: the 2D Gaussian mixture's NLL (nats per point) by its exact formula, by the
  probability-flow ODE (``gd.ode_log_likelihood``) and by the VLB (``gd.calc_bpd_loop``, fixed small variance),
  both with the mixture's ideal denoiser (:meth:`GaussianMixture2D.exact_eps_model`), on the 2D toy's default
  process (cosine, T = 1000).

Before sampling, a short probe times one network call with and without guidance at the batch size; the expected run
time (seconds per picture per call × calls × N, summed over rows) is printed before the sweep starts. DDPM-1000
dominates: about three quarters of the time at the default calls. The report is rewritten after every row.

    python benchmarks/sampler_sweep.py                  # N = 256: about 3.5 h on 2 idle threads (2834 calls/picture)
    python benchmarks/sampler_sweep.py --n 128          # docs/BENCHMARKS.md §9's run: about 1.7 h
    python benchmarks/sampler_sweep.py --estimate-only  # only the probe and the expected time
    python benchmarks/sampler_sweep.py --tiny           # a smoke test in seconds (8 pictures, calls 2 and 3, DDPM-4)
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import platform
import sys
import time
from datetime import date
from pathlib import Path

import torch
from tqdm.auto import tqdm

from dalle2_edu.datasets.catalogue import LABEL_COLUMNS, ProductCatalogue
from dalle2_edu.datasets.toys import GaussianMixture2D
from dalle2_edu.diffusion.sampling import ODE_SAMPLERS, SAMPLERS, max_steps
from dalle2_edu.metrics import extract_features, fid, kid, load_attribute_classifier, prompt_fidelity
from dalle2_edu.pipeline import UnCLIP
from dalle2_edu.stages.toy2d import Toy2DConfig

SWEPT = ("ddim", "ddpm", "dpmpp2m", "euler", "heun")
REFERENCE = "ddpm"
ATTRS = ("category", "colour", "pattern")
GOAL_CALLS, GOAL_MARGIN = 20, 0.10  # issue 14: within 10% of DDPM-1000's FID at <= 20 network calls
SHIPPED_GUIDANCE = float(inspect.signature(UnCLIP.generate).parameters["guidance_scale"].default)
UNGUIDED = 1.0  # "without guidance": the plain conditional model (see the module docstring)

FULL = dict(n=256, calls="5,10,20,50", reference_steps=1000, batch=64, nll_points=500)
TINY = dict(n=8, calls="2,3", reference_steps=4, batch=8, nll_points=32)


# ----------------------------------------------------------------------------------------------------------------------
# arguments


def _number_list(p: argparse.ArgumentParser, flag: str, text: str, kind=float) -> list:
    out = []
    for part in str(text).split(","):
        try:
            value = kind(part.strip())
        except ValueError:
            p.error(f"{flag} wants comma-separated {'whole numbers' if kind is int else 'numbers'}, got {part!r}")
        out.append(value)
    return out


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, help=f"pictures per row, and real pictures compared (default {FULL['n']})")
    p.add_argument("--samplers", default=",".join(SWEPT),
                   help=f"comma-separated samplers to sweep, among {', '.join(SAMPLERS)} (default "
                        f"{','.join(SWEPT)}; DDPM at --reference-steps is always the reference row)")  # fmt: skip
    p.add_argument("--calls", help=f"comma-separated network-call budgets, each >= 1 (default {FULL['calls']})")
    p.add_argument("--guidance", default=f"{SHIPPED_GUIDANCE:g},{UNGUIDED:g}",
                   help=f"comma-separated classifier-free guidance scales (default {SHIPPED_GUIDANCE:g},{UNGUIDED:g}: "
                        "the shipped default, and 1 = plain conditional, no guidance)")  # fmt: skip
    p.add_argument("--reference-steps", type=int, help=f"DDPM steps of the reference row (default "
                   f"{FULL['reference_steps']})")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seeds the starting noise, DDPM's noise, KID's subsets, the VLB")
    p.add_argument("--json", help="the report (default docs/benchmarks/sampler_sweep.json; "
                                  "runs/sampler_sweep_tiny.json with --tiny)")  # fmt: skip
    p.add_argument("--batch", type=int, help=f"pictures per decoder batch (default {FULL['batch']})")
    p.add_argument("--nll-points", type=int, help=f"2D mixture points for the NLL table (default {FULL['nll_points']})")
    p.add_argument("--checkpoints", default="data/checkpoints", help="the checkpoint folder (default data/checkpoints)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--tiny", action="store_true", help="smoke mode: 8 pictures, calls 2 and 3, DDPM-4; seconds")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--estimate-only", action="store_true", help="run the timing probe, print the expected run time "
                   "and stop (writes nothing)")  # fmt: skip
    args = p.parse_args(argv)

    for key, value in (TINY if args.tiny else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.samplers = [s.strip() for s in args.samplers.split(",")]
    unknown = [s for s in args.samplers if s not in SAMPLERS]
    if unknown:
        p.error(f"unknown sampler {unknown[0]!r} in --samplers; choose among {', '.join(SAMPLERS)}")
    if len(set(args.samplers)) != len(args.samplers):
        p.error(f"--samplers names a sampler twice: {','.join(args.samplers)}")
    args.calls = _number_list(p, "--calls", args.calls, int)
    bad = [c for c in args.calls if c < 1]
    if bad:
        p.error(f"--calls must be whole numbers >= 1 (network calls per picture), got {bad[0]}")
    args.calls = sorted(set(args.calls))
    args.guidance = _number_list(p, "--guidance", args.guidance)
    if any(not (math.isfinite(g) and g >= 0) for g in args.guidance) or len(set(args.guidance)) != len(args.guidance):
        p.error(f"--guidance wants distinct finite scales >= 0, got {args.guidance}")
    if args.n < 2:
        p.error(f"--n must be >= 2 (FID and KID need two pictures per set), got {args.n}")
    for key in ("reference_steps", "batch", "nll_points", "threads"):
        if getattr(args, key) < 1:
            p.error(f"--{key.replace('_', '-')} must be >= 1, got {getattr(args, key)}")
    if args.seed < 0:
        p.error(f"--seed must be >= 0, got {args.seed}")
    args.json = args.json or ("runs/sampler_sweep_tiny.json" if args.tiny else "docs/benchmarks/sampler_sweep.json")
    return args


def check_against_process(args: argparse.Namespace, num_timesteps: int) -> None:
    """Refuse call budgets the decoder's process cannot take (T = ``num_timesteps`` steps), instead of clamping."""
    for sampler in args.samplers:
        top = max_steps(sampler, num_timesteps)
        if args.calls[-1] > top:
            raise SystemExit(f"--calls {args.calls[-1]} is more than {sampler} can make on the decoder's "
                             f"{num_timesteps}-step process (at most {top})")  # fmt: skip
    if args.reference_steps > num_timesteps:
        raise SystemExit(f"--reference-steps {args.reference_steps} is more than the decoder's {num_timesteps} steps")


def expected_calls(sampler: str, calls: int, num_timesteps: int) -> int:
    """The network calls :meth:`UnCLIP.decode` makes for ``steps=calls`` (Heun: 2m - 1 for m = ⌊(N + 1) / 2⌋)."""
    if sampler == "heun":
        return 2 * ((calls + 1) // 2) - 1
    return min(calls, max_steps(sampler, num_timesteps)) if sampler in ODE_SAMPLERS else calls


# ----------------------------------------------------------------------------------------------------------------------
# measuring


class CallCounter:
    """Counts the network's forward passes (a guided call is one batched pass over [conditional; null])."""

    def __init__(self, module: torch.nn.Module):
        self.count = 0
        self.handle = module.register_forward_pre_hook(self._hook)

    def _hook(self, module, inputs):
        self.count += 1


def probe_seconds(pipe: UnCLIP, emb: torch.Tensor, guidance: list[float], repeats: int = 2) -> dict[float, float]:
    """Seconds per picture per network call at each guidance scale, at the batch size of ``emb`` (one DDIM step of
    the full process, after one untimed warm-up call)."""
    out = {}
    for g in guidance:
        pipe.decode(emb, guidance_scale=g, steps=1, sampler="ddim", seed=0)
        start = time.perf_counter()
        for _ in range(repeats):
            pipe.decode(emb, guidance_scale=g, steps=1, sampler="ddim", seed=0)
        out[g] = (time.perf_counter() - start) / repeats / len(emb)
    return out


def plan_rows(args: argparse.Namespace, num_timesteps: int) -> list[dict]:
    """Every row to draw: the swept (sampler, calls) at every guidance, then the DDPM references (they take longest)."""
    rows = [dict(sampler=s, calls=c, guidance=g, reference=False, expected_calls=expected_calls(s, c, num_timesteps))
            for g in args.guidance for s in args.samplers for c in args.calls]  # fmt: skip
    rows += [dict(sampler=REFERENCE, calls=args.reference_steps, guidance=g, reference=True,
                  expected_calls=args.reference_steps) for g in args.guidance]  # fmt: skip
    return rows


def row_name(row: dict) -> str:
    return f"{row['sampler']}-{row['calls']}-g{row['guidance']:g}" + ("-reference" if row["reference"] else "")


def rounded(d: dict, digits: int = 4) -> dict:
    return {k: round(v, digits) if isinstance(v, float) else v for k, v in d.items()}


@torch.no_grad()
def draw_row(pipe: UnCLIP, emb: torch.Tensor, row: dict, args, counter: CallCounter, bar) -> tuple[torch.Tensor, dict]:
    """The row's N pictures, batch i from seed ``args.seed + i``; returns them and the counted calls and seconds."""
    out, counter.count, batches = [], 0, 0
    start = time.perf_counter()
    for i in range(0, len(emb), args.batch):
        z = emb[i : i + args.batch]
        out.append(pipe.decode(z, guidance_scale=row["guidance"], steps=row["calls"], sampler=row["sampler"],
                               seed=args.seed + i).cpu())  # fmt: skip
        batches += 1
        bar.update(len(z) * row["expected_calls"])
    seconds = time.perf_counter() - start
    return torch.cat(out), {"network_calls": counter.count // batches, "seconds": seconds}


def nll_table(points: int, seed: int) -> dict:
    """The 2D mixture's NLL (nats per point, mean ± standard error) three ways, with the ideal denoiser."""
    process = Toy2DConfig().diffusion.replace(var_type="fixed_small")  # the exact model gives ε only: fixed variance
    gd = process.build()
    mixture = GaussianMixture2D.default()
    x = mixture.sample(points, seed=123 + seed).double()
    model = mixture.exact_eps_model(gd)

    def entry(method: str, nll: torch.Tensor, seconds: float, **extra) -> dict:
        nll = nll.double()
        se = float(nll.std() / math.sqrt(len(nll))) if len(nll) > 1 else 0.0
        return {"method": method, "nll_nats": round(float(nll.mean()), 4), "nll_se": round(se, 4),
                "bits_per_dim": round(float(nll.mean()) / (2 * math.log(2)), 4), "seconds": round(seconds, 2),
                **extra}  # fmt: skip

    rows = []
    start = time.perf_counter()
    rows.append(entry("exact mixture density", -mixture.log_prob(x), time.perf_counter() - start))
    start = time.perf_counter()
    ode = gd.ode_log_likelihood(model, x)
    rows.append(entry("probability-flow ODE, ideal denoiser (RK45, exact trace)", ode["nll"],
                      time.perf_counter() - start, network_calls=int(ode["nfe"])))  # fmt: skip
    start = time.perf_counter()
    vlb = gd.calc_bpd_loop(model, x, generator=torch.Generator().manual_seed(seed))["total_bpd"] * 2 * math.log(2)
    rows.append(entry("VLB, ideal denoiser, fixed small variance (calc_bpd_loop)", vlb, time.perf_counter() - start,
                      network_calls=gd.num_timesteps))  # fmt: skip
    return {"points": points, "points_seed": 123 + seed, "units": "nats per 2D point (bits/dim = nats / (2 ln 2))",
            "process": process.to_dict(), "rows": rows}  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------------
# the report


def goal(rows: list[dict], reference_steps: int) -> dict:
    """Does any swept row reach its reference's FID within 10% at <= 20 counted network calls? Per guidance scale."""
    verdicts, parts = {}, []
    for ref in (r for r in rows if r["reference"]):
        g = ref["guidance"]
        bar = ref["fid"] * (1 + GOAL_MARGIN)
        cheap = [r for r in rows if not r["reference"] and r["guidance"] == g and r["network_calls"] <= GOAL_CALLS]
        hits = sorted((r for r in cheap if r["fid"] <= bar), key=lambda r: (r["network_calls"], r["fid"]))
        best = min(cheap, key=lambda r: r["fid"]) if cheap else None
        show = hits[0] if hits else best
        verdicts[f"{g:g}"] = {"met": bool(hits), "reference_fid": ref["fid"], "threshold": round(bar, 3),
                              "row": row_name(show) if show else None}  # fmt: skip
        if show is None:
            parts.append(f"guidance {g:g}: no swept row at <= {GOAL_CALLS} calls")
        else:
            what = "met by" if hits else "not met, best"
            parts.append(f"guidance {g:g}: {what} {show['sampler']} at {show['network_calls']} calls, FID "
                         f"{show['fid']:.2f} vs {1 + GOAL_MARGIN:g} × {ref['fid']:.2f} = {bar:.2f}")  # fmt: skip
    met = any(v["met"] for v in verdicts.values())
    line = (f"Goal (a sampler within {GOAL_MARGIN:.0%} of DDPM-{reference_steps}'s FID at <= {GOAL_CALLS} network "
            f"calls): {'MET' if met else 'NOT MET'} ({'; '.join(parts) if parts else 'no reference row'})")  # fmt: skip
    return {"met": met, "by_guidance": verdicts, "line": line}


def markdown(report: dict) -> str:
    label = {"ddim": "DDIM", "ddpm": "DDPM", "dpmpp2m": "DPM-Solver++(2M)", "euler": "Euler", "heun": "Heun"}
    lines = [
        f"N = {report['settings']['n']} pictures per row; FID floor = FID(conditioning pictures, reference pictures) "
        f"= {report['fid_floor']:.2f} (KID floor {report['kid_floor']:.2f} ± {report['kid_floor_std']:.2f}).",
        "",
        "| sampler | network calls (asked) | guidance | FID ↓ | KID (± sd) | FID floor | category | colour | pattern "
        "| s / picture |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    rows = sorted(report["rows"], key=lambda r: (-r["guidance"], not r["reference"], r["sampler"], r["calls"]))
    for r in rows:
        f = r["fidelity"]
        name = f"**{label[r['sampler']]}-{r['calls']} (reference)**" if r["reference"] else label[r["sampler"]]
        asked = f" ({r['calls']})" if r["network_calls"] != r["calls"] else ""
        lines.append(f"| {name} | {r['network_calls']}{asked} | {r['guidance']:g} | {r['fid']:.2f} | "
                     f"{r['kid']:.2f} ± {r['kid_std']:.2f} | {r['fid_floor']:.2f} | "
                     f"{f['category']:.3f} | {f['colour']:.3f} | {f['pattern']:.3f} | "
                     f"{r['seconds_per_picture']:.3f} |")  # fmt: skip
    nll = report.get("nll_2d")
    if nll:
        lines += ["", f"2D mixture, {nll['points']} points: NLL in nats per point (mean ± standard error)", "",
                  "| method | NLL (nats/point) | bits/dim | network calls | s |",
                  "|---|---|---:|---:|---:|"]  # fmt: skip
        for r in nll["rows"]:
            lines.append(f"| {r['method']} | {r['nll_nats']:.3f} ± {r['nll_se']:.3f} | {r['bits_per_dim']:.4f} | "
                         f"{r.get('network_calls', '—')} | {r['seconds']:.2f} |")  # fmt: skip
    if report.get("goal"):
        lines += ["", report["goal"]["line"]]
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


class Report:
    """The JSON report, rewritten (atomically) after every finished row; a fresh one each run, since rows drawn with
    another N or seed would not be comparable."""

    def __init__(self, path: str, data: dict):
        self.path, self.data = Path(path), data
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.write()

    def write(self) -> None:
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=2, ensure_ascii=False) + "\n")
        tmp.replace(self.path)


# ----------------------------------------------------------------------------------------------------------------------
# the run


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    progress = not args.no_progress
    run_start = time.perf_counter()

    pipe = UnCLIP.from_pretrained(args.checkpoints, upsampler=False)
    decoder, full = pipe.decoder
    T = full.num_timesteps
    check_against_process(args, T)
    cache = None if args.tiny or args.estimate_only else "default"  # data/cache: only for real runs
    cond = ProductCatalogue(args.n, split="test", seed=2, resolution=32, cache_dir=cache, progress=False)
    emb = torch.cat([pipe.encode_image(cond.images[i : i + 256]) for i in range(0, args.n, 256)])

    rows = plan_rows(args, T)
    probe = probe_seconds(pipe, emb[: args.batch], args.guidance)
    estimate = sum(probe[r["guidance"]] * r["expected_calls"] * args.n for r in rows)
    reference_share = sum(probe[r["guidance"]] * r["expected_calls"] * args.n for r in rows if r["reference"])
    print(f"probe ({torch.get_num_threads()} threads, batch {min(args.batch, args.n)}): "
          + ", ".join(f"guidance {g:g}: {1e3 * s:.1f} ms per picture per call" for g, s in probe.items()))  # fmt: skip
    print(f"expected run time: about {_duration(estimate)} for {len(rows)} rows × {args.n} pictures, "
          f"{sum(r['expected_calls'] for r in rows)} network calls per picture "
          f"(DDPM-{args.reference_steps} {reference_share / max(estimate, 1e-9):.0%} of it), plus a few seconds of "
          "metrics and the 2D table", flush=True)  # fmt: skip
    if args.estimate_only:
        return {"estimate_seconds": estimate, "probe_seconds_per_picture_call": probe, "rows": rows}

    classifier = load_attribute_classifier()
    ref = ProductCatalogue(args.n, split="test", seed=1, resolution=32, cache_dir=cache, progress=False)
    asked = cond.labels.clone()
    asked[:, LABEL_COLUMNS.index("background")] = -1  # not scored: the fidelity asked for is category/colour/pattern
    ref_features = extract_features(ref.images, classifier)
    cond_features = extract_features(cond.images, classifier)
    kid_kw = dict(subsets=50, subset_size=min(args.n, 100), seed=args.seed)
    fid_floor = fid(cond_features, ref_features)
    kid_floor = kid(cond_features, ref_features, **kid_kw)

    report = Report(args.json, {
        "what": "fast samplers vs DDPM on the shipped 32×32 decoder, FID/KID/fidelity per network call (issue 14)",
        "command": "python benchmarks/sampler_sweep.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
        "date": date.today().isoformat(),
        "settings": {**{k: v for k, v in vars(args).items() if k not in ("no_progress", "estimate_only")},
                     "num_timesteps": T,
                     "shipped_guidance": SHIPPED_GUIDANCE, "unguided_means": "scale 1: plain conditional model",
                     "conditioning": f"shipped CLIP image embeddings of {args.n} real test pictures (split test, "
                                     "seed 2); fidelity against their labels",
                     "fid_reference": f"{args.n} real test pictures (split test, seed 1)",
                     "starting_noise": "the same for every row: batch i seeded --seed + i"},
        "fid_floor": round(fid_floor, 3), "kid_floor": round(kid_floor[0], 4), "kid_floor_std": round(kid_floor[1], 4),
        "probe_seconds_per_picture_call": {f"{g:g}": round(s, 5) for g, s in probe.items()},
        "estimate_seconds": round(estimate, 1),
        "rows": [],
    })  # fmt: skip
    R = report.data

    counter = CallCounter(decoder)
    total = sum(r["expected_calls"] * args.n for r in rows)
    sweep_start = time.perf_counter()
    bar = tqdm(total=total, desc="sampler sweep", unit="picture-call", disable=not progress, dynamic_ncols=True)
    try:
        for row in rows:
            bar.set_postfix_str(row_name(row), refresh=True)
            images, got = draw_row(pipe, emb, row, args, counter, bar)
            feats = extract_features(images, classifier)
            k_mean, k_std = kid(feats, ref_features, **kid_kw)
            fidelity = prompt_fidelity(images, asked, classifier)
            R["rows"].append({
                **{k: row[k] for k in ("sampler", "calls", "guidance", "reference")},
                "network_calls": got["network_calls"], "fid": round(fid(feats, ref_features), 3),
                "kid": round(k_mean, 4), "kid_std": round(k_std, 4), "fid_floor": round(fid_floor, 3), "fid_n": args.n,
                "fidelity": rounded({a: fidelity[a] for a in ATTRS} | {"n": fidelity["n"]}),
                "seconds": round(got["seconds"], 2), "seconds_per_picture": round(got["seconds"] / args.n, 4),
            })  # fmt: skip
            report.write()
            r = R["rows"][-1]
            tqdm.write(f"{row_name(row)}: {r['network_calls']} calls, FID {r['fid']:.2f} (floor {fid_floor:.2f}), "
                       f"KID {r['kid']:.4f} ± {r['kid_std']:.4f}, fidelity "
                       f"{' / '.join(format(r['fidelity'][a], '.3f') for a in ATTRS)}, "
                       f"{r['seconds_per_picture']:.3f} s/picture")  # fmt: skip
    finally:
        bar.close()
        counter.handle.remove()

    R["sweep_seconds"] = round(time.perf_counter() - sweep_start, 1)
    R["nll_2d"] = nll_table(args.nll_points, args.seed)
    R["goal"] = goal(R["rows"], args.reference_steps)
    R["total_seconds"] = round(time.perf_counter() - run_start, 1)
    R["markdown"] = markdown(R)
    report.write()
    print()
    print(R["markdown"])
    print(f"\nwrote {args.json} in {_duration(R['total_seconds'])} (the sweep {_duration(R['sweep_seconds'])}, "
          f"estimated {_duration(estimate)})")  # fmt: skip
    return R


if __name__ == "__main__":
    main()
