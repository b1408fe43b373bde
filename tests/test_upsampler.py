import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from dalle2_edu.checkpoint import load_weights, save_weights
from dalle2_edu.datasets.catalogue import ProductCatalogue, downsample
from dalle2_edu.nets.layers import AttentionBlock
from dalle2_edu.nets.unet import UNetConfig
from dalle2_edu.stages.upsampler import (
    Upsampler,
    UpsamplerConfig,
    blur_augment,
    downsample2x,
    evaluate_upsampler,
    gaussian_blur,
    gaussian_kernel1d,
    interpolate_upsample,
    laplacian_energy,
    load_upsampler,
    noise_augment,
    paired_random_crop,
    psnr,
    save_upsampler,
    second_upsampler_config,
    upsample,
    upsampler_loss_fn,
)
from dalle2_edu.train import Trainer


@pytest.fixture(autouse=True)
def _one_thread():
    """These tiny networks run fastest on one thread; two threads on busy shared cores can be 20x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_config(**kw):
    unet = UNetConfig.tiny(image_size=16, attention_resolutions=(), low_res_channels=3).to_dict()
    return UpsamplerConfig(unet=unet, diffusion={"num_timesteps": 20}, crop_size=kw.pop("crop_size", 8), **kw)


def perturbed(model):
    """A fresh UNet outputs zeros; nudge every weight so that outputs depend on the inputs."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.fixture
def tiny():
    return perturbed(Upsampler(tiny_config())).eval()


