"""``python -m dalle2_edu``: every command of the project, and the only place with argparse.

python -m dalle2_edu demo --out out/demo                              # what `make demo` runs
python -m dalle2_edu generate "a red striped mug on a wooden table" --n 4 --out out/gen
python -m dalle2_edu train all --recipe fast --out runs/fast          # retrain the pipeline on the catalogue
python -m dalle2_edu train all --data my_pictures/ --out runs/mine    # ... or on your own captioned pictures
python -m dalle2_edu generate "a red gizmo" --checkpoints runs/mine   # draw from what you trained
python -m dalle2_edu evaluate decoder --checkpoints runs/fast         # grade a stage (or `pipeline`)
python -m dalle2_edu toy2d --steps 3000                               # the 2D model of notebooks 01-04, with its VLB
torchrun --standalone --nproc-per-node=2 -m dalle2_edu train decoder --out runs/fast   # several processes / GPUs

Errors print one line (``error: ...``) naming the problem and the fix, exit code 1 (2 for a malformed command line);
``--debug`` (or ``DALLE2_EDU_DEBUG=1``) shows the full traceback instead.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

DEBUG_ENV = "DALLE2_EDU_DEBUG"
GRID_MAX_PICTURES = 256
"""``generate`` writes a grid of all pictures up to this many; beyond it, only the single pictures."""
GRID_MAX_SIDE = 16384
"""The largest grid side in pixels ``generate`` writes (PNG encoders and viewers choke beyond)."""
ANIMATION_OUT = "out/animate/animation.gif"
"""``animate``'s default ``--out`` (its folder is created; one the user names must exist)."""


def _command_line(argv: list[str] | None) -> str:
    args = sys.argv[1:] if argv is None else argv
    prefix = "torchrun ... -m dalle2_edu" if os.environ.get("TORCHELASTIC_RUN_ID") else "python -m dalle2_edu"
    return " ".join([prefix, *(shlex.quote(a) for a in args)])


def _set_threads() -> None:
    import torch

    torch.set_num_threads(max(1, torch.get_num_threads()))


def _check_out_dir(path: str, what: str = "--out") -> Path:
    """An output folder that can be written, checked before any work starts."""
    from dalle2_edu.utils import writable_folder

    return writable_folder(path, what)


# ---------------------------------------------------------------------------------------------------------- toy2d
def _toy2d(args) -> dict:
    from dalle2_edu.diffusion.sampling import sample_progressive
    from dalle2_edu.stages.toy2d import Toy2DConfig, train_toy2d, vlb_vs_exact_nll
    from dalle2_edu.validate import check_count, check_seed
    from dalle2_edu.viz import scatter_row, trajectory_frames

    for name in ("steps", "hidden", "depth", "vlb_points"):
        check_count(f"--{name.replace('_', '-')}", getattr(args, name))
    check_seed(args.seed, "--seed")
    _set_threads()
    out = _check_out_dir(args.out)
    cfg = Toy2DConfig(
        dataset=args.dataset, steps=args.steps, hidden=args.hidden, depth=args.depth, seed=args.seed,
        diffusion={"loss_type": args.loss_type}, t_sampler=args.t_sampler,
    )  # fmt: skip
    start = time.perf_counter()
    trainer, gd, data = train_toy2d(cfg, progress=True)
    train_s = time.perf_counter() - start
    model = trainer.ema_model

    steps = list(sample_progressive(model, gd, (2000, 2), sampler="ddpm", seed=args.seed, desc="2D samples"))
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


