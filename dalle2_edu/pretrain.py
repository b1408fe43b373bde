"""Retrain every unCLIP stage from scratch and write a checkpoint folder that :meth:`UnCLIP.from_pretrained` loads.

    python -m dalle2_edu pretrain --out runs/pretrain          # the full recipe
    python -m dalle2_edu pretrain --out runs/fast --fast       # a from-scratch demo sized for a laptop CPU

Stages run in order (CLIP → prior → decoder → upsampler → evaluation); each writes its weights and a JSON with its
config, the command and its metrics into ``out``, and keeps a resumable training checkpoint under ``out/runs/``: run
the same command again after an interruption and it continues. ``--stages`` runs a subset (the later stages load the
earlier ones' files from ``out``).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from dalle2_edu.pipeline import CHECKPOINT_FILES

RECIPES = {
    "full": dict(clip_steps=800, prior_steps=2000, decoder_steps=2000, upsampler_steps=800, n_train=20000,
                 decoder_batch=64, decoder_lr=3e-4, eval_n=4),
    "fast": dict(clip_steps=300, prior_steps=800, decoder_steps=1200, upsampler_steps=300, n_train=20000,
                 decoder_batch=32, decoder_lr=1e-3, eval_n=2),
}  # fmt: skip
"""Training steps per stage for ``pretrain`` and ``pretrain --fast``."""

STAGES = ("clip", "prior", "decoder", "upsampler", "evaluate")


def pretrain(
    out="runs/pretrain",
    fast: bool = False,
    seed: int = 0,
    stages=STAGES,
    init_decoder=None,
    progress: bool = True,
    steps: dict | None = None,
) -> dict:
    """Train the stages named in ``stages`` into the folder ``out``; return the metrics (also in ``metrics.json``).

    :param fast: use :data:`RECIPES` ``["fast"]`` instead of ``["full"]``.
    :param init_decoder: a file to warm-start the decoder from: an ``image32_attributes.safetensors`` attribute model
        (its UNet) or a ``decoder32.safetensors`` decoder (everything: to continue training it).
    :param steps: override the recipe's step counts, e.g. ``{"decoder_steps": 750}``.
    """
    from dalle2_edu.clip import evaluate_clip, load_clip, save_clip, train_clip
    from dalle2_edu.datasets.catalogue import ProductCatalogue

    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stages {unknown}; choose among {STAGES}")
    recipe = dict(RECIPES["fast" if fast else "full"])
    known = [k for k in recipe if k.endswith("_steps")]
    bad = set(steps or {}) - set(known)
    if bad:
        raise ValueError(f"unknown step counts {sorted(bad)}; choose among {known}")
    recipe.update(steps or {})
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = out / "runs"
    metrics_path = out / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    metrics.update(recipe=recipe, seed=seed, command="python -m dalle2_edu " + " ".join(sys.argv[1:]))
    path = {k: out / f for k, f in CHECKPOINT_FILES.items()}

    def done(stage: str, seconds: float, report: dict) -> None:
        metrics[stage] = {"seconds": round(seconds, 1), **report}
        metrics_path.write_text(json.dumps(metrics, indent=2, ensure_ascii=False))
        print(f"[pretrain] {stage} done in {seconds:.0f} s", flush=True)

    if "clip" in stages:
        start = time.perf_counter()
        clip, _ = train_clip(steps=recipe["clip_steps"], n_train=recipe["n_train"], seed=seed,
                             out_dir=runs / "clip", progress=progress)  # fmt: skip
        grades = evaluate_clip(clip.cpu())
        save_clip(clip, path["clip"], metrics={"zero_shot_accuracy": grades, "command": metrics["command"]})
        done("clip", time.perf_counter() - start, {"zero_shot_accuracy": grades})

    embeddings = None
    if "prior" in stages or "decoder" in stages:
        from dalle2_edu.clip import embed_dataset

        clip = load_clip(path["clip"])
        train = ProductCatalogue(recipe["n_train"], split="train", seed=0, resolution=32, progress=progress)
        embeddings = embed_dataset(clip, train.images, train.captions, cache_dir=runs / "embeddings", progress=progress)

    if "prior" in stages:
        from dalle2_edu.prior import PriorConfig, save_prior, train_prior

        start = time.perf_counter()
        d, w = embeddings["image_emb"].shape[1], embeddings["text_tokens"].shape[2]
        trainer, _ = train_prior(embeddings, PriorConfig(embed_dim=d, token_dim=w), steps=recipe["prior_steps"],
                                 batch_size=128, lr=1e-3, seed=seed, out_dir=runs / "prior",
                                 progress=progress)  # fmt: skip
        save_prior(trainer.ema_model, path["prior"], {"command": metrics["command"]})
        done("prior", time.perf_counter() - start, {"final_loss": trainer.history["loss"][-1]})

    if "decoder" in stages:
        from dalle2_edu.decoder import DecoderConfig, save_decoder, train_decoder

        start = time.perf_counter()
        init = None
        if init_decoder:
            from dalle2_edu.checkpoint import load_weights
            from dalle2_edu.decoder import load_decoder
            from dalle2_edu.image_model import load_image_model

            is_decoder = "decoder" in load_weights(init_decoder)[1]
            init, _ = (load_decoder if is_decoder else load_image_model)(init_decoder)
        trainer, _ = train_decoder(
            train.images, embeddings["image_emb"], DecoderConfig(clip_dim=embeddings["image_emb"].shape[1]),
            steps=recipe["decoder_steps"], batch_size=recipe["decoder_batch"], lr=recipe["decoder_lr"], seed=seed,
            init_from=init,
            out_dir=runs / "decoder", progress=progress,
        )  # fmt: skip
        info = {"command": metrics["command"], "warm_start": str(init_decoder) if init_decoder else None}
        save_decoder(trainer.ema_model, path["decoder"], info)
        done("decoder", time.perf_counter() - start, {"final_loss": trainer.history["loss"][-1], **info})

    if "upsampler" in stages:
        from dalle2_edu.upsampler import save_upsampler, train_upsampler

        start = time.perf_counter()
        trainer, _ = train_upsampler(steps=recipe["upsampler_steps"], n_train=recipe["n_train"], seed=seed,
                                     out_dir=runs / "upsampler", progress=progress)  # fmt: skip
        save_upsampler(trainer.ema_model, path["upsampler"], {"command": metrics["command"]})
        done("upsampler", time.perf_counter() - start, {"final_loss": trainer.history["loss"][-1]})

    if "evaluate" in stages:
        from dalle2_edu.evaluate import evaluate_pipeline
        from dalle2_edu.pipeline import UnCLIP

        start = time.perf_counter()
        pipe = UnCLIP.from_pretrained(out, upsampler=False)
        with torch.no_grad():
            report = evaluate_pipeline(pipe, n=recipe["eval_n"], seed=seed, upsample=False, progress=progress)
        done("evaluate", time.perf_counter() - start, report)
        print(json.dumps({k: report[k] for k in ("seen", "heldout")}, indent=1))
    return metrics
