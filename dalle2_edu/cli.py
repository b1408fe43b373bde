"""``python -m dalle2_edu``: the notebooks' work from the shell.

    python -m dalle2_edu demo --out out/demo        # what `make demo` runs
    python -m dalle2_edu toy2d --steps 3000         # train the 2D model and grade its VLB against the exact NLL
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
        loss_type=args.loss_type, t_sampler=args.t_sampler,
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
    demo = sub.add_parser("demo", help="a quick end-to-end demo (2D diffusion for now)")
    add_toy_args(demo, 1500, 128, 3)
    args = parser.parse_args(argv)
    if args.command in ("toy2d", "demo"):
        _toy2d(args)
    return 0
