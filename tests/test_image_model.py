import pytest
import torch

from dalle2_edu.diffusion.guidance import GuidedModel
from dalle2_edu.nets.unet import UNetConfig
from dalle2_edu.stages.attributes import (
    UNSPECIFIED,
    AttributeUNet,
    ImageModelConfig,
    drop_labels,
    image_loss_fn,
    sample_images,
)


def tiny_config(**kw):
    unet = UNetConfig.tiny(image_size=8).to_dict()
    return ImageModelConfig(unet=unet, cond_dim=16, diffusion={"num_timesteps": 20}, **kw)


def perturbed(model):
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def test_guidance_scale_0_is_unconditional_1_conditional_and_s_extrapolates():
    net = lambda x, t, c: torch.cat([x * c, x + c], dim=1)  # mean channels, then variance channels
    x, t = torch.randn(2, 3, 4, 4), torch.tensor([1, 2])
    c1, c0 = torch.full((2, 1, 1, 1), 2.0), torch.full((2, 1, 1, 1), 0.5)
    g = lambda s: GuidedModel(net, {"c": c1}, {"c": c0}, s, mean_channels=3)(x, t)
    assert torch.allclose(g(1.0), net(x, t, c1))
    assert torch.allclose(g(0.0)[:, :3], net(x, t, c0)[:, :3])
    assert torch.allclose(g(0.0)[:, 3:], net(x, t, c1)[:, 3:])  # variance from the conditional pass
    s = 3.0
    assert torch.allclose(g(s)[:, :3], net(x, t, c0)[:, :3] + s * (net(x, t, c1)[:, :3] - net(x, t, c0)[:, :3]))
    with pytest.raises(ValueError, match="same inputs"):
        GuidedModel(net, {"c": c1}, {"d": c0}, 2.0)


def test_attribute_unet_shapes_labels_and_unspecified():
    model = perturbed(AttributeUNet(tiny_config()))
    x, t = torch.randn(3, 3, 8, 8), torch.tensor([0, 5, 19])
    labels = torch.tensor([[0, 1, 2, 0], [7, 7, 0, 2], [UNSPECIFIED] * 4])
    out = model(x, t, labels)
    assert out.shape == (3, 6, 8, 8)
    other = model(x, t, torch.tensor([[1, 1, 2, 0], [7, 7, 0, 2], [UNSPECIFIED] * 4]))
    assert not torch.allclose(out[0], other[0]) and torch.allclose(out[1:], other[1:])
    with pytest.raises(ValueError, match=r"\[0, 8\)"):
        model(x, t, torch.tensor([[8, 0, 0, 0]] * 3))
    with pytest.raises(ValueError, match=r"\(B, 4\)"):
        model(x, t, torch.zeros(3, 3, dtype=torch.long))


def test_drop_labels_rates_whole_sets_and_single_attributes():
    labels = torch.zeros(20000, 4, dtype=torch.long)
    dropped = drop_labels(labels, 0.1, torch.Generator().manual_seed(0)) == UNSPECIFIED
    all_null = dropped.all(dim=1).float().mean().item()
    assert abs(all_null - (0.1 + 0.9 * 0.1**4)) < 0.01  # the null condition guidance needs is common
    assert abs(dropped.float().mean().item() - (0.1 + 0.9 * 0.1)) < 0.01
    assert torch.equal(drop_labels(labels, 0.0), labels)


def test_loss_and_seeded_sampling():
    cfg = tiny_config()
    model, gd = perturbed(AttributeUNet(cfg)), cfg.diffusion.build()
    batch = {"image": torch.rand(4, 3, 8, 8) * 2 - 1, "labels": torch.tensor([[0, 1, 2, 0]] * 4)}
    out = image_loss_fn(gd, 0.1)(model, batch)
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    labels = torch.tensor([[0, 1, 2, 0], [3, 4, 1, 1]])
    a = sample_images(model, gd, labels, steps=5, guidance_scale=2.0, seed=1)
    b = sample_images(model, gd, labels, steps=5, guidance_scale=2.0, seed=1)
    c = sample_images(model, gd, labels, steps=5, guidance_scale=2.0, seed=2)
    assert a.shape == (2, 3, 8, 8) and torch.equal(a, b) and not torch.equal(a, c)
    assert a.abs().max() <= 1.0
    d = sample_images(model, gd, labels, sampler="ddpm", steps=20, seed=1)
    assert d.shape == (2, 3, 8, 8)
    with pytest.raises(ValueError, match="unknown sampler"):
        sample_images(model, gd, labels, sampler="lms")
