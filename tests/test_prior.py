"""The diffusion prior: transformer masks, null conditioning, guidance, best-of-n, seeds, training, files, bad input."""

import math

import pytest
import torch
import torch.nn.functional as F

from dalle2_edu.checkpoint import save_weights
from dalle2_edu.diffusion.schedules import space_timesteps
from dalle2_edu.nets.prior_transformer import PriorTransformer, PriorTransformerConfig, prior_attention_mask
from dalle2_edu.stages.prior import (
    DiffusionPrior,
    PriorConfig,
    attribute_agreement,
    best_of_n,
    cosine_similarity_report,
    load_prior,
    mean_pairwise_cosine,
    prior_loss_fn,
    same_label_cosine,
    sample_prior,
    save_prior,
    to_sphere,
    train_prior,
)

D, W, L = 8, 6, 5  # embedding size, token width, caption tokens


def tiny_net(**kw) -> PriorTransformer:
    cfg = PriorTransformerConfig(embed_dim=D, token_dim=W, max_text_tokens=8, width=16, num_layers=2, num_heads=2, **kw)
    return PriorTransformer(cfg).eval()


def tiny_prior(token_dim=W, T=20) -> DiffusionPrior:
    cfg = PriorConfig(
        embed_dim=D, token_dim=token_dim, diffusion={"num_timesteps": T},
        transformer=dict(width=16, num_layers=2, num_heads=2, max_text_tokens=8),
    )  # fmt: skip
    prior = DiffusionPrior(cfg).eval()
    with torch.no_grad():  # a non-zero null embedding, as after training
        prior.null_text_emb.normal_()
    return prior


def inputs(B=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, D, generator=g)
    t = torch.randint(0, 20, (B,), generator=g)
    text = torch.randn(B, D, generator=g)
    tokens = torch.randn(B, L, W, generator=g)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[0, 3:] = False  # row 0: 3 real tokens, then padding
    mask[1, 1] = False  # row 1: padding in the middle
    return x, t, text, tokens, mask


# ------------------------------------------------------------------------------------------------ the transformer
def test_transformer_shapes_and_config_round_trip():
    net = tiny_net()
    x, t, text, tokens, mask = inputs()
    assert net(x, t, text, tokens, mask).shape == (3, D)
    assert net(x, t, text).shape == (3, D)  # no caption tokens at all
    assert net.hidden_states(x, t, text, tokens, mask).shape == (3, L + 4, 16)
    cfg = net.config
    assert PriorTransformerConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown PriorTransformerConfig keys"):
        PriorTransformerConfig.from_dict({**cfg.to_dict(), "widht": 3})
    with pytest.raises(ValueError, match="must divide width"):
        PriorTransformerConfig(width=10, num_heads=4)


def test_attention_mask_is_causal_and_hides_padding_keys_but_never_empties_a_row():
    valid = torch.tensor([[False, True, True, False, True]])
    m = prior_attention_mask(valid)[0, 0]
    for i in range(5):
        for j in range(5):
            assert m[i, j] == ((j <= i and bool(valid[0, j])) or i == j)


def test_padded_tokens_change_nothing_and_real_tokens_do():
    net = tiny_net()
    x, t, text, tokens, mask = inputs()
    out = net(x, t, text, tokens, mask)
    edited = tokens.clone()
    edited[0, 3:] = float("nan")  # even NaN features at padding positions cannot leak
    edited[1, 1] = 1e4
    assert torch.equal(net(x, t, text, edited, mask), out)
    edited[2, 4] += 1.0  # a real token of row 2
    new = net(x, t, text, edited, mask)
    assert torch.equal(new[:2], out[:2]) and not torch.allclose(new[2], out[2])
    # dropping padding entirely gives the same answer as masking it (up to float rounding)
    short = net(x[:1], t[:1], text[:1], tokens[:1, :3], mask[:1, :3])
    assert torch.allclose(short, out[:1], atol=1e-5)


