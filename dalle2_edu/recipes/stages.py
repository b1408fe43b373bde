"""How each stage trains and is graded under a recipe: ``train(ctx) -> (model, trainer)`` and ``grade(ctx, model)``.

Each function is short on purpose: the model, its loss (``prepare``) and its sampler live in the stage's own module;
here a stage only says what data it reads, which upstream weights it needs, and how it is measured. The runner
(:mod:`dalle2_edu.recipes.runner`) does the rest (locks, provenance, saving, reports).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dalle2_edu.recipes.data import TrainingSet
from dalle2_edu.recipes.settings import STAGE_FILES, StageSettings


@dataclass
class StageContext:
    """Everything a stage's ``train`` and ``grade`` need."""

    stage: str
    settings: StageSettings
    data: TrainingSet
    out: Path  # the checkpoint folder: upstream weights are read from it, this stage's written to it
    run_dir: Path | None  # resumable Trainer checkpoints (None on ranks that must not write)
    device: str = "auto"
    precision: str = "auto"  # the Trainer's amp: auto, fp32, bf16, fp16 (dalle2_edu.utils.resolve_precision)
    seed: int = 0
    progress: bool = True
    cache: dict = field(default_factory=dict)
    quick: bool = False  # grade lightly (the tiny recipe: a smoke test, its grades mean nothing)
    init_decoder: Path | None = None  # a weights file to warm-start the decoder from (--init-decoder)

    def upstream(self, stage: str) -> Path:
        return self.out / STAGE_FILES[stage]


def _merge(base: dict, changes: dict) -> dict:
    """``base`` updated by ``changes``, recursing into dicts (so ``{"diffusion": {"num_timesteps": 20}}`` keeps the
    other diffusion fields)."""
    out = dict(base)
    for key, value in changes.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _trainer_kwargs(ctx: StageContext) -> dict:
    return dict(ctx.settings.trainer_kwargs(), device=ctx.device, amp=ctx.precision, desc=f"training {ctx.stage}")


def embeddings(ctx: StageContext) -> dict:
    """CLIP embeddings of the training set by the CLIP in ``ctx.out`` (cached beside the run)."""
    from dalle2_edu.stages.clip import embed_dataset, load_clip

    if "embeddings" not in ctx.cache:
        clip = load_clip(ctx.upstream("clip"), device=_device_for_eval(ctx))
        images = ctx.data.images(clip.config.image_size)
        from dalle2_edu.distributed import is_main

        # rank 0 keeps the cache; under torchrun the other ranks compute the same embeddings without writing
        cache = None if ctx.run_dir is None or not is_main() else ctx.run_dir.parent / "embeddings"
        ctx.cache["embeddings"] = embed_dataset(clip, images, ctx.data.captions, cache_dir=cache,
                                                progress=ctx.progress and is_main())  # fmt: skip
        ctx.cache["clip"] = clip
    return ctx.cache["embeddings"]


def _device_for_eval(ctx: StageContext):
    from dalle2_edu.utils import get_device

    return get_device(ctx.device)


# ------------------------------------------------------------------------------------------------------------ clip
def train_clip(ctx: StageContext):
    from dalle2_edu.stages.clip import CLIPConfig, train_clip

    s = ctx.settings
    config = CLIPConfig(**_merge(CLIPConfig().to_dict(), s.model))
    words = warn_odd_words(ctx.data.captions)
    if words:
        ctx.cache["odd_words"] = words
    clip, trainer = train_clip(
        config, steps=s.steps, batch_size=min(s.batch_size, len(ctx.data)), lr=s.lr, seed=ctx.seed,
        out_dir=ctx.run_dir, augment=s.options.get("augment", True), progress=ctx.progress,
        images=ctx.data.images(config.image_size), captions=ctx.data.captions, **_trainer_kwargs(ctx),
    )  # fmt: skip
    return clip, trainer


def grade_clip(ctx: StageContext, clip) -> dict:
    from dalle2_edu.stages.clip import evaluate_clip

    clip = clip.cpu()
    report = {"retrieval": clip_retrieval(clip, ctx.data.images(clip.config.image_size), ctx.data.captions)}
    if ctx.data.kind == "catalogue" and not ctx.quick:
        report["zero_shot_accuracy"] = evaluate_clip(clip)
    if ctx.cache.get("odd_words"):
        report["odd_words"] = ctx.cache["odd_words"]
    return report


def clip_retrieval(clip, images: torch.Tensor, captions: list[str], n: int = 256, seed: int = 0) -> dict:
    """How often a picture's most similar caption, among ``n`` pictures' captions, is its own (or the same text).

    :return: ``{"accuracy", "chance", "n"}``; chance is the mean share of identical captions in the pool.
    """
    n = min(n, len(captions))
    pick = torch.randperm(len(captions), generator=torch.Generator().manual_seed(seed))[:n]
    texts = [captions[i] for i in pick.tolist()]
    with torch.no_grad():
        sim = clip.encode_image(images[pick]) @ clip.encode_text(texts).T  # (n, n)
    best = sim.argmax(dim=1).tolist()
    hits = sum(texts[b] == texts[i] for i, b in enumerate(best))
    chance = sum(sum(t == u for u in texts) for t in texts) / (n * n)
    return {"accuracy": round(hits / n, 4), "chance": round(chance, 4), "n": n}