# -------------------------------------------------------------------------------------------------------- generate
def _generate(args) -> dict:
    from PIL import Image

    from dalle2_edu.pipeline import UnCLIP
    from dalle2_edu.validate import check_count, check_guidance_scale, check_prompts, check_seed
    from dalle2_edu.viz import image_grid

    if args.from_file is not None:
        return _generate_from(args)
    if not args.prompts:
        raise ValueError("generate needs one or more prompts, e.g. \"a red striped mug on a wooden table\", or "
                         "--from FILE to redraw a picture saved by dalle2_edu")  # fmt: skip
    # every argument is checked before the models load or a picture is drawn
    prompts = check_prompts(args.prompts)
    n = check_count("--n", args.n)
    steps = check_count("--steps", args.steps)
    batch = check_count("--batch-size", args.batch_size)
    guidance = check_guidance_scale(args.guidance_scale, "--guidance-scale")
    seed = check_seed(args.seed, "--seed")
    scale = check_count("--scale", args.scale)
    if scale > 16:
        raise ValueError(f"--scale must be between 1 and 16 (it enlarges the saved grid), got {scale}")
    folder = _check_out_dir(args.out)
    _set_threads()
    if args.no_upsample and args.size not in (None, 32):
        raise ValueError(f"--no-upsample stops at 32x32, but --size {args.size} was asked for; pass one of them")
    pipe = UnCLIP.from_pretrained(args.checkpoints, device=args.device)
    size = pipe.check_size(args.size, not args.no_upsample)  # 128 without the second upsampler: a clear error
    total = len(prompts) * n
    side = (size + 2) * max(n, 1) * scale
    write_grid = total <= GRID_MAX_PICTURES and side <= GRID_MAX_SIDE
    if not write_grid:
        print(f"note: {total} pictures at --scale {scale}: too many for one grid; writing the single pictures only")
    start = time.perf_counter()
    kept = []
    chunks = pipe.generate_batches(prompts, n=n, guidance_scale=guidance, steps=steps, seed=seed,
                                   use_prior=not args.no_prior, upsample=size > pipe.sizes[0], progress=True,
                                   batch_size=batch, sampler=args.sampler, size=size)  # fmt: skip
    for chunk in chunks:
        chunk.save(folder)  # each picture with its metadata (dalle2_edu.provenance): `info FILE`, `generate --from`
        if write_grid:
            kept.append(chunk.tensors.cpu())
    seconds = time.perf_counter() - start
    report = {"seconds": seconds, "pictures": total, "folder": str(folder)}
    if write_grid:
        import torch

        grid = Image.fromarray(image_grid(torch.cat(kept), nrow=n).numpy())
        if scale != 1:
            grid = grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST)
        grid.save(folder / "grid.png")
        report["grid"] = str(folder / "grid.png")
        print(f"{total} pictures in {seconds:.1f} s; grid (one row per prompt): {folder / 'grid.png'}")
    else:
        print(f"{total} pictures in {seconds:.1f} s, in {folder}")
    return report


def _generate_from(args) -> dict:
    """``generate --from FILE``: draw a saved picture again from its metadata, with the checkpoints it names."""
    from dalle2_edu.pipeline import UnCLIP
    from dalle2_edu.provenance import (
        check_checkpoints,
        compare_pictures,
        picture_name,
        read_metadata,
        redraw,
        save_picture,
    )

    if args.prompts:
        raise ValueError(f"pass prompts or --from FILE, not both: --from takes the prompt and every setting from "
                         f"'{args.from_file}' (only --out, --checkpoints and --device apply)")  # fmt: skip
    source = Path(args.from_file)
    meta = read_metadata(source)
    folder = _check_out_dir(args.out)
    _set_threads()
    wants_upsampler = (meta.get("checkpoints") or {}).get("upsampler") is not None
    pipe = UnCLIP.from_pretrained(args.checkpoints, device=args.device, upsampler=wants_upsampler)
    check_checkpoints(pipe, meta, f"--checkpoints '{args.checkpoints}'")
    start = time.perf_counter()
    out = redraw(pipe, meta, progress=True)
    path = folder / picture_name(out.start, out.nrow or 1, out.prompts[0])
    if path.resolve() == source.resolve():  # never overwrite the picture being redrawn
        path = path.with_name(f"{path.stem}_redrawn.png")
    save_picture(out.images[0], path, out.metadata(0))
    seconds = time.perf_counter() - start
    same = compare_pictures(source, path)
    if same["identical"]:
        verdict = f"identical to '{source}', pixel for pixel"
    else:
        verdict = (f"differs from '{source}' in {same['changed']} of {same['values']} values (largest by "
                   f"{same['max_abs']} of 255): drawn with torch {meta.get('torch')} on {meta.get('device')}, redrawn "
                   f"with torch {out.settings.get('torch')} on {out.settings.get('device')}")  # fmt: skip
    print(f"redrew picture {meta.get('index')} of a {meta.get('operation')} call (seed {meta.get('seed')}, "
          f"{meta.get('prompt')!r}) in {seconds:.1f} s: {path}\n{verdict}")  # fmt: skip
    return {"seconds": seconds, "path": str(path), **same}