def test_later_positions_do_not_change_earlier_outputs():
    net = tiny_net()
    x, t, text, tokens, mask = inputs()
    h = net.hidden_states(x, t, text, tokens, mask)
    h2 = net.hidden_states(x + 1.0, t, text, tokens, mask)  # x_t sits at position L + 2
    assert torch.equal(h2[:, : L + 2], h[:, : L + 2])
    assert not torch.allclose(h2[:, L + 2 :], h[:, L + 2 :])
    h3 = net.hidden_states(x, (t + 7) % 20, text, tokens, mask)  # the timestep sits at position L + 1
    assert torch.equal(h3[:, : L + 1], h[:, : L + 1]) and not torch.allclose(h3[:, -1], h[:, -1])


def test_transformer_rejects_bad_shapes():
    net = tiny_net()
    x, t, text, tokens, mask = inputs()
    with pytest.raises(ValueError, match=r"x_t must have shape \(B, 8\)"):
        net(x[:, :5], t, text)
    with pytest.raises(ValueError, match="text_emb must have shape"):
        net(x, t, text[:2])
    with pytest.raises(ValueError, match=r"text_tokens must have shape \(3, L, 6\)"):
        net(x, t, text, tokens[..., :4])
    with pytest.raises(ValueError, match=r"text_mask must have shape \(3, 5\)"):
        net(x, t, text, tokens, mask[:, :4])
    with pytest.raises(ValueError, match="without text_tokens"):
        net(x, t, text, None, mask)
    with pytest.raises(ValueError, match="exceed max_text_tokens=8"):
        net(x, t, text, torch.randn(3, 9, W))


# ------------------------------------------------------------------------------------------------ conditioning
def test_dropped_rows_ignore_the_text_and_other_rows_do_not():
    prior = tiny_prior()
    x, t, text, tokens, mask = inputs()
    drop = torch.tensor([True, False, True])
    out = prior(x, t, text, tokens, mask, drop_text=drop)
    other_text, other_tokens = torch.randn(3, D), torch.randn(3, L, W)
    other = prior(x, t, other_text, other_tokens, torch.ones(3, L, dtype=torch.bool), drop_text=drop)
    assert torch.equal(out[drop], other[drop])
    assert not torch.allclose(out[1], other[1])
    # a dropped row is exactly the network fed the null embedding and no caption tokens
    null = prior.null_text_emb.expand(3, D)
    assert torch.allclose(out[drop], prior.net(x, t, null)[drop], atol=1e-5)
    assert torch.equal(prior(x, t, text, tokens, mask), prior(x, t, text, tokens, mask, drop_text=torch.zeros(3) > 0))
    with pytest.raises(ValueError, match=r"drop_text must have shape \(3,\)"):
        prior(x, t, text, tokens, mask, drop_text=torch.zeros(2, dtype=torch.bool))


def test_loss_fn_takes_dicts_and_tuples_and_drops_text_at_the_asked_rate():
    prior, B = tiny_prior(), 64
    gd = prior.config.diffusion.build()
    x0 = to_sphere(torch.randn(B, D), math.sqrt(D))
    text, tokens, mask = torch.randn(B, D), torch.randn(B, L, W), torch.ones(B, L, dtype=torch.bool)
    fn = prior_loss_fn(gd, 0.1)
    torch.manual_seed(1)
    a = fn(prior, (x0, text, tokens, mask))
    torch.manual_seed(1)
    b = fn(prior, {"image_emb": x0, "text_emb": text, "text_tokens": tokens, "text_mask": mask})
    assert a["loss"].ndim == 0 and torch.equal(a["loss"], b["loss"]) and torch.equal(a["loss"], a["mse"])
    seen = []
    spy = lambda x_t, t, **kw: seen.append(kw["drop_text"]) or prior(x_t, t, **kw)
    for _ in range(10):
        prior_loss_fn(gd, 0.25)(spy, (x0, text))  # a batch without tokens works too
    assert abs(torch.cat(seen).float().mean().item() - 0.25) < 0.05
    with pytest.raises(ValueError, match="cond_drop"):
        prior_loss_fn(gd, 1.0)
    with pytest.raises(KeyError, match="image_emb and text_emb"):
        fn(prior, {"image": x0})