def test_shapes_full_size_and_crops_and_prepared_conditioning_agree(tiny):
    t = torch.tensor([3, 17])
    for size in (16, 8):  # the whole picture, and a crop
        x, low = torch.randn(2, 3, size, size), torch.rand(2, 3, size // 2, size // 2) * 2 - 1
        out = tiny(x, t, low)
        assert out.shape == (2, 3, size, size)
        # low_res already resized to x's size (how training crops pass it) gives the same output: bilinear resizing
        # to the same size is the identity
        up = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
        assert torch.allclose(tiny(x, t, up), out, atol=1e-6)
        assert not torch.allclose(tiny(x, t, -low), out)  # the conditioning matters
    with pytest.raises(ValueError, match="matching half-size picture"):
        tiny(torch.randn(2, 3, 16, 16), t, torch.randn(2, 3, 4, 4))
    with pytest.raises(ValueError, match=r"\(B, 3, h, w\)"):
        tiny(torch.randn(2, 3, 16, 16), t, torch.randn(3, 8, 8))


def test_no_attention_unless_asked_for():
    assert not any(isinstance(m, AttentionBlock) for m in Upsampler(tiny_config()).modules())
    assert any(isinstance(m, AttentionBlock) for m in Upsampler(tiny_config(mid_attention=True)).modules())
    default = Upsampler()
    assert default.config.image_size == 64 and default.config.low_res_size == 32
    assert not any(isinstance(m, AttentionBlock) for m in default.modules())


def test_gaussian_kernel_is_normalised_and_matches_a_hand_computation():
    k = gaussian_kernel1d(torch.tensor([0.5, 1.0, 3.0]), 7)
    assert k.shape == (3, 7)
    assert torch.allclose(k.sum(dim=1), torch.ones(3))
    assert torch.equal(k, k.flip(1))  # symmetric
    e = math.exp(-0.5)  # sigma = 1, K = 3: weights exp(-x^2 / 2) at x = -1, 0, 1
    assert torch.allclose(gaussian_kernel1d(torch.tensor([1.0]), 3)[0], torch.tensor([e, 1, e]) / (1 + 2 * e))
    with pytest.raises(ValueError, match="odd"):
        gaussian_kernel1d(torch.tensor([1.0]), 4)
    with pytest.raises(ValueError, match="> 0"):
        gaussian_kernel1d(torch.tensor([0.0]), 3)


def test_gaussian_blur_matches_torchvision_per_image_sigma():
    x = torch.rand(3, 3, 12, 10)
    sigma = torch.tensor([0.4, 0.8, 1.5])
    ours = gaussian_blur(x, sigma, kernel_size=7)
    ref = torch.stack([TF.gaussian_blur(x[i], kernel_size=[7, 7], sigma=[float(s)] * 2) for i, s in enumerate(sigma)])
    assert torch.allclose(ours, ref, atol=1e-5)
    const = torch.full((2, 3, 8, 8), 0.3)
    assert torch.allclose(gaussian_blur(const, 1.0), const)  # a normalised kernel keeps flat colours
    with pytest.raises(ValueError, match="lower sigma"):
        gaussian_blur(torch.rand(1, 3, 4, 4), 2.0)


def test_blur_augment_p0_is_identity_p1_blurs_with_the_drawn_sigmas_and_is_seeded():
    x = torch.rand(6, 3, 16, 16) * 2 - 1
    assert torch.equal(blur_augment(x, (0.4, 0.6), 0.0, torch.Generator().manual_seed(0)), x)
    out = blur_augment(x, (0.4, 1.0), 1.0, torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)
    torch.rand(6, generator=g)  # the coin flips, drawn first
    sigma = 0.4 + 0.6 * torch.rand(6, generator=g)
    assert torch.allclose(out, gaussian_blur(x, sigma, kernel_size=7), atol=1e-6)
    assert (laplacian_energy(out) < laplacian_energy(x)).all()
    half = blur_augment(x.repeat(100, 1, 1, 1), (0.5, 0.5), 0.5, torch.Generator().manual_seed(2))
    changed = (half != x.repeat(100, 1, 1, 1)).flatten(1).any(dim=1).float().mean().item()
    assert 0.4 < changed < 0.6
    again = blur_augment(x.repeat(100, 1, 1, 1), (0.5, 0.5), 0.5, torch.Generator().manual_seed(2))
    assert torch.equal(half, again)
    with pytest.raises(ValueError, match="0 < low <= high"):
        blur_augment(x, (0.0, 1.0))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        blur_augment(x, (0.4, 0.6), 1.5)
    with pytest.raises(ValueError, match="float tensor"):
        blur_augment(x.to(torch.uint8))


def test_noise_augment_adds_the_drawn_noise_to_the_drawn_pictures():
    x = torch.rand(400, 3, 8, 8) * 2 - 1
    assert torch.equal(noise_augment(x, (0.0, 0.1), 0.0), x)  # p = 0: a copy, nothing drawn
    out = noise_augment(x, (0.05, 0.05), 1.0, torch.Generator().manual_seed(0))
    assert abs((out - x).std().item() - 0.05) < 0.002  # every picture, sigma 0.05
    half = noise_augment(x, (0.02, 0.06), 0.5, torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)
    apply = torch.rand(400, generator=g) < 0.5
    sigma = 0.02 + 0.04 * torch.rand(400, generator=g)
    expected = x + (apply * sigma)[:, None, None, None] * torch.randn(x.shape, generator=g)
    assert torch.allclose(half, expected, atol=1e-6)
    assert torch.equal(half[~apply], x[~apply]) and 0.4 < apply.float().mean() < 0.6
    with pytest.raises(ValueError, match="0 <= low <= high"):
        noise_augment(x, (0.1, 0.0), 1.0)
    with pytest.raises(ValueError, match="noise_std"):
        tiny_config(noise_std=(0.0, 1.5))


def test_the_second_upsampler_draws_128_from_64_and_its_recipe_trains():
    """The cascade's last stage: the same network at image_size 128, crops of 128-pixel pictures, 64 → 128."""
    from dalle2_edu.recipes.settings import RECIPES

    config = second_upsampler_config()
    assert (config.image_size, config.low_res_size, config.crop_size) == (128, 64, 32)
    assert config.noise_prob > 0 and UpsamplerConfig().noise_prob == 0  # the first upsampler trains as it did
    assert RECIPES["full"]["upsampler128"].model["unet"]["image_size"] == 128
    small = perturbed(Upsampler(UpsamplerConfig.from_dict(RECIPES["tiny"]["upsampler128"].model))).eval()
    gd = small.config.diffusion.build()
    low = torch.rand(2, 3, 64, 64) * 2 - 1
    out = upsample(small, gd, low, steps=3, seed=0)
    assert out.shape == (2, 3, 128, 128) and out.abs().max() <= 1
    assert torch.equal(out, upsample(small, gd, low, steps=3, seed=0))


def test_the_second_upsampler_trains_from_its_recipe(tmp_path):
    from dalle2_edu.recipes import Runner

    Runner(out=tmp_path, recipe="tiny", device="cpu", progress=False).run("upsampler128")
    model, gd = load_upsampler(tmp_path / "upsampler128.safetensors")
    assert model.config.image_size == 128
    report = json.loads((tmp_path / "upsampler128.json").read_text())
    assert report["stage"] == "upsampler128" and report["grade"]["bicubic"]["psnr_db"] > 25  # on 128x128 pictures
    assert report["config"]["unet"]["image_size"] == 128


def test_downsample2x_agrees_with_the_catalogue_numpy_filter_and_its_32px_pictures():
    u8 = torch.randint(0, 256, (4, 3, 10, 12), dtype=torch.uint8)
    u8[0, 0, :2, :2] = torch.tensor([[0, 1], [0, 1]], dtype=torch.uint8)  # a sum of 2: the half rounds up to 1
    ours = downsample2x(u8)
    ref = torch.from_numpy(downsample(u8.permute(0, 2, 3, 1).numpy())).permute(0, 3, 1, 2)
    assert ours.dtype == torch.uint8 and torch.equal(ours, ref) and ours[0, 0, 0, 0] == 1
    x = u8.float() / 127.5 - 1
    assert torch.allclose(downsample2x(x), F.avg_pool2d(x, 2))
    hi = ProductCatalogue(6, split="test", seed=3, resolution=64, cache_dir=None, progress=False).images
    lo = ProductCatalogue(6, split="test", seed=3, resolution=32, cache_dir=None, progress=False).images
    assert torch.equal(downsample2x(hi), lo)
    with pytest.raises(ValueError, match="even"):
        downsample2x(torch.zeros(1, 3, 5, 6))


def test_paired_random_crop_cuts_the_same_window():
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).reshape(2, 1, 6, 6)
    xc, cc = paired_random_crop(x, -x, 4, torch.Generator().manual_seed(0))
    assert xc.shape == (2, 1, 4, 4) and torch.equal(cc, -xc)
    for i in range(2):  # each crop is a contiguous window of its own picture
        r, c = divmod(int(xc[i, 0, 0, 0]) - 36 * i, 6)
        assert torch.equal(xc[i], x[i, :, r : r + 4, c : c + 4])
    with pytest.raises(ValueError, match="crop size"):
        paired_random_crop(x, x, 7)


