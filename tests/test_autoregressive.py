import math

import pytest
import torch
import torch.nn.functional as F

from dalle2_edu.checkpoint import load_any
from dalle2_edu.stages.autoregressive import (
    AutoregressiveConfig,
    AutoregressiveTransformer,
    autoregressive_loss_fn,
    bits_per_dim_bound,
    generate,
    load_autoregressive,
    save_autoregressive,
    train_autoregressive,
)
from dalle2_edu.stages.clip import PAD_ID
from dalle2_edu.stages.vqvae import VQVAE, VQVAEConfig

CAPTIONS = ["a red striped mug on white", "a blue cap with dots, plain background", "a green lamp on light grey"]
K = 16


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def config() -> AutoregressiveConfig:
    return AutoregressiveConfig.from_captions(CAPTIONS, context_length=12, codebook_size=K, width=32, num_layers=2,
                                              num_heads=2)  # fmt: skip


@pytest.fixture
def model(config) -> AutoregressiveTransformer:
    torch.manual_seed(0)
    m = AutoregressiveTransformer(config).eval()
    with torch.no_grad():  # a little structure, so that logits depend visibly on every input
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return m


def random_tokens(B, n=64, seed=0):
    return torch.randint(0, K, (B, n), generator=torch.Generator().manual_seed(seed))


def test_shapes_and_block_size(model, config):
    assert config.block_size == 12 + 64 - 1
    same = AutoregressiveConfig.from_tokenizer(model.tokenizer, codebook_size=K, width=32, num_layers=2, num_heads=2)
    assert same == config
    cap = model.tokenize(CAPTIONS[:2])
    assert cap.shape == (2, 12) and cap.dtype == torch.long
    assert model(cap, random_tokens(2, 10)).shape == (2, 11, K)
    assert model(CAPTIONS[:2], torch.zeros(2, 0, dtype=torch.long)).shape == (2, 1, K)
    assert model(cap, random_tokens(2, 63)).shape == (2, 64, K)


def test_causal_mask(model):
    cap = model.tokenize(CAPTIONS[:2])
    z = random_tokens(2, 40)
    j = 17
    changed = z.clone()
    changed[:, j] = (changed[:, j] + 1) % K
    a, b = model(cap, z), model(cap, changed)
    # logits[:, i] predicts token i from tokens < i: positions 0..j do not see token j, later ones do
    assert torch.allclose(a[:, : j + 1], b[:, : j + 1], atol=1e-6)
    assert not torch.allclose(a[:, j + 1 :], b[:, j + 1 :], atol=1e-4)
    other = model.tokenize(CAPTIONS[1:3])  # the caption comes first, so every image position sees it
    assert not torch.allclose(model(other, z)[:, 0], a[:, 0], atol=1e-4)


def test_token_nll_is_the_hand_sum_of_log_softmax(model):
    z = random_tokens(2)
    nll = model.token_nll(CAPTIONS[:2], z.view(2, 8, 8))
    cap = model.tokenize(CAPTIONS[:2])
    by_hand = torch.zeros(2)
    for i in range(64):
        logits = model(cap, z[:, :i])[:, -1]  # the next-token distribution after i tokens
        by_hand -= F.log_softmax(logits, dim=-1).gather(1, z[:, i : i + 1]).squeeze(1)
    assert nll.shape == (2,) and torch.allclose(nll, by_hand, rtol=1e-4)


def test_sampling_is_reproducible_and_depends_on_the_seed(model):
    a = model.sample(CAPTIONS[:2], seed=3)
    assert a.shape == (2, 8, 8) and a.dtype == torch.long and 0 <= a.min() and a.max() < K
    assert torch.equal(a, model.sample(CAPTIONS[:2], seed=3))
    assert not torch.equal(a, model.sample(CAPTIONS[:2], seed=4))
    gen = torch.Generator().manual_seed(3)
    assert torch.equal(a, model.sample(CAPTIONS[:2], generator=gen))


def test_top_k_one_is_greedy_decoding(model):
    cap = model.tokenize(CAPTIONS[:2])
    z = torch.zeros(2, 0, dtype=torch.long)
    for _ in range(64):
        z = torch.cat([z, model(cap, z)[:, -1].argmax(-1, keepdim=True)], dim=1)
    for seed in (0, 1):
        assert torch.equal(model.sample(CAPTIONS[:2], top_k=1, seed=seed, temperature=0.7).flatten(1), z)


def test_top_k_keeps_only_the_k_most_likely_codes(model):
    cap = model.tokenize(CAPTIONS[:1])
    first = model(cap, torch.zeros(1, 0, dtype=torch.long))[0, -1]
    allowed = set(first.topk(3).indices.tolist())
    draws = {int(model.sample(CAPTIONS[:1], top_k=3, seed=s, temperature=5.0)[0, 0, 0]) for s in range(12)}
    assert draws <= allowed


