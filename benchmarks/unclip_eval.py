"""Grade the shipped unCLIP pipeline: prompt fidelity on seen and held-out prompts, FID/KID, and the ablations.

Runs (each writes its row into the JSON as soon as it finishes, so an interrupted run keeps what it measured):

- ``main``: the pipeline as ``make demo`` and ``generate`` run it, with ``generate``'s defaults (prior best of 2,
  decoder guidance 3; since 2026-12-04 ancestral DDPM, 20 decoder and 10 upsampler steps, to 64×64); 4 pictures
  for each of the 174 seen and 18 held-out prompts, FID/KID of the seen-prompt pictures against as many real test
  pictures, beside the floor FID(train, test);
- ``main-2026-12-04``: the same with ``generate``'s defaults of 2026-12-04 (ancestral DDPM, 20 decoder steps, 10
  upsampler steps, prior 64 DDIM steps best of 2): what the faster defaults are measured against (issue 13, goal 3);
- ``main-2026-12-03``: the same with the defaults before that (25 DDIM decoder steps, 10 DDIM upsampler steps);
- ``guidance-S``: decoder guidance sweep, 32×32 (no upsampler), 2 pictures per prompt, FID against real 32×32;
- ``no-prior``: the CLIP text embedding fed to the decoder directly (DALL·E 2's ablation), same settings as
  ``guidance-3``;
- ``steps-N``: decoder DDIM steps, guidance 3;
- ``screen-SAMPLER-N``: the screen behind ``generate``'s decoder steps (issue 13, goal 3): 32×32, 2 pictures per
  prompt, prior 64 steps, guidance 3, the decoder sampled with SAMPLER for N steps (calls).

The ablations sample with DDIM (as they were first measured), whatever ``generate``'s default.

    python benchmarks/unclip_eval.py --out docs/benchmarks/unclip.json
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from _report import open_report, save_row, select_runs

from dalle2_edu.evaluate import evaluate_pipeline
from dalle2_edu.metrics import load_attribute_classifier
from dalle2_edu.pipeline import UnCLIP

ABLATION = dict(n=2, upsample=False, steps=25, guidance_scale=3.0, sampler="ddim")
RUNS = {
    "main": dict(n=4, upsample=True, guidance_scale=3.0),  # generate's own defaults (sampler, steps, upsampler steps)
    "main-2026-12-04": dict(n=4, upsample=True, guidance_scale=3.0, sampler="ddpm", steps=20, upsample_steps=10,
                            prior_steps=64, n_candidates=2),
    "main-2026-12-03": dict(n=4, upsample=True, guidance_scale=3.0, sampler="ddim", steps=25, upsample_steps=10),
    "guidance-1": {**ABLATION, "guidance_scale": 1.0},
    "guidance-2": {**ABLATION, "guidance_scale": 2.0},
    "guidance-3": ABLATION,
    "guidance-5": {**ABLATION, "guidance_scale": 5.0},
    "no-prior": {**ABLATION, "use_prior": False},
    "steps-10": {**ABLATION, "steps": 10},
    "steps-50": {**ABLATION, "steps": 50},
    **{f"screen-{sampler}-{steps}": dict(n=2, upsample=False, guidance_scale=3.0, prior_steps=64, sampler=sampler,
                                         steps=steps)
       for sampler, steps in (("ddpm", 20), ("ddpm", 12), ("ddpm", 10), ("ddim", 10), ("dpmpp2m", 10))},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoints", default="data/checkpoints")
    parser.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated subset of {', '.join(RUNS)}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="docs/benchmarks/unclip.json")
    args = parser.parse_args()
    names = select_runs(args.runs, RUNS)
    report = open_report(args, "unclip_eval.py")
    pipe = UnCLIP.from_pretrained(args.checkpoints)
    classifier = load_attribute_classifier()
    for name in names:
        settings = dict(RUNS[name])
        n = settings.pop("n")
        fid_real = 174 * n  # every seen-prompt picture, against as many real test pictures
        start = time.perf_counter()
        with torch.no_grad():
            row = evaluate_pipeline(pipe, n=n, seed=args.seed, fid_real=fid_real, classifier=classifier, **settings)
        row["seconds"] = round(time.perf_counter() - start, 1)
        save_row(args, report, name, row)
        print(name, json.dumps({k: row.get(k) for k in ("seen", "heldout", "fid", "fid_floor_train_vs_test", "grain",
                                                         "seconds")}))


if __name__ == "__main__":
    main()
