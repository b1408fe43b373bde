"""Sample quality vs sampler and steps for the attribute-conditioned 32×32 image model.

For each sampler (DDPM 1000 steps with learned and with fixed variance; DDIM 10/25/50/100 steps; DDIM-50 with
guidance), draws N pictures for N label rows of the catalogue's test split and compares them with the N real test
pictures: FID and KID on the attribute classifier's features, beside the floor FID(train, test) at the same N, and
prompt fidelity (per-attribute accuracy read by the classifier).

    python benchmarks/image_sampling.py --checkpoint data/checkpoints/image32_attributes.safetensors --n 192
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from dalle2_edu.checkpoint import load_checkpoint
from dalle2_edu.datasets.catalogue import ProductCatalogue
from dalle2_edu.metrics import fid, fid_floor, kid, load_attribute_classifier, prompt_fidelity
from dalle2_edu.stages.attributes import AttributeUNet, ImageModelConfig, load_image_model, sample_images
from dalle2_edu.viz import image_grid

RUNS = [  # name, sampler, steps, variance, guidance
    ("DDPM-1000, learned variance", "ddpm", 1000, "learned_range", 1.0),
    ("DDPM-1000, fixed variance (β̃)", "ddpm", 1000, "fixed_small", 1.0),
    ("DDIM-10", "ddim", 10, "learned_range", 1.0),
    ("DDIM-25", "ddim", 25, "learned_range", 1.0),
    ("DDIM-50", "ddim", 50, "learned_range", 1.0),
    ("DDIM-100", "ddim", 100, "learned_range", 1.0),
    ("DDIM-50, guidance 3", "ddim", 50, "learned_range", 3.0),
]


class MeanOnly(torch.nn.Module):
    """Drop a learned-variance network's variance channels, to sample it with a fixed variance."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    @property
    def unet(self):  # sample_images reads the picture size from model.unet.config
        return self.model.unet

    def forward(self, x, t, labels):
        return self.model(x, t, labels)[:, : x.shape[1]]


def load_model(path) -> tuple[AttributeUNet, ImageModelConfig]:
    """A shipped ``.safetensors`` (EMA weights, from ``save_image_model``) or a Trainer ``checkpoint.pt`` (its EMA)."""
    if str(path).endswith(".safetensors"):
        model, _ = load_image_model(path)
        return model, model.config
    ckpt = load_checkpoint(path)
    cfg = ImageModelConfig(**ckpt["config"]["image_model"])
    model = AttributeUNet(cfg)
    model.load_state_dict(ckpt["ema"])
    return model.eval(), cfg


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default="data/checkpoints/image32_attributes.safetensors")
    parser.add_argument("--n", type=int, default=192, help="pictures per sampler (and real pictures compared)")
    parser.add_argument("--runs", default="all", help="comma-separated run indices, or 'all'")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="docs/benchmarks/image_sampling.json")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model, cfg = load_model(args.checkpoint)
    classifier = load_attribute_classifier()
    test = ProductCatalogue(args.n, split="test", seed=1, resolution=32, progress=False)
    labels = test.labels
    real = test.images
    floor = fid_floor(args.n, classifier=classifier)
    chosen = RUNS if args.runs == "all" else [RUNS[int(i)] for i in args.runs.split(",")]
    out_path = Path(args.out)
    results = json.loads(out_path.read_text())["runs"] if out_path.exists() else {}
    for name, sampler, steps, var_type, scale in chosen:
        gd = cfg.diffusion.replace(var_type=var_type).build()
        net = model if var_type == "learned_range" else MeanOnly(model)
        start = time.perf_counter()
        images = torch.cat([
            sample_images(net, gd, labels[i : i + 64], sampler=sampler, steps=steps, guidance_scale=scale,
                          seed=args.seed + i, progress=True)
            for i in range(0, args.n, 64)
        ])  # fmt: skip
        seconds = time.perf_counter() - start
        k_mean, k_std = kid(images, real, classifier, subsets=50, subset_size=min(args.n, 100))
        results[name] = {
            "sampler": sampler, "steps": steps, "variance": var_type, "guidance": scale,
            "fid": round(fid(images, real, classifier), 2), "kid": round(k_mean, 4), "kid_std": round(k_std, 4),
            "fidelity": {k: round(v, 3) for k, v in prompt_fidelity(images, labels, classifier).items()},
            "seconds": round(seconds, 1), "n": args.n,
        }  # fmt: skip
        print(name, results[name], flush=True)
        if name == "DDIM-50":
            Path("docs/img").mkdir(parents=True, exist_ok=True)
            from PIL import Image

            Image.fromarray(image_grid(images[:32], nrow=8).numpy()).resize((8 * 34 * 3, 4 * 34 * 3), 0).save(
                "docs/img/image32_ddim50.png"
            )
        report = {"fid_floor_train_vs_test": round(floor, 2), "n": args.n, "checkpoint": args.checkpoint,
                  "runs": results}  # fmt: skip
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(report, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
