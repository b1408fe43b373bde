import math

import pytest
import torch

from dalle2_edu.checkpoint import load_any
from dalle2_edu.stages.latent import (
    LatentDiffusion,
    LatentDiffusionConfig,
    encode_latents,
    latent_loss_fn,
    latent_stats,
    load_latent_diffusion,
    sample_latent_diffusion,
    save_latent_diffusion,
    train_latent_diffusion,
)
from dalle2_edu.stages.vqvae import VQVAE, VQVAEConfig

D, CLIP_DIM = 4, 8


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_config(**changes) -> LatentDiffusionConfig:
    unet = dict(model_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(4,), num_heads=2)
    base = dict(latent_dim=D, clip_dim=CLIP_DIM, cond_dim=16, context_dim=16, unet=unet,
                diffusion={"num_timesteps": 20})  # fmt: skip
    return LatentDiffusionConfig(**{**base, **changes})


@pytest.fixture
def vqvae() -> VQVAE:
    torch.manual_seed(0)
    vq = VQVAE(VQVAEConfig(channels=8, codebook_size=16, code_dim=D))
    vq.train()(torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8))  # codebook placed on encoder outputs
    return vq.eval()


@pytest.fixture
def model() -> LatentDiffusion:
    torch.manual_seed(0)
    m = LatentDiffusion(tiny_config())
    with torch.no_grad():  # the UNet starts at exactly zero output: perturb it so that samples depend on it
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    m.set_latent_stats(torch.linspace(-0.5, 0.5, D), torch.linspace(0.5, 2.0, D))
    return m.eval()


def test_config_defaults_and_round_trip():
    cfg = LatentDiffusionConfig()
    assert cfg.diffusion.data_type == "continuous" and cfg.diffusion.mean_type == "eps"
    unet = cfg.decoder_config().unet_config()
    assert (unet.in_channels, unet.out_channels, unet.image_size) == (8, 8, 8)
    assert LatentDiffusionConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="continuous"):
        LatentDiffusionConfig(diffusion={"data_type": "image"})


def test_latent_normalisation(vqvae, model):
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    z_e = encode_latents(vqvae, images, batch_size=4)
    assert z_e.shape == (6, D, 8, 8)
    mean, std = latent_stats(z_e)
    model.set_latent_stats(mean, std)
    z = model.normalize(z_e)
    per_channel = z.transpose(0, 1).reshape(D, -1)
    assert torch.allclose(per_channel.mean(1), torch.zeros(D), atol=1e-4)
    assert torch.allclose(per_channel.std(1), torch.ones(D), atol=1e-4)
    assert torch.allclose(model.denormalize(z), z_e, atol=1e-5)
    with pytest.raises(ValueError, match="std must be > 0"):
        model.set_latent_stats(mean, torch.zeros(D))
    with pytest.raises(ValueError, match=r"\(B, 4, 8, 8\)"):
        model.normalize(torch.zeros(2, 3, 8, 8))


def test_training_step_runs_with_a_finite_loss(vqvae):
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    text_emb = torch.randn(6, CLIP_DIM)
    trainer, gd = train_latent_diffusion(vqvae, images, text_emb, tiny_config(), steps=3, batch_size=4,
                                         progress=False, log_every=1, device="cpu")  # fmt: skip
    assert len(trainer.history["loss"]) == 3 and all(math.isfinite(v) for v in trainer.history["loss"])
    mean, std = latent_stats(encode_latents(vqvae, images))
    assert torch.allclose(trainer.model.latent_mean, mean) and torch.allclose(trainer.ema_model.latent_std, std)
    out = latent_loss_fn(gd, trainer.model.config)(trainer.model, (torch.randn(2, D, 8, 8), torch.randn(2, CLIP_DIM)))
    assert set(out) == {"loss", "mse", "vb_bpd"} and out["loss"].requires_grad
    with pytest.raises(ValueError, match="VQ-VAE it was trained on"):
        train_latent_diffusion(vqvae, images, text_emb, tiny_config(latent_dim=3), steps=1, progress=False)


def test_sample_shape_range_and_seed(model, vqvae):
    gd = model.config.diffusion.build()
    text_emb = torch.randn(2, CLIP_DIM)
    pics, z_e = sample_latent_diffusion(model, gd, vqvae, text_emb, steps=4, seed=1, return_latents=True)
    assert pics.shape == (2, 3, 32, 32) and pics.min() >= -1 and pics.max() <= 1
    assert z_e.shape == (2, D, 8, 8)
    assert torch.equal(pics, sample_latent_diffusion(model, gd, vqvae, text_emb, steps=4, seed=1))
    assert not torch.equal(pics, sample_latent_diffusion(model, gd, vqvae, text_emb, steps=4, seed=2))
    # quantise-then-decode: the picture is the decoding of the sampled latents' nearest codes
    assert torch.allclose(pics, vqvae.decode_tokens(vqvae.nearest_codes(z_e)), atol=1e-6)
    raw = sample_latent_diffusion(model, gd, vqvae, text_emb, steps=4, seed=1, quantize=False)
    assert torch.allclose(raw, vqvae.decode(z_e), atol=1e-6)
    one = sample_latent_diffusion(model, gd, vqvae, text_emb[0], steps=3, guidance_scale=1.0, sampler="ddpm")
    assert one.shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match=r"text_emb must have shape \(B, 8\)"):
        sample_latent_diffusion(model, gd, vqvae, torch.randn(2, 5), steps=2)


def test_checkpoint_round_trip(model, tmp_path):
    path = save_latent_diffusion(model, tmp_path / "ld.safetensors", half=False)
    back, gd = load_latent_diffusion(path)
    for name, value in model.state_dict().items():
        assert torch.equal(back.state_dict()[name], value), name
    assert torch.equal(back.latent_std, model.latent_std)
    assert gd.num_timesteps == 20 and back.config == model.config
    kind, loaded = load_any(path)
    assert kind == "latent_diffusion" and isinstance(loaded, LatentDiffusion)