def _info(args) -> dict:
    """``info FILE``: print what a saved picture was drawn from."""
    from dalle2_edu.provenance import describe, read_metadata

    meta = read_metadata(args.file)
    print(json.dumps(meta, indent=1, ensure_ascii=False) if args.json else describe(meta))
    return meta


def _animate(args) -> dict:
    """``animate``: frames between two prompts or pictures, or a colour sweep, written as GIF and WebP."""
    from dalle2_edu.animation import animation_paths, animation_report, save_animation
    from dalle2_edu.pipeline import UnCLIP
    from dalle2_edu.validate import check_count, check_guidance_scale, check_int, check_seed

    # every argument is checked before the models load
    frames = check_int("--frames", args.frames, low=2, hint="(the two ends and the frames between them)")
    check_int("--duration", args.duration, low=20, hint="(milliseconds per frame)")
    check_int("--scale", args.scale, low=1, high=16)
    check_count("--steps", args.steps)
    check_guidance_scale(args.guidance_scale, "--guidance-scale")
    check_seed(args.seed, "--seed")
    if args.out == ANIMATION_OUT:  # the default folder is made; a folder you name must exist (a typo stays visible)
        Path(ANIMATION_OUT).parent.mkdir(parents=True, exist_ok=True)
    gif = animation_paths(args.out)[0]
    inputs = list(args.inputs)
    pictures = [Path(x).suffix.lower() in (".png", ".jpg", ".jpeg", ".webp", ".bmp") for x in inputs]
    if args.colours is not None:
        if len(inputs) != 1 or pictures[0]:
            raise ValueError("--colours sweeps one prompt through colours: pass one prompt, e.g. "
                             "\"a {colour} striped mug on a wooden table\" --colours all")  # fmt: skip
        colours = "all" if args.colours == "all" else [c.strip() for c in args.colours.split(",") if c.strip()]
        start, end = inputs[0], None
    elif len(inputs) != 2:
        raise ValueError(f"animate takes two prompts or two pictures (or one prompt and --colours), got {len(inputs)}")
    else:
        colours = None
        start, end = inputs
        if all(pictures):
            from PIL import Image

            for x in inputs:
                if not Path(x).is_file():
                    raise FileNotFoundError(f"no picture '{x}'; pass two picture files or two prompts")
            start, end = (Image.open(x).convert("RGB") for x in inputs)
        elif any(pictures):
            raise ValueError("animate takes two prompts or two pictures, not one of each; got "
                             f"{inputs[0]!r} and {inputs[1]!r}")  # fmt: skip
    _set_threads()
    pipe = UnCLIP.from_pretrained(args.checkpoints, device=args.device)
    started = time.perf_counter()
    out = pipe.animate(start, end, colours=colours, frames=frames, loop=args.loop, guidance_scale=args.guidance_scale,
                       steps=args.steps, seed=args.seed, use_prior=not args.no_prior, progress=True)  # fmt: skip
    seconds = time.perf_counter() - started
    comment = {k: v for k, v in out.settings.items() if k not in ("checkpoints",)}
    paths = save_animation(out.tensors, gif, duration=args.duration, scale=args.scale, comment=comment)
    report = {"seconds": round(seconds, 1), "files": [str(p) for p in paths]}
    if args.measure:
        report.update(animation_report(out))
        print(f"frame-to-frame change {report['frame_change_mean']:.2f} (max {report['frame_change_max']:.2f}) of "
              f"255; category held in {report['category_hold']} of frames")  # fmt: skip
    print(f"{frames} frames in {seconds:.1f} s: {', '.join(report['files'])}")
    return report


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
    from dalle2_edu.validate import check_count, check_seed

    check_count("--steps", args.steps)
    check_seed(args.seed, "--seed")
    folder = _check_out_dir(args.out)
    _set_threads()
    start = time.perf_counter()
    pipe = UnCLIP.from_pretrained(args.checkpoints, device=args.device)
    out = pipe.generate(list(DEMO_PROMPTS), n=4, steps=args.steps, seed=args.seed, progress=True,
                        sampler=args.sampler)  # fmt: skip
    seconds = time.perf_counter() - start
    out.grid(nrow=4, scale=3).save(folder / "grid.png")
    images = out.tensors.cpu()
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


# ----------------------------------------------------------------------------------------------------------- train
def _train(args, stages: str, steps, command: str) -> dict:
    from dalle2_edu.recipes import Runner

    _set_threads()
    runner = Runner(recipe=args.recipe, data=args.data, out=args.out, device=args.device, seed=args.seed,
                    steps=steps, command=command, progress=not args.no_progress,
                    overwrite_shipped=args.overwrite_shipped, init_decoder=args.init_decoder,
                    precision=args.precision)  # fmt: skip
    return runner.run(stages)


