"""UNet throughput on this CPU: ours vs diffusers.UNet2DModel of matched parameter count, 32×32, in one run.

Measures images/s for a training step (forward, backward, AdamW) and for DDIM-50 sampling (50 forward passes), for
each variant, interleaving the variants round by round so that background load hits all of them alike; reports
medians and the ratio ours / diffusers. Then the peak resident memory of a training run at the default config.

    python benchmarks/unet_throughput.py --rounds 5 --out docs/benchmarks/unet_throughput.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

BATCH, SIZE, DDIM_STEPS = 64, 32, 50


def ours(channels_last=False):
    from dalle2_edu.nets.unet import UNet, UNetConfig
    from dalle2_edu.stages.attributes import default_unet

    return UNet.from_config(UNetConfig.from_dict({**default_unet(), "learned_sigma": True}))


def theirs(widths=(32, 64, 64)):
    """diffusers' UNet2DModel matched to ours: the same widths (the decoder's (32, 64, 64) unless told), one ResBlock
    per level down, attention at 8×8 only: parameter counts within 7%."""
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=SIZE, in_channels=3, out_channels=6, block_out_channels=widths, layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"), norm_num_groups=16, attention_head_dim=16,
    )  # fmt: skip


def forward_fn(model, kind):
    if kind == "diffusers":
        return lambda x, t: model(x, t).sample
    return lambda x, t: model(x, t)


def make_variant(name):
    """name -> (model, forward, input transform, autocast dtype or None)."""
    kind = "diffusers" if name.startswith("diffusers") else "ours"
    model = theirs() if kind == "diffusers" else ours()
    fwd = forward_fn(model, kind)
    fmt = torch.channels_last if "channels_last" in name else torch.contiguous_format
    model = model.to(memory_format=fmt)
    if "compile" in name:
        fwd = torch.compile(fwd)
    amp = torch.bfloat16 if "bf16" in name else None
    return model, fwd, fmt, amp


def time_train(model, fwd, fmt, amp, steps=3):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(BATCH, 3, SIZE, SIZE).to(memory_format=fmt)
    t = torch.randint(0, 1000, (BATCH,))
    target = torch.randn(BATCH, 6, SIZE, SIZE)
    model.train()

    def step():
        with torch.autocast("cpu", dtype=amp, enabled=amp is not None):
            loss = (fwd(x, t).float() - target).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up (and compilation)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return BATCH * steps / (time.perf_counter() - start)


@torch.no_grad()
def time_ddim(model, fwd, fmt, amp):
    """DDIM-50 through the project's sampler, so the sampling arithmetic is the same for every network."""
    from dalle2_edu.diffusion import GaussianDiffusion
    from dalle2_edu.diffusion.schedules import cosine_betas, space_timesteps

    gd = GaussianDiffusion(cosine_betas(1000), var_type="learned_range").respace(space_timesteps(1000, "ddim50"))
    model.eval()

    def net(x, t):
        with torch.autocast("cpu", dtype=amp, enabled=amp is not None):
            return fwd(x.contiguous(memory_format=fmt), t).float()

    net(torch.randn(BATCH, 3, SIZE, SIZE), torch.zeros(BATCH, dtype=torch.long))  # warm-up
    start = time.perf_counter()
    gd.ddim_sample_loop(net, (BATCH, 3, SIZE, SIZE), generator=torch.Generator().manual_seed(0))
    return BATCH / (time.perf_counter() - start)


# ------------------------------------------------------------------------------------------------------------------
# Issue 13, goal 1: the decoder's training step as `train decoder` runs it, against diffusers as it comes
STEP_BATCHES = (32, 64, 128)


