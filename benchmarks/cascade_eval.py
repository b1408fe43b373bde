"""The whole cascade, 32 → 64 → 128: what each stage costs and what it adds (issue 16, docs/BENCHMARKS.md §7).

Two measurements with the shipped checkpoints:

* **second upsampler on real pictures**: the catalogue's 64×64 test pictures upsampled to 128×128 against the real
  128×128 ones (PSNR, sharpness, consistency), beside bilinear and bicubic (``evaluate_upsampler``);
* **text → picture at each size**: ``generate(size=32|64|128)`` for the evaluation prompts from one seed (the
  pictures at the three sizes share their decoder output), seconds per picture after loading, and the attribute
  classifier's fidelity read on each size box-filtered down to 32×32: an upsampler must not change what the
  picture shows.

    python benchmarks/cascade_eval.py --n 64 --per-prompt 4 --out docs/benchmarks/cascade.json
"""

from __future__ import annotations

import argparse
import time

import torch
from _report import open_report, save_row

from dalle2_edu.images import box_downsample
from dalle2_edu.metrics import prompt_fidelity
from dalle2_edu.pipeline import UnCLIP
from dalle2_edu.stages.upsampler import evaluate_upsampler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=64, help="test pictures for the upsampler measurement")
    parser.add_argument("--per_prompt", type=int, default=4, help="pictures per evaluation prompt")
    parser.add_argument("--steps", type=int, default=25, help="upsampler DDIM steps on real pictures")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="docs/benchmarks/cascade.json")
    args = parser.parse_args()
    report = open_report(args, "cascade_eval.py")

    pipe = UnCLIP.from_pretrained("data/checkpoints")
    model, gd = pipe.upsampler128
    start = time.perf_counter()
    row = evaluate_upsampler(model, gd, n=args.n, steps=args.steps, seed=0, progress=True)
    row["seconds"] = round(time.perf_counter() - start, 1)
    save_row(args, report, "upsampler128_real", row)
    print({k: row[k] for k in ("diffusion", "bicubic", "bilinear")})

    from dalle2_edu.evaluate import eval_prompts

    all_prompts, labels = eval_prompts("seen")
    picks = list(range(0, len(all_prompts), len(all_prompts) // 12))[:12]  # 12 prompts across the catalogue
    prompts = [all_prompts[i] for i in picks]
    asked = labels[picks].repeat_interleave(args.per_prompt, dim=0)
    rows = {}
    for size in (32, 64, 128):
        pipe.generate(prompts[:1], n=1, seed=0, size=size)  # warm-up
        start = time.perf_counter()
        out = pipe.generate(prompts, n=args.per_prompt, seed=0, size=size)
        seconds = time.perf_counter() - start
        small = box_downsample(((out.tensors.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8), size // 32)
        fidelity = prompt_fidelity(small, asked)
        rows[size] = {"seconds_per_picture": round(seconds / len(out.prompts), 3), "pictures": len(out.prompts),
                      "fidelity_at_32": {k: round(v, 3) for k, v in fidelity.items()}}  # fmt: skip
        print(size, rows[size])
    save_row(args, report, "generate_by_size", rows)


if __name__ == "__main__":
    main()