def _pretrain(args, command: str) -> dict:
    """The earlier ``pretrain`` command, kept as an alias of ``train``."""
    steps = {stage: n for stage in ("clip", "prior", "decoder", "upsampler")
             if (n := getattr(args, f"{stage}_steps")) is not None}  # fmt: skip
    args.recipe = "fast" if args.fast else args.recipe
    return _train(args, args.stages, steps or None, command)


# -------------------------------------------------------------------------------------------------------- evaluate
def _evaluate(args) -> dict:
    import torch

    from dalle2_edu.recipes.settings import STAGE_FILES

    _set_threads()
    folder = Path(args.checkpoints)
    if args.stage != "pipeline" and not (folder / STAGE_FILES[args.stage]).exists():
        raise FileNotFoundError(f"no {STAGE_FILES[args.stage]} in '{folder}'; pass --checkpoints FOLDER holding it, "
                                f"or train it: python -m dalle2_edu train {args.stage} --out {folder}")  # fmt: skip
    path = folder / STAGE_FILES.get(args.stage, "")
    with torch.no_grad():
        if args.stage == "clip":
            from dalle2_edu.stages.clip import evaluate_clip, load_clip

            report = evaluate_clip(load_clip(path), progress=True)
        elif args.stage == "upsampler":
            from dalle2_edu.stages.upsampler import evaluate_upsampler, load_upsampler

            model, gd = load_upsampler(path)
            report = evaluate_upsampler(model, gd, n=args.n, seed=args.seed, progress=True, sampler=args.sampler)
        elif args.stage == "classifier":
            from dalle2_edu.metrics import grade_classifier, load_attribute_classifier

            report = grade_classifier(load_attribute_classifier(path), progress=True)
        else:  # prior, decoder, pipeline: what the pictures show
            from dalle2_edu.evaluate import evaluate_pipeline
            from dalle2_edu.pipeline import UnCLIP

            pipe = UnCLIP.from_pretrained(folder, upsampler=False, device=args.device)
            report = evaluate_pipeline(pipe, n=args.n, seed=args.seed, upsample=False, steps=args.steps,
                                       use_prior=args.stage != "decoder" or not args.no_prior,
                                       progress=True, sampler=args.sampler)  # fmt: skip
    print(json.dumps(report, indent=1))
    return report


