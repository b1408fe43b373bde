import math

import pytest
import torch

from dalle2_edu.checkpoint import load_any
from dalle2_edu.diffusion.losses import discretized_gaussian_log_likelihood
from dalle2_edu.images import to_float
from dalle2_edu.stages.vqvae import (
    VQVAE,
    VQVAEConfig,
    encode_tokens,
    evaluate_vqvae,
    load_vqvae,
    save_vqvae,
    train_vqvae,
)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(**changes) -> VQVAE:
    return VQVAE(VQVAEConfig(**{"channels": 8, "codebook_size": 16, "code_dim": 4, **changes}))


def pictures(n=4, seed=0) -> torch.Tensor:
    """uint8 (n, 3, 32, 32): a coloured square on a coloured background, different for each picture."""
    gen = torch.Generator().manual_seed(seed)
    out = torch.empty(n, 3, 32, 32, dtype=torch.uint8)
    for i in range(n):
        bg, fg = torch.randint(0, 256, (2, 3), generator=gen)
        a, b = torch.randint(2, 14, (2,), generator=gen).tolist()
        out[i] = bg[:, None, None]
        out[i, :, a : a + 16, b : b + 16] = fg[:, None, None]
    return out


def test_shapes_and_codes():
    vq = tiny().eval()
    x = pictures(3)
    z_e = vq.encode(x)
    assert z_e.shape == (3, 4, 8, 8)
    z_q, tokens, stats = vq.quantize(z_e)
    assert z_q.shape == (3, 4, 8, 8) and tokens.shape == (3, 8, 8) and tokens.dtype == torch.long
    assert torch.allclose(z_q, vq.codebook.weight[tokens].permute(0, 3, 1, 2), atol=1e-6)  # values are the codes
    assert torch.allclose(vq.tokens_to_latents(tokens), z_q, atol=1e-6)
    assert vq.decode(z_q).shape == (3, 3, 32, 32)
    pics = vq.decode_tokens(tokens.flatten(1))  # (B, 64) works too
    assert pics.shape == (3, 3, 32, 32) and pics.abs().max() <= 1
    assert set(stats) >= {"codebook_loss", "commitment_loss", "perplexity", "codes_used"}
    out = vq(x)
    assert out["recon"].shape == (3, 3, 32, 32) and out["tokens"].shape == (3, 8, 8)
    assert torch.isfinite(out["loss"]) and out["restarted"] == 0  # eval mode: no restarts


def test_quantisation_picks_the_nearest_code_like_brute_force():
    vq = tiny(codebook_size=32)
    z_e = torch.randn(5, 4, 8, 8)
    tokens = vq.nearest_codes(z_e)
    flat = z_e.permute(0, 2, 3, 1).reshape(-1, 4)  # (N, D)
    dist = torch.stack([((flat - e) ** 2).sum(1) for e in vq.codebook.weight.detach()], dim=1)  # (N, K), one by one
    assert torch.equal(tokens.flatten(), dist.argmin(1))


def test_straight_through_gradient_reaches_the_encoder():
    vq = tiny().eval()
    z_e = vq.encode(pictures(2))
    z_q, _, stats = vq.quantize(z_e)
    vq.decode(z_q, clamp=False).square().sum().backward()  # a loss of the decoder's output only
    enc_grad = vq.encoder.net[0].weight.grad
    assert enc_grad is not None and enc_grad.abs().sum() > 0
    assert vq.codebook.weight.grad is None  # the reconstruction does not pull the codes
    vq.zero_grad()
    stats["codebook_loss"].backward()  # the codebook loss moves the codes, not the encoder
    assert vq.codebook.weight.grad.abs().sum() > 0 and vq.encoder.net[0].weight.grad is None


def test_usage_perplexity():
    vq = tiny()
    assert vq.usage(torch.zeros(2, 8, 8, dtype=torch.long))["perplexity"].item() == pytest.approx(1.0)
    every = torch.arange(16).repeat(8).view(2, 8, 8)
    use = vq.usage(every)
    assert use["perplexity"].item() == pytest.approx(16.0, rel=1e-5) and use["codes_used"].item() == 16


def test_first_training_batch_places_every_code_on_encoder_outputs():
    vq = tiny().train()
    out = vq(pictures(4))
    assert out["restarted"] == 16
    assert int(vq.unused_steps.max()) <= 1


