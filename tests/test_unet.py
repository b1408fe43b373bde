"""Tests for the UNet and its layers: shapes on every config path, conditioning, a hand-computed attention
reference, gradients, input errors, and a tiny overfitting run."""

import math

import pytest
import torch

from dalle2_edu.nets.layers import (
    AttentionBlock,
    Downsample,
    ResBlock,
    Upsample,
    norm_groups,
    timestep_embedding,
)
from dalle2_edu.nets.unet import UNet, UNetConfig


def perturb(model: torch.nn.Module, std: float = 0.05, seed: int = 0) -> torch.nn.Module:
    """Add small noise to every parameter, so zero-initialised output layers no longer hide the inputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(std * torch.randn(p.shape, generator=g))
    return model


def make_inputs(cfg: UNetConfig, batch: int = 2, size: int | None = None, num_tokens: int = 3, seed: int = 0) -> dict:
    """Random forward() keyword arguments for a model built from ``cfg``, with every conditioning it expects."""
    g = torch.Generator().manual_seed(seed)
    size = size or cfg.image_size
    kw = {
        "x": torch.randn(batch, cfg.in_channels, size, size, generator=g),
        "t": torch.randint(0, 1000, (batch,), generator=g),
    }
    if cfg.cond_dim:
        kw["cond"] = torch.randn(batch, cfg.cond_dim, generator=g)
    if cfg.context_dim:
        kw["context"] = torch.randn(batch, num_tokens, cfg.context_dim, generator=g)
    if cfg.low_res_channels:
        kw["low_res"] = torch.randn(batch, cfg.low_res_channels, size // 2, size // 2, generator=g)
    return kw


FULL = dict(cond_dim=5, context_dim=6, low_res_channels=3, learned_sigma=True)


# ----------------------------------------------------------------------------------------------------------- layers


def test_timestep_embedding_closed_form():
    t = torch.tensor([0, 1, 7.5, 999])
    emb = timestep_embedding(t, dim=6, max_period=10000)
    assert emb.shape == (4, 6) and emb.dtype == torch.float32
    for row, tv in enumerate(t.tolist()):
        for i in range(3):  # half = 3 frequencies: 1, 10000^(-1/3), 10000^(-2/3)
            f = 10000 ** (-i / 3)
            assert emb[row, i].item() == pytest.approx(math.cos(tv * f), abs=1e-5)
            assert emb[row, 3 + i].item() == pytest.approx(math.sin(tv * f), abs=1e-5)


def test_timestep_embedding_odd_dim_pads_one_zero():
    t = torch.tensor([3, 40])
    odd = timestep_embedding(t, dim=7)
    assert odd.shape == (2, 7)
    torch.testing.assert_close(odd[:, :6], timestep_embedding(t, dim=6))
    assert torch.all(odd[:, 6] == 0)
    assert timestep_embedding(t, dim=1).shape == (2, 1)
    with pytest.raises(ValueError, match=r"shape \(B,\)"):
        timestep_embedding(torch.zeros(2, 1), dim=4)


@pytest.mark.parametrize("ch, expected", [(128, 32), (64, 16), (48, 12), (16, 4), (8, 2), (9, 1), (3, 1)])
def test_norm_groups(ch, expected):
    assert norm_groups(ch) == expected and ch % expected == 0


def test_resblock_is_identity_or_skip_when_fresh():
    x, emb = torch.randn(2, 8, 4, 4), torch.randn(2, 12)
    torch.testing.assert_close(ResBlock(8, 8, 12)(x, emb), x)  # zero-initialised conv2: only the skip path remains
    block = ResBlock(8, 16, 12, groups=4)
    torch.testing.assert_close(block(x, emb), block.skip(x))
    with pytest.raises(ValueError, match="must divide the channel count"):
        ResBlock(8, 12, 4, groups=8)


def test_down_and_upsample_shapes():
    x = torch.randn(2, 4, 8, 8)
    assert Downsample(4)(x).shape == (2, 4, 4, 4)
    assert Upsample(4, out_ch=6)(x).shape == (2, 6, 16, 16)


def manual_attention(block: AttentionBlock, x, context=None, context_mask=None):
    """Reference from plain tensor ops: group norm, per-head softmax(QK^T / sqrt(d)) V, projection, residual."""
    B, C, H, W = x.shape
    G = block.norm.num_groups
    xg = x.reshape(B, G, -1)
    normed = (xg - xg.mean(-1, keepdim=True)) / torch.sqrt(xg.var(-1, unbiased=False, keepdim=True) + block.norm.eps)
    normed = normed.reshape(B, C, H, W) * block.norm.weight[None, :, None, None] + block.norm.bias[None, :, None, None]
    tokens = normed.reshape(B, C, H * W).transpose(1, 2)  # (B, T, C)

    def lin(layer, z):
        return z @ layer.weight.T + layer.bias

    q, k, v = lin(block.to_q, tokens), lin(block.to_k, tokens), lin(block.to_v, tokens)
    if context is not None:
        k = torch.cat([k, lin(block.context_to_k, context)], dim=1)  # order does not matter for attention
        v = torch.cat([v, lin(block.context_to_v, context)], dim=1)
    heads, d = block.num_heads, C // block.num_heads
    out = torch.empty_like(q)
    for b in range(B):
        for h in range(heads):
            sl = slice(h * d, (h + 1) * d)
            scores = q[b, :, sl] @ k[b, :, sl].T / math.sqrt(d)  # (T, T + L)
            if context_mask is not None:
                keep = torch.cat([torch.ones(H * W, dtype=torch.bool), context_mask[b]])
                scores = scores.masked_fill(~keep, float("-inf"))
            out[b, :, sl] = torch.softmax(scores, dim=-1) @ v[b, :, sl]
    out = lin(block.proj_out, out)  # (B, T, C)
    return x + out.transpose(1, 2).reshape(B, C, H, W)


@pytest.mark.parametrize("use_context", [False, True])
def test_attention_matches_manual_computation(use_context):
    torch.manual_seed(0)
    block = perturb(AttentionBlock(4, num_heads=2, context_dim=3), std=0.5)
    x = torch.randn(2, 4, 2, 3)
    context = torch.randn(2, 5, 3) if use_context else None
    torch.testing.assert_close(block(x, context), manual_attention(block, x, context), atol=1e-5, rtol=1e-5)


def test_attention_context_mask_ignores_padding_tokens():
    torch.manual_seed(0)
    block = perturb(AttentionBlock(4, head_dim=2, context_dim=3), std=0.5)
    x, context = torch.randn(2, 4, 2, 2), torch.randn(2, 4, 3)
    mask = torch.tensor([[True, True, False, False], [True, False, True, True]])
    out = block(x, context, mask)
    torch.testing.assert_close(out, manual_attention(block, x, context, mask), atol=1e-5, rtol=1e-5)
    # the first sample with only its two real tokens gives the same result
    torch.testing.assert_close(out[:1], block(x[:1], context[:1, :2]), atol=1e-5, rtol=1e-5)


def test_attention_block_errors():
    with pytest.raises(ValueError, match="num_heads=3 must divide"):
        AttentionBlock(8, num_heads=3)
    with pytest.raises(ValueError, match="head_dim=3 must divide"):
        AttentionBlock(8, head_dim=3)
    with pytest.raises(ValueError, match="built without context_dim"):
        AttentionBlock(8)(torch.randn(1, 8, 2, 2), torch.randn(1, 2, 8))
    with pytest.raises(ValueError, match="context_mask was given without context"):
        AttentionBlock(8, context_dim=2)(torch.randn(1, 8, 2, 2), None, torch.ones(1, 2, dtype=torch.bool))


# ------------------------------------------------------------------------------------------------------------- UNet


@pytest.mark.parametrize(
    "overrides, size",
    [
        ({}, 8),
        ({"learned_sigma": True}, 8),
        ({"cond_dim": 5}, 8),
        ({"context_dim": 6}, 8),
        ({"low_res_channels": 3}, 8),
        (FULL, 8),
        ({"model_channels": 9, "num_heads": 3}, 8),  # odd width: odd timestep-embedding dim, 1 GroupNorm group
        ({"channel_mult": (1, 2, 2), "attention_resolutions": (8, 4, 2), "num_res_blocks": 2}, 8),
        ({"channel_mult": (1,), "attention_resolutions": (), "image_size": 16}, 16),
        ({"channel_mult": (1, 1, 2), "attention_resolutions": (8,), "image_size": 16, **FULL}, 16),
        ({"channel_mult": (1, 2, 2, 2), "attention_resolutions": (8,), "image_size": 32, "out_channels": 1}, 32),
        ({}, 16),  # a size other than image_size still runs
        ({"patch_size": 2, "attention_resolutions": (2,), **FULL}, 8),  # levels at 4 and 2 positions
        ({"patch_size": 2, "attention_resolutions": (2,), **FULL}, 16),
        ({"patch_size": 4, "channel_mult": (1,), "attention_resolutions": (2,), **FULL}, 8),
        ({"narrow_upsample": True, **FULL}, 8),
        ({"narrow_upsample": True, "channel_mult": (1, 4, 2), "attention_resolutions": (2,), "num_res_blocks": 2}, 8),
    ],
)
def test_output_shapes(overrides, size):
    cfg = UNetConfig.tiny(**overrides)
    model = UNet.from_config(cfg)
    out = model(**make_inputs(cfg, size=size))
    assert out.shape == (2, cfg.out_channels * (2 if cfg.learned_sigma else 1), size, size)


@pytest.mark.parametrize("learned_sigma", [False, True])
def test_patch_size_is_a_plain_unet_on_folded_pixels(learned_sigma):
    """patch_size = 2 must equal, weight for weight, an unpatched UNet of 4× the channels run on
    pixel_unshuffle(x) (every 2×2 block as 4 channels) and unfolded by pixel_shuffle, low_res included."""
    import torch.nn.functional as F

    patched_cfg = UNetConfig.tiny(patch_size=2, attention_resolutions=(2,), **{**FULL, "learned_sigma": learned_sigma})
    plain_cfg = UNetConfig.from_dict({**patched_cfg.to_dict(), "patch_size": 1, "image_size": 4, "in_channels": 12,
                                      "out_channels": 12, "low_res_channels": 12})  # fmt: skip
    patched = perturb(UNet.from_config(patched_cfg)).eval()
    plain = UNet.from_config(plain_cfg).eval()
    plain.load_state_dict(patched.state_dict())  # same shapes: the fold only moves pixels into channels
    assert patched_cfg.feature_sizes == (4, 2) and patched_cfg.size_multiple == 4
    kw = make_inputs(patched_cfg)
    kw["low_res"] = torch.randn(2, 3, 8, 8)  # at full size, so neither network resizes it
    with torch.no_grad():
        out = patched(**kw)
        ref = plain(**{**kw, "x": F.pixel_unshuffle(kw["x"], 2), "low_res": F.pixel_unshuffle(kw["low_res"], 2)})
    torch.testing.assert_close(out, F.pixel_shuffle(ref, 2))
    assert out.shape == (2, 6 if learned_sigma else 3, 8, 8) and out.abs().max() > 1e-3


def test_narrow_upsample_changes_only_the_upsample_widths():
    """narrow_upsample: each Upsample outputs the finer level's width. Between equally wide levels nothing changes
    (same weights, same output); with a narrow top level the full-size layers shrink and gradients still reach all."""
    same = UNetConfig.tiny(channel_mult=(1, 1), **FULL)
    a = perturb(UNet.from_config(same)).eval()
    b = UNet.from_config(UNetConfig.from_dict({**same.to_dict(), "narrow_upsample": True})).eval()
    b.load_state_dict(a.state_dict())  # raises if any shape differed
    kw = make_inputs(same)
    with torch.no_grad():
        torch.testing.assert_close(b(**kw), a(**kw))

    wide, narrow = (UNetConfig.tiny(channel_mult=(1, 4), narrow_upsample=flag, **FULL) for flag in (False, True))
    plain, thin = UNet.from_config(wide), perturb(UNet.from_config(narrow))
    ups = [m for m in thin.modules() if isinstance(m, Upsample)]
    assert [(u.conv.in_channels, u.conv.out_channels) for u in ups] == [(32, 8)]  # 4C -> C, not 4C -> 4C
    assert thin.num_parameters() < plain.num_parameters()
    out = thin(**make_inputs(narrow))
    assert out.shape == (2, 6, 8, 8)
    out.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().max() > 0 for p in thin.parameters())


def test_fresh_model_outputs_exact_zeros():
    cfg = UNetConfig.tiny(**FULL)
    out = UNet.from_config(cfg)(**make_inputs(cfg))
    assert torch.equal(out, torch.zeros_like(out))


@pytest.mark.parametrize("name", ["t", "cond", "context", "low_res"])
def test_every_input_changes_the_output(name):
    cfg = UNetConfig.tiny(**FULL)
    model = perturb(UNet.from_config(cfg)).eval()
    kw = make_inputs(cfg)
    with torch.no_grad():
        base = model(**kw)
        torch.testing.assert_close(model(**kw), base, rtol=0, atol=0)  # deterministic for identical inputs
        changed = dict(kw)
        changed[name] = kw[name] + 1 if name == "t" else torch.randn_like(kw[name])
        assert (model(**changed) - base).abs().max() > 1e-4


def test_context_mask_makes_padding_tokens_irrelevant():
    cfg = UNetConfig.tiny(context_dim=6)
    model = perturb(UNet.from_config(cfg)).eval()
    kw = make_inputs(cfg, num_tokens=4)
    mask = torch.tensor([[True, True, True, False], [True, True, True, True]])
    padded = dict(kw, context=kw["context"].clone())
    padded["context"][0, 3] = 100.0
    with torch.no_grad():
        torch.testing.assert_close(model(**kw, context_mask=mask)[0], model(**padded, context_mask=mask)[0])
        assert (model(**kw)[0] - model(**padded)[0]).abs().max() > 1e-4  # without the mask it matters


def test_scalar_t_and_float_t():
    cfg = UNetConfig.tiny()
    model = perturb(UNet.from_config(cfg)).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(x, 5), model(x, torch.tensor([5, 5])))
        torch.testing.assert_close(model(x, torch.tensor([5.0, 5.0])), model(x, torch.tensor([5, 5])))


def test_gradient_reaches_every_parameter():
    cfg = UNetConfig.tiny(**FULL)
    model = perturb(UNet.from_config(cfg))
    model(**make_inputs(cfg)).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().max() == 0]
    assert missing == []


def test_channels_last_and_bf16_autocast():
    cfg = UNetConfig.tiny(**FULL)
    model = perturb(UNet.from_config(cfg))
    kw = make_inputs(cfg)
    ref = model(**kw)
    model = model.to(memory_format=torch.channels_last)
    cl = dict(kw, x=kw["x"].to(memory_format=torch.channels_last))
    torch.testing.assert_close(model(**cl), ref, atol=1e-5, rtol=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**cl)
        out.float().square().mean().backward()
    assert out.shape == ref.shape and torch.isfinite(out).all()
    assert (out.float() - ref).abs().max() < 0.05 * ref.abs().max() + 1e-3


def test_config_roundtrip_and_presets():
    cfg = UNetConfig.tiny(**FULL)
    d = cfg.to_dict()
    assert isinstance(d["channel_mult"], list)
    assert UNetConfig.from_dict(d) == cfg
    model = UNet.from_config(cfg)
    assert model.config == cfg and UNet(**d).config == cfg
    with pytest.raises(ValueError, match="unknown UNetConfig keys"):
        UNetConfig.from_dict({**d, "chanel_mult": [1]})


def test_default32_parameter_count():
    n = UNet.from_config(UNetConfig.default32()).num_parameters()
    assert 1_000_000 <= n <= 3_000_000, n


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"attention_resolutions": (16,)}, r"attention_resolutions \[16\] are not feature-map sizes"),
        ({"num_heads": 3}, "num_heads=3 must divide every attention width"),
        ({"image_size": 10, "channel_mult": (1, 2, 2)}, "image_size=10 must be divisible by"),
        ({"channel_mult": ()}, "channel_mult must be a non-empty"),
        ({"dropout": 1.0}, "dropout must be in"),
        ({"cond_dim": 0}, "cond_dim must be None or >= 1"),
        ({"patch_size": 0}, "patch_size must be >= 1"),
        ({"patch_size": 3}, r"image_size=8 must be divisible by patch_size \* 2\*\*\(len\(channel_mult\)-1\) = 6"),
        # sizes count positions of the folded grid, not pixels
        ({"patch_size": 2, "attention_resolutions": (8,)}, r"\[8\] are not feature-map sizes.*they are \(4, 2\)"),
    ],
)
def test_bad_config_errors(overrides, match):
    with pytest.raises(ValueError, match=match):
        UNetConfig.tiny(**overrides)


@pytest.mark.parametrize(
    "overrides, change, match",
    [
        ({}, {"x": torch.randn(2, 4, 8, 8)}, "x has 4 channels but this UNet has in_channels=3"),
        ({"low_res_channels": 3}, {"x": torch.randn(2, 6, 8, 8)}, "pass the low-resolution image as low_res"),
        ({}, {"x": torch.randn(3, 8, 8)}, r"x must have shape \(B, 3, H, W\)"),
        ({}, {"x": torch.randn(2, 3, 9, 8)}, "spatial size 9x8 must be divisible by"),
        ({"patch_size": 2, "attention_resolutions": (2,)}, {"x": torch.randn(2, 3, 6, 6)}, "6x6 must be divisible by"),
        ({}, {"t": torch.tensor([1, 2, 3])}, r"t must have shape \(B,\) = \(2,\)"),
        ({}, {"t": torch.zeros(2, 1)}, r"t must have shape \(B,\)"),
        ({}, {"cond": torch.randn(2, 5)}, "cond was given but this UNet was built without cond_dim"),
        ({"cond_dim": 5}, {"cond": None}, r"built with cond_dim=5; pass cond of shape \(B, 5\)"),
        ({"cond_dim": 5}, {"cond": torch.randn(2, 4)}, r"cond must have shape \(B, cond_dim\) = \(2, 5\)"),
        ({"cond_dim": 5}, {"cond": torch.randn(3, 5)}, "cond must have shape"),
        ({}, {"context": torch.randn(2, 3, 6)}, "context was given but this UNet was built without context_dim"),
        ({"context_dim": 6}, {"context": None}, "built with context_dim=6; pass context"),
        ({"context_dim": 6}, {"context": torch.randn(2, 3, 5)}, r"context must have shape \(B, L, context_dim\)"),
        ({"context_dim": 6}, {"context": torch.randn(2, 6)}, "context must have shape"),
        ({"context_dim": 6}, {"context_mask": torch.ones(2, 4, dtype=torch.bool)}, r"context_mask must have shape"),
        ({}, {"context_mask": torch.ones(2, 3, dtype=torch.bool)}, "context_mask was given without context"),
        (
            {},
            {"low_res": torch.randn(2, 3, 4, 4)},
            "low_res was given but this UNet was built without low_res_channels",
        ),
        ({"low_res_channels": 3}, {"low_res": None}, "built with low_res_channels=3; pass low_res"),
        ({"low_res_channels": 3}, {"low_res": torch.randn(2, 1, 4, 4)}, r"low_res must have shape"),
    ],
)
def test_bad_input_errors(overrides, change, match):
    cfg = UNetConfig.tiny(**overrides)
    kw = {**make_inputs(cfg), **change}
    with pytest.raises(ValueError, match=match):
        UNet.from_config(cfg)(**kw)


def test_overfits_one_batch():
    torch.manual_seed(0)
    cfg = UNetConfig.tiny(cond_dim=4)
    model = UNet.from_config(cfg)
    kw = make_inputs(cfg, batch=4, seed=1)
    target = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(100):
        loss = (model(**kw) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 10, (losses[0], losses[-1])


def test_attention_helper_matches_the_softmax_formula_in_fp32_and_bf16():
    from dalle2_edu.nets.layers import attention

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 8, generator=g), torch.randn(2, 3, 7, 8, generator=g),
               torch.randn(2, 3, 7, 8, generator=g))  # fmt: skip
    mask = torch.ones(2, 1, 1, 7, dtype=torch.bool)
    mask[0, ..., :2] = False  # the first example may not read its first two keys
    scores = (q @ k.transpose(-1, -2)) / 8**0.5
    expected = scores.masked_fill(~mask, float("-inf")).softmax(-1) @ v
    torch.testing.assert_close(attention(q, k, v, mask), expected, atol=1e-5, rtol=1e-5)
    # bf16 inputs on the CPU: computed in fp32 inside (even under autocast), returned in bf16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), mask)
    assert out.dtype == torch.bfloat16
    exact_on_rounded = (q.bfloat16().float() @ k.bfloat16().float().transpose(-1, -2) / 8**0.5).masked_fill(
        ~mask, float("-inf")).softmax(-1) @ v.bfloat16().float()  # fmt: skip
    torch.testing.assert_close(out.float(), exact_on_rounded, atol=1e-5, rtol=2**-8)  # only the final rounding
    # a masked key cannot change the output
    v2 = v.clone()
    v2[0, :, :2] += 100.0
    torch.testing.assert_close(attention(q, k, v2, mask)[0], expected[0], atol=1e-5, rtol=1e-5)