# ------------------------------------------------------------------------------------------------------------ main
def _parser() -> argparse.ArgumentParser:
    from dalle2_edu.diffusion.sampling import SAMPLERS
    from dalle2_edu.pipeline import GENERATE_SAMPLER, GENERATE_STEPS
    from dalle2_edu.recipes.settings import RECIPES, STAGE_FILES
    from dalle2_edu.utils import PRECISIONS

    steps_help = "decoder steps (DDIM's; network calls for dpmpp2m, euler, heun)"
    sampler_help = "ddim (default), ddpm, or a fast ODE solver: dpmpp2m (DPM-Solver++), euler, heun"
    gen_steps_help = f"decoder steps (default {GENERATE_STEPS}; network calls for dpmpp2m, euler, heun)"
    gen_sampler_help = (f"decoder and upsampler sampler (default {GENERATE_SAMPLER}: ancestral, learned variance): "
                        "ddpm, ddim, dpmpp2m (DPM-Solver++), euler, heun; docs/BENCHMARKS.md §9 compares "
                        "them")  # fmt: skip

    parser = argparse.ArgumentParser(prog="python -m dalle2_edu", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.split("\n")[2:10]))  # fmt: skip
    parser.add_argument("--debug", action="store_true", help=f"show full tracebacks (or set {DEBUG_ENV}=1)")
    sub = parser.add_subparsers(dest="command", required=True)

    toy = sub.add_parser("toy2d", help="train the 2D MLP denoiser and grade its VLB")
    toy.add_argument("--out", default="out/toy2d", help="folder for the picture and report.json")
    toy.add_argument("--dataset", default="mixture", choices=["mixture", "moons", "swiss_roll"])
    toy.add_argument("--steps", type=int, default=3000, help="training steps")
    toy.add_argument("--hidden", type=int, default=128)
    toy.add_argument("--depth", type=int, default=3)
    toy.add_argument("--seed", type=int, default=0)
    toy.add_argument("--loss-type", default="kl", choices=["kl", "hybrid", "simple"])
    toy.add_argument("--t-sampler", default="loss-second-moment", choices=["loss-second-moment", "uniform"])
    toy.add_argument("--vlb-points", type=int, default=2000, help="points the VLB is averaged over")
    toy.add_argument("--no-vlb", action="store_true", help="skip grading the VLB")

    demo = sub.add_parser("demo", help="text -> 4 pictures for a handful of prompts with the shipped checkpoints")
    demo.add_argument("--out", default="out/demo", help="folder for grid.png and report.json")
    demo.add_argument("--checkpoints", default="data/checkpoints")
    demo.add_argument("--steps", type=int, default=GENERATE_STEPS, help=gen_steps_help)
    demo.add_argument("--sampler", default=GENERATE_SAMPLER, choices=SAMPLERS, help=gen_sampler_help)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")

    gen = sub.add_parser("generate", help="text -> pictures with a trained unCLIP pipeline")
    gen.add_argument("prompts", nargs="*", help='one or more prompts, e.g. "a red striped mug on a wooden table"')
    gen.add_argument("--from", dest="from_file", default=None, metavar="FILE",
                     help="redraw a picture saved by dalle2_edu from its metadata (its prompt and settings; "
                          "only --out, --checkpoints and --device apply)")  # fmt: skip
    gen.add_argument("--n", type=int, default=4, help="pictures per prompt")
    gen.add_argument("--out", default="out/generate", help="folder for grid.png and the single pictures")
    gen.add_argument("--checkpoints", default="data/checkpoints", help="folder with the trained stages")
    gen.add_argument("--guidance-scale", type=float, default=3.0)
    gen.add_argument("--steps", type=int, default=GENERATE_STEPS, help=gen_steps_help)
    gen.add_argument("--sampler", default=GENERATE_SAMPLER, choices=SAMPLERS, help=gen_sampler_help)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--batch-size", type=int, default=64, help="pictures drawn at once (memory grows with it)")
    gen.add_argument("--no-prior", action="store_true", help="feed the text embedding to the decoder directly")
    gen.add_argument("--no-upsample", action="store_true", help="stop at 32x32 (the same as --size 32)")
    gen.add_argument("--size", type=int, default=None, choices=[32, 64, 128],
                     help="where the cascade stops: 32 (decoder), 64 (first upsampler, the default) or 128 "
                          "(second upsampler)")  # fmt: skip
    gen.add_argument("--scale", type=int, default=4, help="enlarge the saved grid by this factor (1-16)")
    gen.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")

    info = sub.add_parser("info", help="what a picture saved by dalle2_edu was drawn from (its PNG metadata)")
    info.add_argument("file", help="a .png written by generate, Generation.save or the playground's Save")
    info.add_argument("--json", action="store_true", help="print the metadata as JSON")

    anim = sub.add_parser("animate", help="frames between two prompts or two pictures, or through colours -> GIF, WebP")
    anim.add_argument("inputs", nargs="+", help='two prompts, two picture files, or one prompt with --colours, e.g. '
                      '"a {colour} striped mug on a wooden table"')  # fmt: skip
    anim.add_argument("--colours", default=None, help="sweep the prompt's colour: all, or a list like red,blue,green")
    anim.add_argument("--frames", type=int, default=24, help="frames in the animation (>= 2)")
    anim.add_argument("--duration", type=int, default=80, help="milliseconds per frame")
    anim.add_argument("--loop", action="store_true", help="return to the start (prompts and colours)")
    anim.add_argument("--out", default=ANIMATION_OUT, help="the GIF; the WebP goes beside it (in a folder that exists)")
    anim.add_argument("--scale", type=int, default=4, help="enlarge the frames by this factor (1-16)")
    anim.add_argument("--checkpoints", default="data/checkpoints", help="folder with the trained stages")
    anim.add_argument("--guidance-scale", type=float, default=3.0)
    anim.add_argument("--steps", type=int, default=25, help="decoder DDIM steps")
    anim.add_argument("--seed", type=int, default=0)
    anim.add_argument("--no-prior", action="store_true", help="feed the text embeddings to the decoder directly")
    anim.add_argument("--measure", action="store_true", help="print frame-to-frame change and the category read")
    anim.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")

    def add_train_args(p):
        p.add_argument("--recipe", default="fast", choices=list(RECIPES),
                       help="full: the shipped checkpoints' settings; fast: minutes on a CPU; gpu: one large GPU; "
                            "tiny: a seconds-long smoke test")  # fmt: skip
        p.add_argument("--data", default=None, help="a folder of pictures + captions.jsonl / metadata.jsonl "
                                                    "(default: the project's product catalogue)")  # fmt: skip
        p.add_argument("--out", default="runs/fast", help="checkpoint folder (resumable: run again to continue)")
        p.add_argument("--device", default="auto", help="auto, cpu, cuda (under torchrun: each process its GPU)")
        p.add_argument("--precision", default="auto", choices=PRECISIONS,
                       help="auto: bf16/fp16 mixed precision on a GPU, bf16 on a CPU with AMX / AVX-512 BF16, fp32 on "
                            "other CPUs; bf16 forces bf16 autocast; fp32 turns mixed precision off")  # fmt: skip
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--overwrite-shipped", action="store_true",
                       help="allow --out to be data/checkpoints, replacing the shipped weights")  # fmt: skip
        p.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
        p.add_argument("--init-decoder", default=None, help="warm-start the decoder from this file: a decoder "
                       "(decoder32.safetensors) or an attribute model (image32_attributes.safetensors)")  # fmt: skip

    train = sub.add_parser("train", help="train one stage, several (comma-separated) or all, from a recipe")
    train.add_argument("stages", help=f"all, or one or more of: {', '.join(STAGE_FILES)}, evaluate")
    train.add_argument("--steps", type=int, default=None, help="override the recipe's steps (one stage only)")
    add_train_args(train)

    pre = sub.add_parser("pretrain", help="alias: train all (--fast: the fast recipe)")
    add_train_args(pre)
    pre.set_defaults(recipe="full", out="runs/pretrain")
    pre.add_argument("--fast", action="store_true", help="the fast recipe")
    pre.add_argument("--stages", default="clip,prior,decoder,upsampler,evaluate", help="comma-separated subset")
    for stage in ("clip", "prior", "decoder", "upsampler"):
        pre.add_argument(f"--{stage}-steps", type=int, default=None, help=f"override the recipe's {stage} steps")

    ev = sub.add_parser("evaluate", help="grade a trained stage, or the whole pipeline")
    ev.add_argument("stage", choices=["clip", "prior", "decoder", "upsampler", "classifier", "pipeline"])
    ev.add_argument("--checkpoints", default="data/checkpoints", help="folder with the trained stages")
    ev.add_argument("--n", type=int, default=2, help="pictures per prompt (upsampler: test pictures)")
    ev.add_argument("--steps", type=int, default=25, help=steps_help)
    ev.add_argument("--sampler", default="ddim", choices=SAMPLERS, help=sampler_help + " (decoder and upsampler)")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--no-prior", action="store_true", help="decoder: feed text embeddings (the ablation)")
    ev.add_argument("--device", default="auto")
    return parser


