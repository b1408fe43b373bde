"""The diffusion prior of DALL·E 2: from a caption's CLIP text embedding to a plausible CLIP image embedding.

CLIP puts a caption and its picture close together, but not on top of each other: matched text and image embeddings
have a cosine below 1 and sit in different regions of the sphere (the "modality gap"), and a caption has one text
embedding while the pictures it describes spread around a cloud of image embeddings. The decoder is trained on image
embeddings, so DALL·E 2 does not feed it the text embedding: the prior generates an image embedding z_i given the
caption (Ramesh et al. 2022, §2.1), a Gaussian diffusion over d-dimensional vectors whose network is the causal
transformer of
:mod:`dalle2_edu.nets.prior_transformer`, trained to predict the clean embedding x_0 directly with a mean-squared
error (``mean_type="x0"``, ``loss_type="simple"``):  L = E_{t, x_0, ε} ‖ f_θ(x_t, t, y) - x_0 ‖².

Embedding scale. CLIP embeddings are L2-normalised and multiplied by √d, so the coordinates have mean square 1, like
the diffusion's unit Gaussian noise, and every training target lies on the sphere of radius √d. The sampler
therefore does NOT clip x̂_0 to [-1, 1] (that clipping is for pixels and would destroy embeddings whose coordinates
routinely exceed 1), and projects the final sample back onto that sphere (its direction is what CLIP and the decoder
use). Optionally (``renorm_x0=True``) every intermediate x̂_0 is projected onto the sphere too, the embedding
analogue of clipping pixels to their range; on the shipped CLIP's embeddings it changed the mean cosine to the true
image embedding by less than 0.001 (16 and 64 DDIM steps), so it is off by default.

Classifier-free guidance: with probability ``cond_drop`` a training row loses its text (the text embedding becomes a
learned null vector and every caption token is masked out), so the same network also models p(z_i). Guidance mixes
the two x̂_0 predictions; since ε̂ is an affine function of x̂_0 at fixed x_t, that is the same as mixing ε̂.

Best of n: DALL·E 2 draws two image embeddings per caption and keeps the one with the larger dot product with the
text embedding (:func:`best_of_n`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dalle2_edu.diffusion import GaussianDiffusion, diffusion_loss, sample
from dalle2_edu.diffusion.config import DiffusionConfig, coerce_diffusion, diffusion_field, lift_legacy_fields
from dalle2_edu.diffusion.guidance import GuidedModel
from dalle2_edu.nets.prior_transformer import PriorTransformer, PriorTransformerConfig

EMBEDDING_KEYS = ("image_emb", "text_emb", "text_tokens", "text_mask")


def default_transformer() -> dict:
    """The shipped prior's transformer (without embed_dim / token_dim, which come from the data): 4 layers, width
    128, 4 heads; about 0.9 M parameters, quick on one CPU core."""
    cfg = PriorTransformerConfig(width=128, num_layers=4, num_heads=4).to_dict()
    for key in ("embed_dim", "token_dim"):
        cfg.pop(key)
    return cfg


@dataclass
class PriorConfig:
    """What defines a diffusion prior (saved beside its weights).

    :param embed_dim: d, the CLIP embedding size.
    :param token_dim: w, the width of CLIP's caption tokens, or ``None`` for a prior conditioned on the text
        embedding alone.
    :param transformer: the remaining :class:`PriorTransformerConfig` fields (width, layers, heads, ...).
    :param diffusion: the process over embeddings: DALL·E 2's prior predicts ``"x0"`` with the ``"simple"`` loss
        (the MSE ‖x̂_0 - x_0‖²), on ``"continuous"`` data (no pixel clipping, a Gaussian decoder term).
    :param cond_drop: probability of dropping a row's text during training (classifier-free guidance).
    """

    embed_dim: int = 64
    token_dim: int | None = 128
    transformer: dict = field(default_factory=default_transformer)
    diffusion: DiffusionConfig = diffusion_field(mean_type="x0", data_type="continuous")
    cond_drop: float = 0.1

    def __post_init__(self):
        coerce_diffusion(self)
        if not 0.0 <= self.cond_drop < 1.0:
            raise ValueError(f"cond_drop must be in [0, 1), got {self.cond_drop}")
        self.transformer_config()  # validate early

    def transformer_config(self) -> PriorTransformerConfig:
        extra = sorted({"embed_dim", "token_dim"} & set(self.transformer))
        if extra:
            raise ValueError(f"set {extra} on PriorConfig itself, not inside PriorConfig.transformer")
        return PriorTransformerConfig.from_dict(
            {**self.transformer, "embed_dim": self.embed_dim, "token_dim": self.token_dim}
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> PriorConfig:
        d = lift_legacy_fields(d)
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown PriorConfig keys {unknown}; known keys are {sorted(known)}")
        return cls(**d)


class DiffusionPrior(nn.Module):
    """``prior(x_t, t, text_emb, text_tokens=None, text_mask=None, drop_text=None) -> x̂_0`` (B, d).

    The transformer plus the learned null text embedding used where ``drop_text`` is True.
    """

    def __init__(self, config: PriorConfig):
        super().__init__()
        self.config = config
        self.net = PriorTransformer(config.transformer_config())
        self.null_text_emb = nn.Parameter(torch.zeros(config.embed_dim))

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        text_emb: torch.Tensor,
        text_tokens: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        drop_text: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        :param x_t: (B, d) noised image embeddings.
        :param t: (B,) diffusion steps.
        :param text_emb: (B, d) CLIP text embeddings (at the √d scale).
        :param text_tokens: (B, L, w) caption token features, or None.
        :param text_mask: (B, L) bool, True for real tokens; None: all real.
        :param drop_text: (B,) bool, True where the row gets the null condition (learned null text embedding, all
            caption tokens masked out); None: no row is dropped.
        :return: (B, d) predicted clean image embeddings x̂_0.
        """
        if drop_text is not None:
            self.net.check_inputs(x_t, t, text_emb, text_tokens, text_mask)
            drop_text = torch.as_tensor(drop_text, dtype=torch.bool, device=x_t.device)
            if drop_text.shape != (x_t.shape[0],):
                raise ValueError(f"drop_text must have shape ({x_t.shape[0]},), one flag per row, "
                                 f"got {tuple(drop_text.shape)}")  # fmt: skip
            text_emb = torch.where(drop_text[:, None], self.null_text_emb.to(text_emb.dtype), text_emb)
            if text_tokens is not None:
                if text_mask is None:
                    text_mask = torch.ones(text_tokens.shape[:2], dtype=torch.bool, device=x_t.device)
                text_mask = text_mask.to(device=x_t.device, dtype=torch.bool) & ~drop_text[:, None]
        return self.net(x_t, t, text_emb, text_tokens, text_mask)