def test_guidance_mixes_conditional_and_null_logits(model):
    cap = model.tokenize(CAPTIONS[:2])
    z = random_tokens(2, 5)
    cond = model(cap, z)[:, -1]
    null = model(model.null_captions(2), z)[:, -1]
    assert (model.null_captions(2) == PAD_ID).all()
    assert torch.allclose(model.next_logits(cap, z, guidance_scale=1.0), cond, atol=1e-6)
    assert torch.allclose(model.next_logits(cap, z, guidance_scale=0.0), null, atol=1e-5)
    assert torch.allclose(model.next_logits(cap, z, guidance_scale=3.0), null + 3.0 * (cond - null), atol=1e-4)
    assert model.sample(CAPTIONS[:2], guidance_scale=3.0, seed=0).shape == (2, 8, 8)


def test_bits_per_dim_bound_is_the_hand_sum(model):
    vq = VQVAE(VQVAEConfig(channels=8, codebook_size=K, code_dim=4)).eval()
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    out = bits_per_dim_bound(model, vq, CAPTIONS[:2], images)
    tokens = vq.encode_tokens(images)
    token_nll, decoder_nll = model.token_nll(CAPTIONS[:2], tokens), vq.decoder_nll(images, tokens)
    assert torch.allclose(out["token_nll"], token_nll) and torch.allclose(out["decoder_nll"], decoder_nll)
    by_hand = (token_nll + decoder_nll) / (3 * 32 * 32 * math.log(2))
    assert torch.allclose(out["bits_per_dim"], by_hand) and (out["bits_per_dim"] >= 0).all()
    pics = generate(model, vq, CAPTIONS[:2], seed=0, top_k=4)
    assert pics.shape == (2, 3, 32, 32) and pics.abs().max() <= 1
    with pytest.raises(ValueError, match="VQ-VAE it was trained on"):
        generate(model, VQVAE(VQVAEConfig(channels=8, codebook_size=8, code_dim=4)), CAPTIONS[:1])


def test_bad_input_names_the_fix(model):
    with pytest.raises(ValueError, match="unknown prompt word"):
        model.sample(["a purple submarine"])
    with pytest.raises(ValueError, match="unknown prompt word"):
        model.token_nll(["a red submarine"], random_tokens(1))
    with pytest.raises(ValueError, match="at most 12 tokens"):
        model.tokenize(["a red striped mug on white, a blue cap with dots, plain background"])
    with pytest.raises(ValueError, match="longer than this model reads"):
        model(CAPTIONS[:1], random_tokens(1, 64))  # 12 + 64 positions: one more than the block size
    with pytest.raises(ValueError, match="longer than this model reads"):
        model.token_nll(CAPTIONS[:1], random_tokens(1, 65))
    with pytest.raises(ValueError, match="whole grid"):
        model.token_nll(CAPTIONS[:1], random_tokens(1, 30))
    for t in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="temperature must be a number > 0"):
            model.sample(CAPTIONS[:1], temperature=t)
    for k in (0, -3):
        with pytest.raises(ValueError, match="top_k must be None"):
            model.sample(CAPTIONS[:1], top_k=k)
    with pytest.raises(ValueError, match=r"lie in \[0, 16\)"):
        model(CAPTIONS[:1], torch.full((1, 3), K))
    with pytest.raises(ValueError, match="trained on 12"):
        model(torch.zeros(1, 10, dtype=torch.long), random_tokens(1, 3))
    with pytest.raises(ValueError, match="from_captions"):
        AutoregressiveTransformer(AutoregressiveConfig())


def test_loss_drops_the_caption_and_training_overfits(config):
    cap_model = AutoregressiveTransformer(config)
    captions = cap_model.tokenize(CAPTIONS)
    tokens = random_tokens(3).view(3, 8, 8)
    loss_fn = autoregressive_loss_fn(caption_drop=0.0)
    out = loss_fn(cap_model, (captions, tokens))
    assert out["loss"].item() == pytest.approx(math.log(K), rel=0.05)  # a fresh model: nearly uniform over K codes
    assert torch.isfinite(out["loss"]) and out["loss"].requires_grad
    dropped = autoregressive_loss_fn(caption_drop=0.999)(cap_model, (captions, tokens))["loss"]  # all rows dropped
    null = F.cross_entropy(cap_model(cap_model.null_captions(3), tokens.flatten(1)[:, :-1]).transpose(1, 2),
                           tokens.flatten(1))  # fmt: skip
    assert dropped.item() == pytest.approx(null.item(), rel=1e-5)

    trainer = train_autoregressive(CAPTIONS, tokens, config, steps=40, batch_size=3, lr=3e-3, progress=False,
                                   log_every=10, device="cpu", warmup_steps=2)  # fmt: skip
    losses = trainer.history["loss"]
    assert losses[-1] < 0.5 * losses[0], losses


def test_config_round_trip_and_checkpoint(model, tmp_path):
    cfg = model.config
    assert AutoregressiveConfig.from_dict(cfg.to_dict()) == cfg
    path = save_autoregressive(model, tmp_path / "ar.safetensors", half=False)
    back = load_autoregressive(path)
    z = random_tokens(2)
    assert torch.allclose(back.token_nll(CAPTIONS[:2], z), model.token_nll(CAPTIONS[:2], z))
    assert back.config.vocab == cfg.vocab
    kind, loaded = load_any(path)
    assert kind == "autoregressive" and isinstance(loaded, AutoregressiveTransformer)
