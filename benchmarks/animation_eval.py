"""Measure product animations of the shipped pipeline: how smooth they are and whether the product stays the product.

Runs (each writes its row into the JSON as soon as it finishes, and its GIF and WebP into ``--frames-out``):

- ``mug-colours``, ``tshirt-colours``, ``lamp-colours``: a colour sweep through the catalogue's 8 colours and back
  (``--per-colour`` frames from each colour to the next, seed and starting noise fixed);
- ``mug-to-handbag``: two prompts, ``--frames`` frames.

For each: ``frame_change_mean`` / ``_max``, the mean absolute pixel change between consecutive frames (0..255 levels,
64×64 pictures as saved); ``key_step_change``, the same between consecutive key pictures (what cutting from colour to
colour would change at once; the sweep spreads it over ``--per-colour`` frames); ``category_hold``, the share of
frames the attribute classifier reads as the prompt's category (it should hold while the colour moves); and
``key_colour_accuracy``, the share of key frames read as their colour.

    python benchmarks/animation_eval.py --out docs/benchmarks/animation.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from _report import open_report, save_row, select_runs

from dalle2_edu.animation import animation_report, frame_changes, save_animation
from dalle2_edu.metrics import load_attribute_classifier
from dalle2_edu.pipeline import UnCLIP

RUNS = {
    "mug-colours": ("a {colour} striped mug on a wooden table", None),
    "tshirt-colours": ("a {colour} t-shirt on white", None),
    "lamp-colours": ("a {colour} lamp on light grey", None),
    "mug-to-handbag": ("a red striped mug on a wooden table", "a blue dotted handbag on white"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoints", default="data/checkpoints")
    parser.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated subset of {', '.join(RUNS)}")
    parser.add_argument("--per-colour", type=int, default=4, help="frames from one colour to the next")
    parser.add_argument("--frames", type=int, default=16, help="frames of a prompt-to-prompt run")
    parser.add_argument("--steps", type=int, default=25, help="decoder DDIM steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="docs/benchmarks/animation.json")
    parser.add_argument("--frames-out", default="out/animation_eval", help="folder for the GIFs and WebPs")
    args = parser.parse_args()
    names = select_runs(args.runs, RUNS)
    report = open_report(args, "animation_eval.py", leave_out=("out", "runs", "frames_out"))
    pipe = UnCLIP.from_pretrained(args.checkpoints, device=args.device)
    classifier = load_attribute_classifier()
    folder = Path(args.frames_out)
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        start, end = RUNS[name]
        began = time.perf_counter()
        if end is None:
            out = pipe.animate(start, colours="all", frames=8 * args.per_colour, loop=True, steps=args.steps,
                               seed=args.seed, progress=True)  # fmt: skip
        else:
            out = pipe.animate(start, end, frames=args.frames, steps=args.steps, seed=args.seed, progress=True)
        seconds = time.perf_counter() - began
        row = animation_report(out, classifier=classifier)
        keys = [j for j, label in enumerate(out.prompts) if label in out.settings["keys"]]
        row["key_step_change"] = round(frame_changes(out.tensors[keys + keys[:1]]).mean().item(), 3)
        row["seconds"] = round(seconds, 1)
        row["files"] = [str(p) for p in save_animation(out.tensors, folder / f"{name}.gif", duration=80)]
        save_row(args, report, name, row)
        print(f"{name}: frame-to-frame change {row['frame_change_mean']:.2f} (max {row['frame_change_max']:.2f}) of "
              f"255, {row['key_step_change']:.2f} from key to key; category {row['category']} held in "
              f"{row['category_hold']:.0%} of {row['frames']} frames"
              + (f"; key colours read right {row['key_colour_accuracy']:.0%}" if "key_colour_accuracy" in row else "")
              + f" ({seconds:.0f} s)", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