def warn_odd_words(captions: list[str], max_pieces: int = 3) -> list[str]:
    """Words that open_clip's BPE splits into more than ``max_pieces`` pieces (rare spellings, other scripts,
    emoji): CLIP can still learn them, but from pieces it shares with other words; printed with the fix."""
    from dalle2_edu.stages.clip import _caption_words, bpe_tokenizer

    bpe = bpe_tokenizer()
    odd = sorted({w for c in set(captions) for w in _caption_words(c) if len(bpe.encode(w)) > max_pieces})
    if odd:
        print(f"[train] note: {len(odd)} caption word(s) split into more than {max_pieces} tokens, e.g. "
              f"{', '.join(odd[:8])}; they train, but a simpler spelling in the captions is learned faster and "
              "prompts must spell them the same way", flush=True)  # fmt: skip
    return odd[:50]


# ----------------------------------------------------------------------------------------------------------- prior
def train_prior(ctx: StageContext):
    from dalle2_edu.stages.prior import PriorConfig, default_transformer, train_prior

    emb = embeddings(ctx)
    s = ctx.settings
    d, w = emb["image_emb"].shape[1], emb["text_tokens"].shape[2]
    base = PriorConfig(embed_dim=d, token_dim=w).to_dict()
    base["transformer"] = default_transformer()
    config = PriorConfig.from_dict(_merge(base, s.model))
    trainer, _ = train_prior(emb, config, steps=s.steps, batch_size=min(s.batch_size, len(ctx.data)), lr=s.lr,
                             seed=ctx.seed, out_dir=ctx.run_dir, progress=ctx.progress,
                             **_trainer_kwargs(ctx))  # fmt: skip
    return trainer.ema_model, trainer


def grade_prior(ctx: StageContext, prior, n: int = 256) -> dict:
    """cos(sampled image embedding, the caption's real one) against cos(text embedding, image embedding)."""
    from dalle2_edu.stages.prior import cosine_similarity_report, sample_prior

    emb = embeddings(ctx)
    k = min(16 if ctx.quick else n, len(ctx.data))
    device = next(prior.parameters()).device
    pred = sample_prior(prior, prior.config.diffusion.build(), emb["text_emb"][:k].to(device),
                        emb["text_tokens"][:k].to(device), emb["text_mask"][:k].to(device),
                        steps=min(64, prior.config.diffusion.num_timesteps),
                        seed=ctx.seed).cpu()  # fmt: skip
    report = cosine_similarity_report(pred, emb["image_emb"][:k], emb["text_emb"][:k], emb["image_emb"].mean(0))
    report["n"] = k
    report["note"] = "measured on training captions"
    return report


# --------------------------------------------------------------------------------------------------------- decoder
def train_decoder(ctx: StageContext):
    from dalle2_edu.stages.decoder import DecoderConfig, train_decoder

    emb = embeddings(ctx)
    s = ctx.settings
    base = DecoderConfig(clip_dim=emb["image_emb"].shape[1]).to_dict()
    config = DecoderConfig.from_dict(_merge(base, s.model))
    init, source = None, s.options.get("init_from")
    if ctx.init_decoder is not None:
        init = load_warm_start(ctx.init_decoder) if not _has_checkpoint(ctx.run_dir) else None
        ctx.cache["warm_start"] = str(ctx.init_decoder)
    elif source and ctx.data.kind == "catalogue" and not _has_checkpoint(ctx.run_dir):
        init = _warm_start(source, ctx)
        ctx.cache["warm_start"] = None if init is None else str(_warm_start_path(source))
    images = ctx.data.images(config.unet["image_size"])
    trainer, _ = train_decoder(images, emb["image_emb"], config, steps=s.steps,
                               batch_size=min(s.batch_size, len(ctx.data)), lr=s.lr, seed=ctx.seed, init_from=init,
                               out_dir=ctx.run_dir, progress=ctx.progress, **_trainer_kwargs(ctx))  # fmt: skip
    return trainer.ema_model, trainer


def load_warm_start(path: Path, build: bool = True):
    """A decoder (all of it) or an attribute image model (its UNet) to start the decoder from.

    :param build: False only checks the file (it exists and holds one of the two kinds) and returns None.
    """
    from dalle2_edu.checkpoint import load_model, load_weights, model_kind

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"--init-decoder: no weights file at '{path}'. It takes a decoder (decoder32.safetensors, to continue "
            "training one) or an attribute image model (image32_attributes.safetensors, whose UNet the decoder "
            "starts from), e.g. --init-decoder data/checkpoints/image32_attributes.safetensors"
        )
    _, config = load_weights(path)
    kind = model_kind(config)
    if kind in ("decoder", "image_model"):
        return load_model(path, kind) if build else None
    raise ValueError(f"--init-decoder: '{path}' holds a {kind or 'model this project does not know'}, not a "
                     "decoder or an attribute image model; pass decoder32.safetensors or "
                     "image32_attributes.safetensors")  # fmt: skip