# ------------------------------------------------------------------------------------------------ sampling
def manual_ddim(prior, text, tokens, mask, drop, steps, seed):
    """The sampler written out by hand: DDIM (η = 0) from the same seeded noise, then onto the sphere."""
    gd = prior.config.diffusion.build().respace(space_timesteps(prior.config.diffusion.num_timesteps, [steps]))
    drop_text = torch.full((text.shape[0],), drop)
    model = lambda x, t: prior(x, t, text, tokens, mask, drop_text=drop_text)
    out = gd.ddim_sample_loop(model, (text.shape[0], D), generator=torch.Generator().manual_seed(seed),
                              clip_denoised=False)  # fmt: skip
    return to_sphere(out, math.sqrt(D))


def test_guidance_scale_0_is_unconditional_1_is_conditional_and_s_extrapolates():
    prior = tiny_prior()
    gd = prior.config.diffusion.build()
    _, _, text, tokens, mask = inputs()
    kw = dict(n_candidates=1, steps=5, seed=3)
    uncond = sample_prior(prior, gd, text, tokens, mask, guidance_scale=0.0, **kw)
    assert torch.allclose(uncond, manual_ddim(prior, text, tokens, mask, True, 5, 3), atol=1e-5)
    assert torch.allclose(uncond, sample_prior(prior, gd, -text, tokens.flip(1), None, guidance_scale=0.0, **kw))
    cond = sample_prior(prior, gd, text, tokens, mask, guidance_scale=1.0, **kw)
    assert torch.allclose(cond, manual_ddim(prior, text, tokens, mask, False, 5, 3), atol=1e-5)
    assert not torch.allclose(cond, uncond, atol=1e-3)
    # one step (t = 0): the sample is the guided x̂_0 itself, x̂_0(∅) + s (x̂_0(c) - x̂_0(∅)), put on the sphere
    x_T = torch.randn(3, D, generator=torch.Generator().manual_seed(3))
    t0 = torch.zeros(3, dtype=torch.long)
    c = prior(x_T, t0, text, tokens, mask)
    u = prior(x_T, t0, text, tokens, mask, drop_text=torch.ones(3, dtype=torch.bool))
    one = sample_prior(prior, gd, text, tokens, mask, n_candidates=1, steps=1, guidance_scale=2.5, seed=3)
    assert torch.allclose(one, to_sphere(u + 2.5 * (c - u), math.sqrt(D)), atol=1e-5)


def test_best_of_n_keeps_the_candidate_closest_to_the_text():
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    cands = torch.tensor([[[0.0, 1.0], [2.0, 0.1], [1.0, 1.0]], [[5.0, 5.0], [-1.0, 0.0], [0.1, -3.0]]])
    best, index = best_of_n(cands, text)
    assert index.tolist() == [1, 0] and torch.equal(best, torch.stack([cands[0, 1], cands[1, 0]]))
    # inside the sampler: each row's pick is the candidate with the largest cosine to its own text
    prior = tiny_prior()
    _, _, text, tokens, mask = inputs()
    out, cands = sample_prior(prior, prior.config.diffusion.build(), text, tokens, mask, n_candidates=4, steps=4,
                              return_candidates=True)  # fmt: skip
    assert cands.shape == (3, 4, D)
    cos = F.cosine_similarity(cands, text[:, None], dim=-1)
    assert torch.equal(out, cands[torch.arange(3), cos.argmax(1)])
    assert (cos.max(1).values > cos.min(1).values).all()  # the candidates really differ
    assert torch.allclose(out.norm(dim=-1), torch.full((3,), math.sqrt(D)))  # at the √d scale
    with pytest.raises(ValueError, match=r"candidates must have shape \(B, n, d\)"):
        best_of_n(cands[0], text)


def test_sampling_is_seeded():
    prior = tiny_prior()
    gd = prior.config.diffusion.build()
    _, _, text, tokens, mask = inputs()
    kw = dict(steps=6, guidance_scale=2.0, eta=1.0)
    a = sample_prior(prior, gd, text, tokens, mask, seed=1, **kw)
    assert torch.equal(a, sample_prior(prior, gd, text, tokens, mask, seed=1, **kw))
    assert not torch.allclose(a, sample_prior(prior, gd, text, tokens, mask, seed=2, **kw))
    single = sample_prior(prior, gd, text[0], tokens[0], mask[0], seed=1, **kw)  # one caption, unbatched
    assert single.shape == (1, D)