# ------------------------------------------------------------------------------------------------------ inputs
def _as_embedding_tuple(batch) -> tuple:
    """A batch as ``(image_emb, text_emb, text_tokens or None, text_mask or None)``."""
    if isinstance(batch, dict):
        missing = [k for k in ("image_emb", "text_emb") if k not in batch]
        if missing:
            raise KeyError(f"a prior batch needs keys image_emb and text_emb (optional: text_tokens, text_mask); "
                           f"missing {missing}")  # fmt: skip
        return tuple(batch.get(k) for k in EMBEDDING_KEYS)
    batch = tuple(batch)
    if not 2 <= len(batch) <= 4:
        raise ValueError(
            f"a prior batch is (image_emb, text_emb[, text_tokens[, text_mask]]); got a tuple of {len(batch)}"
        )
    return batch + (None,) * (4 - len(batch))


def _check_conditioning(prior: DiffusionPrior, text_emb, text_tokens, text_mask):
    d, w = prior.config.embed_dim, prior.config.token_dim
    if text_emb.ndim != 2 or text_emb.shape[1] != d:
        raise ValueError(f"text_emb must have shape (B, {d}) (B, embed_dim), got {tuple(text_emb.shape)}")
    if text_tokens is not None:
        if w is None:
            raise ValueError("this prior reads no caption tokens (token_dim=None); pass text_tokens=None")
        if text_tokens.ndim != 3 or text_tokens.shape[0] != text_emb.shape[0] or text_tokens.shape[2] != w:
            raise ValueError(
                f"text_tokens must have shape ({text_emb.shape[0]}, L, {w}) (B, L, token_dim), "
                f"got {tuple(text_tokens.shape)}"
            )
    if text_mask is not None:
        if text_tokens is None:
            raise ValueError("text_mask was given without text_tokens; pass both or neither")
        if tuple(text_mask.shape) != tuple(text_tokens.shape[:2]):
            raise ValueError(
                f"text_mask must have shape {tuple(text_tokens.shape[:2])} (B, L) like text_tokens' first two "
                f"dimensions, got {tuple(text_mask.shape)}"
            )


