"""The network of the diffusion prior: a causal (decoder-only) transformer over the conditioning and x_t.

DALL·E 2 (Ramesh et al. 2022, §2.1) predicts a CLIP image embedding from a caption with a transformer that reads one
sequence, in this order:

    [ caption tokens (L of them) | text embedding z_t | timestep t | noised image embedding x_t | query ]

and reads its answer — the clean image embedding x̂_0 — from the output at the final "query" position. Attention is
causal (each position sees itself and what comes before it), so the query, being last, sees everything. Caption
tokens are the text tower's per-token features (width ``w``), projected to the transformer's width; padding tokens
(``text_mask`` False) are removed from every attention as keys, so they cannot influence any real position.

Each padded position still attends to itself (the diagonal is always allowed): a row of the attention matrix with no
key at all would make softmax divide 0 by 0. Its own output is garbage, but nothing ever reads it.

Shapes: B batch, L caption tokens, w token width, d embedding size, D transformer width, S = L + 4 positions.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from dalle2_edu.nets.layers import attention, timestep_embedding

NUM_SPECIAL = 4  # text embedding, timestep, x_t, query


@dataclass
class PriorTransformerConfig:
    """Every hyperparameter of a :class:`PriorTransformer`.

    :param embed_dim: d, the size of CLIP embeddings (text and image alike).
    :param token_dim: w, the width of the caption tokens, or ``None`` for a prior that reads no caption tokens.
    :param max_text_tokens: most caption tokens accepted (the length of the learned positional table).
    :param width: D, the transformer's width.
    :param num_layers: transformer blocks.
    :param num_heads: attention heads; must divide ``width``.
    :param mlp_ratio: the MLP's hidden width is ``mlp_ratio * width``.
    :param dropout: dropout on attention outputs and MLP outputs.
    """

    embed_dim: int = 64
    token_dim: int | None = 128
    max_text_tokens: int = 77
    width: int = 128
    num_layers: int = 4
    num_heads: int = 4
    mlp_ratio: int = 4
    dropout: float = 0.0

    def __post_init__(self):
        for name in ("embed_dim", "max_text_tokens", "width", "num_layers", "num_heads", "mlp_ratio"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"PriorTransformerConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.token_dim is not None and self.token_dim < 1:
            raise ValueError(f"PriorTransformerConfig.token_dim must be None or >= 1, got {self.token_dim}")
        if self.width % self.num_heads != 0:
            raise ValueError(f"num_heads={self.num_heads} must divide width={self.width}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict:
        """Plain JSON-friendly dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> PriorTransformerConfig:
        """Inverse of ``to_dict``; unknown keys are an error (they usually mean a typo or a version mismatch)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown PriorTransformerConfig keys {unknown}; known keys are {sorted(known)}")
        return cls(**d)


def prior_attention_mask(key_valid: torch.Tensor) -> torch.Tensor:
    """Causal mask combined with a key-padding mask, in ``scaled_dot_product_attention``'s boolean convention.

    ``mask[b, i, j]`` is True when position i may attend to position j: j ≤ i (causal) and j is a real token, or
    j = i (every position sees itself, so no row is empty).

    :param key_valid: (B, S) bool, False at padding positions.
    :return: (B, 1, S, S) bool, broadcast over heads.
    """
    S = key_valid.shape[1]
    causal = torch.ones(S, S, dtype=torch.bool, device=key_valid.device).tril()  # (S, S)
    eye = torch.eye(S, dtype=torch.bool, device=key_valid.device)
    return ((causal[None] & key_valid[:, None, :]) | eye[None])[:, None]  # (B, 1, S, S)


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention through ``F.scaled_dot_product_attention`` (:func:`~dalle2_edu.nets.layers.attention`)
    with an explicit boolean mask."""

    def __init__(self, width: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """
        :param x: (B, S, D) tokens.
        :param mask: (B, 1, S, S) bool, True where attending is allowed (see :func:`prior_attention_mask`).
        :return: (B, S, D).
        """
        B, S, D = x.shape
        qkv = self.qkv(x).view(B, S, 3, self.num_heads, D // self.num_heads)  # (B, S, 3, nh, hs)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, nh, S, hs)
        p = self.dropout if self.training else 0.0
        h = attention(q, k, v, mask, dropout_p=p)  # (B, nh, S, hs); fp32 inside for bf16 on the CPU
        return self.proj(h.transpose(1, 2).reshape(B, S, D))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(LN(x))`` then ``x + MLP(LN(x))``."""

    def __init__(self, width: int, num_heads: int, mlp_ratio: int = 4, dropout: float = 0.0):
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, num_heads, dropout)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(), nn.Linear(mlp_ratio * width, width))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, S, D) → (B, S, D)."""
        x = x + self.drop(self.attn(self.ln1(x), mask))
        return x + self.drop(self.mlp(self.ln2(x)))


class PriorTransformer(nn.Module):
    """``net(x_t, t, text_emb, text_tokens=None, text_mask=None) -> x̂_0``, see the module docstring.

    :param config: a :class:`PriorTransformerConfig`.
    """

    def __init__(self, config: PriorTransformerConfig):
        super().__init__()
        self.config = c = config
        D = c.width
        self.text_emb_proj = nn.Linear(c.embed_dim, D)
        self.x_proj = nn.Linear(c.embed_dim, D)
        self.time_mlp = nn.Sequential(nn.Linear(D, D), nn.SiLU(), nn.Linear(D, D))
        self.query = nn.Parameter(torch.randn(D) * 0.02)
        # each of the four special inputs gets a learned "slot" vector, so it is recognised wherever it sits
        self.slot_emb = nn.Parameter(torch.randn(NUM_SPECIAL, D) * 0.02)
        if c.token_dim is not None:
            self.token_proj = nn.Linear(c.token_dim, D)
            self.token_pos = nn.Parameter(torch.randn(c.max_text_tokens, D) * 0.02)
        self.blocks = nn.ModuleList(Block(D, c.num_heads, c.mlp_ratio, c.dropout) for _ in range(c.num_layers))
        self.ln_out = nn.LayerNorm(D)
        self.out = nn.Linear(D, c.embed_dim)
        for block in self.blocks:  # GPT-2's scaled init of the layers that write into the residual stream
            for layer in (block.attn.proj, block.mlp[2]):
                nn.init.normal_(layer.weight, std=0.02 / math.sqrt(2 * c.num_layers))
                nn.init.zeros_(layer.bias)

    @classmethod
    def from_config(cls, config: PriorTransformerConfig | dict) -> PriorTransformer:
        if isinstance(config, dict):
            config = PriorTransformerConfig.from_dict(config)
        return cls(config)

    def check_inputs(self, x_t, t, text_emb, text_tokens=None, text_mask=None) -> None:
        """Raise ValueError naming the problem when the inputs of :meth:`forward` do not fit this network."""
        c = self.config
        if x_t.ndim != 2 or x_t.shape[1] != c.embed_dim:
            raise ValueError(f"x_t must have shape (B, {c.embed_dim}) (B, embed_dim), got {tuple(x_t.shape)}")
        B = x_t.shape[0]
        if text_emb.shape != (B, c.embed_dim):
            raise ValueError(f"text_emb must have shape ({B}, {c.embed_dim}) like x_t, got {tuple(text_emb.shape)}")
        if t.shape != (B,):
            raise ValueError(f"t must have shape ({B},), one step per row, got {tuple(t.shape)}")
        if text_tokens is None:
            if text_mask is not None:
                raise ValueError("text_mask was given without text_tokens; pass both or neither")
            return
        if c.token_dim is None:
            raise ValueError(
                "this prior was built with token_dim=None and reads no caption tokens; pass text_tokens=None"
            )
        if text_tokens.ndim != 3 or text_tokens.shape[0] != B or text_tokens.shape[2] != c.token_dim:
            raise ValueError(
                f"text_tokens must have shape ({B}, L, {c.token_dim}) (B, L, token_dim), got {tuple(text_tokens.shape)}"
            )
        if text_tokens.shape[1] > c.max_text_tokens:
            raise ValueError(
                f"{text_tokens.shape[1]} caption tokens exceed max_text_tokens={c.max_text_tokens}; truncate the "
                "tokens or build the prior with a larger max_text_tokens"
            )
        if text_mask is not None and tuple(text_mask.shape) != tuple(text_tokens.shape[:2]):
            raise ValueError(
                f"text_mask must have shape {tuple(text_tokens.shape[:2])} (B, L), one flag per caption token, "
                f"got {tuple(text_mask.shape)}"
            )

    def hidden_states(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        text_emb: torch.Tensor,
        text_tokens: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The final normalised features at every position (``forward`` reads the last one).

        Arguments as in :meth:`forward`. :return: (B, S, D) with S = L + 4 (S = 4 without caption tokens); positions
        are the caption tokens, then text embedding, timestep, x_t, query.
        """
        self.check_inputs(x_t, t, text_emb, text_tokens, text_mask)
        B, D = x_t.shape[0], self.config.width
        dtype = self.x_proj.weight.dtype
        x_t, text_emb = x_t.to(dtype), text_emb.to(dtype)
        special = [
            self.text_emb_proj(text_emb),  # (B, D)
            self.time_mlp(timestep_embedding(t, D).to(dtype)),  # (B, D)
            self.x_proj(x_t),  # (B, D)
            self.query.expand(B, D),  # (B, D)
        ]
        special = torch.stack(special, dim=1) + self.slot_emb  # (B, 4, D)
        valid_special = torch.ones(B, NUM_SPECIAL, dtype=torch.bool, device=x_t.device)
        if text_tokens is None:
            h, valid = special, valid_special
        else:
            L = text_tokens.shape[1]
            tokens = self.token_proj(text_tokens.to(dtype)) + self.token_pos[:L]  # (B, L, D)
            if text_mask is None:
                text_mask = torch.ones(B, L, dtype=torch.bool, device=x_t.device)
            text_mask = text_mask.to(device=x_t.device, dtype=torch.bool)
            # zero the padding (torch.where, not a product: NaN or inf padding features would survive 0 * x)
            tokens = torch.where(text_mask[..., None], tokens, torch.zeros_like(tokens))
            h = torch.cat([tokens, special], dim=1)  # (B, S, D), S = L + 4
            valid = torch.cat([text_mask, valid_special], dim=1)  # (B, S)
        mask = prior_attention_mask(valid)  # (B, 1, S, S)
        for block in self.blocks:
            h = block(h, mask)
        return self.ln_out(h)  # (B, S, D)

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        text_emb: torch.Tensor,
        text_tokens: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        :param x_t: (B, d) noised image embeddings.
        :param t: (B,) diffusion steps (indices of the original schedule).
        :param text_emb: (B, d) CLIP text embeddings.
        :param text_tokens: (B, L, w) caption token features, or None.
        :param text_mask: (B, L) bool, True for real tokens, False for padding; None means all real.
        :return: (B, d) the predicted clean image embedding x̂_0.
        """
        h = self.hidden_states(x_t, t, text_emb, text_tokens, text_mask)  # (B, S, D)
        return self.out(h[:, -1])  # read at the query: (B, d)