def test_dead_code_restart_revives_unused_codes():
    torch.manual_seed(0)
    vq = tiny(restart_window=3).train()
    x = pictures(4)
    vq(x)  # the first batch initialises the codebook
    dead = torch.tensor([0, 1, 2])
    with torch.no_grad():
        vq.codebook.weight[dead] = 100.0  # far from every encoder output: never chosen
    for _ in range(3):
        out = vq(x)
        assert not torch.isin(out["tokens"], dead).any()
    assert (vq.unused_steps[dead] >= 3).all()
    out = vq(x)  # now they have been unused for the window: restarted on encoder outputs, then chosen
    assert out["restarted"] >= 3
    z = out["z_e"].detach().permute(0, 2, 3, 1).reshape(-1, 4)
    for k in dead.tolist():
        # an encoder output exactly (a direct difference: cdist's matrix-product path rounds to ~1e-4 here)
        assert (z - vq.codebook.weight[k].detach()).norm(dim=1).min() < 1e-5
    assert torch.isin(vq.nearest_codes(out["z_e"]), dead).any()


def test_restarts_off_leave_dead_codes_alone():
    vq = tiny(restart_window=0).train()
    before = vq.codebook.weight.detach().clone()
    out = vq(pictures(2))
    assert out["restarted"] == 0 and torch.equal(vq.codebook.weight.detach(), before)


def test_tiny_vqvae_overfits_one_batch_with_the_trainer():
    x = pictures(4)
    trainer = train_vqvae(x, tiny().config, steps=60, batch_size=4, lr=3e-3, progress=False, log_every=10,
                          warmup_steps=5, ema_decay=0.9, device="cpu")  # fmt: skip
    mse = trainer.history["mse"]
    assert mse[-1] < mse[0] / 5, mse
    assert all(math.isfinite(v) for v in trainer.history["loss"])
    assert trainer.history["perplexity"][-1] > 1


def test_decoder_nll_is_the_sum_of_discretised_terms():
    vq = tiny().eval()
    x = pictures(2)
    tokens = vq.encode_tokens(x)
    nll = vq.decoder_nll(x, tokens)
    mean, log_scale = vq.decode_distribution(vq.tokens_to_latents(tokens))
    by_hand = -discretized_gaussian_log_likelihood(to_float(x), mean, log_scale).sum(dim=(1, 2, 3))
    assert nll.shape == (2,) and (nll >= 0).all()
    assert torch.allclose(nll, by_hand.detach(), rtol=1e-5)
    assert torch.allclose(vq.decoder_nll(x), nll)  # default: the picture's own codes


def test_bad_inputs_name_the_fix():
    vq = tiny()
    with pytest.raises(ValueError, match="32x32"):
        vq.encode(torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match=r"lie in \[0, 16\)"):
        vq.decode_tokens(torch.full((1, 8, 8), 16))
    with pytest.raises(ValueError, match=r"\(B, 8, 8\)"):
        vq.decode_tokens(torch.zeros(1, 7, 7, dtype=torch.long))
    with pytest.raises(ValueError, match="code_dim"):
        vq.quantize(torch.zeros(1, 5, 8, 8))
    with pytest.raises(ValueError, match="divisible"):
        VQVAEConfig(image_size=30)
    with pytest.raises(ValueError, match="restart_window"):
        VQVAEConfig(restart_window=-1)


def test_config_round_trip_and_checkpoint(tmp_path):
    vq = tiny()
    vq.train()(pictures(2))  # restarted codebook, counters moved
    cfg = vq.config
    assert VQVAEConfig.from_dict(cfg.to_dict()) == cfg
    path = save_vqvae(vq, tmp_path / "vq.safetensors", metrics={"mse": 0.1})
    back = load_vqvae(path)
    assert not back.training
    for name, value in vq.state_dict().items():
        assert torch.equal(back.state_dict()[name], value), name
    x = pictures(3, seed=1)
    assert torch.equal(back.encode_tokens(x), vq.eval().encode_tokens(x))
    kind, model = load_any(path)
    assert kind == "vqvae" and isinstance(model, VQVAE)


def test_dataset_helpers():
    vq = tiny().eval()
    x = pictures(5)
    tokens = encode_tokens(vq, x, batch_size=2)
    assert tokens.shape == (5, 8, 8) and torch.equal(tokens, vq.encode_tokens(x))
    report = evaluate_vqvae(vq, x, batch_size=2)
    assert report["n"] == 5 and report["mse"] > 0 and report["decoder_bits_per_dim"] > 0
    assert 1 <= report["perplexity"] <= 16 and 1 <= report["codes_used"] <= 16