def prior_loss_fn(gd: GaussianDiffusion, cond_drop: float):
    """The Trainer's ``loss_fn`` for batches ``(image_emb, text_emb, text_tokens, text_mask)`` (the last two
    optional) or dicts with those keys: L_simple at uniform t, each row's text dropped with probability ``cond_drop``.

    :return: ``loss_fn(model, batch) -> {"loss", "mse"}``; with ``mean_type="x0"`` mse is ‖x̂_0 - x_0‖² / d.
    """
    if not 0.0 <= cond_drop < 1.0:
        raise ValueError(f"cond_drop must be in [0, 1), got {cond_drop}")

    def prepare(batch):
        x0, text_emb, tokens, mask = _as_embedding_tuple(batch)
        drop = torch.rand(x0.shape[0], device=x0.device) < cond_drop
        kwargs = {"text_emb": text_emb.float(), "text_tokens": None if tokens is None else tokens.float(),
                  "text_mask": mask, "drop_text": drop}  # fmt: skip
        return x0.float(), kwargs

    return diffusion_loss(gd, prepare)


# ------------------------------------------------------------------------------------------------------ sampling
def to_sphere(x: torch.Tensor, radius: float) -> torch.Tensor:
    """Project (B, d) vectors onto the sphere of the given radius (the scale of CLIP embeddings here: √d)."""
    return F.normalize(x, dim=-1) * radius


