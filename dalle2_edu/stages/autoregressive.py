"""The first road to text → image (DALL·E, Ramesh et al. 2021): a causal transformer writes the picture's tokens.

A :class:`~dalle2_edu.stages.vqvae.VQVAE` turns each 32×32 picture into an 8×8 grid of codes (N = 64 tokens from a
codebook of K). A GPT-style transformer then models the caption and the picture as one sequence::

    [ c_1 … c_L | z_1 … z_N ]     caption tokens (CLIP's compact vocabulary, padded to L), then image codes in
                                  raster order (row by row), offset by the caption vocabulary's size V_t

and factorises the picture's probability given the caption by the chain rule,
p(z | c) = Π_i p(z_i | c, z_<i). The network (pre-LayerNorm blocks of :mod:`dalle2_edu.nets.prior_transformer`,
learned positions, a causal mask) reads the S = L + N - 1 inputs and the outputs at positions L - 1 … L + N - 2
predict z_1 … z_N. Design choices:

* **Loss on the image tokens only.** The captions are given at sampling time, so nothing is gained by modelling
  them; the cross-entropy is -1/N Σ_i log p(z_i | c, z_<i), and the output layer has K logits (image codes only),
  so a caption token can never be sampled where a code belongs.
* **Captions** use the :class:`~dalle2_edu.stages.clip.CompactTokenizer` (the tiny CLIP's vocabulary, built from the
  catalogue's captions by :func:`~dalle2_edu.stages.clip.build_vocabulary`; the vocabulary is kept in the config,
  as CLIP keeps it): ``[SOT, words…, EOT, PAD, …]`` of length L. A word outside it raises the tokenizer's
  ``ValueError``, which names the known words. Padding positions are ordinary inputs (their learned positions tell
  the model where the caption ended); nothing is masked but the future.
* **Classifier-free guidance on logits.** In training, a caption is replaced by the empty caption (all PAD) with
  probability ``caption_drop`` (0.1), so the same network also models p(z). Sampling can mix the two:
  ℓ = ℓ(∅) + s · (ℓ(c) - ℓ(∅)) on the next token's logits (s = ``guidance_scale``; 1 is plain conditional
  sampling). Log-softmax and raw logits give the same mixture up to a constant, which softmax ignores.
* **Sampling** draws z_1 … z_N one at a time from softmax(ℓ / temperature), optionally truncated to the ``top_k``
  most likely codes (top_k = 1 is greedy decoding). Each step runs the whole prefix again (no key/value cache: the
  sequence is 87 tokens long, and the code stays short). Random numbers come from a CPU generator, so a seed draws
  the same tokens on any device.
* **Likelihood.** The exact -log p(z | c) of a token grid (:meth:`AutoregressiveTransformer.token_nll`, nats) plus
  the VQ-VAE decoder's discretised -log p(x | z_q) bounds -log p(x | c) (:func:`bits_per_dim_bound`): the encoder is
  deterministic, so the ELBO has no entropy term.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from dalle2_edu.images import describe
from dalle2_edu.nets.prior_transformer import Block
from dalle2_edu.stages.clip import PAD_ID, CompactTokenizer, build_vocabulary

__all__ = ["AutoregressiveConfig", "AutoregressiveTransformer", "autoregressive_loss_fn", "train_autoregressive",
           "generate", "bits_per_dim_bound", "save_autoregressive", "load_autoregressive",
           "build_autoregressive"]  # fmt: skip


@dataclass
class AutoregressiveConfig:
    """What defines the caption → image-token transformer (saved beside its weights).

    :param vocab: the caption vocabulary (BPE token strings, starting with PAD, SOT, EOT), e.g. from
        :func:`~dalle2_edu.stages.clip.build_vocabulary` or a CLIP's ``config.vocab``.
    :param words: the known caption words (listed when a prompt uses another).
    :param context_length: L, caption tokens per row, start and end of text included.
    :param codebook_size: K, the VQ-VAE's number of codes.
    :param grid_size: side of the VQ-VAE's token grid (8): N = grid_size² image tokens.
    :param width: the transformer's width.
    :param num_layers: transformer blocks.
    :param num_heads: attention heads; must divide ``width``.
    :param mlp_ratio: the MLP's hidden width is ``mlp_ratio * width``.
    :param dropout: dropout on attention and MLP outputs in training.
    :param caption_drop: probability of training a row with the empty caption (for guidance).
    """

    vocab: list[str] = field(default_factory=list)
    words: list[str] = field(default_factory=list)
    context_length: int = 24
    codebook_size: int = 256
    grid_size: int = 8
    width: int = 128
    num_layers: int = 4
    num_heads: int = 4
    mlp_ratio: int = 4
    dropout: float = 0.0
    caption_drop: float = 0.1

    def __post_init__(self):
        self.vocab, self.words = list(self.vocab), list(self.words)
        for name in ("context_length", "codebook_size", "grid_size", "width", "num_layers", "num_heads", "mlp_ratio"):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise ValueError(f"AutoregressiveConfig.{name} must be a whole number >= 1, got {value!r}")
        if self.width % self.num_heads:
            raise ValueError(f"num_heads={self.num_heads} must divide width={self.width}")
        for name in ("dropout", "caption_drop"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"AutoregressiveConfig.{name} must lie in [0, 1), got {getattr(self, name)}")

    @classmethod
    def from_captions(cls, captions: Sequence[str], **kwargs) -> AutoregressiveConfig:
        """A config whose caption vocabulary is built from ``captions`` exactly as the CLIP stage builds its own."""
        vocab, words = build_vocabulary(captions)
        return cls(vocab=vocab, words=words, **kwargs)

    @classmethod
    def from_tokenizer(cls, tokenizer: CompactTokenizer, **kwargs) -> AutoregressiveConfig:
        """A config that reads captions like ``tokenizer`` (e.g. ``clip.tokenizer``): same vocabulary and context."""
        kwargs.setdefault("context_length", tokenizer.context_length)
        return cls(vocab=tokenizer.vocab, words=tokenizer.words, **kwargs)

    @property
    def num_image_tokens(self) -> int:
        """N, tokens per picture."""
        return self.grid_size**2

    @property
    def block_size(self) -> int:
        """S = L + N - 1, the longest input: the caption and every image token but the last."""
        return self.context_length + self.num_image_tokens - 1

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> AutoregressiveConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown AutoregressiveConfig field(s) {unknown}; known: {sorted(known)}")
        return cls(**d)


class AutoregressiveTransformer(nn.Module):
    """``model(captions, image_tokens) -> logits``: see the module docstring and :meth:`forward`.

    :param config: an :class:`AutoregressiveConfig` with a caption vocabulary
        (:meth:`AutoregressiveConfig.from_captions`).
    """

    def __init__(self, config: AutoregressiveConfig):
        super().__init__()
        if not config.vocab:
            raise ValueError(
                "config.vocab is empty: build the config with AutoregressiveConfig.from_captions(captions) or "
                "AutoregressiveConfig.from_tokenizer(clip.tokenizer)"
            )
        self.config = cfg = config
        self.tokenizer = CompactTokenizer(cfg.vocab, cfg.words, cfg.context_length)
        self.text_vocab_size = len(self.tokenizer)  # V_t; image code k has joint id V_t + k
        self.token_emb = nn.Embedding(self.text_vocab_size + cfg.codebook_size, cfg.width)
        self.pos_emb = nn.Parameter(torch.zeros(cfg.block_size, cfg.width))
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg.width, cfg.num_heads, cfg.mlp_ratio, cfg.dropout)
                                    for _ in range(cfg.num_layers))  # fmt: skip
        self.ln_f = nn.LayerNorm(cfg.width)
        self.head = nn.Linear(cfg.width, cfg.codebook_size)  # logits over the K image codes only
        nn.init.normal_(self.token_emb.weight, std=0.02)
        nn.init.normal_(self.pos_emb, std=0.02)
        causal = torch.ones(cfg.block_size, cfg.block_size, dtype=torch.bool).tril()  # True: may attend
        self.register_buffer("causal_mask", causal, persistent=False)

    @property
    def device(self) -> torch.device:
        return self.pos_emb.device

    # -- inputs --------------------------------------------------------------------------------------------------------

    def tokenize(self, captions) -> torch.Tensor:
        """Captions → (B, L) compact ids on the model's device.

        :param captions: a str, a list of str, or already tokenised int64 (B, L) ids (the empty caption: all PAD).
        :raises ValueError: an unknown word (from the tokenizer, naming the known words), a caption longer than L
            tokens (it would be cut), or malformed ids.
        """
        cfg = self.config
        if isinstance(captions, str) or (isinstance(captions, list | tuple) and captions
                                         and all(isinstance(c, str) for c in captions)):  # fmt: skip
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # the tokenizer warns and cuts a long caption: refuse instead
                try:
                    tokens = self.tokenizer(captions)
                except UserWarning as err:
                    raise ValueError(f"{err}; this model reads captions of at most {cfg.context_length} tokens "
                                     "(start and end included)") from None  # fmt: skip
        elif torch.is_tensor(captions):
            tokens = captions
            if tokens.dtype != torch.int64 or tokens.ndim != 2:
                raise ValueError(f"caption tokens must be int64 (B, {cfg.context_length}) from model.tokenize(...), "
                                 f"got {describe(tokens)}")  # fmt: skip
            if tokens.shape[1] != cfg.context_length:
                raise ValueError(f"caption tokens have {tokens.shape[1]} positions; this model was trained on "
                                 f"{cfg.context_length}: tokenise with model.tokenize(captions)")  # fmt: skip
            if tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.text_vocab_size):
                raise ValueError(f"caption token ids must lie in [0, {self.text_vocab_size}); use model.tokenize")
        else:
            raise ValueError(f"captions must be a str, a non-empty list of str, or int64 tokens (B, L); "
                             f"got {describe(captions)}")  # fmt: skip
        return tokens.to(self.device)

    def null_captions(self, batch_size: int) -> torch.Tensor:
        """The empty caption, all PAD: (B, L) int64, the condition of the unconditional model."""
        return torch.full((batch_size, self.config.context_length), PAD_ID, dtype=torch.long, device=self.device)

    def _image_tokens(self, tokens, longest: int, what: str) -> torch.Tensor:
        """(B, n) or (B, g, g) codes → (B, n) int64 on the device; n ≤ ``longest``."""
        cfg = self.config
        if not torch.is_tensor(tokens) or tokens.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"{what} must be an int64 tensor (B, n) or (B, {cfg.grid_size}, {cfg.grid_size}), "
                             f"got {describe(tokens)}")  # fmt: skip
        tokens = tokens.flatten(1) if tokens.ndim == 3 else tokens
        if tokens.ndim != 2:
            raise ValueError(f"{what} must have shape (B, n) or (B, {cfg.grid_size}, {cfg.grid_size}), "
                             f"got {tuple(tokens.shape)}")  # fmt: skip
        if tokens.shape[1] > longest:
            raise ValueError(
                f"{what} has {tokens.shape[1]} tokens, longer than this model reads ({longest}: its block size is "
                f"{cfg.block_size} = {cfg.context_length} caption + {cfg.num_image_tokens - 1} image positions); pass "
                f"at most {longest} image tokens, i.e. a VQ-VAE of grid {cfg.grid_size}×{cfg.grid_size}"
            )
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= cfg.codebook_size):
            raise ValueError(f"{what} must lie in [0, {cfg.codebook_size}) (the VQ-VAE's codes), got values in "
                             f"[{int(tokens.min())}, {int(tokens.max())}]")  # fmt: skip
        return tokens.long().to(self.device)

    # -- the network ---------------------------------------------------------------------------------------------------

    def forward(self, captions, image_tokens: torch.Tensor) -> torch.Tensor:
        """Logits of every next image token given the caption and an image-token prefix.

        :param captions: (B, L) caption ids (or strings: see :meth:`tokenize`).
        :param image_tokens: (B, n) codes z_1 … z_n in [0, K), 0 ≤ n ≤ N - 1 (raster order).
        :return: (B, n + 1, K) logits; ``[:, i]`` is the distribution of z_{i+1} given c and z_1 … z_i.
        """
        cfg = self.config
        cap = self.tokenize(captions)  # (B, L)
        img = self._image_tokens(image_tokens, cfg.num_image_tokens - 1, "image_tokens")  # (B, n)
        if img.shape[0] != cap.shape[0]:
            raise ValueError(f"{cap.shape[0]} captions but {img.shape[0]} rows of image tokens")
        L, n = cap.shape[1], img.shape[1]
        seq = torch.cat([cap, img + self.text_vocab_size], dim=1)  # (B, S) joint ids, S = L + n
        S = L + n
        h = self.drop(self.token_emb(seq) + self.pos_emb[:S])  # (B, S, D)
        mask = self.causal_mask[:S, :S]  # (S, S), broadcast over batch and heads
        for block in self.blocks:
            h = block(h, mask)  # (B, S, D)
        h = self.ln_f(h[:, L - 1 :])  # (B, n + 1, D): the positions that predict image tokens
        return self.head(h)  # (B, n + 1, K)

    def next_logits(self, captions, image_tokens: torch.Tensor, guidance_scale: float = 1.0) -> torch.Tensor:
        """Logits (B, K) of the next image token, with classifier-free guidance:
        ℓ = ℓ(∅) + s · (ℓ(c) - ℓ(∅)); s = 1 returns the conditional logits themselves (one pass)."""
        cap = self.tokenize(captions)
        if guidance_scale == 1.0:
            return self(cap, image_tokens)[:, -1]
        B = cap.shape[0]
        both = self(torch.cat([cap, self.null_captions(B)]), torch.cat([image_tokens, image_tokens]))[:, -1]
        cond, uncond = both[:B], both[B:]  # (B, K) each
        return uncond + guidance_scale * (cond - uncond)

    def token_nll(self, captions, tokens: torch.Tensor) -> torch.Tensor:
        """The exact -log p(z | c) = -Σ_i log softmax(ℓ_i)[z_i] of whole token grids, in nats.

        :param captions: B captions (strings or (B, L) ids).
        :param tokens: (B, g, g) or (B, N) codes, e.g. ``vqvae.encode_tokens(images)``.
        :return: (B,) nats.
        """
        N = self.config.num_image_tokens
        z = self._image_tokens(tokens, N, "tokens")
        if z.shape[1] != N:
            raise ValueError(f"tokens must hold a whole grid of {N} codes, got {z.shape[1]}")
        logits = self(captions, z[:, :-1])  # (B, N, K)
        return F.cross_entropy(logits.float().transpose(1, 2), z, reduction="none").sum(dim=1)  # (B,)

    # -- sampling ------------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def sample(
        self,
        captions,
        temperature: float = 1.0,
        top_k: int | None = None,
        guidance_scale: float = 1.0,
        seed: int = 0,
        generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> torch.Tensor:
        """Draw one token grid per caption, z_1 … z_N in turn from softmax(ℓ / temperature).

        :param captions: B captions (strings, or (B, L) ids).
        :param temperature: > 0; below 1 sharpens the distribution, above 1 flattens it.
        :param top_k: keep only the k most likely codes at each step (≥ 1; None or ≥ K keeps all); 1 is greedy.
        :param guidance_scale: classifier-free guidance s on the logits (1: conditional, 0: unconditional).
        :param seed: seeds a CPU generator (ignored when ``generator`` is given).
        :param generator: a CPU ``torch.Generator`` to draw from instead.
        :return: (B, g, g) int64 codes, on the model's device.
        :raises ValueError: temperature ≤ 0, top_k < 1, or a bad caption.
        """
        cfg = self.config
        if not isinstance(temperature, int | float) or not temperature > 0 or not math.isfinite(temperature):
            raise ValueError(f"temperature must be a number > 0, got {temperature!r}; for greedy decoding use top_k=1")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"top_k must be None (keep every code) or a whole number >= 1, got {top_k!r}")
        cap = self.tokenize(captions)
        B = cap.shape[0]
        generator = generator if generator is not None else torch.Generator().manual_seed(seed)
        z = torch.zeros(B, 0, dtype=torch.long, device=self.device)
        was_training = self.training
        self.eval()
        try:
            for _ in tqdm(range(cfg.num_image_tokens), desc="autoregressive tokens", disable=not progress):
                logits = self.next_logits(cap, z, guidance_scale).float() / temperature  # (B, K)
                if top_k is not None and top_k < cfg.codebook_size:
                    kth = logits.topk(top_k, dim=-1).values[:, -1:]  # (B, 1) the k-th largest logit
                    logits = logits.masked_fill(logits < kth, -math.inf)
                probs = logits.softmax(dim=-1).cpu()  # drawn on the CPU: the same tokens on any device
                nxt = torch.multinomial(probs, 1, generator=generator).to(self.device)  # (B, 1)
                z = torch.cat([z, nxt], dim=1)
        finally:
            self.train(was_training)
        return z.view(B, cfg.grid_size, cfg.grid_size)


# ----------------------------------------------------------------------------------------------------------------------
# pictures and the bits/dim bound


@torch.no_grad()
def generate(model: AutoregressiveTransformer, vqvae, captions, **sample_kwargs) -> torch.Tensor:
    """Captions → pictures: :meth:`AutoregressiveTransformer.sample` the tokens, then the VQ-VAE decodes them.

    :param vqvae: the :class:`~dalle2_edu.stages.vqvae.VQVAE` whose codes the model was trained on.
    :param sample_kwargs: ``temperature``, ``top_k``, ``guidance_scale``, ``seed``, ``generator``, ``progress``.
    :return: (B, 3, S, S) in [-1, 1].
    """
    _check_pair(model, vqvae)
    tokens = model.sample(captions, **sample_kwargs)
    return vqvae.decode_tokens(tokens.to(vqvae.codebook.weight.device))


@torch.no_grad()
def bits_per_dim_bound(model: AutoregressiveTransformer, vqvae, captions, images: torch.Tensor) -> dict:
    """An upper bound on -log p(x | c) of 8-bit pictures, in bits per dimension.

    With z = the VQ-VAE's codes of x (a deterministic encoder, so the ELBO has no entropy term):
    -log p(x | c) ≤ -log p(z | c) - log p(x | z_q), and bits/dim = that / (3·S·S · ln 2).

    :param captions: B captions. :param images: (B, 3, S, S) uint8, or float in [-1, 1] (snapped to 8 bits).
    :return: dict of (B,) tensors: ``bits_per_dim``, ``token_nll`` and ``decoder_nll`` (both nats per picture).
    """
    _check_pair(model, vqvae)
    tokens = vqvae.encode_tokens(images)  # (B, g, g)
    token_nll = model.token_nll(captions, tokens.to(model.device)).cpu()
    decoder_nll = vqvae.decoder_nll(images, tokens).cpu()
    dims = vqvae.config.num_dims
    return {"bits_per_dim": (token_nll + decoder_nll) / (dims * math.log(2.0)),
            "token_nll": token_nll, "decoder_nll": decoder_nll}  # fmt: skip


def _check_pair(model: AutoregressiveTransformer, vqvae) -> None:
    cfg, vq = model.config, vqvae.config
    if (cfg.codebook_size, cfg.grid_size) != (vq.codebook_size, vq.grid_size):
        raise ValueError(
            f"the transformer models {cfg.grid_size}×{cfg.grid_size} grids of {cfg.codebook_size} codes but the VQ-VAE "
            f"makes {vq.grid_size}×{vq.grid_size} grids of {vq.codebook_size}: pass the VQ-VAE it was trained on"
        )


# ----------------------------------------------------------------------------------------------------------------------
# training with the project's Trainer


def autoregressive_loss_fn(caption_drop: float | None = None):
    """The Trainer's ``loss_fn(model, batch)`` for batches ``(caption_tokens (B, L) int64, image_tokens (B, g, g))``.

    Each row's caption becomes the empty caption (all PAD) with probability ``caption_drop`` (default: the model's
    ``config.caption_drop``), then the loss is the mean cross-entropy over the N image tokens,
    -1/N Σ_i log p(z_i | c, z_<i), in nats per token (the caption is not scored).

    :return: ``loss_fn`` returning ``loss`` and ``bits_per_token`` (the loss / ln 2) and ``accuracy`` (of the most
        likely code) for the Trainer's log.
    """

    def loss_fn(model: AutoregressiveTransformer, batch):
        captions, tokens = batch
        z = tokens.flatten(1).long()  # (B, N)
        p = model.config.caption_drop if caption_drop is None else caption_drop
        drop = torch.rand(z.shape[0], device=z.device) < p  # (B,)
        captions = torch.where(drop[:, None], torch.full_like(captions, PAD_ID), captions)
        logits = model(captions, z[:, :-1])  # (B, N, K)
        loss = F.cross_entropy(logits.float().transpose(1, 2), z)
        accuracy = (logits.argmax(-1) == z).float().mean()
        return {"loss": loss, "bits_per_token": loss.detach() / math.log(2.0), "accuracy": accuracy}

    return loss_fn


def train_autoregressive(
    captions: Sequence[str],
    image_tokens: torch.Tensor,
    config: AutoregressiveConfig | None = None,
    steps: int = 2000,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    out_dir=None,
    progress: bool = True,
    **trainer_kwargs,
):
    """Train an :class:`AutoregressiveTransformer` on captions and the VQ-VAE tokens of their pictures with the
    project's :class:`~dalle2_edu.train.Trainer` (AdamW, weight decay 0.01, warm-up then cosine decay, EMA).

    :param captions: N caption strings.
    :param image_tokens: (N, g, g) int64 codes of the pictures (:func:`dalle2_edu.stages.vqvae.encode_tokens`).
    :param config: sizes; its vocabulary is built from ``captions`` when empty, and ``codebook_size`` must be the
        VQ-VAE's.
    :param out_dir: resumable checkpoint folder (running again continues), or None.
    :param trainer_kwargs: more Trainer arguments (they win over the defaults here).
    :return: the trainer; sample from ``trainer.ema_model``.
    """
    from dataclasses import replace

    from dalle2_edu.train import Trainer
    from dalle2_edu.utils import set_seed

    if isinstance(captions, str) or len(captions) != len(image_tokens):
        raise ValueError(f"pass one caption per token grid: got {len(captions)} captions and "
                         f"{len(image_tokens)} grids")  # fmt: skip
    config = config or AutoregressiveConfig()
    if not config.vocab:
        vocab, words = build_vocabulary(list(captions))
        config = replace(config, vocab=vocab, words=words)
    set_seed(seed)
    model = AutoregressiveTransformer(config)
    caption_ids = model.tokenize(list(captions)).cpu()  # once, up front
    tokens = model._image_tokens(image_tokens, config.num_image_tokens, "image_tokens").cpu()
    if tokens.shape[1] != config.num_image_tokens:
        raise ValueError(f"image_tokens must hold whole {config.grid_size}×{config.grid_size} grids")
    kwargs = dict(weight_decay=0.01, warmup_steps=min(100, max(steps // 10, 1)), lr_schedule="cosine",
                  total_steps=steps, ema_decay=0.995, ckpt_every=250 if out_dir else None,
                  desc="training autoregressive")  # fmt: skip
    kwargs.update(trainer_kwargs)
    trainer = Trainer(model, autoregressive_loss_fn(), (caption_ids, tokens), batch_size=batch_size, lr=lr,
                      seed=seed, out_dir=out_dir, progress=progress,
                      config={"autoregressive": config.to_dict(), "n_train": len(tokens)}, **kwargs)  # fmt: skip
    trainer.fit(steps, resume=out_dir is not None)
    return trainer


# ----------------------------------------------------------------------------------------------------------------------
# saving and loading


def default_autoregressive_path() -> Path:
    from dalle2_edu.utils import data_dir

    return data_dir() / "checkpoints" / "autoregressive.safetensors"


def save_autoregressive(model: AutoregressiveTransformer, path=None, metrics: dict | None = None,
                        half: bool = True) -> Path:  # fmt: skip
    """Safetensors weights (fp16 by default) with the config (caption vocabulary included) in the metadata."""
    from dalle2_edu.checkpoint import save_model

    if not isinstance(model, AutoregressiveTransformer):
        raise TypeError(f"save_autoregressive needs an AutoregressiveTransformer, got {type(model).__name__}")
    return save_model(default_autoregressive_path() if path is None else path, model, "autoregressive", metrics, half)


def build_autoregressive(config: dict) -> AutoregressiveTransformer:
    """An untrained transformer of a saved config (the checkpoint registry's builder)."""
    return AutoregressiveTransformer(AutoregressiveConfig.from_dict(config))


def load_autoregressive(path=None, device="cpu") -> AutoregressiveTransformer:
    """Load a transformer written by :func:`save_autoregressive` (default
    ``data/checkpoints/autoregressive.safetensors``), in eval mode."""
    from dalle2_edu.checkpoint import load_model

    how = ("train one with dalle2_edu.stages.autoregressive.train_autoregressive and save it with "
           "save_autoregressive(trainer.ema_model, path)")  # fmt: skip
    return load_model(default_autoregressive_path() if path is None else path, "autoregressive",
                      build_autoregressive, how, device, "autoregressive transformer")  # fmt: skip