# diffusers' matched model (theirs) is matched to the decoder's (32, 64, 64): the baseline of issue 13's goal 1. The
# levers that change the network are measured against that same baseline ("at equal quality, not equal parameters"),
# and the (16, 64, 64) one against a diffusers model of its own widths too.
def lever_unets() -> dict:
    """The networks tried for goal 1 instead of the decoder's (32, 64, 64), by name: whole UNet configs. Their
    grades at equal steps and at equal time: docs/benchmarks/decoder_trials.json (``benchmarks/decoder_trial.py``)."""
    from dalle2_edu.stages.attributes import default_unet

    w16 = {**default_unet(), "model_channels": 16, "channel_mult": [1, 4, 4]}
    return {
        "(16, 64, 64)": w16,
        "(16, 64, 64) + narrow_upsample": {**w16, "narrow_upsample": True},
        "patch 2, (64, 64)": {**default_unet(), "patch_size": 2, "model_channels": 64, "channel_mult": [1, 1]},
    }


def decoder_trainer(batch: int, precision: str = "auto", memory_format=torch.contiguous_format, sdpa_bf16=False,
                    unet: dict | None = None):
    """A Trainer set up as ``python -m dalle2_edu train decoder`` sets one up (the ``fast`` recipe, the default: its
    network, loss, optimizer, clipping, EMA and ``--precision``), on random pictures and embeddings (speed only).

    ``sdpa_bf16``: attention through torch's CPU flash kernel in bf16, as before 2026-12-04 (the lever measured).
    ``unet``: the whole UNet config instead of the recipe's (e.g. one of :func:`lever_unets`)."""
    from dalle2_edu.recipes.settings import recipe_for
    from dalle2_edu.recipes.stages import _merge
    from dalle2_edu.stages.decoder import CLIPDecoder, DecoderConfig, decoder_loss_fn
    from dalle2_edu.train import Trainer

    s = recipe_for("fast", "decoder")
    config = DecoderConfig.from_dict(_merge(DecoderConfig().to_dict(), s.model))
    if unet is not None:
        config = DecoderConfig.from_dict({**config.to_dict(), "unet": unet})
    torch.manual_seed(0)
    model = CLIPDecoder(config).to(memory_format=memory_format)
    data = (torch.randint(0, 256, (4096, 3, SIZE, SIZE), dtype=torch.uint8), torch.randn(4096, config.clip_dim))
    kwargs = {k: v for k, v in s.trainer_kwargs().items() if k != "ckpt_every"}
    trainer = Trainer(model, decoder_loss_fn(config.diffusion.build(), config), data, batch_size=batch, lr=s.lr,
                      amp=precision, progress=False, **kwargs)  # fmt: skip
    if sdpa_bf16:
        import torch.nn.functional as F

        from dalle2_edu.nets import layers

        def step(original=trainer._train_step):
            saved = layers.attention
            layers.attention = lambda q, k, v, mask=None, dropout_p=0.0: F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=dropout_p)
            try:
                return original()
            finally:
                layers.attention = saved

        trainer._train_step = step
    return trainer


def diffusers_step(batch: int, amp=None, w16: bool = False):
    """diffusers' UNet2DModel of matched size as it comes: fp32 (or ``amp`` autocast), NCHW, a plain AdamW step.
    ``w16``: matched to the (16, 64, 64) lever instead of the decoder's (32, 64, 64)."""
    model = theirs((16, 64, 64)) if w16 else theirs()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, t = torch.randn(batch, 3, SIZE, SIZE), torch.randint(0, 1000, (batch,))
    target = torch.randn(batch, 6, SIZE, SIZE)

    def step():
        with torch.autocast("cpu", dtype=amp or torch.float32, enabled=amp is not None):
            loss = (model(x, t).sample.float() - target).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def step_variants(batches=STEP_BATCHES, compile_too=False) -> dict:
    """name -> (batch, step function). ``ours`` is the Trainer's own step; its first call warms up."""
    out = {}
    for b in batches:
        out[f"ours default (auto) b{b}"] = (b, decoder_trainer(b)._train_step)
        out[f"ours fp32 b{b}"] = (b, decoder_trainer(b, "fp32")._train_step)
        out[f"diffusers fp32 b{b}"] = (b, diffusers_step(b))
    b = batches[0]
    out[f"diffusers fp32 (16, 64, 64) b{b}"] = (b, diffusers_step(b, w16=True))
    # the levers tried for the network itself (their grades: docs/benchmarks/decoder_trials.json)
    for name, unet in lever_unets().items():
        out[f"ours {name} auto b{b}"] = (b, decoder_trainer(b, unet=unet)._train_step)
    out[f"diffusers bf16 b{b}"] = (b, diffusers_step(b, torch.bfloat16))
    out[f"ours bf16 + channels_last b{b}"] = (b, decoder_trainer(b, "bf16", torch.channels_last)._train_step)
    out[f"ours bf16, attention in bf16 b{b}"] = (b, decoder_trainer(b, "bf16", sdpa_bf16=True)._train_step)
    if compile_too:
        trainer = decoder_trainer(b)
        trainer.model.compile()
        start = time.perf_counter()
        trainer._train_step()
        out["compile_seconds"] = time.perf_counter() - start
        out[f"ours default + torch.compile b{b}"] = (b, trainer._train_step)
    return out


