import pytest
import torch
from tiny_unclip import perturbed

from dalle2_edu.nets.unet import UNetConfig
from dalle2_edu.stages.attributes import AttributeUNet, ImageModelConfig
from dalle2_edu.stages.decoder import (
    CLIPDecoder,
    DecoderConfig,
    decoder_loss_fn,
    guided_decoder,
    init_from_image_model,
    load_decoder,
    sample_decoder,
    save_decoder,
    train_decoder,
)

D = 8


def tiny_config(**kw):
    unet = UNetConfig.tiny(image_size=8).to_dict()
    return DecoderConfig(unet=unet, clip_dim=D, cond_dim=16, context_dim=16, diffusion={"num_timesteps": 20}, **kw)


def inputs(B=3, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(B, 3, 8, 8, generator=gen), torch.tensor([0, 7, 19][:B]), torch.randn(B, D, generator=gen)


def test_output_shape_and_embedding_reaches_the_output():
    model = perturbed(CLIPDecoder(tiny_config()))
    x, t, emb = inputs()
    out = model(x, t, emb)
    assert out.shape == (3, 6, 8, 8)  # learned_range: mean and variance channels
    emb2 = emb.clone()
    emb2[0] += 1.0
    out2 = model(x, t, emb2)
    assert not torch.allclose(out[0], out2[0]) and torch.allclose(out[1:], out2[1:], atol=1e-6)


def test_dropped_rows_ignore_the_embedding_and_equal_the_null_condition():
    model = perturbed(CLIPDecoder(tiny_config()))
    x, t, emb = inputs()
    drop = torch.tensor([True, False, True])
    a = model(x, t, emb, drop=drop)
    b = model(x, t, torch.randn(3, D), drop=drop)
    assert torch.allclose(a[[0, 2]], b[[0, 2]], atol=1e-6)
    assert not torch.allclose(a[1], b[1])
    null = model(x, t, model.null_emb.detach().expand(3, D))
    assert torch.allclose(a[[0, 2]], null[[0, 2]], atol=1e-6)


def test_guidance_scale_0_is_unconditional_and_1_is_conditional():
    model = perturbed(CLIPDecoder(tiny_config())).eval()
    x, t, emb = inputs()
    cond = model(x, t, emb)
    uncond = model(x, t, emb, drop=torch.ones(3, dtype=torch.bool))
    with torch.no_grad():
        assert torch.allclose(guided_decoder(model, emb, 1.0)(x, t), cond, atol=1e-6)
        g0 = guided_decoder(model, emb, 0.0)(x, t)
        assert torch.allclose(g0[:, :3], uncond[:, :3], atol=1e-6)
        assert torch.allclose(g0[:, 3:], cond[:, 3:], atol=1e-6)  # variance from the conditional pass
        g3 = guided_decoder(model, emb, 3.0)(x, t)
        assert torch.allclose(g3[:, :3], uncond[:, :3] + 3 * (cond[:, :3] - uncond[:, :3]), atol=1e-5)


def test_caption_tokens_padding_is_ignored_and_dropped_rows_ignore_the_caption():
    model = perturbed(CLIPDecoder(tiny_config(text_width=12)))
    x, t, emb = inputs()
    tokens = torch.randn(3, 5, 12)
    mask = torch.tensor([[1, 1, 1, 0, 0]] * 3, dtype=torch.bool)
    out = model(x, t, emb, text_tokens=tokens, text_mask=mask)
    tokens2 = tokens.clone()
    tokens2[:, 3:] = 100.0  # padding: must not matter
    assert torch.allclose(out, model(x, t, emb, text_tokens=tokens2, text_mask=mask), atol=1e-5)
    tokens2[:, 0] += 1.0  # a real token: must matter, except in dropped rows
    drop = torch.tensor([False, True, False])
    a = model(x, t, emb, drop=drop, text_tokens=tokens, text_mask=mask)
    b = model(x, t, emb, drop=drop, text_tokens=tokens2, text_mask=mask)
    assert not torch.allclose(a[0], b[0]) and torch.allclose(a[1], b[1], atol=1e-6)
    with pytest.raises(ValueError, match="pass text_tokens"):
        model(x, t, emb)
    with pytest.raises(ValueError, match="without caption tokens"):
        CLIPDecoder(tiny_config())(x, t, emb, text_tokens=tokens, text_mask=mask)


def test_bad_inputs_and_config_are_named():
    model = CLIPDecoder(tiny_config())
    x, t, emb = inputs()
    with pytest.raises(ValueError, match=r"image_emb must have shape \(B, 8\)"):
        model(x, t, torch.randn(3, D + 1))
    with pytest.raises(ValueError, match="drop must have shape"):
        model(x, t, emb, drop=torch.zeros(2, dtype=torch.bool))
    with pytest.raises(ValueError, match="emb_drop"):
        tiny_config(emb_drop=1.0)
    with pytest.raises(ValueError, match="steps must be a whole number"):
        sample_decoder(model, model.config.diffusion.build(), emb, steps=0)
    with pytest.raises(ValueError, match="noise must have shape"):
        sample_decoder(model, model.config.diffusion.build(), emb, steps=2, noise=torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="sampler"):
        sample_decoder(model, model.config.diffusion.build(), emb, sampler="lms")


def test_warm_start_copies_every_matching_unet_weight():
    cfg = tiny_config()
    image_config = ImageModelConfig(unet=cfg.unet, cond_dim=16, diffusion={"num_timesteps": 20})
    image_model = perturbed(AttributeUNet(image_config))
    decoder = CLIPDecoder(cfg)
    copied = init_from_image_model(decoder, image_model)
    target = decoder.unet.state_dict()
    assert "input_conv.weight" in copied and "cond_proj.weight" in copied
    assert not any("context_to" in k for k in copied)  # the attribute model has no context projections
    assert all(torch.equal(target[k], image_model.unet.state_dict()[k]) for k in copied)
    assert len(copied) == len(image_model.unet.state_dict())


def test_warm_start_from_a_decoder_copies_everything(tmp_path):
    source = perturbed(CLIPDecoder(tiny_config()))
    decoder = CLIPDecoder(tiny_config())
    copied = init_from_image_model(decoder, source)
    assert len(copied) == len(source.state_dict())  # conditioning layers and the null embedding included
    x, t, emb = inputs()
    with torch.no_grad():
        assert torch.equal(decoder(x, t, emb), source(x, t, emb))


def test_sampling_is_seeded_and_starts_from_the_given_noise():
    model = perturbed(CLIPDecoder(tiny_config()))
    gd = model.config.diffusion.build()
    _, _, emb = inputs()
    a = sample_decoder(model, gd, emb, steps=4, seed=3)
    assert a.shape == (3, 3, 8, 8) and a.abs().max() <= 1
    assert torch.equal(a, sample_decoder(model, gd, emb, steps=4, seed=3))
    assert not torch.equal(a, sample_decoder(model, gd, emb, steps=4, seed=4))
    noise = torch.randn(3, 3, 8, 8)
    b = sample_decoder(model, gd, emb, steps=4, seed=0, noise=noise)
    assert torch.equal(b, sample_decoder(model, gd, emb, steps=4, seed=9, noise=noise))  # DDIM η=0: noise decides
    c = sample_decoder(model, gd, emb, steps=4, sampler="ddpm", seed=3)
    assert c.shape == a.shape and not torch.equal(a, c)


def test_loss_fn_and_a_short_training_run(tmp_path):
    cfg = tiny_config()
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8, generator=gen)
    emb = torch.randn(16, D, generator=gen)
    loss = decoder_loss_fn(cfg.diffusion.build(), cfg)(CLIPDecoder(cfg), (images[:4], emb[:4]))
    assert set(loss) == {"loss", "mse", "vb_bpd"} and torch.isfinite(loss["loss"])
    trainer, _ = train_decoder(images, emb, cfg, steps=3, batch_size=4, seed=0, progress=False)
    assert len(trainer.history["loss"]) >= 1
    with pytest.raises(ValueError, match="one embedding per image"):
        train_decoder(images, emb[:3], cfg, steps=1, progress=False)


def test_save_load_round_trip_and_errors(tmp_path):
    model = perturbed(CLIPDecoder(tiny_config()))
    path = save_decoder(model, tmp_path / "dec.safetensors", metrics={"note": "test"}, half=True)
    assert path.with_suffix(".json").exists()
    loaded, gd = load_decoder(path)
    assert loaded.config == model.config and gd.num_timesteps == 20
    x, t, emb = inputs()
    with torch.no_grad():
        assert torch.allclose(loaded(x, t, emb), model(x, t, emb), atol=2e-2)
    with pytest.raises(FileNotFoundError, match="train decoder"):
        load_decoder(tmp_path / "missing.safetensors")
    from dalle2_edu.checkpoint import save_weights

    save_weights(tmp_path / "other.safetensors", {"w": torch.zeros(2)}, {"image_model": {}})
    with pytest.raises(ValueError, match="no decoder config"):
        load_decoder(tmp_path / "other.safetensors")
    cfg = model.config.to_dict()
    save_weights(tmp_path / "bad.safetensors", {"w": torch.zeros(2)}, {"decoder": cfg})
    with pytest.raises(ValueError, match="do not match"):
        load_decoder(tmp_path / "bad.safetensors")
