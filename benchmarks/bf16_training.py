"""Does bf16 autocast train the decoder as well as fp32? Loss curves and held-out loss, against fp32's seed spread.

Trains the ``fast`` recipe's decoder (``train decoder``'s default: batch 32, lr 1e-3, min-SNR-γ 5, from scratch) on the
catalogue's 20 000 training pictures and the shipped CLIP's embeddings of them, for ``--steps`` steps, four times:
fp32 and bf16, each with seeds 0 and 1 (the seed fixes the initial weights, the batches and the noise). Reports

* the training loss, its L_simple part and its VLB part, in windows of ``--window`` steps, and the mean absolute
  gap between two curves over the second half of the run: bf16 against fp32 with the same seed, and fp32 seed 0
  against fp32 seed 1 (the noise a curve has anyway);
* the held-out ε-MSE of each run's final weights on 512 test pictures, at fixed timesteps and noise, computed in
  fp32 (so it compares what was learnt, not how it is evaluated);
* each run's seconds and steps per second.

bf16 passes when its gaps to fp32 are no larger than fp32's own seed-to-seed gap (the issue's "within the fp32 run's
noise"). A figure of the four curves goes beside the JSON.

    python benchmarks/bf16_training.py --steps 400 --out docs/benchmarks/bf16_training.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from dalle2_edu.datasets.catalogue import ProductCatalogue
from dalle2_edu.recipes.settings import recipe_for
from dalle2_edu.stages.clip import embed_dataset, load_clip
from dalle2_edu.stages.decoder import DecoderConfig, train_decoder
from dalle2_edu.utils import cpu_has_native_bf16


def data(n_train: int, n_test: int):
    clip = load_clip()
    train = ProductCatalogue(n_train, split="train", seed=0, resolution=32, progress=False)
    test = ProductCatalogue(n_test, split="test", seed=1, resolution=32, progress=False)
    embed = lambda ds: embed_dataset(clip, ds.images, ds.captions, with_tokens=False, cache_dir="default",
                                     progress=False)["image_emb"]  # fmt: skip
    return train.images, embed(train), test.images, embed(test)


@torch.no_grad()
def held_out_eps_mse(model, gd, images: torch.Tensor, emb: torch.Tensor, seed: int = 123) -> float:
    """ε-MSE of ``model`` (fp32, no autocast) on ``images`` at timesteps spread evenly over [0, T) and fixed noise."""
    model.eval()
    g = torch.Generator().manual_seed(seed)
    x0 = images.float() / 127.5 - 1
    t = torch.linspace(0, gd.num_timesteps - 1, len(x0)).round().long()
    noise = torch.randn(x0.shape, generator=g)
    x_t = gd.q_sample(x0, t, noise)
    total = 0.0
    for i in range(0, len(x0), 128):
        sl = slice(i, i + 128)
        out = model(x_t[sl], t[sl], emb[sl])[:, :3]
        total += (gd.eps_from_output(x_t[sl], t[sl], out) - noise[sl]).square().sum().item()
    model.train()
    return total / noise.numel()


COLUMNS = ("loss", "mse", "vb_bpd")
"""The logged scalars compared: the training loss (min-SNR-weighted L_simple + λ L_vlb), its L_simple part and its
VLB part in bits per dimension."""


def window_means(values: list[float], window: int) -> list[float]:
    return [sum(values[i : i + window]) / len(values[i : i + window]) for i in range(0, len(values), window)]


def summarise(runs: dict, seeds: list[int]) -> dict:
    """The gaps between the runs' curves and held-out losses, and whether bf16 stays inside fp32's noise:

    * curves: each bf16 run's mean absolute gap to the fp32 run of the same seed (second half of the run, windows)
      is at most the gap between the two fp32 seeds, for the loss and both of its parts;
    * held-out ε-MSE: the bf16 runs' mean differs from the fp32 runs' mean by at most the fp32 seeds' difference."""

    def gap(a: str, b: str, col: str) -> float:
        wa, wb = runs[a][f"{col}_windows"], runs[b][f"{col}_windows"]
        half = len(wa) // 2
        return round(sum(abs(x - y) for x, y in zip(wa[half:], wb[half:])) / len(wa[half:]), 5)

    spread = {col: gap(f"fp32-seed{seeds[0]}", f"fp32-seed{seeds[1]}", col) for col in COLUMNS}
    bf16_gaps = {col: {f"seed{seed}": gap(f"bf16-seed{seed}", f"fp32-seed{seed}", col) for seed in seeds}
                 for col in COLUMNS}  # fmt: skip
    held = {p: [runs[f"{p}-seed{seed}"]["held_out_eps_mse"] for seed in seeds] for p in ("fp32", "bf16")}
    held_spread = abs(held["fp32"][0] - held["fp32"][1])
    held_gap = abs(sum(held["bf16"]) / len(seeds) - sum(held["fp32"]) / len(seeds))
    curves_ok = all(g <= spread[col] for col in COLUMNS for g in bf16_gaps[col].values())
    return {
        "curve_gap_second_half": {col: {"fp32_seed_to_seed": spread[col], "bf16_to_fp32_same_seed": bf16_gaps[col]}
                                  for col in COLUMNS},
        "held_out": {"fp32": held["fp32"], "bf16": held["bf16"], "fp32_seed_to_seed": round(held_spread, 5),
                     "bf16_fp32_mean_gap": round(held_gap, 5)},
        "bf16_within_fp32_noise": {"curves": curves_ok, "held_out": held_gap <= held_spread},
        "speed_up_bf16": round(sum(runs[f"bf16-seed{x}"]["steps_per_s"] for x in seeds)
                               / sum(runs[f"fp32-seed{x}"]["steps_per_s"] for x in seeds), 3),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--window", type=int, default=25)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="docs/benchmarks/bf16_training.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]

    s = recipe_for("fast", "decoder")
    images, emb, test_images, test_emb = data(s.n_train, 512)
    config = DecoderConfig.from_dict({**DecoderConfig(clip_dim=emb.shape[1]).to_dict(), **s.model})  # fills diffusion
    runs = {}
    for precision in ("fp32", "bf16"):
        for seed in seeds:
            start = time.perf_counter()
            kwargs = {k: v for k, v in s.trainer_kwargs().items() if k != "ckpt_every"}
            trainer, gd = train_decoder(images, emb, config, steps=args.steps, batch_size=s.batch_size, lr=s.lr,
                                        seed=seed, log_every=1, amp=precision, **kwargs)  # fmt: skip
            seconds = time.perf_counter() - start
            runs[f"{precision}-seed{seed}"] = {
                **{f"{col}_windows": [round(v, 5) for v in window_means(trainer.history[col], args.window)]
                   for col in COLUMNS},
                "held_out_eps_mse": round(held_out_eps_mse(trainer.model, gd, test_images, test_emb), 5),
                "seconds": round(seconds, 1), "steps_per_s": round(args.steps / seconds, 3),
            }  # fmt: skip
            print(precision, seed, {k: v for k, v in runs[f"{precision}-seed{seed}"].items()
                                    if not k.endswith("_windows")}, flush=True)  # fmt: skip

    result = {
        "command": "python benchmarks/bf16_training.py " + " ".join(argv or []),
        "recipe": "fast", "stage": "decoder", "settings": s.to_dict(), "steps": args.steps, "window": args.window,
        "threads": args.threads, "native_bf16": cpu_has_native_bf16(), "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "runs": runs, **summarise(runs, seeds),
    }  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    plot(runs, args.window, out.with_suffix(".png"))
    print(json.dumps({k: v for k, v in result.items() if k not in ("runs", "settings")}, indent=2))
    return result


def plot(runs: dict, window: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, run in runs.items():
        steps = [window * (i + 1) for i in range(len(run["mse_windows"]))]
        ax.plot(steps, run["mse_windows"], label=f"{name} (held-out ε-MSE {run['held_out_eps_mse']:.4f})",
                linestyle="-" if name.startswith("fp32") else "--")  # fmt: skip
    ax.set_xlabel("step")
    ax.set_ylabel(f"L_simple part of the training loss (mean of {window} steps)")
    ax.set_yscale("log")
    ax.set_title("fast recipe decoder: bf16 autocast against fp32, two seeds each")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