def best_of_n(candidates: torch.Tensor, text_emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep, for each row, the candidate with the highest cosine similarity to its text embedding (DALL·E 2 §2.1:
    "sample two z_i and pick the one with a higher dot product with z_t"; with embeddings on one sphere, dot product
    and cosine rank alike).

    :param candidates: (B, n, d) image embeddings.
    :param text_emb: (B, d).
    :return: ``(best (B, d), index (B,))``.
    """
    if candidates.ndim != 3 or candidates.shape[0] != text_emb.shape[0] or candidates.shape[2] != text_emb.shape[1]:
        raise ValueError(
            f"candidates must have shape (B, n, d) = ({text_emb.shape[0]}, n, {text_emb.shape[-1]}), "
            f"got {tuple(candidates.shape)}"
        )
    cos = F.cosine_similarity(candidates, text_emb[:, None, :].to(candidates.dtype), dim=-1)  # (B, n)
    index = cos.argmax(dim=1)  # (B,)
    return candidates[torch.arange(len(index), device=candidates.device), index], index


@torch.no_grad()
def sample_prior(
    prior: DiffusionPrior,
    gd: GaussianDiffusion,
    text_emb: torch.Tensor,
    text_tokens: torch.Tensor | None = None,
    text_mask: torch.Tensor | None = None,
    n_candidates: int = 2,
    steps: int = 64,
    guidance_scale: float = 1.0,
    eta: float = 0.0,
    seed: int = 0,
    progress: bool = False,
    renorm_x0: bool = False,
    return_candidates: bool = False,
):
    """Generate one CLIP image embedding per caption: n candidates each, by DDIM, keeping the best (:func:`best_of_n`).

    :param prior: a trained :class:`DiffusionPrior` (use the EMA weights).
    :param gd: its diffusion (``config.diffusion.build()``); respaced here to ``steps`` steps.
    :param text_emb: (B, d) CLIP text embeddings at the √d scale.
    :param text_tokens: (B, L, w) caption tokens, or None. :param text_mask: (B, L) bool, True for real tokens.
    :param n_candidates: samples drawn per caption (in one batch of B·n); 1 turns best-of-n off.
    :param steps: DDIM steps (``steps == T`` is the full chain).
    :param guidance_scale: classifier-free guidance s; 0 ignores the text, 1 is plain conditional sampling.
    :param eta: DDIM's η (0: deterministic given the starting noise).
    :param seed: fixes the starting noise and any step noise.
    :param renorm_x0: project every intermediate x̂_0 onto the sphere of radius √d (see the module docstring).
    :param return_candidates: also return every candidate.
    :return: (B, d) embeddings on the sphere of radius √d; with ``return_candidates`` a tuple
        ``(best (B, d), candidates (B, n, d))``.
    """
    if int(n_candidates) != n_candidates or n_candidates < 1:
        raise ValueError(f"n_candidates must be an integer >= 1, got {n_candidates}")
    text_emb = torch.as_tensor(text_emb)
    if text_emb.ndim == 1:
        text_emb = text_emb[None]
        text_tokens = None if text_tokens is None else torch.as_tensor(text_tokens)[None]
        text_mask = None if text_mask is None else torch.as_tensor(text_mask)[None]
    _check_conditioning(prior, text_emb, text_tokens, text_mask)
    if text_mask is not None and text_mask.shape[1] > 0:
        # drop trailing columns that are padding in every row: masked keys change nothing, but they cost compute
        used = int(text_mask.bool().any(dim=0).nonzero().max().item()) + 1 if text_mask.any() else 1
        text_tokens, text_mask = text_tokens[:, :used], text_mask[:, :used]
    device = next(prior.parameters()).device
    B, d, n = text_emb.shape[0], prior.config.embed_dim, int(n_candidates)
    radius = math.sqrt(d)

    def rep(x, dtype=torch.float32):  # (B, ...) -> (B·n, ...), each row n times in a row
        return None if x is None else x.to(device=device, dtype=dtype).repeat_interleave(n, dim=0)

    cond = {"text_emb": rep(text_emb), "text_tokens": rep(text_tokens),
            "text_mask": rep(text_mask, torch.bool) if text_mask is not None else None}  # fmt: skip
    if cond["text_tokens"] is not None and cond["text_mask"] is None:
        cond["text_mask"] = torch.ones(cond["text_tokens"].shape[:2], dtype=torch.bool, device=device)
    cond = {k: v for k, v in cond.items() if v is not None}
    keep = torch.zeros(B * n, dtype=torch.bool, device=device)
    net = GuidedModel(prior, {**cond, "drop_text": keep}, {**cond, "drop_text": ~keep}, guidance_scale)
    denoised_fn = (lambda x0: to_sphere(x0, radius)) if renorm_x0 else None
    out = sample(net, gd, (B * n, d), steps=steps, eta=eta, seed=seed, clip_denoised=False, denoised_fn=denoised_fn,
                 clamp=False, progress=progress, desc="prior")  # fmt: skip
    candidates = to_sphere(out, radius).view(B, n, d)
    best, _ = best_of_n(candidates, text_emb.to(device))
    return (best, candidates) if return_candidates else best


# ------------------------------------------------------------------------------------------------------ evaluation
def cosine_similarity_report(
    pred: torch.Tensor, true: torch.Tensor, text_emb: torch.Tensor, mean_image_emb: torch.Tensor | None = None
) -> dict:
    """How close generated image embeddings are to the real ones, against the no-prior baseline.

    :param pred: (N, d) image embeddings from the prior. :param true: (N, d) the captions' real image embeddings.
    :param text_emb: (N, d) the captions' text embeddings.
    :return: dict with ``n``; ``cos_prior`` = mean cos(pred, true) and its standard error ``cos_prior_se``;
        ``cos_text_baseline`` = mean cos(text_emb, true) (what using the text embedding directly would give, i.e. the
        modality gap) and ``cos_text_baseline_se``; ``gain`` = their difference. With ``mean_image_emb`` (d,) (e.g.
        the mean training image embedding), also ``cos_mean_image_baseline`` = mean cos(mean_image_emb, true): the
        score of answering every caption with the same embedding, a floor any useful prior must clear.
    """
    if not (pred.shape == true.shape == text_emb.shape) or pred.ndim != 2:
        raise ValueError(
            f"pred, true and text_emb must all have the same shape (N, d); got {tuple(pred.shape)}, "
            f"{tuple(true.shape)}, {tuple(text_emb.shape)}"
        )
    a = F.cosine_similarity(pred.float(), true.float(), dim=-1)
    b = F.cosine_similarity(text_emb.float(), true.float(), dim=-1)
    n = a.shape[0]
    se = lambda x: (x.std() / math.sqrt(n)).item() if n > 1 else float("nan")
    report = {
        "n": n,
        "cos_prior": a.mean().item(),
        "cos_prior_se": se(a),
        "cos_text_baseline": b.mean().item(),
        "cos_text_baseline_se": se(b),
        "gain": (a - b).mean().item(),
    }
    if mean_image_emb is not None:
        if mean_image_emb.shape != pred.shape[1:]:
            raise ValueError(f"mean_image_emb must have shape ({pred.shape[1]},), got {tuple(mean_image_emb.shape)}")
        c = F.cosine_similarity(mean_image_emb.float()[None], true.float(), dim=-1)
        report["cos_mean_image_baseline"] = c.mean().item()
    return report


def mean_pairwise_cosine(samples: torch.Tensor) -> float:
    """Spread of several embeddings drawn for one caption: the mean cosine over all pairs within each row.

    1 means every draw is the same embedding (no diversity); compare with :func:`same_label_cosine` of real pictures.

    :param samples: (B, n, d) with n >= 2 draws per caption.
    :return: the mean over rows and over the n (n - 1) / 2 pairs of each row.
    """
    if samples.ndim != 3 or samples.shape[1] < 2:
        raise ValueError(f"samples must have shape (B, n, d) with n >= 2 draws per row, got {tuple(samples.shape)}")
    unit = F.normalize(samples.float(), dim=-1)
    gram = unit @ unit.transpose(1, 2)  # (B, n, n)
    n = samples.shape[1]
    off_diagonal = gram.sum(dim=(1, 2)) - gram.diagonal(dim1=1, dim2=2).sum(dim=1)  # (B,)
    return (off_diagonal / (n * (n - 1))).mean().item()


def same_label_cosine(emb: torch.Tensor, labels: torch.Tensor) -> tuple[float, int]:
    """How alike two real pictures of the same description are: for each row, the cosine with the next row that has
    exactly the same labels (category, colour, pattern, background), averaged.

    This is what a perfect prior's samples score against each other (:func:`mean_pairwise_cosine`), and roughly what
    they score against the true embedding: a prior far above it is under-dispersed (it answers the average picture).

    :param emb: (N, d) embeddings. :param labels: (N, k) labels.
    :return: ``(mean cosine, number of pairs)``; ``(nan, 0)`` if no two rows share their labels.
    """
    if emb.ndim != 2 or labels.ndim != 2 or labels.shape[0] != emb.shape[0]:
        raise ValueError(f"emb must be (N, d) and labels (N, k); got {tuple(emb.shape)} and {tuple(labels.shape)}")
    same = (labels[:, None, :] == labels[None, :, :]).all(dim=-1)  # (N, N)
    same.fill_diagonal_(False)
    rows = same.any(dim=1).nonzero().flatten()
    if len(rows) == 0:
        return float("nan"), 0
    partner = same[rows].float().argmax(dim=1)  # the first other row with the same labels
    return F.cosine_similarity(emb[rows].float(), emb[partner].float(), dim=-1).mean().item(), len(rows)


@torch.no_grad()
def zero_shot_class_embeddings(clip, attributes=("category", "colour", "pattern", "background")) -> dict:
    """One unit text embedding per value of each attribute, for :func:`attribute_agreement`: the normalised mean of
    the CLIP text embeddings of that value's prompts (:func:`dalle2_edu.stages.clip.zero_shot_prompts`; CLIP's "prompt
    ensembling").

    :param clip: a :class:`dalle2_edu.stages.clip.ProductCLIP`.
    :return: ``{attribute: (K, d)}``.
    """
    from dalle2_edu.stages.clip import zero_shot_prompts

    out = {}
    for attribute in attributes:
        groups = zero_shot_prompts(attribute)
        out[attribute] = torch.stack([F.normalize(clip.encode_text(g, raw=True).mean(0), dim=0) for g in groups])
    return out


def attribute_agreement(emb: torch.Tensor, labels: torch.Tensor, weights: dict[str, torch.Tensor]) -> dict:
    """Read attributes off embeddings by CLIP zero-shot classification, and score them against the captions' labels.

    An image embedding from the prior has no picture to look at, but CLIP can still say which prompt it is closest
    to: for each attribute, the class whose zero-shot text embedding has the largest cosine with it.

    :param emb: (N, d) embeddings (any scale). :param labels: (N, 4) int64, columns category, colour, pattern,
        background (``ProductCatalogue.labels``).
    :param weights: attribute name -> (K, d) class text embeddings, e.g. :func:`zero_shot_class_embeddings`.
    :return: ``{attribute: fraction of rows read as their label}`` plus ``"mean"`` over the attributes given.
    """
    from dalle2_edu.datasets.catalogue import LABEL_COLUMNS

    if emb.ndim != 2 or labels.ndim != 2 or labels.shape != (emb.shape[0], len(LABEL_COLUMNS)):
        raise ValueError(f"emb must be (N, d) and labels (N, 4); got {tuple(emb.shape)} and {tuple(labels.shape)}")
    out = {}
    for name, w in weights.items():
        if name not in LABEL_COLUMNS:
            raise ValueError(f"unknown attribute {name!r}; choose among {LABEL_COLUMNS}")
        pred = (F.normalize(emb.float(), dim=-1) @ F.normalize(w.float().to(emb.device), dim=-1).T).argmax(dim=1)
        out[name] = (pred.cpu() == labels[:, LABEL_COLUMNS.index(name)].cpu()).float().mean().item()
    out["mean"] = sum(out.values()) / max(1, len(out))
    return out


# ------------------------------------------------------------------------------------------------------ training
def _embedding_data(embeddings: dict) -> tuple:
    """Check the dict of embeddings and turn it into the Trainer's tuple of tensors."""
    if not isinstance(embeddings, dict):
        raise TypeError(f"embeddings must be a dict with keys {EMBEDDING_KEYS}, got {type(embeddings).__name__}")
    image_emb, text_emb, tokens, mask = _as_embedding_tuple(embeddings)
    if image_emb.ndim != 2 or image_emb.shape != text_emb.shape:
        raise ValueError(
            f"image_emb and text_emb must both have shape (N, d); got {tuple(image_emb.shape)} and "
            f"{tuple(text_emb.shape)}"
        )
    if tokens is not None:
        if tokens.ndim != 3 or tokens.shape[0] != image_emb.shape[0]:
            raise ValueError(f"text_tokens must have shape ({image_emb.shape[0]}, L, w), got {tuple(tokens.shape)}")
        if mask is None:
            mask = torch.ones(tokens.shape[:2], dtype=torch.bool)
        if tuple(mask.shape) != tuple(tokens.shape[:2]):
            raise ValueError(f"text_mask must have shape {tuple(tokens.shape[:2])} (N, L), got {tuple(mask.shape)}")
        mask = mask.bool()
        # drop trailing columns that are padding in every row: they change nothing but cost compute
        used = int(mask.any(dim=0).nonzero().max().item()) + 1 if mask.any() else 1
        return image_emb.float(), text_emb.float(), tokens[:, :used].contiguous(), mask[:, :used].contiguous()
    return image_emb.float(), text_emb.float()


def train_prior(
    embeddings: dict,
    config: PriorConfig | None = None,
    steps: int = 2000,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    out_dir=None,
    progress: bool = True,
    **trainer_kwargs,
):
    """Train a :class:`DiffusionPrior` on paired CLIP embeddings with the project's Trainer.

    :param embeddings: dict with ``image_emb`` (N, d), ``text_emb`` (N, d) and optionally ``text_tokens`` (N, L, w)
        and ``text_mask`` (N, L) bool — what :func:`dalle2_edu.stages.clip.embed_dataset` returns.
    :param config: a :class:`PriorConfig`; None builds the default one with d and w read from the data (a prior
        without caption tokens when the dict holds none).
    :param out_dir: resumable checkpoints go here (running again continues); None keeps nothing.
    :param trainer_kwargs: passed on to :class:`dalle2_edu.train.Trainer` (e.g. ``warmup_steps``, ``lr_schedule``).
    :return: ``(trainer, diffusion)``; sample from ``trainer.ema_model`` with :func:`sample_prior`.
    """
    from dalle2_edu.train import Trainer
    from dalle2_edu.utils import set_seed

    data = _embedding_data(embeddings)
    d = data[0].shape[1]
    w = data[2].shape[2] if len(data) == 4 else None
    config = config or PriorConfig(embed_dim=d, token_dim=w)
    if config.embed_dim != d:
        raise ValueError(f"config.embed_dim={config.embed_dim} but the embeddings have d={d}")
    if len(data) == 4 and config.token_dim != w:
        raise ValueError(
            f"config.token_dim={config.token_dim} but the caption tokens have width {w}; "
            "set token_dim to match (or drop text_tokens from the dict and use token_dim=None)"
        )
    set_seed(seed)
    model, gd = DiffusionPrior(config), config.diffusion.build()
    kwargs = dict(warmup_steps=min(200, max(1, steps // 10)), ema_decay=0.999, ckpt_every=500 if out_dir else None)
    kwargs.update(trainer_kwargs)
    trainer = Trainer(
        model, prior_loss_fn(gd, config.cond_drop), data, batch_size=batch_size, lr=lr, seed=seed, out_dir=out_dir,
        config={"prior": config.to_dict(), "n_train": int(data[0].shape[0])}, progress=progress, **kwargs,
    )  # fmt: skip
    trainer.fit(steps, resume=out_dir is not None)
    return trainer, gd


# ------------------------------------------------------------------------------------------------------ files
def default_prior_path() -> Path:
    from dalle2_edu.utils import data_dir

    return data_dir() / "checkpoints" / "prior.safetensors"


def save_prior(model: DiffusionPrior, path=None, metrics: dict | None = None, half: bool = True) -> Path:
    """Ship a trained prior: safetensors weights (fp16 by default: embeddings and weights are O(1), so fp16's three
    decimal digits change sampled embeddings by far less than the prior's own error) with the config in the file's
    metadata, and a JSON beside it holding ``{"config": ..., **metrics}``."""
    from dalle2_edu.checkpoint import save_model

    payload = None if metrics is None else {"config": model.config.to_dict(), **metrics}
    return save_model(default_prior_path() if path is None else path, model, "prior", payload, half)


def build_prior(config: dict) -> DiffusionPrior:
    """An untrained prior of a saved config (the checkpoint registry's builder)."""
    return DiffusionPrior(PriorConfig.from_dict(config))


def load_prior(path=None, device="cpu") -> tuple[DiffusionPrior, GaussianDiffusion]:
    """Load a prior saved by :func:`save_prior` (default ``data/checkpoints/prior.safetensors``) in eval mode.

    :return: ``(model, diffusion)``.
    :raises FileNotFoundError: no file there (with the command that makes one).
    :raises ValueError: the file holds no prior config, or weights that do not fit it.
    """
    from dalle2_edu.checkpoint import load_model

    how = ("train one with `python -m dalle2_edu train prior --out FOLDER` (or train_prior(...) then "
           "save_prior(trainer.ema_model, path))")  # fmt: skip
    model = load_model(default_prior_path() if path is None else path, "prior",
                       build_prior, how, device)  # fmt: skip
    return model, model.config.diffusion.build()


# ------------------------------------------------------------------------------------------------------ script
def _embed_split(clip, split: str, n: int, seed: int, progress: bool) -> dict:
    """CLIP embeddings (cached in data/cache) of the first n items of a catalogue split, with captions and labels."""
    from dalle2_edu.datasets.catalogue import ProductCatalogue
    from dalle2_edu.stages.clip import embed_dataset

    cat = ProductCatalogue(n, split=split, seed=seed, resolution=32, progress=progress)
    out = dict(embed_dataset(clip, cat.images, cat.captions, cache_dir="default", progress=progress))
    out["captions"], out["labels"] = list(cat.captions), cat.labels
    return out


def evaluate_prior(
    prior: DiffusionPrior,
    gd: GaussianDiffusion,
    embeddings: dict,
    n_candidates: int = 2,
    steps: int = 64,
    guidance_scale: float = 1.0,
    seed: int = 0,
    weights: dict[str, torch.Tensor] | None = None,
    mean_image_emb: torch.Tensor | None = None,
    spread_captions: int = 0,
    batch: int = 500,
) -> dict:
    """Sample one embedding per caption of ``embeddings`` (in batches) and grade it.

    :param embeddings: what :func:`dalle2_edu.stages.clip.embed_dataset` returns, optionally with ``labels`` (N, 4).
    :param weights: zero-shot class embeddings per attribute (see :func:`attribute_agreement`); with ``labels``,
        adds ``attributes`` (read off the samples) to the report. :param mean_image_emb: see
        :func:`cosine_similarity_report`.
    :param spread_captions: if > 0, also draw 4 embeddings for each of this many captions and report their
        ``spread`` (:func:`mean_pairwise_cosine`; compare with :func:`same_label_cosine` of the true embeddings).
    :return: :func:`cosine_similarity_report`'s dict, plus ``attributes`` when asked.
    """
    preds = []
    tokens, mask = embeddings.get("text_tokens"), embeddings.get("text_mask")
    if prior.config.token_dim is None:
        tokens = mask = None
    text = embeddings["text_emb"]
    for i in range(0, len(text), batch):
        sl = slice(i, i + batch)
        preds.append(sample_prior(
            prior, gd, text[sl], None if tokens is None else tokens[sl], None if mask is None else mask[sl],
            n_candidates=n_candidates, steps=steps, guidance_scale=guidance_scale, seed=seed + i,
        ).cpu())  # fmt: skip
    pred = torch.cat(preds)
    report = cosine_similarity_report(pred, embeddings["image_emb"].float(), text.float(), mean_image_emb)
    if weights is not None and embeddings.get("labels") is not None:
        report["attributes"] = attribute_agreement(pred, embeddings["labels"], weights)
    if spread_captions:
        k, n = min(spread_captions, len(text)), 4
        rep = lambda x: None if x is None else x[:k].repeat_interleave(n, dim=0)
        draws = sample_prior(prior, gd, rep(text), rep(tokens), rep(mask), n_candidates=n_candidates, steps=steps,
                             guidance_scale=guidance_scale, seed=seed + len(text))  # fmt: skip
        report["spread"] = mean_pairwise_cosine(draws.view(k, n, -1).cpu())
    return report
