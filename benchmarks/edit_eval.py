"""Measure the unCLIP edits of the shipped pipeline on freshly drawn catalogue products (64×64, seen pairs).

Runs (each writes its row into the JSON as soon as it finishes):

- ``variations``: 4 variations per source (η = 0.8 from the DDIM-inverted noise, guidance 3, 25 steps); share that
  keep the source's category / colour / pattern, RMS pixel distance between variations and to the source;
  ``variations-eta0`` (η = 0: the inversion's reconstruction) and ``variations-noinvert`` (fresh noise) beside it;
- ``text_diff``: recolour every source from its caption to the same caption in another colour, θ = 0.25/0.5/0.75;
  share of edits showing the new colour with the category unchanged;
- ``inpaint``: repaint the product (its mask grown by 2 px) with the caption in another colour, RePaint with U = 4
  resamplings, 2 per source; share showing the new colour and category, the largest change outside the mask;
  ``inpaint-U1``: plain replacement (no resampling) beside it.

    python benchmarks/edit_eval.py --n 48 --out docs/benchmarks/edits.json
"""

from __future__ import annotations

import argparse
import time

from _report import open_report, save_row, select_runs

from dalle2_edu.evaluate import edit_sources, evaluate_inpaint, evaluate_text_diff, evaluate_variations
from dalle2_edu.metrics import load_attribute_classifier
from dalle2_edu.pipeline import UnCLIP

RUNS = {
    "variations": (evaluate_variations, {}),
    "variations-eta0": (evaluate_variations, {"eta": 0.0}),
    "variations-noinvert": (evaluate_variations, {"invert": False}),
    "text_diff": (evaluate_text_diff, {}),
    "inpaint": (evaluate_inpaint, {}),
    "inpaint-U1": (evaluate_inpaint, {"resample": 1}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoints", default="data/checkpoints")
    parser.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated subset of {', '.join(RUNS)}")
    parser.add_argument("--n", type=int, default=48, help="source pictures")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="docs/benchmarks/edits.json")
    args = parser.parse_args()
    names = select_runs(args.runs, RUNS)
    report = open_report(args, "edit_eval.py", leave_out=("out", "runs"))
    pipe = UnCLIP.from_pretrained(args.checkpoints)
    classifier = load_attribute_classifier()
    sources = edit_sources(args.n, seed=args.seed)
    for name in names:
        fn, kwargs = RUNS[name]
        start = time.perf_counter()
        row = fn(pipe, sources, classifier=classifier, **kwargs)
        row["seconds"] = round(time.perf_counter() - start, 1)
        save_row(args, report, name, row)
        print(name, row, flush=True)


if __name__ == "__main__":
    main()