def test_loss_decreases_when_overfitting_one_tiny_batch():
    config = tiny_config(crop_size=8)
    model, gd = Upsampler(config), config.diffusion.build()
    images = ProductCatalogue(4, split="test", seed=0, resolution=64, cache_dir=None, progress=False).images
    images = downsample2x(downsample2x(images))  # (4, 3, 16, 16) uint8
    loss_fn = upsampler_loss_fn(gd, config)

    def fixed_loss():
        torch.manual_seed(123)  # same crops, blur, t and noise each time
        with torch.no_grad():
            return loss_fn(model, images)["loss"].item()

    before = fixed_loss()
    trainer = Trainer(model, loss_fn, images, batch_size=4, lr=3e-3, warmup_steps=1, progress=False)
    trainer.fit(60)
    assert fixed_loss() < 0.7 * before
    torch.manual_seed(0)
    assert loss_fn(model, (images,))["loss"].shape == ()  # tuples and floats work too
    assert loss_fn(model, {"image": images.float() / 127.5 - 1})["loss"].isfinite()


def test_upsample_shapes_range_and_seeds(tiny):
    gd = tiny.config.diffusion.build()
    low = torch.rand(2, 3, 8, 8) * 2 - 1
    a = upsample(tiny, gd, low, steps=5, seed=1)
    assert a.shape == (2, 3, 16, 16) and a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, upsample(tiny, gd, low, steps=5, seed=1))
    assert not torch.allclose(a, upsample(tiny, gd, low, steps=5, seed=2))
    u8 = ((low + 1) * 127.5).round().to(torch.uint8)
    assert upsample(tiny, gd, u8, steps=3, sampler="ddpm").shape == (2, 3, 16, 16)
    assert upsample(tiny, gd, low[0], steps=2).shape == (1, 3, 16, 16)  # one picture becomes a batch
    assert upsample(tiny, gd, torch.zeros(1, 3, 16, 16), steps=2).shape == (1, 3, 32, 32)  # fully convolutional
    assert interpolate_upsample(low).shape == (2, 3, 16, 16)


