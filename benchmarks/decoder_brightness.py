"""Why the ε-prediction decoder drew white backgrounds grey, and whether a decoder does: brightness from z_i.

Decodes the shipped CLIP's image embeddings of real test pictures, 16 on each background (white, light grey, wood),
and reports for each decoder file given:

- ``corner``: the mean of the decoded pictures' four 4×4 corners (background only) per background, on the [-1, 1]
  scale, beside the real pictures' (guidance 3, ancestral DDPM-20, as ``generate`` ran until 2026-12-04);
- ``background_read``: the share of decoded pictures whose background the attribute classifier reads as the real
  picture's;
- ``x0_at_t``: the decoder's own x̂_0 of the corners at the noisiest steps, from x_t of the real pictures (one noise
  draw), with z_i (``cond``) and without (``null``). Where the overall brightness is decided (t near T), a decoder
  that reads z_i predicts the real brightness; one that does not predicts a grey between the backgrounds.

The file names the weights; the rest of the pipeline (CLIP) is the shipped one. The decoder shipped until 2026-12-04
is in git history:

    git show a149470:data/checkpoints/decoder32.safetensors > /tmp/decoder32_eps.safetensors
    python benchmarks/decoder_brightness.py /tmp/decoder32_eps.safetensors data/checkpoints/decoder32.safetensors
"""

from __future__ import annotations

import argparse
import json

import torch

from dalle2_edu.datasets.catalogue import BACKGROUNDS, ProductCatalogue
from dalle2_edu.metrics import corner_squares, load_attribute_classifier
from dalle2_edu.stages.clip import load_clip
from dalle2_edu.stages.decoder import load_decoder, sample_decoder

TIMESTEPS = (999, 950, 900, 800)


def corner_mean(images: torch.Tensor) -> torch.Tensor:
    """(B,) mean of the four 4×4 corner squares of 32×32 pictures (every channel)."""
    return corner_squares(images, fraction=4 / images.shape[-1]).flatten(1).mean(dim=1)


def real_pictures(per_background: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_background`` real 32×32 test pictures on each background (float, [-1, 1]) and their labels."""
    test = ProductCatalogue(300, split="test", seed=1, resolution=32, progress=False)
    pick = torch.cat([torch.nonzero(test.labels[:, 3] == b)[:per_background, 0] for b in range(len(BACKGROUNDS))])
    return test.images[pick].float() / 127.5 - 1, test.labels[pick]


@torch.no_grad()
def measure(path: str, x: torch.Tensor, labels: torch.Tensor, z: torch.Tensor, classifier, seed: int = 0) -> dict:
    decoder, gd = load_decoder(path)
    out = sample_decoder(decoder, gd, z, steps=20, sampler="ddpm", guidance_scale=3.0, seed=seed)
    read = classifier.predict(out)[:, 3]
    bgs = labels[:, 3]
    report = {"mean_type": gd.mean_type, "corner": {}, "background_read": {}, "x0_at_t": {}}
    for b, name in enumerate(BACKGROUNDS):
        report["corner"][name] = round(corner_mean(out[bgs == b]).mean().item(), 3)
        report["background_read"][name] = round((read[bgs == b] == b).float().mean().item(), 3)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    for t in TIMESTEPS:
        tt = torch.full((len(x),), t)
        x_t = gd.q_sample(x, tt, noise)
        row = {}
        for which, drop in (("cond", False), ("null", True)):
            mean_out = decoder(x_t, tt, z, drop=torch.full((len(x),), drop))[:, :3]
            x0 = gd.pred_x0_from_output(x_t, tt, mean_out).clamp(-1, 1)
            row[which] = {name: round(corner_mean(x0[bgs == b]).mean().item(), 3) for b, name in enumerate(BACKGROUNDS)}
        report["x0_at_t"][str(t)] = row
    return report


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("decoders", nargs="+", help="decoder weight files (.safetensors)")
    parser.add_argument("--per-background", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None, help="also write the report here (JSON)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    x, labels = real_pictures(args.per_background)
    with torch.no_grad():
        z = load_clip().encode_image(x)
    classifier = load_attribute_classifier()
    report = {"real_corner": {name: round(corner_mean(x[labels[:, 3] == b]).mean().item(), 3)
                              for b, name in enumerate(BACKGROUNDS)},
              "decoders": {p: measure(p, x, labels, z, classifier) for p in args.decoders}}  # fmt: skip
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return report


if __name__ == "__main__":
    main()
