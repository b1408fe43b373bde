"""A decoder setting tried against the fast recipe's: retrain only the decoder on a copy of a run's CLIP and prior,
then grade the pipeline exactly as ``train all`` does.

    python benchmarks/decoder_trial.py --source out/fast_recipe/seed0 --name b128 --batch 128 --steps 300 --lr 2e-3 \
        --warmup 30
    python benchmarks/decoder_trial.py --source out/fast_recipe/seed0 --name p2 \
        --model '{"unet": {"patch_size": 2, "model_channels": 64, "channel_mult": [1, 1]}}'

How docs/BENCHMARKS.md §2.1 and §3.4 compared batch sizes and step counts for the fast recipe's decoder at equal CLIP
and prior (the source folder is a finished ``train all --recipe fast`` run, e.g. one of ``benchmarks/fast_recipe.py``).
Each trial's row (settings, the decoder's seconds, the grades) is added to ``--report``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

from fast_recipe import copy_clip_and_prior  # a sibling script: run this one as benchmarks/decoder_trial.py


def trial(source: Path, out: Path, seed: int = 0, **changes) -> dict:
    """The fast recipe's decoder with ``changes`` (StageSettings fields), trained on ``source``'s CLIP and prior.
    ``seed``: the decoder's and the evaluation's (the source run's own, to compare with its grades)."""
    from dalle2_edu.recipes import Runner
    from dalle2_edu.recipes.settings import RECIPES
    from dalle2_edu.recipes.stages import _merge

    copy_clip_and_prior(source, out)
    recipe = RECIPES["fast"]["decoder"]
    model = _merge(recipe.model, changes.pop("model", {}))  # merged field by field into the recipe's model
    RECIPES["fast"]["decoder"] = replace(recipe, **changes, model=model)
    try:
        start = time.perf_counter()
        report = Runner(recipe="fast", out=out, device="cpu", seed=seed, progress=False,
                        command="benchmarks/decoder_trial.py").run("decoder,evaluate")  # fmt: skip
        seconds = time.perf_counter() - start
    finally:
        RECIPES["fast"]["decoder"] = recipe
    evaluation, decoder = report["stages"]["evaluate"], report["stages"]["decoder"]
    return {"changes": changes, "model": model, "seed": seed, "source": str(source),
            "decoder_seconds": decoder.get("train_seconds"),
            "decoder_and_evaluation_seconds": round(seconds, 1),
            "seen": {k: evaluation["seen"][k] for k in ("colour", "category", "pattern", "background")},
            "heldout": {k: evaluation["heldout"][k] for k in ("colour", "category")},
            "date": time.strftime("%Y-%m-%d")}  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", required=True, help="a finished fast-recipe run folder (its CLIP and prior)")
    parser.add_argument("--name", required=True, help="the trial's name (its folder and its row)")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--model", type=json.loads, default=None,
                        help="JSON merged into the recipe's decoder model, e.g. '{\"unet\": {\"patch_size\": 2}}'")
    parser.add_argument("--seed", type=int, default=0, help="the decoder's and the evaluation's seed")
    parser.add_argument("--out", default="out/decoder_trials")
    parser.add_argument("--report", default="docs/benchmarks/decoder_trials.json")
    args = parser.parse_args(argv)
    changes = {k: v for k, v in (("batch_size", args.batch), ("steps", args.steps), ("lr", args.lr),
                                 ("warmup_steps", args.warmup), ("model", args.model)) if v is not None}  # fmt: skip
    row = trial(Path(args.source), Path(args.out) / args.name, seed=args.seed, **changes)
    path = Path(args.report)
    result = json.loads(path.read_text()) if path.exists() else {"command": "python benchmarks/decoder_trial.py"}
    result.setdefault("trials", {})[args.name] = row
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(args.name, json.dumps(row))
    return row


if __name__ == "__main__":
    main()