def time_steps(batch: int, step, steps: int = 4) -> float:
    step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - start)


def decoder_flops_by_op(batch: int = 32, unet: dict | None = None) -> dict:
    """FLOPs of the decoder's forward + backward for one batch (the loss as the Trainer computes it), by aten op."""
    from torch.utils.flop_counter import FlopCounterMode

    trainer = decoder_trainer(batch, "fp32", unet=unet)  # the arithmetic is the same in bf16; count it in fp32
    with FlopCounterMode(display=False) as counter:
        loss = trainer.loss_fn(trainer.model, trainer._next_batch())
        (loss["loss"] if isinstance(loss, dict) else loss[0] if isinstance(loss, tuple) else loss).backward()
    return {str(op): f for op, f in counter.get_flop_counts()["Global"].items()}


def decoder_flops_per_picture(batch: int = 32, unet: dict | None = None) -> float:
    """FLOPs of the decoder's forward + backward per picture."""
    return sum(decoder_flops_by_op(batch, unet).values()) / batch


def train_step_table(rounds: int, batches=STEP_BATCHES, compile_too=False) -> dict:
    from dalle2_edu.utils import resolve_precision

    variants = step_variants(batches, compile_too)
    compile_s = variants.pop("compile_seconds", None)
    rates = {n: [] for n in variants}
    for r in range(rounds):
        for n, (b, step) in variants.items():
            rates[n].append(time_steps(b, step))
        print(f"train step, round {r + 1}/{rounds}: " + ", ".join(f"{n} {v[-1]:.0f}" for n, v in rates.items()),
              flush=True)  # fmt: skip
    med = {n: round(statistics.median(v), 1) for n, v in rates.items()}
    peaks = matmul_peaks()
    flops = decoder_flops_per_picture()
    lever_flops = {name: decoder_flops_per_picture(unet=unet) for name, unet in lever_unets().items()}
    by_variant = {f"ours {name} auto b{batches[0]}": f for name, f in lever_flops.items()}
    flops_of = lambda variant: by_variant.get(variant, flops)
    auto = resolve_precision("auto", torch.device("cpu"))
    out = {
        "what": "pictures per second of one training step (forward, backward, clipping, AdamW, EMA for ours), "
                "median over rounds; ours = the Trainer of `train decoder` (fast recipe), diffusers = UNet2DModel of "
                "matched size as it comes with a plain AdamW step",
        "auto_precision_here": str(auto).replace("torch.", "") if auto else "fp32",
        "images_per_s": med, "rounds": rounds, "matmul_peaks": peaks,
        "decoder_gflop_per_picture": round(flops / 1e9, 3),
        "levers_gflop_per_picture": {name: round(f / 1e9, 3) for name, f in lever_flops.items()},
        "ratio_default_over_diffusers_fp32": {f"b{b}": round(med[f"ours default (auto) b{b}"]
                                                              / med[f"diffusers fp32 b{b}"], 3) for b in batches},
        "ratio_fp32_over_diffusers_fp32": {f"b{b}": round(med[f"ours fp32 b{b}"] / med[f"diffusers fp32 b{b}"], 3)
                                           for b in batches},
        "ratio_w16_over_diffusers_w16_fp32": round(
            med[f"ours (16, 64, 64) auto b{batches[0]}"] / med[f"diffusers fp32 (16, 64, 64) b{batches[0]}"], 3),
        "ratio_over_diffusers_fp32_per_lever": {name: round(med[f"ours {name} auto b{batches[0]}"]
                                                            / med[f"diffusers fp32 b{batches[0]}"], 3)
                                                for name in lever_unets()},
        "gflops_achieved": {n: round(v * flops_of(n) / 1e9, 1) for n, v in med.items() if n.startswith("ours")},
    }  # fmt: skip
    out["fraction_of_peak"] = {n: {k: round(g / peaks["gflops"][k], 3) for k in ("fp32", "bf16")}
                               for n, g in out["gflops_achieved"].items()}  # fmt: skip
    out["convolution_bound"] = bound = convolution_bound(
        batches[0], med[f"ours default (auto) b{batches[0]}"], med[f"diffusers fp32 b{batches[0]}"])
    bound["convolutions_fraction_of_peak"] = {k: round(bound["convolutions_gflops"] / peaks["gflops"][k], 3)
                                              for k in ("fp32", "bf16")}  # fmt: skip
    if compile_s is not None:
        out["compile_seconds"] = round(compile_s, 1)
        cold = "inductor_cold_" in os.environ.get("TORCHINDUCTOR_CACHE_DIR", "")
        out["compile_cache"] = "cold" if cold else "as found"
    # the data side of a step: gathering one batch (the Trainer's _next_batch), against the whole default step
    trainer, b = decoder_trainer(batches[0]), batches[0]
    start = time.perf_counter()
    for _ in range(200):
        trainer._next_batch()
    batch_ms = (time.perf_counter() - start) / 200 * 1e3
    out["batch_preparation_ms"] = round(batch_ms, 3)
    out["batch_preparation_share_of_default_step"] = round(batch_ms / (1e3 * b / med[f"ours default (auto) b{b}"]), 4)
    return out