def test_sampler_rejects_bad_input():
    prior = tiny_prior()
    gd = prior.config.diffusion.build()
    _, _, text, tokens, mask = inputs()
    with pytest.raises(ValueError, match="n_candidates must be an integer >= 1"):
        sample_prior(prior, gd, text, n_candidates=0)
    with pytest.raises(ValueError, match=r"text_emb must have shape \(B, 8\)"):
        sample_prior(prior, gd, torch.randn(3, 7), steps=4)
    with pytest.raises(ValueError, match=r"text_mask must have shape \(3, 5\)"):
        sample_prior(prior, gd, text, tokens, mask[:, :2], steps=4)
    with pytest.raises(ValueError, match=r"steps must be a whole number in \[1, 20\]"):
        sample_prior(prior, gd, text, steps=50)
    with pytest.raises(ValueError, match="reads no caption tokens"):
        sample_prior(tiny_prior(token_dim=None), gd, text, tokens, steps=4)


def test_cosine_report_against_closed_forms():
    true = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    pred = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    text = torch.tensor([[0.0, 1.0], [0.0, -1.0]])
    r = cosine_similarity_report(pred, true, text)
    assert r["n"] == 2
    assert r["cos_prior"] == pytest.approx((1 / math.sqrt(2) + 1) / 2)
    assert r["cos_text_baseline"] == pytest.approx(-0.5)
    assert r["gain"] == pytest.approx(r["cos_prior"] - r["cos_text_baseline"])
    assert "cos_mean_image_baseline" not in r
    r = cosine_similarity_report(pred, true, text, mean_image_emb=torch.tensor([1.0, 1.0]))
    assert r["cos_mean_image_baseline"] == pytest.approx(1 / math.sqrt(2))
    with pytest.raises(ValueError, match="same shape"):
        cosine_similarity_report(pred, true[:1], text)


def test_spread_measures_against_closed_forms():
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    samples = torch.stack([torch.stack([e1, e1, e1]), torch.stack([e1, e2, -e1])])  # (2, 3, 2)
    assert mean_pairwise_cosine(samples) == pytest.approx((1.0 + (0 - 1 + 0) / 3) / 2)
    with pytest.raises(ValueError, match="n >= 2"):
        mean_pairwise_cosine(samples[:, :1])
    emb = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [5.0, 5.0]])
    labels = torch.tensor([[0, 0], [1, 1], [0, 0], [2, 2]])
    assert same_label_cosine(emb, labels) == (pytest.approx(0.0), 2)  # rows 0 and 2 pair up; 1 and 3 have no twin
    assert same_label_cosine(emb, torch.arange(4)[:, None])[1] == 0


def test_attribute_agreement_reads_the_nearest_class():
    weights = {"colour": torch.eye(3), "pattern": torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])}
    emb = torch.tensor([[2.0, 0.1, 0.0], [0.0, 0.0, 5.0], [0.1, 1.0, 0.0], [1.0, 0.9, 0.0]])
    labels = torch.tensor([[0, 0, 0, 0], [0, 2, 1, 0], [0, 1, 1, 0], [0, 2, 0, 0]])
    r = attribute_agreement(emb, labels, weights)
    assert r["colour"] == pytest.approx(0.75) and r["pattern"] == pytest.approx(0.75) and r["mean"] == 0.75
    with pytest.raises(ValueError, match="unknown attribute 'shape'"):
        attribute_agreement(emb, labels, {"shape": torch.eye(3)})


# ------------------------------------------------------------------------------------------------ training and files
def synthetic_pairs(n, seed, noise=0.1):
    """Text embeddings on the √d sphere; image embedding = a fixed rotation of the text's, plus a little noise."""
    g = torch.Generator().manual_seed(seed)
    rotation = torch.linalg.qr(torch.randn(D, D, generator=torch.Generator().manual_seed(123)))[0]
    text = to_sphere(torch.randn(n, D, generator=g), math.sqrt(D))
    image = to_sphere(text @ rotation.T + noise * torch.randn(n, D, generator=g), math.sqrt(D))
    return text, image