def _has_checkpoint(run_dir: Path | None) -> bool:
    return run_dir is not None and (run_dir / "checkpoint.pt").exists()


def _warm_start_path(source: str) -> Path:
    from dalle2_edu.utils import data_dir

    return data_dir() / "checkpoints" / STAGE_FILES[source]


def _warm_start(source: str, ctx: StageContext):
    """The shipped attribute model (its UNet) to start the decoder from, when the recipe asks for it and it exists."""
    from dalle2_edu.stages.attributes import load_image_model

    path = _warm_start_path(source)
    if not path.exists():
        print(f"[train] no {path} to warm-start the decoder from: it starts from scratch", flush=True)
        return None
    model, _ = load_image_model(path)
    return model


def grade_decoder(ctx: StageContext, decoder) -> dict:
    report = {}
    if ctx.cache.get("warm_start"):
        report["warm_start"] = ctx.cache["warm_start"]
    return report


# ------------------------------------------------------------------------------------------------------- upsampler
def train_upsampler(ctx: StageContext):
    from dalle2_edu.stages.upsampler import UpsamplerConfig, train_upsampler

    s = ctx.settings
    config = UpsamplerConfig.from_dict(_merge(UpsamplerConfig().to_dict(), s.model))  # s.model: 64 → 128 too
    images = ctx.data.images(config.image_size)
    trainer, _ = train_upsampler(config, steps=s.steps, batch_size=min(s.batch_size, len(ctx.data)), lr=s.lr,
                                 seed=ctx.seed, out_dir=ctx.run_dir, progress=ctx.progress, images=images,
                                 **_trainer_kwargs(ctx))  # fmt: skip
    return trainer.ema_model, trainer


def grade_upsampler(ctx: StageContext, model, n: int = 32) -> dict:
    """PSNR against the real pictures (64×64, or 128×128), beside bilinear and bicubic (the catalogue's test split,
    or the folder's own pictures, which it trained on: read those as a sanity check, not a test score)."""
    from dalle2_edu.stages.upsampler import evaluate_upsampler

    gd = model.config.diffusion.build()
    real = None if ctx.data.kind == "catalogue" else ctx.data.images(model.config.image_size)
    n = 4 if ctx.quick else n
    report = evaluate_upsampler(model, gd, n=min(n, len(ctx.data)), steps=min(25, gd.num_timesteps), seed=ctx.seed,
                                real=real)  # fmt: skip
    report["pictures"] = "catalogue test split" if real is None else "the training folder (seen in training)"
    return report


# ------------------------------------------------------------------------------------- catalogue-only: attributes
def train_attributes(ctx: StageContext):
    from dalle2_edu.stages.attributes import ImageModelConfig, train_image_model

    s = ctx.settings
    config = ImageModelConfig.from_dict(_merge(ImageModelConfig().to_dict(), s.model))
    trainer, _ = train_image_model(config, steps=s.steps, batch_size=s.batch_size, lr=s.lr, n_train=s.n_train,
                                   seed=ctx.seed, out_dir=ctx.run_dir, progress=ctx.progress,
                                   **_trainer_kwargs(ctx))  # fmt: skip
    return trainer.ema_model, trainer


def train_classifier(ctx: StageContext):
    from dalle2_edu.metrics import train_attribute_classifier

    s = ctx.settings
    kwargs = _trainer_kwargs(ctx)
    classifier, metrics = train_attribute_classifier(
        s.n_train, s.steps, batch_size=s.batch_size, lr=s.lr, width=s.options.get("width", 32), seed=ctx.seed,
        progress=ctx.progress, out_dir=ctx.run_dir, **kwargs,
    )  # fmt: skip
    ctx.cache["classifier_metrics"] = metrics
    return classifier, None


def grade_classifier(ctx: StageContext, classifier) -> dict:
    return {"accuracy": ctx.cache["classifier_metrics"]["accuracy"]}


def no_grade(ctx: StageContext, model) -> dict:
    return {}


STAGES = {
    "clip": (train_clip, grade_clip),
    "prior": (train_prior, grade_prior),
    "decoder": (train_decoder, grade_decoder),
    "upsampler": (train_upsampler, grade_upsampler),
    "upsampler128": (train_upsampler, grade_upsampler),  # the same code: the recipe's model sets image_size 128
    "attributes": (train_attributes, no_grade),
    "classifier": (train_classifier, grade_classifier),
}
"""Stage name → (train, grade)."""


def final_loss(trainer) -> float | None:
    if trainer is None or not trainer.history.get("loss"):
        return None
    tail = [v for v in trainer.history["loss"][-4:] if math.isfinite(v)]
    return round(sum(tail) / len(tail), 5) if tail else None
