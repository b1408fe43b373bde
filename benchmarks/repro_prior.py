"""Reproduce the shipped prior with its recipe's command, then grade it and the shipped one side by side.

    mkdir -p runs/repro && cp data/checkpoints/clip_tiny.* runs/repro/
    python -m dalle2_edu train prior --recipe full --out runs/repro
    python benchmarks/repro_prior.py --repro runs/repro

Both priors draw one CLIP image embedding per caption (best of 2, 64 DDIM steps, seed 0) for the catalogue's test
and held-out captions (seed 1, never trained on); reported: cos(sample, the caption's real image embedding) against
the no-prior baseline cos(text embedding, image embedding), and the share of attributes a zero-shot CLIP reading of
the sampled embedding gets right. Writes docs/benchmarks/repro_prior.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    from dalle2_edu.datasets.catalogue import ProductCatalogue
    from dalle2_edu.stages.clip import embed_dataset, load_clip
    from dalle2_edu.stages.prior import evaluate_prior, load_prior, zero_shot_class_embeddings

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repro", default="runs/repro")
    parser.add_argument("--n", type=int, default=1000, help="captions per split")
    parser.add_argument("--out", default="docs/benchmarks/repro_prior.json")
    args = parser.parse_args()

    clip = load_clip(ROOT / "data/checkpoints/clip_tiny.safetensors")
    weights = zero_shot_class_embeddings(clip)
    train = ProductCatalogue(20000, split="train", seed=0, resolution=32, progress=False)
    mean_image = embed_dataset(clip, train.images[:4000], train.captions[:4000], with_tokens=False,
                               progress=False)["image_emb"].mean(0)  # fmt: skip
    splits = {}
    for split in ("test", "heldout"):
        cat = ProductCatalogue(args.n, split=split, seed=1, resolution=32, progress=False)
        emb = dict(embed_dataset(clip, cat.images, cat.captions, progress=False))
        emb["labels"] = cat.labels
        splits[split] = emb
    report = {"command": f"python benchmarks/repro_prior.py --repro {args.repro} --n {args.n}", "n": args.n}
    for name, path in (("shipped", ROOT / "data/checkpoints/prior.safetensors"),
                       ("reproduced", ROOT / args.repro / "prior.safetensors")):  # fmt: skip
        prior, gd = load_prior(path)
        report[name] = {}
        for split, emb in splits.items():
            with torch.no_grad():
                r = evaluate_prior(prior, gd, emb, n_candidates=2, steps=64, seed=0, weights=weights,
                                   mean_image_emb=mean_image)  # fmt: skip
            report[name][split] = {"cos_prior": round(r["cos_prior"], 4),
                                   "cos_text_baseline": round(r["cos_text_baseline"], 4),
                                   "zero_shot_attributes": round(r["attributes"]["mean"], 4)}  # fmt: skip
    repro_json = json.loads((ROOT / args.repro / "prior.json").read_text())
    report["reproduced_training"] = {k: repro_json.get(k) for k in ("command", "train_seconds", "final_loss")}
    shipped_json = json.loads((ROOT / "data/checkpoints/prior.json").read_text())
    report["shipped_training"] = {"train_seconds": shipped_json.get("train_seconds"),
                                  "final_loss": shipped_json.get("final_loss")}  # fmt: skip
    (ROOT / args.out).parent.mkdir(parents=True, exist_ok=True)
    (ROOT / args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