def _run(args, argv: list[str] | None) -> dict:
    command = _command_line(argv)
    if args.command == "toy2d":
        return _toy2d(args)
    if args.command == "demo":
        return _demo(args)
    if args.command == "generate":
        return _generate(args)
    if args.command == "info":
        return _info(args)
    if args.command == "animate":
        return _animate(args)
    if args.command == "train":
        return _train(args, args.stages, args.steps, command)
    if args.command == "pretrain":
        return _pretrain(args, command)
    return _evaluate(args)


def main(argv: list[str] | None = None) -> int:
    """Run one command; return the exit code (0 done, 1 failed, 2 malformed command line, 130 interrupted)."""
    parser = _parser()
    args = parser.parse_args(argv)  # exits with code 2 and a usage message on a malformed command line
    debug = args.debug or os.environ.get(DEBUG_ENV, "").strip().lower() in {"1", "true", "yes", "on"}
    try:
        _run(args, argv)
    except KeyboardInterrupt:
        print("interrupted (training checkpoints were saved: run the same command again to continue)", file=sys.stderr)
        return 130
    except Exception as err:  # one readable line instead of a traceback; --debug shows it
        if debug:
            raise
        message = str(err).strip() or type(err).__name__
        if isinstance(err, OSError) and err.filename and str(err.filename) not in message:
            message = f"{message}: {err.filename}"
        print(f"error: {message}\n(run with --debug for the traceback)", file=sys.stderr)
        return 1
    return 0
