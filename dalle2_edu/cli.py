"""``python -m dalle2_edu``: the notebooks' work from the shell.

python -m dalle2_edu demo --out out/demo        # what `make demo` runs
python -m dalle2_edu toy2d --steps 3000         # train the 2D model and grade its VLB against the exact NLL
python -m dalle2_edu generate "a red striped mug on a wooden table" --n 4 --out out/
python -m dalle2_edu pretrain --out runs/pretrain [--fast]   # retrain every unCLIP stage from scratch
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")


def _toy2d(args) -> dict:
    import torch

    from dalle2_edu.toy2d import Toy2DConfig, train_toy2d, vlb_vs_exact_nll
    from dalle2_edu.viz import scatter_row, trajectory_frames

    torch.set_num_threads(max(1, torch.get_num_threads()))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = Toy2DConfig(
        dataset=args.dataset, steps=args.steps, hidden=args.hidden, depth=args.depth, seed=args.seed,
        diffusion={"loss_type": args.loss_type}, t_sampler=args.t_sampler,
    )  # fmt: skip
    start = time.perf_counter()
    trainer, gd, data = train_toy2d(cfg, progress=True)
    train_s = time.perf_counter() - start
    model = trainer.ema_model

    steps = list(gd.p_sample_loop_progressive(model, (2000, 2), generator=torch.Generator().manual_seed(args.seed)))
    clouds, titles = trajectory_frames(steps, 6)
    fig = scatter_row([data[:2000], *clouds], ["data", *titles])
    fig.savefig(out / "denoising.png", dpi=100)
    report = {"config": asdict(cfg), "train_seconds": round(train_s, 1)}
    if args.dataset == "mixture" and not args.no_vlb:
        r = vlb_vs_exact_nll(model, gd, n=args.vlb_points, progress=True)
        report.update({k: round(v, 4) for k, v in r.items() if isinstance(v, float)})
        print(
            f"VLB {r['vlb_nats']:.3f} nats vs exact NLL {r['exact_nll_nats']:.3f} nats per point: "
            f"gap {r['gap_nats']:.3f} ± {r['gap_se_nats']:.3f} nats ({r['gap_nats_per_dim']:.3f} per dim)"
        )
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print(f"trained in {train_s:.0f} s; picture of the denoising: {out / 'denoising.png'}")
    return report


def _generate(args) -> dict:
    import torch

    from dalle2_edu.pipeline import UnCLIP

    torch.set_num_threads(max(1, torch.get_num_threads()))
    pipe = UnCLIP.from_pretrained(args.checkpoints, device=args.device)
    start = time.perf_counter()
    out = pipe.generate(
        args.prompts, n=args.n, guidance_scale=args.guidance_scale, steps=args.steps, seed=args.seed,
        use_prior=not args.no_prior, upsample=not args.no_upsample, progress=True,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    grid_path = folder / "grid.png"
    out.grid(scale=args.scale).save(grid_path)
    for i, (image, prompt) in enumerate(zip(out.images, out.prompts)):
        image.save(folder / f"{i // args.n:02d}_{i % args.n}_{_slug(prompt)}.png")
    print(f"{len(out.prompts)} pictures in {seconds:.1f} s; grid (one row per prompt): {grid_path}")
    return {"seconds": seconds, "grid": str(grid_path)}


DEMO_PROMPTS = (
    "a red striped mug on a wooden table",
    "a blue striped t-shirt on white",
    "yellow handbag with dots, light grey background",
    "photo of a black sneaker on a wooden table",
    "a green mug on white",  # held out: no green mug was ever trained on
    "a blue lamp on light grey",  # held out
)


def _demo(args) -> dict:
    import torch

    from dalle2_edu.metrics import prompt_fidelity
    from dalle2_edu.pipeline import UnCLIP, prompt_attributes

    torch.set_num_threads(max(1, torch.get_num_threads()))
    start = time.perf_counter()
    pipe = UnCLIP.from_pretrained(args.checkpoints)
    out = pipe.generate(list(DEMO_PROMPTS), n=4, steps=args.steps, seed=args.seed, progress=True)
    seconds = time.perf_counter() - start
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    out.grid(nrow=4, scale=3).save(folder / "grid.png")
    images = out.tensors
    if images.shape[-1] % 32:  # the classifier reads 32x32 (or 64x64); other checkpoints' sizes are resized for it
        images = torch.nn.functional.interpolate(images, size=(32, 32), mode="bilinear", antialias=True)
    grades = prompt_fidelity(images.clamp(-1, 1), prompt_attributes(out.prompts))
    for i, prompt in enumerate(DEMO_PROMPTS):
        print(f"  row {i + 1}: {prompt}")
    print(
        f"{len(out.prompts)} pictures in {seconds:.1f} s (loading included); grid: {folder / 'grid.png'}\n"
        "fidelity read by the attribute classifier: " + ", ".join(f"{k} {v:.2f}" for k, v in grades.items() if k != "n")
    )
    report = {"seconds": round(seconds, 1), "fidelity": grades, "prompts": list(DEMO_PROMPTS)}
    (folder / "report.json").write_text(json.dumps(report, indent=2))
    return report


def _slug(text: str) -> str:
    import re

    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60]


def _pretrain(args) -> dict:
    from dalle2_edu.pretrain import pretrain

    steps = {f"{stage}_steps": n for stage in ("clip", "prior", "decoder", "upsampler")
             if (n := getattr(args, f"{stage}_steps")) is not None}  # fmt: skip
    return pretrain(args.out, fast=args.fast, seed=args.seed, stages=args.stages.split(","),
                    init_decoder=args.init_decoder, steps=steps)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dalle2_edu", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def add_toy_args(p, steps, hidden, depth):
        p.add_argument("--out", default="out/toy2d", help="folder for the picture and report.json")
        p.add_argument("--dataset", default="mixture", choices=["mixture", "moons", "swiss_roll"])
        p.add_argument("--steps", type=int, default=steps, help="training steps")
        p.add_argument("--hidden", type=int, default=hidden)
        p.add_argument("--depth", type=int, default=depth)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--loss-type", default="kl", choices=["kl", "hybrid", "simple"])
        p.add_argument("--t-sampler", default="loss-second-moment", choices=["loss-second-moment", "uniform"])
        p.add_argument("--vlb-points", type=int, default=2000, help="points the VLB is averaged over")
        p.add_argument("--no-vlb", action="store_true", help="skip grading the VLB")

    add_toy_args(sub.add_parser("toy2d", help="train the 2D MLP denoiser and grade its VLB"), 3000, 128, 3)
    demo = sub.add_parser("demo", help="text -> 4 pictures for a handful of prompts with the shipped checkpoints")
    demo.add_argument("--out", default="out/demo", help="folder for grid.png and report.json")
    demo.add_argument("--checkpoints", default="data/checkpoints")
    demo.add_argument("--steps", type=int, default=25, help="decoder DDIM steps")
    demo.add_argument("--seed", type=int, default=0)
    gen = sub.add_parser("generate", help="text -> pictures with the trained unCLIP pipeline")
    gen.add_argument("prompts", nargs="+", help='one or more prompts, e.g. "a red striped mug on a wooden table"')
    gen.add_argument("--n", type=int, default=4, help="pictures per prompt")
    gen.add_argument("--out", default="out/generate", help="folder for grid.png and the single pictures")
    gen.add_argument("--checkpoints", default="data/checkpoints", help="folder with the trained stages")
    gen.add_argument("--guidance-scale", type=float, default=3.0)
    gen.add_argument("--steps", type=int, default=25, help="decoder DDIM steps")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--no-prior", action="store_true", help="feed the text embedding to the decoder directly")
    gen.add_argument("--no-upsample", action="store_true", help="stop at 32x32")
    gen.add_argument("--scale", type=int, default=4, help="enlarge the saved grid by this factor")
    gen.add_argument("--device", default="auto")
    pre = sub.add_parser("pretrain", help="retrain every unCLIP stage from scratch and write the checkpoints")
    pre.add_argument("--out", default="runs/pretrain", help="checkpoint folder (resumable: run again to continue)")
    pre.add_argument("--fast", action="store_true", help="a from-scratch demo sized for a laptop CPU")
    pre.add_argument("--seed", type=int, default=0)
    pre.add_argument("--stages", default="clip,prior,decoder,upsampler,evaluate", help="comma-separated subset")
    pre.add_argument("--init-decoder", default=None,
                     help="warm-start the decoder from an image32 model file (its UNet) or a decoder file (all of it)")
    for stage in ("clip", "prior", "decoder", "upsampler"):
        pre.add_argument(f"--{stage}-steps", type=int, default=None, help=f"override the recipe's {stage} steps")
    args = parser.parse_args(argv)
    if args.command == "toy2d":
        _toy2d(args)
    elif args.command == "demo":
        _demo(args)
    elif args.command == "generate":
        _generate(args)
    elif args.command == "pretrain":
        _pretrain(args)
    return 0
