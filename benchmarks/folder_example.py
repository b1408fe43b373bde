"""The README's worked example: train the whole pipeline on a folder of your own pictures, then read the results.

    python benchmarks/folder_example.py --n 600 --recipe fast       # ~10 minutes on 2 CPU cores

1. draws ``N`` captioned pictures of gadgets the catalogue never shows (a *gizmo* is a disc, a *widget* a square, a
   *sprocket* a triangle; red, green, blue or yellow) into ``out/gadgets`` with a ``metadata.jsonl``, as a user would;
2. runs ``python -m dalle2_edu train all --data out/gadgets --out runs/gadgets`` (the recipe scales its steps to N);
3. generates 4 pictures for each of the 12 (colour, noun) prompts and reads colour and shape back from the pixels
   (:func:`dalle2_edu.datasets.shapes.read_shapes`: no trained classifier involved);
4. writes ``docs/benchmarks/folder_example.json`` and the grid ``docs/img/folder_example.png``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=600, help="pictures in the folder")
    parser.add_argument("--recipe", default="fast")
    parser.add_argument("--folder", default="out/gadgets")
    parser.add_argument("--out", default="runs/gadgets")
    parser.add_argument("--per-prompt", type=int, default=4)
    parser.add_argument("--report", default="docs/benchmarks/folder_example.json")
    parser.add_argument("--grid", default="docs/img/folder_example.png")
    args = parser.parse_args()

    import torch

    from dalle2_edu.datasets.shapes import SHAPE_COLOURS, SHAPES, read_shapes, write_shapes_folder
    from dalle2_edu.pipeline import UnCLIP

    folder, out = ROOT / args.folder, ROOT / args.out
    if not (folder / "metadata.jsonl").exists():
        write_shapes_folder(folder, n=args.n, seed=0)
    command = [sys.executable, "-m", "dalle2_edu", "train", "all", "--recipe", args.recipe, "--data", str(folder),
               "--out", str(out), "--no-progress"]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True)
    train_seconds = time.perf_counter() - start

    pipe = UnCLIP.from_pretrained(out)
    prompts = [f"a {c} {s}" for s in SHAPES for c in SHAPE_COLOURS]
    start = time.perf_counter()
    gen = pipe.generate(prompts, n=args.per_prompt, seed=0, progress=True)
    gen_seconds = time.perf_counter() - start
    readings = read_shapes(gen.tensors)
    wanted = [(c, s) for s in SHAPES for c in SHAPE_COLOURS for _ in range(args.per_prompt)]
    colour = sum(r["colour"] == c for r, (c, s) in zip(readings, wanted)) / len(wanted)
    shape = sum(r["shape"] == s for r, (c, s) in zip(readings, wanted)) / len(wanted)
    both = sum(r["colour"] == c and r["shape"] == s for r, (c, s) in zip(readings, wanted)) / len(wanted)
    # the reader itself, on the folder's real pictures (its accuracy bounds what it can say of generated ones)
    import json as _json

    import numpy as np
    from PIL import Image

    from dalle2_edu.datasets.shapes import caption_truth

    entries = [_json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()[:120]]
    real = read_shapes(torch.stack([torch.from_numpy(np.array(Image.open(folder / e["file_name"]).convert("RGB")))
                                    .permute(2, 0, 1) for e in entries]))  # fmt: skip
    truth = [caption_truth(e["text"]) for e in entries]
    reader = {"pictures": len(entries),
              "colour": sum(r["colour"] == t["colour"] for r, t in zip(real, truth)) / len(entries),
              "shape": sum(r["shape"] == t["shape"] for r, t in zip(real, truth)) / len(entries)}  # fmt: skip
    stage_seconds = {stage: _json.loads((out / f"{name}.json").read_text()).get("train_seconds")
                     for stage, name in (("clip", "clip_tiny"), ("prior", "prior"), ("decoder", "decoder32"),
                                         ("upsampler", "upsampler64"))}  # fmt: skip
    report = {
        "command": f"python benchmarks/folder_example.py --n {args.n} --recipe {args.recipe}",
        "train_command": " ".join(["python", "-m", "dalle2_edu", *command[3:]]).replace(str(ROOT) + "/", ""),
        "pictures": args.n,
        "train_seconds_per_stage": stage_seconds,
        "this_run_seconds": round(train_seconds, 1),
        "generate_seconds": round(gen_seconds, 1),
        "pictures_generated": len(wanted),
        "colour_read_correctly": round(colour, 4),
        "shape_read_correctly": round(shape, 4),
        "both_correct": round(both, 4),
        "chance": {"colour": 0.25, "shape": round(1 / 3, 4), "both": round(1 / 12, 4)},
        "reader_on_real_pictures": reader,
        "stages": json.loads((out / "report.json").read_text())["stages"],
    }
    (ROOT / args.report).parent.mkdir(parents=True, exist_ok=True)
    (ROOT / args.report).write_text(json.dumps(report, indent=2) + "\n")
    gen.grid(nrow=args.per_prompt, scale=2).save(ROOT / args.grid)
    print(json.dumps({k: report[k] for k in ("colour_read_correctly", "shape_read_correctly", "both_correct",
                                             "train_seconds_per_stage", "reader_on_real_pictures")}, indent=1))


if __name__ == "__main__":
    main()