def test_upsample_rejects_bad_inputs_with_the_fix(tiny):
    gd = tiny.config.diffusion.build()
    with pytest.raises(ValueError, match="0..255"):
        upsample(tiny, gd, torch.rand(1, 3, 8, 8) * 255)
    with pytest.raises(ValueError, match=r"\(B, 3, 8, 8\)"):  # the tiny upsampler's half size
        upsample(tiny, gd, torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="torch tensor"):
        upsample(tiny, gd, np.zeros((1, 3, 8, 8)))
    with pytest.raises(ValueError, match="uint8"):
        upsample(tiny, gd, torch.zeros(1, 3, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="NaN"):
        upsample(tiny, gd, torch.full((1, 3, 8, 8), float("nan")))
    with pytest.raises(ValueError, match="divisible by 4"):  # the default UNet halves 64 twice
        upsample(Upsampler(), gd, torch.zeros(1, 3, 7, 8))
    with pytest.raises(ValueError, match="steps"):
        upsample(tiny, gd, torch.zeros(1, 3, 8, 8), steps=0)
    with pytest.raises(ValueError, match="sampler"):
        upsample(tiny, gd, torch.zeros(1, 3, 8, 8), sampler="bogus")


def test_config_rejects_bad_settings():
    with pytest.raises(ValueError, match="crop_size"):
        tiny_config(crop_size=7)
    with pytest.raises(ValueError, match="crop_size"):
        tiny_config(crop_size=32)
    with pytest.raises(ValueError, match="low_res_channels=3"):
        UpsamplerConfig(unet=UNetConfig.tiny().to_dict())
    with pytest.raises(ValueError, match="0 < low <= high"):
        tiny_config(blur_sigma=(1.0, 0.5))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        tiny_config(blur_prob=-0.1)
    assert UpsamplerConfig(**json.loads(json.dumps(tiny_config().to_dict()))) == tiny_config()


def test_psnr_and_sharpness_meters():
    x = torch.rand(2, 3, 8, 8) * 1.6 - 0.8
    assert torch.allclose(psnr(x + 0.2, x), torch.full((2,), 20.0), atol=1e-4)  # 0.1 on [0, 1]: MSE 0.01, 20 dB
    assert psnr(x, x).min() > 90
    assert torch.allclose(laplacian_energy(torch.full((1, 3, 8, 8), 0.5)), torch.zeros(1))
    checker = (torch.arange(8)[:, None] + torch.arange(8)[None]) % 2 * 2.0 - 1  # ±1: Laplacian ±8 everywhere
    assert torch.allclose(laplacian_energy(checker.expand(1, 3, 8, 8)), torch.tensor([64.0]))
    real = ProductCatalogue(4, split="test", seed=0, resolution=64, cache_dir=None, progress=False).images
    assert (laplacian_energy(interpolate_upsample(downsample2x(real))) < laplacian_energy(real)).all()


def test_save_load_round_trip_in_fp16_and_clear_errors(tmp_path, tiny):
    path = save_upsampler(tiny, tmp_path / "up.safetensors", metrics={"psnr_db": 1.0})
    state, config = load_weights(path)
    assert all(v.dtype == torch.float16 for v in state.values()) and "upsampler" in config
    assert json.loads(path.with_suffix(".json").read_text()) == {"psnr_db": 1.0}
    loaded, gd = load_upsampler(path)
    assert not loaded.training and loaded.config == tiny.config and gd.num_timesteps == 20
    x, t, low = torch.randn(2, 3, 16, 16), torch.tensor([1, 9]), torch.rand(2, 3, 8, 8)
    assert torch.allclose(loaded(x, t, low), tiny(x, t, low), atol=1e-2)
    with pytest.raises(FileNotFoundError, match="no upsampler"):
        load_upsampler(tmp_path / "missing.safetensors")
    save_weights(tmp_path / "other.safetensors", tiny.state_dict(), {"image_model": {}})
    with pytest.raises(ValueError, match="no upsampler config"):
        load_upsampler(tmp_path / "other.safetensors")
    wider = Upsampler(tiny_config(mid_attention=True))
    save_weights(tmp_path / "bad.safetensors", wider.state_dict(), {"upsampler": tiny.config.to_dict()})
    with pytest.raises(ValueError, match="do not fit"):
        load_upsampler(tmp_path / "bad.safetensors")
    with pytest.raises(TypeError, match="Upsampler"):
        save_upsampler(torch.nn.Linear(2, 2), tmp_path / "x.safetensors")


def test_evaluate_against_bilinear(tmp_path, monkeypatch, tiny):
    monkeypatch.setenv("DALLE2_EDU_DATA", str(tmp_path / "data"))  # catalogue caches go here, not into data/
    report = evaluate_upsampler(tiny, tiny.config.diffusion.build(), n=4, steps=2, batch_size=2)
    assert report["bilinear"]["psnr_db"] > 15 and report["bilinear"]["sharpness_ratio"] < 1
    assert report["bilinear"]["consistency_psnr_db"] > 30  # bilinear ×2 then 2×2 means nearly returns its input
    assert set(report) >= {"diffusion", "bilinear", "bicubic", "n", "steps"}