def test_a_tiny_prior_learns_a_synthetic_text_to_image_map():
    torch.set_num_threads(1)
    text, image = synthetic_pairs(512, seed=0)
    cfg = PriorConfig(embed_dim=D, token_dim=None, diffusion={"num_timesteps": 50},
                      transformer=dict(width=32, num_layers=2, num_heads=2, max_text_tokens=8))  # fmt: skip
    trainer, gd = train_prior({"image_emb": image, "text_emb": text}, cfg, steps=250, batch_size=64, lr=3e-3,
                              progress=False, ema_decay=0.99)  # fmt: skip
    test_text, test_image = synthetic_pairs(64, seed=1, noise=0.0)
    sampled = sample_prior(trainer.ema_model, gd, test_text, steps=20)
    r = cosine_similarity_report(sampled, test_image, test_text)
    assert r["cos_prior"] > 0.9, r
    assert r["cos_text_baseline"] < 0.5  # the text embedding alone is no answer: the prior had to learn the map
    assert trainer.history["loss"][-1] < 0.5 * trainer.history["loss"][0]


def test_train_prior_reads_d_and_w_from_the_data_and_checks_them():
    image, text = to_sphere(torch.randn(16, D), math.sqrt(D)), torch.randn(16, D)
    emb = {"image_emb": image, "text_emb": text, "text_tokens": torch.randn(16, L, W)}
    small = dict(width=16, num_layers=1, num_heads=2, max_text_tokens=8)
    cfg = PriorConfig(embed_dim=D, token_dim=W, transformer=small, diffusion={"num_timesteps": 10})
    trainer, _ = train_prior(emb, cfg, steps=2, batch_size=4, progress=False)  # fmt: skip
    assert trainer.ema_model.config.token_dim == W and trainer.step == 2
    mask = torch.ones(16, L, dtype=torch.bool)
    mask[:, 3:] = False  # the last two columns are padding in every row: trimmed before training
    trainer, _ = train_prior({**emb, "text_mask": mask}, PriorConfig(embed_dim=D, token_dim=W, transformer=small),
                             steps=1, batch_size=4, progress=False)  # fmt: skip
    assert trainer.data[2].shape == (16, 3, W) and trainer.data[3].shape == (16, 3)
    with pytest.raises(ValueError, match="config.token_dim=4"):
        train_prior(emb, PriorConfig(embed_dim=D, token_dim=4, transformer=small), steps=1, progress=False)
    with pytest.raises(ValueError, match="config.embed_dim=5"):
        train_prior(emb, PriorConfig(embed_dim=5, token_dim=W, transformer=small), steps=1, progress=False)
    with pytest.raises(ValueError, match=r"text_mask must have shape \(16, 5\)"):
        train_prior({**emb, "text_mask": torch.ones(16, 4, dtype=torch.bool)}, steps=1, progress=False)
    with pytest.raises(ValueError, match="set \\['embed_dim'\\] on PriorConfig itself"):
        PriorConfig(transformer={**small, "embed_dim": 3})


def test_save_load_round_trip_and_clear_errors(tmp_path):
    prior = tiny_prior()
    path = save_prior(prior, tmp_path / "prior.safetensors", metrics={"cos_prior": 0.5}, half=False)
    loaded, gd = load_prior(path)
    x, t, text, tokens, mask = inputs()
    assert torch.equal(loaded(x, t, text, tokens, mask), prior(x, t, text, tokens, mask))
    assert loaded.config == prior.config and gd.mean_type == "x0" and gd.data_type == "continuous"
    assert '"cos_prior": 0.5' in path.with_suffix(".json").read_text()
    half, _ = load_prior(save_prior(prior, tmp_path / "half.safetensors"))  # fp16 on disk
    a = sample_prior(prior, gd, text, tokens, mask, steps=4)
    b = sample_prior(half, gd, text, tokens, mask, steps=4)
    assert F.cosine_similarity(a, b, dim=-1).min() > 0.99
    with pytest.raises(FileNotFoundError, match="python -m dalle2_edu train prior"):
        load_prior(tmp_path / "missing.safetensors")
    save_weights(tmp_path / "other.safetensors", {"w": torch.zeros(2)}, {"image_model": {}})
    with pytest.raises(ValueError, match="no prior config"):
        load_prior(tmp_path / "other.safetensors")
    save_weights(tmp_path / "bad.safetensors", {"w": torch.zeros(2)}, {"prior": prior.config.to_dict()})
    with pytest.raises(ValueError, match="do not fit the prior config"):
        load_prior(tmp_path / "bad.safetensors")