# the ops torch.profiler lists for a 2-D convolution's own work on the CPU (oneDNN or torch's fallback), forward and
# backward; self times, so that a backend op nested in another is not counted twice
CONV_OPS = {"aten::mkldnn_convolution", "aten::convolution_backward", "aten::mkldnn_convolution_backward",
            "aten::_slow_conv2d_forward", "aten::_slow_conv2d_backward", "aten::_nnpack_spatial_convolution"}


def _profiled_ms(trainer, op_sets: dict[str, set[str]], steps: int) -> dict[str, float]:
    """ms per step of the trainer's step in each named set of ops, and in all ops ("total"), from one
    torch.profiler run's self times."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(2):
        trainer._train_step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            trainer._train_step()
    events = prof.key_averages()
    ms = {name: sum(e.self_cpu_time_total for e in events if e.key in ops) / 1e3 / steps
          for name, ops in op_sets.items()}  # fmt: skip
    return {**ms, "total": sum(e.self_cpu_time_total for e in events) / 1e3 / steps}


GROUP_NORM_OPS = {"aten::native_group_norm", "aten::native_group_norm_backward"}


def convolution_bound(batch: int, step_rate: float, diffusers_rate: float, steps: int = 5) -> dict:
    """How far any saving outside the convolutions (fusing GroupNorm and SiLU, fewer casts, a cheaper optimizer)
    could take the default step: torch.profiler's time in the convolutions per step, the rate they run at, and the
    pictures/s the step would reach if everything else took no time at all, against diffusers' fp32 rate. Then the
    same for the step in channels_last, whose convolutions are faster but whose GroupNorms are not.

    ``step_rate``: the default step's pictures/s measured without the profiler (the table's median). The times in
    and outside the convolutions both come from the profiled steps, so that they add up to one step."""
    op_sets = {"conv": CONV_OPS, "group_norm": GROUP_NORM_OPS}
    default = _profiled_ms(decoder_trainer(batch), op_sets, steps)
    last = _profiled_ms(decoder_trainer(batch, "auto", torch.channels_last), op_sets, steps)
    conv_ms, profiled_ms, gn_ms = default["conv"], default["total"], default["group_norm"]
    conv_last_ms, profiled_last_ms, gn_last_ms = last["conv"], last["total"], last["group_norm"]
    conv_flop = sum(f for op, f in decoder_flops_by_op(batch).items() if "convolution" in op)
    step_ms = batch / step_rate * 1e3
    return {
        "batch": batch,
        "step_ms": round(step_ms, 1),
        "profiled_step_ms": round(profiled_ms, 1),
        "convolutions_ms_per_step": round(conv_ms, 1),
        "convolutions_share_under_profiler": round(conv_ms / profiled_ms, 3),
        "everything_else_ms_per_step": round(profiled_ms - conv_ms, 1),  # both from the same profiled steps
        "group_norm_ms_per_step": round(gn_ms, 1),
        "convolutions_gflop_per_step": round(conv_flop / 1e9, 2),
        "convolutions_gflops": round(conv_flop / conv_ms / 1e6, 1),
        "images_per_s_if_only_convolutions": round(batch / conv_ms * 1e3, 1),
        "ratio_over_diffusers_fp32_if_only_convolutions": round(batch / conv_ms * 1e3 / diffusers_rate, 3),
        "everything_else_ms_allowed_for_2x": round(batch / (2 * diffusers_rate) * 1e3 - conv_ms, 1),
        "channels_last": {
            "profiled_step_ms": round(profiled_last_ms, 1),
            "convolutions_ms_per_step": round(conv_last_ms, 1), "group_norm_ms_per_step": round(gn_last_ms, 1),
            "ratio_over_diffusers_fp32_if_only_convolutions": round(batch / conv_last_ms * 1e3 / diffusers_rate, 3),
            "everything_else_ms_allowed_for_2x": round(batch / (2 * diffusers_rate) * 1e3 - conv_last_ms, 1),
        },
    }  # fmt: skip


def matmul_peaks(n: int = 2048, repeats: int = 5) -> dict:
    """GFLOP/s of an n×n matmul in fp32 and in bf16 (median of ``repeats``): the two ceilings a training step is
    measured against."""
    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        a @ b  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - start)
        out[name] = round(2 * n**3 / statistics.median(times) / 1e9, 1)
    from dalle2_edu.utils import cpu_has_native_bf16

    return {"gflops": out, "size": n, "native_bf16": cpu_has_native_bf16(),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}  # fmt: skip


def training_flops_per_picture(model, fwd) -> float:
    """FLOPs of one training step (forward + backward) per picture, counted by torch.utils.flop_counter."""
    from torch.utils.flop_counter import FlopCounterMode

    x, t = torch.randn(BATCH, 3, SIZE, SIZE), torch.randint(0, 1000, (BATCH,))
    with FlopCounterMode(display=False) as counter:
        fwd(x, t).float().square().mean().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / BATCH


def peak_training_memory(steps: int = 20) -> dict:
    """Peak RSS of a fresh process that trains the default image model for ``steps`` steps (batch 64), and of one
    that only imports and builds it: the difference is what training adds. Read from VmHWM (the high-water mark of
    the process's own memory map): ``ru_maxrss`` would carry over the parent's peak across fork and exec."""
    code = f"""
import re, torch
def hwm():
    return int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1))
