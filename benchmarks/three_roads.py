"""Three roads to text → image on the same data, trained for the same CPU time and measured side by side (issue 17).

On the catalogue's 32×32 pictures and captions:

* **autoregressive tokens** (DALL·E): a VQ-VAE turns each picture into 8×8 codes, a causal transformer writes them
  one by one after the caption's tokens (CLIP's tokenizer and vocabulary);
* **pixel diffusion** (DALL·E 2's decoder): the decoder stage's UNet denoises the 3·32·32 pixels, conditioned on the
  shipped CLIP's *text* embedding of the caption (no prior: the same conditioning as the latent road);
* **latent diffusion** (LDM): the same kind of conditioned UNet denoises the VQ-VAE's 8×8×D latents, conditioned on
  the same CLIP text embedding, and the VQ-VAE's decoder paints them;
* a reference row, **the shipped unCLIP pipeline** (CLIP → prior → decoder, shipped weights, trained far longer).

Training is by wall time: the VQ-VAE gets ``--vq-minutes`` once (its time counts for both roads that use it), each
generator gets ``--minutes``. The project's Trainer has no clock, so each stage's ``train_*`` helper is first run for a
few timed steps on a throwaway copy (the probe), the step count is set to budget / (seconds per step) (it fixes the
warm-up and, for the transformer, the cosine schedule), and the real run then trains in chunks of about 5 s until it
reaches that count or the budget, whichever comes first. Every model is saved to ``--out`` and evaluated from the
saved file (what ``--ship`` copies is what was measured).

Measured: parameters; training time and steps; bits/dim on unseen test pictures (an upper bound on -log p(x | c));
FID/KID against real test pictures and the attribute classifier's fidelity on the project's seen and held-out prompt
sets (``dalle2_edu.evaluate.eval_prompts``); seconds per picture after loading; and for the VQ-VAE its
reconstruction PSNR, codebook use and the classifier's fidelity on reconstructions (the ceiling of the two roads that
decode through it).

    python benchmarks/three_roads.py         # ~20 minutes on 2 CPU cores; writes docs/benchmarks/three_roads.json
    python benchmarks/three_roads.py --tiny  # a smoke test in seconds (tiny nets, a few steps)
    python benchmarks/three_roads.py --ship  # also copy the small checkpoints to data/checkpoints/roads/
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import re
import shutil
import sys
import time
from datetime import date
from pathlib import Path

import torch
from tqdm.auto import tqdm

from dalle2_edu.checkpoint import weights_digest
from dalle2_edu.datasets.catalogue import GENERATOR_VERSION, HELD_OUT_PAIRS, ProductCatalogue
from dalle2_edu.evaluate import eval_prompts
from dalle2_edu.images import to_float
from dalle2_edu.metrics import extract_features, fid, kid, load_attribute_classifier, prompt_fidelity
from dalle2_edu.nets.unet import UNetConfig
from dalle2_edu.pipeline import UnCLIP
from dalle2_edu.stages.attributes import default_unet
from dalle2_edu.stages.autoregressive import (
    AutoregressiveConfig,
    bits_per_dim_bound,
    generate,
    load_autoregressive,
    save_autoregressive,
    train_autoregressive,
)
from dalle2_edu.stages.decoder import DecoderConfig, load_decoder, sample_decoder, save_decoder, train_decoder
from dalle2_edu.stages.latent import (
    LatentDiffusionConfig,
    load_latent_diffusion,
    sample_latent_diffusion,
    save_latent_diffusion,
    train_latent_diffusion,
)
from dalle2_edu.stages.vqvae import VQVAEConfig, encode_tokens, evaluate_vqvae, load_vqvae, save_vqvae, train_vqvae
from dalle2_edu.utils import data_dir, set_seed, writable_folder

ROADS = {
    "autoregressive": "autoregressive tokens (DALL·E): VQ-VAE codes written by a causal transformer after the caption",
    "pixel_diffusion": "pixel diffusion (DALL·E 2's decoder UNet) on the CLIP text embedding, no prior",
    "latent_diffusion": "latent diffusion (LDM): UNet on the VQ-VAE's 8×8×D latents, on the CLIP text embedding",
    "unclip_shipped": "shipped unCLIP (CLIP → prior → decoder), shipped weights: a reference, trained far longer",
}
TRAINED = ("vqvae", "autoregressive", "latent_diffusion", "pixel_diffusion")  # the order they train in
ATTRS = ("category", "colour", "pattern")
CHUNK_SECONDS = 5.0  # the budget is checked between chunks of training steps of about this length
PROBE_EXAMPLES = 512  # the probe's throwaway trainer draws from this many examples (a step costs the same)

# Settings of the two modes; every one can be overridden on the command line.
FULL = dict(minutes=2.5, vq_minutes=2.5, n_train=20_000, n_eval=174, heldout_per_prompt=2, n_bpd=8, batch_size=64,
            sample_steps=25, prior_steps=64, candidates=2, probe_steps=5, max_steps=None)  # fmt: skip
TINY = dict(minutes=0.02, vq_minutes=0.02, n_train=256, n_eval=12, heldout_per_prompt=1, n_bpd=2, batch_size=16,
            sample_steps=3, prior_steps=3, candidates=1, probe_steps=2, max_steps=6)  # fmt: skip


def model_configs(tiny: bool, clip) -> dict:
    """The four networks' configs. Full mode: generators of about 1 M parameters each (0.9–1.3 M), a 0.55 M VQ-VAE
    (8×8 grid, K = 256 codes of width 8). Tiny mode: a few thousand parameters and 20-step processes."""
    if tiny:
        vq = VQVAEConfig(channels=8, codebook_size=32, code_dim=4, restart_window=5)
        ar = dict(width=32, num_layers=1, num_heads=2)
        latent_unet = UNetConfig(model_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(4,),
                                 num_heads=2, image_size=8).to_dict()  # fmt: skip
        pixel_unet = UNetConfig(model_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(16,),
                                num_heads=2, image_size=32).to_dict()  # fmt: skip
        diffusion = {"num_timesteps": 20}
    else:
        vq = VQVAEConfig(channels=32)  # width 64 (the default) measured ~4x slower per step: too few steps
        ar = dict(width=128, num_layers=4, num_heads=4)
        latent_unet = UNetConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=2, attention_resolutions=(8, 4),
                                 num_heads=4, image_size=8).to_dict()  # fmt: skip
        pixel_unet = default_unet()  # the shipped decoder's UNet
        diffusion = {}
    d = clip.embed_dim
    return {
        "vqvae": vq,
        "autoregressive": AutoregressiveConfig.from_tokenizer(clip.tokenizer, codebook_size=vq.codebook_size,
                                                              grid_size=vq.grid_size, **ar),  # fmt: skip
        "latent_diffusion": LatentDiffusionConfig(latent_dim=vq.code_dim, latent_size=vq.grid_size, clip_dim=d,
                                                  unet=latent_unet, diffusion={"data_type": "continuous", **diffusion}),
        "pixel_diffusion": DecoderConfig(unet=pixel_unet, clip_dim=d, diffusion=diffusion),
    }  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------------
# arguments


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, help=f"training wall time per generator (default {FULL['minutes']})")
    p.add_argument("--vq-minutes", type=float, help=f"training wall time of the VQ-VAE, trained once and shared by "
                   f"the autoregressive and latent roads (default {FULL['vq_minutes']})")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seeds training, sampling, the VLB's noise and KID's subsets")
    p.add_argument("--out", help="folder for the trained checkpoints (default runs/three_roads, "
                                 "runs/three_roads_tiny with --tiny)")  # fmt: skip
    p.add_argument("--json", help="the report (default docs/benchmarks/three_roads.json; OUT/three_roads.json with "
                                  "--tiny)")  # fmt: skip
    p.add_argument("--n-eval", type=int, help=f"seen-prompt pictures per road, and real test pictures, for "
                   f"FID/KID/fidelity (default {FULL['n_eval']} = 2 per seen prompt)")  # fmt: skip
    p.add_argument("--heldout-per-prompt", type=int, help="pictures per held-out prompt (18 prompts; default "
                   f"{FULL['heldout_per_prompt']})")  # fmt: skip
    p.add_argument("--n-bpd", type=int, help=f"unseen test pictures for bits/dim (default {FULL['n_bpd']}; the pixel "
                   "VLB costs T = 1000 network calls per batch)")  # fmt: skip
    p.add_argument("--n-train", type=int, help=f"training pictures (catalogue train split; default {FULL['n_train']})")
    p.add_argument("--batch-size", type=int, help=f"training batch of every model, and sampling batch "
                   f"(default {FULL['batch_size']})")  # fmt: skip
    p.add_argument("--sample-steps", type=int, help=f"DDIM steps of the diffusion roads (default "
                   f"{FULL['sample_steps']})")  # fmt: skip
    p.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance of every road (default 3)")
    p.add_argument(
        "--steps",
        help="train exactly these step counts instead of by time, e.g. "
        "vqvae=300,autoregressive=900,latent_diffusion=500,pixel_diffusion=120 (to repeat a run)",
    )
    p.add_argument("--max-steps", type=int, help="cap on any model's steps (tiny default 6)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--tiny", action="store_true", help="smoke mode: tiny nets, a few steps, a few pictures; seconds")
    p.add_argument("--ship", action="store_true", help="copy the trained checkpoints and their JSON to --ship-dir")
    p.add_argument("--ship-dir", help="where --ship copies to (default data/checkpoints/roads)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)

    mode = TINY if args.tiny else FULL
    for key, value in mode.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    for key in ("minutes", "vq_minutes"):
        if not (getattr(args, key) > 0 and math.isfinite(getattr(args, key))):
            p.error(f"--{key.replace('_', '-')} must be a number of minutes > 0, got {getattr(args, key)}")
    for key in ("n_eval", "heldout_per_prompt", "n_bpd", "n_train", "batch_size", "sample_steps", "threads"):
        if getattr(args, key) < 1:
            p.error(f"--{key.replace('_', '-')} must be >= 1, got {getattr(args, key)}")
    if args.n_eval < 2:
        p.error("--n-eval must be >= 2 (FID and KID need two pictures per set)")
    if args.max_steps is not None and args.max_steps < 1:
        p.error(f"--max-steps must be >= 1, got {args.max_steps}")
    if args.seed < 0:
        p.error(f"--seed must be >= 0, got {args.seed}")
    args.fixed_steps = _parse_steps(p, args.steps)
    args.out = args.out or ("runs/three_roads_tiny" if args.tiny else "runs/three_roads")
    args.json = args.json or (str(Path(args.out) / "three_roads.json") if args.tiny
                              else "docs/benchmarks/three_roads.json")  # fmt: skip
    default_ship = data_dir() / "checkpoints" / "roads"
    args.ship_dir = Path(args.ship_dir) if args.ship_dir else default_ship
    if args.ship and args.tiny and args.ship_dir.resolve() == default_ship.resolve():
        p.error("--ship with --tiny would put smoke-test weights into data/checkpoints/roads; pass --ship-dir "
                "elsewhere (or drop --tiny)")  # fmt: skip
    return args


def _parse_steps(p: argparse.ArgumentParser, text: str | None) -> dict:
    if not text:
        return {}
    out = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        name = name.strip()
        if name not in TRAINED or not value.strip().isdigit() or int(value) < 1:
            p.error(f"--steps wants NAME=STEPS pairs with NAME among {', '.join(TRAINED)} and STEPS >= 1, got {part!r}")
        out[name] = int(value)
    return out


# ----------------------------------------------------------------------------------------------------------------------
# training by wall time


def train_by_time(label: str, make, budget_s: float, args, fixed_steps: int | None, warmup_cap: int):
    """Train the model that ``make`` builds for ``budget_s`` seconds of optimizer steps.

    :param make: ``make(probe, **trainer_kwargs) -> Trainer``: the stage's ``train_*`` helper called with ``steps=0``
        (so nothing trains yet), on a few examples when ``probe`` is True.
    :param fixed_steps: train exactly this many steps (``--steps``), without the probe and the clock.
    :param warmup_cap: the stage helper's warm-up rule, min(cap, steps / 10), reproduced for the planned steps.
    :return: ``(trainer, info)``; info records the probe, the planned and done steps, seconds and the final loss.
    """
    info: dict = {"budget_seconds": round(budget_s, 1)}
    if fixed_steps is None:
        probe = make(True, warmup_steps=1, log_every=1)
        probe.fit(2)  # untimed: the first steps pay one-off costs
        start = time.perf_counter()
        probe.fit(2 + args.probe_steps)
        per_step = (time.perf_counter() - start) / args.probe_steps
        del probe
        planned = max(1, int(budget_s / per_step))
        if args.max_steps is not None:
            planned = min(planned, args.max_steps)
        info["probe_seconds_per_step"] = round(per_step, 4)
    else:
        planned, per_step = fixed_steps, None
    chunk = max(1, round(CHUNK_SECONDS / per_step)) if per_step else max(1, planned // 20)
    start = time.perf_counter()
    trainer = make(False, warmup_steps=min(warmup_cap, max(planned // 10, 1)), total_steps=planned, log_every=chunk)
    info["prep_seconds"] = round(time.perf_counter() - start, 1)  # building; encoding the data where the helper does
    spent = 0.0
    bar = tqdm(total=planned, desc=f"training {label}", unit="step", disable=args.no_progress, dynamic_ncols=True)
    while trainer.step < planned and (fixed_steps is not None or spent < budget_s):
        start = time.perf_counter()
        before = trainer.step
        trainer.fit(min(planned, trainer.step + chunk))
        spent += time.perf_counter() - start
        bar.update(trainer.step - before)
        bar.set_postfix(loss=f"{trainer.history['loss'][-1]:.4g}", s=f"{spent:.0f}/{budget_s:.0f}", refresh=False)
    bar.close()
    info.update(steps_planned=planned, steps=trainer.step, train_seconds=round(spent, 1),
                stopped_by="steps given" if fixed_steps is not None else
                "planned steps" if trainer.step >= planned else "time budget",
                batch_size=args.batch_size, final_loss=round(float(trainer.history["loss"][-1]), 5),
                seconds_per_step=round(spent / max(trainer.step, 1), 4))  # fmt: skip
    return trainer, info


# ----------------------------------------------------------------------------------------------------------------------
# evaluation helpers


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def rounded(d: dict, digits: int = 4) -> dict:
    return {k: round(v, digits) if isinstance(v, float) else v for k, v in d.items()}


def seen_prompt_set(n: int, seed: int) -> tuple[list[str], torch.Tensor]:
    """``n`` prompts from the 174 seen ones: whole passes over all of them, the last pass a seeded random subset (so
    one per prompt exactly when n = 174, two when n = 348)."""
    prompts, labels = eval_prompts("seen")
    g = torch.Generator().manual_seed(seed)
    order = torch.cat([torch.randperm(len(prompts), generator=g) for _ in range(-(-n // len(prompts)))])[:n]
    order = order.sort().values  # prompt-major, like the rest of the project
    return [prompts[i] for i in order], labels[order]


def heldout_prompt_set(per_prompt: int) -> tuple[list[str], torch.Tensor]:
    prompts, labels = eval_prompts("heldout")
    return [p for p in prompts for _ in range(per_prompt)], labels.repeat_interleave(per_prompt, dim=0)


@torch.no_grad()
def draw(fn, prompts: list[str], batch: int, seed: int, desc: str, progress: bool) -> torch.Tensor:
    """``fn(captions, seed) -> pictures`` over ``prompts`` in batches (batch i seeded with seed + its first index)."""
    out = []
    for i in tqdm(range(0, len(prompts), batch), desc=desc, disable=not progress, leave=False):
        out.append(fn(prompts[i : i + batch], seed + i).float().clamp(-1, 1).cpu())
    return torch.cat(out)


def fidelity(images: torch.Tensor, labels: torch.Tensor, classifier) -> dict:
    return rounded(prompt_fidelity(images, labels, classifier))


def image_metrics(images: torch.Tensor, labels: torch.Tensor, ref_features: torch.Tensor, classifier, seed: int,
                  floor: dict) -> dict:  # fmt: skip
    """Fidelity to ``labels``, FID and KID of ``images`` against the reference features (same N)."""
    feats = extract_features(images, classifier)
    m = min(len(feats), len(ref_features))
    k_mean, k_std = kid(feats[:m], ref_features[:m], subsets=50, subset_size=min(m, 100), seed=seed)
    return {"fid": round(fid(feats[:m], ref_features[:m]), 3), "fid_floor": floor["fid"], "fid_n": m,
            "kid": round(k_mean, 4), "kid_std": round(k_std, 4),
            "fidelity_seen": fidelity(images, labels, classifier)}  # fmt: skip


def shipped_training(folder: Path) -> dict:
    """How long the shipped prior and decoder were trained, read from their JSON files (None where not recorded)."""

    def read(name: str) -> dict:
        try:
            return json.loads((folder / f"{name}.json").read_text())
        except (OSError, ValueError):
            return {}

    dec, prior, attr = read("decoder32"), read("prior"), read("image32_attributes")
    out = {
        "decoder": {"steps": dec.get("steps"), "batch_size": dec.get("batch_size"),
                    "seconds": dec.get("training_seconds"), "note": dec.get("training_seconds_note"),
                    "warm_start": dec.get("warm_start")},
        "decoder_warm_start_attribute_unet": {"steps": attr.get("steps"), "batch_size": attr.get("batch_size"),
                                              "seconds": attr.get("training_seconds")},
        "prior": {"steps": prior.get("steps"), "batch_size": prior.get("batch_size"),
                  "seconds": prior.get("train_seconds")},
    }  # fmt: skip

    def part(d: dict) -> str:
        seconds = d["seconds"]
        if isinstance(seconds, str):  # e.g. "about 2100 on 2 shared CPU cores": keep the number
            found = re.search(r"\d+(\.\d+)?", seconds)
            seconds = float(found.group()) if found else None
        when = f"≈ {seconds / 60:.0f} min" if isinstance(seconds, int | float) else "time not recorded"
        return f"{d['steps']} steps × {d['batch_size']}, {when}"

    out["summary"] = (f"decoder {part(out['decoder'])} (warm-started from the attribute UNet: "
                      f"{part(out['decoder_warm_start_attribute_unet'])}) + prior {part(out['prior'])}")  # fmt: skip
    return out


def vqvae_half_is_exact(vq, images: torch.Tensor) -> bool:
    """Whether the fp16-rounded VQ-VAE chooses exactly the same codes as the fp32 one on ``images``."""
    import copy

    rounded_vq = copy.deepcopy(vq)
    with torch.no_grad():
        for t in list(rounded_vq.parameters()) + [b for b in rounded_vq.buffers() if b.is_floating_point()]:
            t.copy_(t.half().float())
    return bool(torch.equal(encode_tokens(vq, images), encode_tokens(rounded_vq, images)))


@torch.no_grad()
def measure_bits_per_dim(name: str, models: dict, images: torch.Tensor, captions: list[str], seed: int,
                         progress: bool) -> dict:  # fmt: skip
    """An upper bound on -log2 p(x | caption) per dimension (3·32·32) of 8-bit pictures, where the road has one.

    * autoregressive: -log p(z | c) (the transformer's exact token NLL) + -log p(x | z_q) (the VQ-VAE decoder's
      discretised Gaussian), z the VQ-VAE's codes of x; valid because the encoder is deterministic.
    * pixel diffusion: the whole variational bound L_0 + L_1 + ... + L_T of the decoder's process, every term (one x_t
      draw each), L_0 the discretised Gaussian on the 256 pixel levels (``GaussianDiffusion.calc_bpd_loop``).
    * latent diffusion and the shipped unCLIP: none (``bits_per_dim_why`` says why).
    """
    start = time.perf_counter()
    if name == "autoregressive":
        vq = models["vqvae"]
        b = bits_per_dim_bound(models["autoregressive"], vq, captions, images)
        dims_ln2 = vq.config.num_dims * math.log(2.0)
        values = b["bits_per_dim"]
        row = {"bits_per_dim_parts": {"tokens": round(float(b["token_nll"].mean() / dims_ln2), 4),
                                      "vq_decoder": round(float(b["decoder_nll"].mean() / dims_ln2), 4)},
               "bits_per_dim_what": "-log2 p(z|c) - log2 p(x|z_q), z the VQ-VAE's codes of x: an upper bound on "
                                    "-log2 p(x|c), per dimension (3·32·32)"}  # fmt: skip
    elif name == "pixel_diffusion":
        model, gd = models["pixel_diffusion"]
        x0 = to_float(images)  # exactly the 256 levels the discretised decoder scores
        cond = {"image_emb": models["clip"].encode_text(captions), "drop": torch.zeros(len(x0), dtype=torch.bool)}
        vlb = gd.calc_bpd_loop(model, x0, model_kwargs=cond, progress=progress,
                               generator=torch.Generator().manual_seed(seed))  # fmt: skip
        values = vlb["total_bpd"]
        row = {"bits_per_dim_parts": {"L_0 (discretised decoder)": round(float(vlb["vb"][:, 0].mean()), 4),
                                      "L_1..L_T-1": round(float(vlb["vb"][:, 1:].sum(1).mean()), 4),
                                      "L_T (prior)": round(float(vlb["prior_bpd"].mean()), 4)},
               "bits_per_dim_what": f"the whole variational bound, all T = {gd.num_timesteps} terms (one x_t draw "
                                    "each), L_0 the discretised Gaussian on 8-bit pixels: an upper bound on "
                                    "-log2 p(x|c), per dimension (3·32·32)"}  # fmt: skip
    else:
        why = {
            "latent_diffusion": "no tractable bound: the diffusion models continuous pre-quantisation latents that are "
            "snapped to codes before decoding, and the encoder is deterministic, so -log p(x) needs the probability "
            "of x's whole code cell (a Voronoi cell in 8·8·D dimensions) under the latent model; its density at one "
            "point (the ODE likelihood) is in other units and bounds nothing about x",
            "unclip_shipped": "not a bound on -log p(x|caption): the decoder is conditioned on an image embedding "
            "drawn by the prior, and its VLB given the picture's own embedding would leak the picture",
        }[name]
        return {"bits_per_dim": None, "bits_per_dim_stderr": None, "bits_per_dim_n": 0, "bits_per_dim_why": why}
    values = values.double()
    stderr = float(values.std() / math.sqrt(len(values))) if len(values) > 1 else None
    return {"bits_per_dim": round(float(values.mean()), 4),
            "bits_per_dim_stderr": None if stderr is None else round(stderr, 4), "bits_per_dim_n": len(values),
            "bits_per_dim_seconds": round(time.perf_counter() - start, 1), **row}  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------------
# the report


class Report:
    """The JSON report, rewritten after every finished row (an interrupted run keeps what it measured)."""

    def __init__(self, path: str, data: dict):
        self.path, self.data = Path(path), data
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.write()

    def write(self) -> None:
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=2, ensure_ascii=False) + "\n")
        tmp.replace(self.path)


def _fmt(x, digits: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def _millions(n) -> str:
    return "—" if n is None else f"{n / 1e6:.2f} M"


def _triple(d: dict | None) -> str:
    return "n/a" if not d else " / ".join(_fmt(d.get(a), 3) for a in ATTRS)


def markdown_tables(report: dict) -> str:
    roads, vq, real = report["roads"], report.get("vqvae", {}), report.get("real_pictures", {})
    lines = [
        "| road | generator params | VQ-VAE params | training (generator; + shared VQ-VAE) | bits/dim ↓ (unseen test "
        "pictures, upper bound) | FID ↓ (floor) | KID (± sd) | seen: category / colour / pattern | held-out: category "
        "/ colour / pattern | s / picture |",
        "|---|---:|---:|---|---|---|---|---|---|---:|",
    ]
    if real:
        lines.append(f"| real test pictures (classifier's own accuracy; FID/KID floor) | — | — | — | — | "
                     f"{_fmt(real['fid'])} | {_fmt(real['kid'], 4)} ± {_fmt(real['kid_std'], 4)} | "
                     f"{_triple(real['fidelity_seen'])} | {_triple(real['fidelity_heldout'])} | — |")  # fmt: skip
    if vq.get("fid") is not None:
        lines.append(f"| VQ-VAE reconstructions of those pictures (ceiling of the token and latent roads) | — | "
                     f"{_millions(vq['params'])} | — | — | {_fmt(vq['fid'])} ({_fmt(vq['fid_floor'])}) | "
                     f"{_fmt(vq['kid'], 4)} ± {_fmt(vq['kid_std'], 4)} | {_triple(vq['fidelity_recon_seen'])} | "
                     f"{_triple(vq['fidelity_recon_heldout'])} | — |")  # fmt: skip
    for name, row in roads.items():
        if "fid" not in row:
            continue
        if name == "unclip_shipped":
            training = f"shipped, trained for {row['trained']['summary']}"
        else:
            t = row["training"]
            training = f"{_duration(t['train_seconds'])}, {t['steps']} steps × {t['batch_size']}"
            if row.get("vqvae_train_seconds") is not None:
                training += f"; + VQ-VAE {_duration(row['vqvae_train_seconds'])}, {vq['training']['steps']} steps"
        bpd = (
            _fmt(row["bits_per_dim"], 3)
            if row["bits_per_dim"] is not None
            else ("not computed (no tractable bound)" if name == "latent_diffusion" else "not comparable")
        )
        if row["bits_per_dim"] is not None and row.get("bits_per_dim_stderr") is not None:
            bpd += f" ± {row['bits_per_dim_stderr']:.3f}"
        lines.append(
            f"| {name.replace('_', ' ')} | {_millions(row['generator_params'])} | {_millions(row['vqvae_params'])} | "
            f"{training} | {bpd} | {_fmt(row['fid'])} ({_fmt(row['fid_floor'])}) | {_fmt(row['kid'], 4)} ± "
            f"{_fmt(row['kid_std'], 4)} | {_triple(row['fidelity_seen'])} | {_triple(row['fidelity_heldout'])} | "
            f"{_fmt(row['seconds_per_picture'], 3)} |"
        )
    if vq.get("psnr_db") is not None:
        t = vq["training"]
        lines += [
            "",
            "| VQ-VAE | params | training | PSNR (dB) | codes used / K | perplexity | decoder bits/dim (own codes) | "
            "weights |",
            "|---|---:|---|---:|---:|---:|---:|---|",
            f"| {vq['grid']} grid, K = {vq['codebook_size']}, D = {vq['code_dim']} | {_millions(vq['params'])} | "
            f"{_duration(t['train_seconds'])}, {t['steps']} steps × {t['batch_size']} | {_fmt(vq['psnr_db'])} | "
            f"{vq['codes_used']} / {vq['codebook_size']} | {_fmt(vq['perplexity'], 1)} | "
            f"{_fmt(vq['decoder_bits_per_dim'], 3)} | {vq['weights_dtype']} |",
        ]  # fmt: skip
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------------
# the run


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    progress = not args.no_progress
    out = writable_folder(args.out)
    if args.ship:
        writable_folder(args.ship_dir, "--ship-dir")
    set_seed(args.seed)
    run_start = time.perf_counter()

    checkpoints = data_dir() / "checkpoints"
    pipe = UnCLIP.from_pretrained(checkpoints, upsampler=False)
    clip, classifier = pipe.clip, load_attribute_classifier()
    configs = model_configs(args.tiny, clip)
    cache = None if args.tiny else "default"

    # -- data ----------------------------------------------------------------------------------------------------------
    start = time.perf_counter()
    train = ProductCatalogue(args.n_train, split="train", seed=0, resolution=32, cache_dir=cache, progress=progress)
    n_heldout = len(HELD_OUT_PAIRS) * 3 * args.heldout_per_prompt
    ref = ProductCatalogue(args.n_eval, split="test", seed=1, resolution=32, cache_dir=cache, progress=False)
    unseen = ProductCatalogue(max(args.n_eval, args.n_bpd), split="test", seed=2, resolution=32, cache_dir=cache,
                              progress=False)  # fmt: skip
    heldout_real = ProductCatalogue(n_heldout, split="heldout", seed=1, resolution=32, cache_dir=cache, progress=False)
    with torch.no_grad():
        text_emb = torch.cat([clip.encode_text(train.captions[i : i + 512]).cpu()
                              for i in tqdm(range(0, len(train), 512), desc="CLIP text embeddings",
                                            disable=not progress, leave=False)])  # fmt: skip
    data_seconds = time.perf_counter() - start

    report = Report(args.json, {
        "what": "three roads to text → image on the same data, same training wall time per generator (issue 17)",
        "command": "python benchmarks/three_roads.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
        "date": date.today().isoformat(),
        "settings": {k: v for k, v in vars(args).items() if k not in ("fixed_steps", "ship_dir")}
                    | {"ship_dir": str(args.ship_dir), "fixed_steps": args.fixed_steps},
        "data": {"train": f"catalogue-v{GENERATOR_VERSION}-train-seed0-n{args.n_train}",
                 "fid_reference": f"{args.n_eval} real test pictures (split test, seed 1)",
                 "unseen_real": f"{len(unseen)} real test pictures (split test, seed 2): bits/dim (the first "
                                f"{args.n_bpd}), VQ-VAE reconstructions, FID floor",
                 "heldout_real": f"{n_heldout} real held-out-pair pictures (split heldout, seed 1)",
                 "prompts": "dalle2_edu.evaluate.eval_prompts (seed 0): 174 seen, 18 held-out",
                 "seconds": round(data_seconds, 1)},
        "sampling": {"guidance_scale": args.guidance, "diffusion": f"DDIM, {args.sample_steps} steps, eta 0",
                     "autoregressive": "temperature 1, no top-k, guidance on the logits",
                     "unclip": f"prior {args.prior_steps} DDIM steps, best of {args.candidates}; decoder as the "
                               "diffusion roads; 32×32 (no upsampler)"},
        "upstream": {"clip": weights_digest(checkpoints / "clip_tiny.safetensors")},
        "roads": {},
    })  # fmt: skip
    R = report.data

    def trainer_kwargs(extra: dict) -> dict:
        return dict(batch_size=args.batch_size, seed=args.seed, progress=False, device="cpu", **extra)

    def sub(x, probe: bool):
        return x[:PROBE_EXAMPLES] if probe else x

    # -- the VQ-VAE, once ----------------------------------------------------------------------------------------------
    vq_trainer, vq_info = train_by_time(
        "VQ-VAE", lambda probe, **kw: train_vqvae(sub(train.images, probe), configs["vqvae"], steps=0,
                                                  **trainer_kwargs(kw)),
        args.vq_minutes * 60, args, args.fixed_steps.get("vqvae"), warmup_cap=100)  # fmt: skip
    vq_fp32 = vq_trainer.ema_model.eval()
    half = vqvae_half_is_exact(vq_fp32, unseen.images)
    paths = {name: out / f"{name}.safetensors" for name in TRAINED}
    save_vqvae(vq_fp32, paths["vqvae"], metrics={"training": vq_info}, half=half)
    start = time.perf_counter()
    tokens = encode_tokens(vq_fp32, train.images)  # (N, g, g), the transformer's data
    vq_info["encode_train_seconds"] = round(time.perf_counter() - start, 1)
    R["vqvae"] = {
        "training": vq_info,
        "params": n_params(vq_fp32),
        "weights_dtype": "float16" if half else "float32",
        "weights_dtype_note": "float16 only when it picks the same codes as float32 on the unseen pictures",
    }
    report.write()

    # -- the three generators ------------------------------------------------------------------------------------------
    ar_trainer, ar_info = train_by_time(
        "autoregressive",
        lambda probe, **kw: train_autoregressive(sub(train.captions, probe), sub(tokens, probe),
                                                 configs["autoregressive"], steps=0, **trainer_kwargs(kw)),
        args.minutes * 60, args, args.fixed_steps.get("autoregressive"), warmup_cap=100)  # fmt: skip
    save_autoregressive(ar_trainer.ema_model, paths["autoregressive"], metrics={"training": ar_info})
    del ar_trainer

    ld_trainer, ld_info = train_by_time(
        "latent diffusion",
        lambda probe, **kw: train_latent_diffusion(vq_fp32, sub(train.images, probe), sub(text_emb, probe),
                                                   configs["latent_diffusion"], steps=0,
                                                   **trainer_kwargs(kw))[0],
        args.minutes * 60, args, args.fixed_steps.get("latent_diffusion"), warmup_cap=200)  # fmt: skip
    save_latent_diffusion(ld_trainer.ema_model, paths["latent_diffusion"], metrics={"training": ld_info})
    del ld_trainer

    px_trainer, px_info = train_by_time(
        "pixel diffusion",
        lambda probe, **kw: train_decoder(sub(train.images, probe), sub(text_emb, probe), configs["pixel_diffusion"],
                                          steps=0, **trainer_kwargs(kw))[0],
        args.minutes * 60, args, args.fixed_steps.get("pixel_diffusion"), warmup_cap=200)  # fmt: skip
    save_decoder(px_trainer.ema_model, paths["pixel_diffusion"], metrics={"training": px_info})
    del px_trainer, vq_trainer
    infos = {"autoregressive": ar_info, "latent_diffusion": ld_info, "pixel_diffusion": px_info}

    # -- evaluation, from the saved files ------------------------------------------------------------------------------
    vq = load_vqvae(paths["vqvae"])
    ar = load_autoregressive(paths["autoregressive"])
    ld, ld_gd = load_latent_diffusion(paths["latent_diffusion"])
    px, px_gd = load_decoder(paths["pixel_diffusion"])

    classifier.eval()
    ref_features = extract_features(ref.images, classifier)
    n = args.n_eval
    real_seen = unseen.images[:n]
    floor_feats = extract_features(real_seen, classifier)
    k_mean, k_std = kid(floor_feats, ref_features, subsets=50, subset_size=min(n, 100), seed=args.seed)
    floor = {"fid": round(fid(floor_feats, ref_features), 3), "kid": round(k_mean, 4), "kid_std": round(k_std, 4),
             "n": n, "what": "FID/KID of real unseen test pictures (seed 2) against the reference (seed 1): what a "
                             "perfect generator scores at this N"}  # fmt: skip
    R["real_pictures"] = {
        **floor,
        "fidelity_seen": fidelity(real_seen, unseen.labels[:n], classifier),
        "fidelity_heldout": fidelity(heldout_real.images, heldout_real.labels, classifier),
    }
    report.write()

    # VQ-VAE: reconstructions of the same real pictures
    with torch.no_grad():

        def reconstruct(images):
            return torch.cat([vq.decode_tokens(vq.encode_tokens(images[i : i + 256])).cpu()
                              for i in range(0, len(images), 256)])  # fmt: skip

        recon, recon_heldout = reconstruct(real_seen), reconstruct(heldout_real.images)
    recon_metrics = image_metrics(recon, unseen.labels[:n], ref_features, classifier, args.seed, floor)
    R["vqvae"].update({
        "grid": f"{vq.config.grid_size}×{vq.config.grid_size}", "codebook_size": vq.config.codebook_size,
        "code_dim": vq.config.code_dim, **rounded(evaluate_vqvae(vq, real_seen)),
        "fid": recon_metrics["fid"], "fid_floor": floor["fid"], "kid": recon_metrics["kid"],
        "kid_std": recon_metrics["kid_std"], "fidelity_recon_seen": recon_metrics["fidelity_seen"],
        "fidelity_recon_heldout": fidelity(recon_heldout, heldout_real.labels, classifier),
        "file": str(paths["vqvae"]), "file_bytes": paths["vqvae"].stat().st_size,
    })  # fmt: skip
    report.write()

    seen_prompts, seen_labels = seen_prompt_set(n, args.seed)
    held_prompts, held_labels = heldout_prompt_set(args.heldout_per_prompt)
    bpd_images, bpd_captions = unseen.images[: args.n_bpd], unseen.captions[: args.n_bpd]
    g = args.guidance

    def text(captions):
        return clip.encode_text(captions)

    samplers = {
        "autoregressive": lambda caps, s: generate(ar, vq, caps, guidance_scale=g, seed=s),
        "pixel_diffusion": lambda caps, s: sample_decoder(px, px_gd, text(caps), steps=args.sample_steps,
                                                          guidance_scale=g, seed=s),
        "latent_diffusion": lambda caps, s: sample_latent_diffusion(ld, ld_gd, vq, text(caps), steps=args.sample_steps,
                                                                    guidance_scale=g, seed=s),
        "unclip_shipped": lambda caps, s: pipe.generate(caps, n=1, seed=s, steps=args.sample_steps, guidance_scale=g,
                                                        prior_steps=args.prior_steps, n_candidates=args.candidates,
                                                        upsample=False, size=32, sampler="ddim").tensors,
    }  # fmt: skip  (DDIM on every diffusion road, as sample_decoder and sample_latent_diffusion default to)
    generators = {"autoregressive": ar, "pixel_diffusion": px, "latent_diffusion": ld}
    models = {"vqvae": vq, "autoregressive": ar, "pixel_diffusion": (px, px_gd), "clip": clip}

    for name, sampler in samplers.items():
        row: dict = {"description": ROADS[name]}
        if name == "unclip_shipped":
            prior_model, decoder_model = pipe.prior[0], pipe.decoder[0]
            row.update(generator_params=n_params(prior_model) + n_params(decoder_model),
                       generator_params_note="prior + decoder (CLIP, shared by every road, not counted)",
                       vqvae_params=None, trained=shipped_training(checkpoints), training=None,
                       vqvae_train_seconds=None, train_seconds=None, train_steps=None)  # fmt: skip
        else:
            uses_vq = name != "pixel_diffusion"  # the VQ-VAE's size and time are stated beside the roads using it
            row.update(generator_params=n_params(generators[name]), training=infos[name],
                       train_seconds=infos[name]["train_seconds"], train_steps=infos[name]["steps"],
                       vqvae_params=R["vqvae"]["params"] if uses_vq else None,
                       vqvae_train_seconds=vq_info["train_seconds"] if uses_vq else None,
                       file=str(paths[name]), file_bytes=paths[name].stat().st_size)  # fmt: skip

        row.update(measure_bits_per_dim(name, models, bpd_images, bpd_captions, args.seed, progress))

        # pictures: a warm-up, then the seen and held-out prompt sets, timed
        draw(sampler, seen_prompts[:1], 1, args.seed, "warm-up", False)
        start = time.perf_counter()
        seen = draw(sampler, seen_prompts, args.batch_size, args.seed, f"{name}: seen prompts", progress)
        held = draw(sampler, held_prompts, args.batch_size, args.seed + 10**6, f"{name}: held-out prompts", progress)
        seconds = time.perf_counter() - start
        row.update(image_metrics(seen, seen_labels, ref_features, classifier, args.seed, floor))
        row.update(fidelity_heldout=fidelity(held, held_labels, classifier),
                   seconds_per_picture=round(seconds / (len(seen) + len(held)), 4),
                   pictures=len(seen) + len(held))  # fmt: skip
        R["roads"][name] = row
        report.write()
        tqdm.write(
            f"{name}: FID {row['fid']:.2f}, seen {_triple(row['fidelity_seen'])}, "
            f"held-out {_triple(row['fidelity_heldout'])}, bits/dim {row['bits_per_dim']}"
        )

    R["notes"] = [
        "Same data (catalogue train split, seed 0), same batch size, same training wall time per generator, same "
        "text (the shipped CLIP: its text embedding for the two diffusion roads, its tokenizer for the transformer, "
        "which learns its own token embeddings), same guidance scale and the same prompt sets for every road.",
        "The token and latent roads also use the VQ-VAE, trained once for --vq-minutes; its time is added to both in "
        "the table, so their generators' own minutes equal the pixel road's but their total is larger.",
        "Generators are of similar size (about 1 M parameters each in full mode); the pixel UNet costs far more per "
        "step (3072 numbers per picture against 512 latents or 64 tokens), so in equal time it takes far fewer steps.",
        "bits/dim: the two bounds are on the same quantity (-log2 p(x | caption) of 8-bit unseen test pictures, per "
        "dimension) but from few pictures (see bits_per_dim_n, ± is the standard error) and one noise draw per VLB "
        "term; latent diffusion has no tractable bound here (see bits_per_dim_why).",
        "The shipped unCLIP row is a reference, not a competitor: trained far longer, with a prior, its decoder "
        "warm-started from another trained UNet.",
        "The number of steps depends on the machine's speed (wall-time budget); --steps repeats a run exactly.",
    ]
    R["seconds_total"] = round(time.perf_counter() - run_start, 1)
    R["markdown"] = markdown_tables(R)
    report.write()

    # the JSON beside each checkpoint: how it was trained and what it measured
    for name in TRAINED:
        row = R["vqvae"] if name == "vqvae" else R["roads"][name]
        meta = {"what": ROADS.get(name, "VQ-VAE shared by the autoregressive and latent roads"),
                "command": R["command"], "date": R["date"], "machine": R["machine"],
                "trained_against": {"data": R["data"]["train"], "seed": args.seed, "upstream": R["upstream"]},
                **{k: v for k, v in row.items() if k != "description"}}  # fmt: skip
        paths[name].with_suffix(".json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    if args.ship:
        for name in TRAINED:
            for suffix in (".safetensors", ".json"):
                shutil.copy2(paths[name].with_suffix(suffix), args.ship_dir / paths[name].with_suffix(suffix).name)
        total = sum((args.ship_dir / f"{name}.safetensors").stat().st_size for name in TRAINED)
        R["shipped"] = {"folder": str(args.ship_dir), "bytes": total}
        report.write()
        print(f"shipped {len(TRAINED)} checkpoints to {args.ship_dir} ({total / 1e6:.1f} MB)")
    print(R["markdown"])
    print(f"\nwritten: {args.json} ({R['seconds_total'] / 60:.1f} min)")
    return R


if __name__ == "__main__":
    main()
