"""How few steps the prior and the upsampler need: the screens behind ``generate``'s defaults (issue 13, goal 3).

- ``prior``: the shipped prior on 1000 test captions (best of 2, DDIM): mean cosine between the sampled image
  embedding and the caption's real picture's, at 64, 32, 16 and 8 steps, and best of 1 at 16;
- ``upsampler``: the shipped 32→64 upsampler on 64 real test pictures on flat backgrounds (white or light grey), box-
  filtered to 32×32 and upsampled back with ancestral DDPM: PSNR against the real 64×64 pictures and the grain of
  their backgrounds against the real pictures' (:func:`dalle2_edu.metrics.background_grain`), for 5 and 10 evenly
  spaced steps and 4, 5 and 6 steps on DDIM's quadratic spacing, with seconds per setting.

    python benchmarks/sampling_steps.py      # about 3 minutes on 2 cores; writes docs/benchmarks/sampling_steps.json
"""

from __future__ import annotations

import argparse
import time

import torch
from _report import open_report, save_row, select_runs

from dalle2_edu.datasets.catalogue import BACKGROUNDS, ProductCatalogue
from dalle2_edu.metrics import FLAT_BACKGROUNDS, background_grain
from dalle2_edu.stages.upsampler import downsample2x, load_upsampler, psnr, to_float_images, upsample

PRIOR_SETTINGS = [(64, 2), (32, 2), (16, 2), (8, 2), (16, 1)]
UPSAMPLER_SETTINGS = [("even", 10), ("even", 5), ("quad", 4), ("quad", 5), ("quad", 6)]


def prior_rows(seed: int) -> dict:
    from dalle2_edu.stages.clip import embed_dataset, load_clip
    from dalle2_edu.stages.prior import evaluate_prior, load_prior

    test = ProductCatalogue(1000, split="test", seed=1, resolution=32, progress=False)
    emb = embed_dataset(load_clip(), test.images, test.captions, cache_dir=None, progress=False)
    prior, gd = load_prior()
    rows = {}
    for steps, candidates in PRIOR_SETTINGS:
        start = time.perf_counter()
        r = evaluate_prior(prior, gd, emb, n_candidates=candidates, steps=steps, seed=seed)
        rows[f"{steps} steps, best of {candidates}"] = {
            "cos_prior": round(r["cos_prior"], 4), "cos_prior_se": round(r["cos_prior_se"], 4),
            "cos_text_baseline": round(r["cos_text_baseline"], 4), "seconds": round(time.perf_counter() - start, 1),
        }  # fmt: skip
    return rows


def upsampler_rows(seed: int, n: int = 64) -> dict:
    real = ProductCatalogue(200, split="test", seed=1, resolution=64, progress=False)
    flat = torch.tensor([BACKGROUNDS[int(b)] in FLAT_BACKGROUNDS for b in real.labels[:, 3]])
    pictures = real.images[flat][:n]
    high, low = to_float_images(pictures), to_float_images(downsample2x(pictures))
    reference = background_grain(high).mean().item()
    model, gd = load_upsampler()
    rows = {"real pictures": {"grain": round(reference, 6), "n": len(high)}}
    for spacing, steps in UPSAMPLER_SETTINGS:
        start = time.perf_counter()
        out = upsample(model, gd, low, steps=steps, seed=seed, sampler="ddpm", spacing=spacing)
        rows[f"ddpm {steps} steps, {spacing}"] = {
            "psnr_db": round(psnr(out, high).mean().item(), 3),
            "grain_ratio": round(background_grain(out).mean().item() / reference, 3),
            "seconds": round(time.perf_counter() - start, 1),
        }
    return rows


RUNS = {"prior": prior_rows, "upsampler": upsampler_rows}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated subset of {', '.join(RUNS)}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="docs/benchmarks/sampling_steps.json")
    args = parser.parse_args(argv)
    report = open_report(args, "sampling_steps.py")
    with torch.no_grad():
        for name in select_runs(args.runs, RUNS):
            rows = RUNS[name](args.seed)
            save_row(args, report, name, rows)
            for setting, row in rows.items():
                print(f"{name}: {setting}: {row}")
    return report


if __name__ == "__main__":
    main()