torch.set_num_threads(2)
from dalle2_edu.stages.attributes import AttributeUNet, ImageModelConfig, image_loss_fn
cfg = ImageModelConfig(); model = AttributeUNet(cfg); gd = cfg.diffusion.build()
base = hwm()
opt = torch.optim.AdamW(model.parameters(), 1e-4); loss_fn = image_loss_fn(gd, 0.1)
batch = (torch.randint(0, 256, ({BATCH}, 3, 32, 32), dtype=torch.uint8), torch.randint(0, 3, ({BATCH}, 4)))
for _ in range({steps}):
    loss = loss_fn(model, batch)["loss"]; opt.zero_grad(); loss.backward(); opt.step()
print(base, hwm())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    base_kib, peak_kib = int(out[-2]), int(out[-1])
    return {"peak_rss_mib": round(peak_kib / 1024, 1), "after_build_rss_mib": round(base_kib / 1024, 1),
            "training_adds_mib": round((peak_kib - base_kib) / 1024, 1), "batch": BATCH, "steps": steps}  # fmt: skip


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--variants",
        default="ours,diffusers,ours+channels_last,diffusers+channels_last,ours+bf16,diffusers+bf16,"
        "ours+channels_last+bf16,diffusers+channels_last+bf16",
    )
    parser.add_argument("--compile", action="store_true",
                        help="also time the default training step under torch.compile (its compile time is reported)")
    parser.add_argument("--step-rounds", type=int, default=5, help="rounds of the training-step table (goal 1)")
    parser.add_argument("--no-unet", action="store_true", help="only the training-step table, not the UNet table")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="docs/benchmarks/unet_throughput.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    if args.compile:  # a cold compile, as a user's first run pays it: inductor's on-disk caches in a fresh folder
        import tempfile

        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor_cold_")
    step_table = train_step_table(args.step_rounds, compile_too=args.compile)
    print(json.dumps(step_table, indent=2), flush=True)
    if args.no_unet:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"train_step": step_table}, indent=2) + "\n")
        return
    names = args.variants.split(",")
    variants = {n: make_variant(n) for n in names}
    params = {n: sum(p.numel() for p in v[0].parameters()) for n, v in variants.items()}
    train = {n: [] for n in names}
    sample = {n: [] for n in names}
    for r in range(args.rounds):
        for n, (model, fwd, fmt, amp) in variants.items():
            train[n].append(time_train(model, fwd, fmt, amp))
            sample[n].append(time_ddim(model, fwd, fmt, amp))
        print(
            f"round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {train[n][-1]:.0f}/{sample[n][-1]:.1f}" for n in names)
        )

    med = lambda xs: statistics.median(xs)
    result = {
        "train_step": step_table,
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads,
                    "torch": torch.__version__, "python": platform.python_version()},
        "batch": BATCH, "image_size": SIZE, "ddim_steps": DDIM_STEPS, "rounds": args.rounds,
        "parameters": params,
        "train_images_per_s": {n: round(med(v), 1) for n, v in train.items()},
        "ddim50_images_per_s": {n: round(med(v), 2) for n, v in sample.items()},
    }  # fmt: skip
    best = max((n for n in names if n.startswith("ours")), key=lambda n: med(train[n]))
    result["ratio_train_ours_over_diffusers"] = round(med(train["ours"]) / med(train["diffusers"]), 3)
    result["ratio_ddim50_ours_over_diffusers"] = round(med(sample["ours"]) / med(sample["diffusers"]), 3)
    result["best_ours_variant_train"] = best
    # the same setting on both sides (fair), and our best setting against diffusers as it comes out of the box
    result["ratio_per_setting"] = {
        n[len("ours") :] or "fp32": {
            "train": round(med(train[n]) / med(train["diffusers" + n[len("ours") :]]), 3),
            "ddim50": round(med(sample[n]) / med(sample["diffusers" + n[len("ours") :]]), 3),
        }
        for n in names
        if n.startswith("ours") and "diffusers" + n[len("ours") :] in names
    }
    result["ratio_best_ours_over_default_diffusers"] = {
        "train": round(med(train[best]) / med(train["diffusers"]), 3),
        "ddim50": round(max(med(sample[n]) for n in names if n.startswith("ours")) / med(sample["diffusers"]), 3),
    }
    peaks = matmul_peaks()
    flops = training_flops_per_picture(variants["ours"][0], variants["ours"][1])
    achieved = {n: round(med(train[n]) * flops / 1e9, 1) for n in names if n.startswith("ours")}
    result["matmul_peaks"] = peaks
    result["training_gflop_per_picture"] = round(flops / 1e9, 3)
    result["training_gflops_achieved"] = achieved
    result["fraction_of_peak"] = {n: {k: round(g / peaks["gflops"][k], 3) for k in ("fp32", "bf16")}
                                  for n, g in achieved.items()}  # fmt: skip
    result["peak_memory"] = peak_training_memory()
    result["max_rss_this_process_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
