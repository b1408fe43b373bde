"""The tiny CLIP: open_clip's model and tokenizer behind a compact vocabulary, the √d scale, losses, files."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from dalle2_edu.checkpoint import save_weights
from dalle2_edu.stages.clip import (
    ATTRIBUTE_VALUES,
    EOT_ID,
    PAD_ID,
    SOT_ID,
    CLIPConfig,
    ProductCLIP,
    build_vocabulary,
    clip_loss,
    default_clip_path,
    embed_dataset,
    load_clip,
    load_pretrained_open_clip,
    save_clip,
    train_clip,
    zero_shot_accuracy,
    zero_shot_prompts,
)

CAPTIONS = [
    "a red striped mug on a wooden table",
    "product photo: dotted handbag, blue, white background",
    "green t-shirt with stripes, light grey background",
    "studio shot on white: an orange plain lamp",
    *[p for attribute in ATTRIBUTE_VALUES for group in zero_shot_prompts(attribute) for p in group],
]


def tiny_config(**kw) -> CLIPConfig:
    vocab, words = build_vocabulary(CAPTIONS)
    sizes = dict(embed_dim=16, vision_width=32, vision_layers=1, vision_heads=2, text_width=32, text_layers=1,
                 text_heads=2)  # fmt: skip
    return CLIPConfig(**{**sizes, "vocab": vocab, "words": words, **kw})


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    return ProductCLIP(tiny_config()).eval()


def images(n=6, seed=0):
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------------------------------
# tokens


def test_compact_ids_map_back_to_open_clips_own_bpe_ids(clip):
    import open_clip

    texts = ["a red striped mug on a wooden table", "Product photo:  Dotted HANDBAG, blue"]
    tokens = clip.tokenize(texts)
    assert tokens.shape == (2, clip.context_length) and tokens.dtype == torch.long
    assert (tokens[:, 0] == SOT_ID).all()
    assert int(tokens.max()) < len(clip.config.vocab) < 100  # a compact table, not open_clip's 49408 rows
    # open_clip's tokenizer on the same texts gives exactly the BPE ids our compact ids stand for
    assert torch.equal(clip.tokenizer.to_bpe(tokens), open_clip.tokenize(texts, context_length=clip.context_length))
    n = (tokens[0] != PAD_ID).sum()
    assert tokens[0, n - 1] == EOT_ID and (tokens[0, n:] == PAD_ID).all()
    assert clip.tokenizer.decode(tokens)[0] == texts[0]
    assert torch.equal(clip.tokenize("a red mug"), clip.tokenize(["a red mug"]))


def test_unknown_words_empty_and_too_long_prompts_are_reported(clip):
    with pytest.raises(ValueError, match=r"unknown prompt word\(s\) \['dragon'\].*mug"):
        clip.tokenize("a red dragon mug")
    with pytest.raises(ValueError, match=r"\['dragon', 'teapot'\]"):
        clip.tokenize(["a blue mug", "a dragon teapot"])
    for empty in ("", "   \n"):
        with pytest.raises(ValueError, match="prompt is empty"):
            clip.tokenize(empty)
    with pytest.raises(ValueError, match="non-empty list"):
        clip.tokenize([])
    with pytest.raises(TypeError, match="int64 tokens"):
        clip.encode_text(3)
    long = " ".join(["a red mug"] * 12)
    with pytest.warns(UserWarning, match="cut"):
        tokens = clip.tokenize(long)
    assert tokens[0, -1] == EOT_ID and (tokens[0] != PAD_ID).all()


def test_build_vocabulary_has_the_special_tokens_first_and_the_caption_words():
    vocab, words = build_vocabulary(["a red mug", "a blue t-shirt, white background"])
    assert vocab[:3] == ["<pad>", "<start_of_text>", "<end_of_text>"]
    assert {"red</w>", "mug</w>", "shirt</w>"} <= set(vocab)
    assert words == ["a", "background", "blue", "mug", "red", "t-shirt", "white"]
    with pytest.raises(ValueError, match="non-empty list"):
        build_vocabulary("a red mug")
    with pytest.raises(ValueError, match="unknown CLIPConfig field"):
        CLIPConfig.from_dict({**tiny_config().to_dict(), "colour": 3})


# ---------------------------------------------------------------------------------------------------------------------
# embeddings


def test_embeddings_have_norm_sqrt_d_and_raw_ones_norm_1(clip):
    d = clip.embed_dim
    with torch.no_grad():
        z_t, z_i = clip.encode_text(CAPTIONS[:3]), clip.encode_image(images(4))
        assert z_t.shape == (3, d) and z_i.shape == (4, d)
        assert torch.allclose(z_t.norm(dim=1), torch.full((3,), math.sqrt(d)), atol=1e-4)
        assert torch.allclose(z_i.norm(dim=1), torch.full((4,), math.sqrt(d)), atol=1e-4)
        raw = clip.encode_text(CAPTIONS[:3], raw=True)
        assert torch.allclose(raw * clip.scale, z_t, atol=1e-5)
        # our step-by-step text tower (padding cut) is open_clip's CLIP.encode_text
        tokens = clip.tokenize(CAPTIONS[:3])
        assert torch.allclose(raw, F.normalize(clip.model.encode_text(tokens), dim=-1), atol=1e-5)
        assert torch.allclose(clip.encode_image(images(4), raw=True), clip.model.encode_image(images(4).float() / 127.5
                              - 1, normalize=True), atol=1e-5)  # fmt: skip
        cos = clip.similarity(images(3), CAPTIONS[:3])
        assert torch.allclose(cos, (clip.encode_image(images(3), raw=True) * raw).sum(1), atol=1e-6)
    with pytest.raises(ValueError, match="one caption each"):
        clip.similarity(images(2), CAPTIONS[:3])


def test_caption_tokens_mask_padding_and_do_not_depend_on_the_batch(clip):
    with torch.no_grad():
        emb, tokens, mask = clip.encode_text_with_tokens(["a red mug", CAPTIONS[1]])
        alone_emb, alone, alone_mask = clip.encode_text_with_tokens("a red mug")
    assert tokens.shape == (2, clip.context_length, clip.text_width) and mask.dtype == torch.bool
    assert mask[0].sum() == 5 and mask[0, :5].all()  # SOT a red mug EOT
    assert torch.equal(mask, clip.tokenize(["a red mug", CAPTIONS[1]]) != PAD_ID)
    assert (tokens[~mask] == 0).all()
    assert torch.allclose(emb, clip.encode_text(["a red mug", CAPTIONS[1]]), atol=1e-5)
    assert torch.allclose(tokens[0], alone[0], atol=1e-5) and torch.allclose(emb[0], alone_emb[0], atol=1e-5)


def test_image_input_is_checked_with_messages_that_say_the_fix(clip):
    x = images(2)
    with torch.no_grad():
        assert torch.allclose(clip.encode_image(x), clip.encode_image(x.float() / 127.5 - 1), atol=1e-5)
        big = x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)  # 64×64, each pixel a 2×2 block
        assert torch.allclose(clip.encode_image(big), clip.encode_image(x), atol=1e-4)
    with pytest.raises(ValueError, match=r"images\[None\]"):
        clip.encode_image(x[0])
    with pytest.raises(ValueError, match="permute"):
        clip.encode_image(x.permute(0, 2, 3, 1))
    with pytest.raises(ValueError, match=r"must lie in \[-1, 1\].*uint8"):
        clip.encode_image(x.float())
    with pytest.raises(ValueError, match="uint8"):
        clip.encode_image(x.long())
    with pytest.raises(ValueError, match="multiple of 32"):
        clip.encode_image(torch.zeros(2, 3, 30, 30))
    with pytest.raises(ValueError, match="NaN"):
        clip.encode_image(torch.full((1, 3, 32, 32), float("nan")))
    with pytest.raises(TypeError, match="tensor"):
        clip.encode_image([[0.0]])


# ---------------------------------------------------------------------------------------------------------------------
# the loss


def test_clip_loss_is_open_clips_loss_and_the_closed_form():
    from open_clip.loss import ClipLoss

    g = torch.Generator().manual_seed(0)
    u, v = F.normalize(torch.randn(8, 5, generator=g), dim=1), F.normalize(torch.randn(8, 5, generator=g), dim=1)
    scale = torch.tensor(7.0)
    ours = clip_loss(u, v, scale)
    assert torch.allclose(ours, ClipLoss()(u, v, scale), atol=1e-6)
    logits = scale * u @ v.T  # by hand: -log softmax of the diagonal, rows and columns
    by_hand = -(logits.diag() - logits.logsumexp(1)).mean() / 2 - (logits.diag() - logits.logsumexp(0)).mean() / 2
    assert torch.allclose(ours, by_hand, atol=1e-6)
    # identical captions (equal embeddings): spreading each target over both duplicates changes nothing
    v2 = v.clone()
    v2[1] = v2[0]
    both = torch.eye(8)
    both[0, 1] = both[1, 0] = 1
    logits = scale * u @ v2.T
    targets = both / both.sum(1, keepdim=True)  # rows 0 and 1: (½, ½, 0, ...)
    soft = (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2
    assert torch.allclose(soft, clip_loss(u, v2, scale), atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------------
# zero-shot


def test_zero_shot_prompts_and_predictions(clip):
    prompts = zero_shot_prompts("colour")
    assert len(prompts) == 8 and all(len(p) == 8 * 3 * 3 for p in prompts)
    assert "an orange plain mug on white" in prompts[1] and "a red dotted vase on a wooden table" in prompts[0]
    assert zero_shot_prompts("colour", ["a {colour} {category}"])[1][:2] == ["an orange t-shirt", "an orange mug"]
    assert zero_shot_prompts("category", "product photo: {category}")[1] == ["product photo: mug"]
    x = images(5)
    for attribute, values in ATTRIBUTE_VALUES.items():
        scores = clip.zero_shot_scores(x, attribute)
        assert scores.shape == (5, len(values)) and torch.allclose(scores.exp().sum(1), torch.ones(5), atol=1e-5)
        pred = clip.zero_shot(x, attribute)
        assert pred.dtype == torch.long and torch.equal(pred, scores.argmax(1))
    # by hand: a softmax over all 576 prompts, summed over the prompts of each colour
    with torch.no_grad():
        flat = [p for group in prompts for p in group]
        logits = clip.model.logit_scale.exp() * clip.encode_image(x, raw=True) @ clip.encode_text(flat, raw=True).T
        by_hand = logits.softmax(dim=1).reshape(5, 8, -1).sum(-1)
    assert torch.allclose(clip.zero_shot_scores(x, "colour").exp(), by_hand, atol=1e-5)
    labels = torch.zeros(5, 4, dtype=torch.long)
    acc = zero_shot_accuracy(clip, x, labels, ("colour",))
    assert acc["n"] == 5 and acc["colour"] == (clip.zero_shot(x, "colour") == 0).float().mean().item()
    with pytest.raises(ValueError, match="unknown attribute"):
        clip.zero_shot(x, "size")
    with pytest.raises(ValueError, match=r"must contain \{colour\}"):
        zero_shot_prompts("colour", ["a {category}"])


# ---------------------------------------------------------------------------------------------------------------------
# files


def test_save_load_round_trip_in_fp16_and_clear_errors(clip, tmp_path):
    resnet = ProductCLIP(tiny_config(vision_layers=[1, 1, 1, 1], vision_width=8, vision_heads=8)).eval()
    with torch.no_grad():
        resnet.model.visual.bn1.running_var.fill_(2.0)  # buffers travel too
        again = load_clip(save_clip(resnet, tmp_path / "resnet.safetensors", half=False))
        assert torch.equal(again.encode_image(images(3)), resnet.encode_image(images(3)))
    path = save_clip(clip, tmp_path / "clip.safetensors", metrics={"command": "x", "acc": 1.0})
    assert json.loads(path.with_suffix(".json").read_text())["acc"] == 1.0
    loaded = load_clip(path)
    assert loaded.config == clip.config and not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    with torch.no_grad():
        for a, b in [(clip.encode_text(CAPTIONS), loaded.encode_text(CAPTIONS)),
                     (clip.encode_image(images(8)), loaded.encode_image(images(8)))]:  # fmt: skip
            assert torch.allclose(a, b, atol=0.02)  # fp16 weights: ~1e-3 relative
            assert (a - b).abs().max() > 0  # it really was rounded
    with pytest.raises(FileNotFoundError, match=r"python -m dalle2_edu train clip"):
        load_clip(tmp_path / "missing.safetensors")
    other = ProductCLIP(tiny_config(embed_dim=8))
    save_weights(tmp_path / "mismatch.safetensors", other.state_dict(), {"clip": clip.config.to_dict()})
    with pytest.raises(ValueError, match="do not fit the CLIP config"):
        load_clip(tmp_path / "mismatch.safetensors")
    save_weights(tmp_path / "other.safetensors", clip.state_dict(), {"image_model": {}})
    with pytest.raises(ValueError, match="no CLIP config"):
        load_clip(tmp_path / "other.safetensors")


@pytest.fixture
def offline(monkeypatch):
    """Fail loudly if open_clip tries to download anything."""
    import open_clip.factory

    def no_network(*args, **kwargs):
        raise AssertionError("the test tried to download")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in ("download_pretrained", "download_pretrained_from_hf"):
        monkeypatch.setattr(open_clip.factory, name, no_network)


def test_open_clip_weights_load_from_a_local_file(clip, tmp_path, offline):
    from safetensors.torch import save_file

    cfg = clip.config.open_clip_config()
    torch.save(clip.model.state_dict(), tmp_path / "tiny.pt")
    save_file({k: v.contiguous() for k, v in clip.model.state_dict().items()}, tmp_path / "tiny.safetensors")
    x = images(3).float() / 127.5 - 1
    tokens = clip.tokenize(CAPTIONS[:2])
    for file in ("tiny.pt", "tiny.safetensors"):
        model, preprocess, tokenizer = load_pretrained_open_clip("dalle2-edu-test-tiny", tmp_path / file,
                                                                 model_config=cfg)  # fmt: skip
        assert not model.training and callable(preprocess) and callable(tokenizer)
        with torch.no_grad():
            assert torch.equal(model.encode_image(x), clip.model.encode_image(x))
            assert torch.equal(model.encode_text(tokens), clip.model.encode_text(tokens))
    with pytest.raises(FileNotFoundError, match="no weights file"):
        load_pretrained_open_clip("dalle2-edu-test-tiny", tmp_path / "missing.pt")
    wider = ProductCLIP(tiny_config(vision_width=64))
    torch.save(wider.model.state_dict(), tmp_path / "wider.pt")
    with pytest.raises(ValueError, match="do not fit open_clip model 'dalle2-edu-test-tiny'"):
        load_pretrained_open_clip("dalle2-edu-test-tiny", tmp_path / "wider.pt")
    (tmp_path / "broken.safetensors").write_bytes(b"not weights")
    with pytest.raises(ValueError, match="do not fit"):
        load_pretrained_open_clip("dalle2-edu-test-tiny", tmp_path / "broken.safetensors")
    with pytest.raises(ValueError, match="neither a weights file nor a pretrained tag"):
        load_pretrained_open_clip("dalle2-edu-test-tiny", "openai")
    with pytest.raises(ValueError, match="unknown open_clip model"):
        load_pretrained_open_clip("no-such-model", tmp_path / "tiny.pt")


def test_embed_dataset_caches_by_weights_and_data(clip, tmp_path, monkeypatch):
    x, caps = images(5), CAPTIONS[:5]
    first = embed_dataset(clip, x, caps, batch_size=2, cache_dir=tmp_path, progress=False)
    assert first["image_emb"].shape == (5, clip.embed_dim) and first["text_emb"].shape == (5, clip.embed_dim)
    assert first["text_tokens"].shape == (5, clip.context_length, clip.text_width)
    assert torch.equal(first["text_mask"], clip.tokenize(caps) != PAD_ID)
    with torch.no_grad():
        assert torch.allclose(first["image_emb"], clip.encode_image(x), atol=1e-5)
    assert len(list(tmp_path.glob("clip-embeddings-*.safetensors"))) == 1

    def fail(*args, **kwargs):
        raise AssertionError("a cache hit must not run the model")

    monkeypatch.setattr(ProductCLIP, "encode_image", fail)
    again = embed_dataset(clip, x, caps, batch_size=2, cache_dir=tmp_path, progress=False)
    assert again.keys() == first.keys() and all(torch.equal(again[k], first[k]) for k in first)
    monkeypatch.undo()
    embed_dataset(clip, x, [*caps[:4], "a blue mug"], cache_dir=tmp_path, progress=False)  # other data: a miss
    assert len(list(tmp_path.glob("clip-embeddings-*.safetensors"))) == 2
    no_tokens = embed_dataset(clip, x, caps, with_tokens=False, progress=False)
    assert set(no_tokens) == {"image_emb", "text_emb"}
    with pytest.raises(ValueError, match="pair up"):
        embed_dataset(clip, x, caps[:4], progress=False)


# ---------------------------------------------------------------------------------------------------------------------
# training


def test_train_clip_is_reproducible_from_its_seed(tmp_path, monkeypatch):
    monkeypatch.setenv("DALLE2_EDU_DATA", str(tmp_path))  # the catalogue cache goes to tmp_path
    # the shipped kind of image tower: open_clip's ModifiedResNet, with BatchNorm buffers that the EMA must copy
    resnet = dict(vision_layers=[1, 1, 1, 1], vision_width=8, vision_heads=8)
    sizes = {k: v for k, v in tiny_config(**resnet).to_dict().items() if k not in ("vocab", "words")}
    runs = [train_clip(CLIPConfig(**sizes), steps=2, batch_size=8, n_train=16, seed=s, progress=False, device="cpu")
            for s in (0, 0, 1)]  # fmt: skip
    (a, trainer), (b, _), (c, _) = runs
    assert a.config.vocab == b.config.vocab and len(a.config.vocab) > 10  # built from the 16 training captions
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert any(not torch.equal(a.state_dict()[k], c.state_dict()[k]) for k in a.state_dict())
    assert trainer.step == 2 and math.isfinite(trainer.history["loss"][-1]) and "acc" in trainer.history
    assert type(a.model.visual).__name__ == "ModifiedResNet" and not a.training
    bn = a.model.visual.bn1
    assert bn.num_batches_tracked == 2 and not torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))


# ---------------------------------------------------------------------------------------------------------------------
# the shipped model


@pytest.mark.skipif(not default_clip_path().exists(), reason="no shipped CLIP: python -m dalle2_edu train clip")
def test_shipped_clip_reads_colours_zero_shot():
    from dalle2_edu.datasets.catalogue import ProductCatalogue

    clip = load_clip()
    cat = ProductCatalogue(64, split="test", seed=1, cache_dir=None, progress=False)
    acc = zero_shot_accuracy(clip, cat.images, cat.labels, ("colour", "category"))
    assert acc["colour"] >= 0.9, acc
    assert acc["category"] >= 0.8, acc
    with torch.no_grad():
        z = clip.encode_text("a red striped mug on white")
    assert z.shape == (1, 64) and abs(z.norm().item() - 8.0) < 1e-4


def test_an_embedding_cache_that_cannot_be_written_warns_and_goes_on(clip, tmp_path, monkeypatch):
    """A read-only checkout: the optional cache of CLIP embeddings is skipped with a warning naming DALLE2_EDU_DATA."""
    import dalle2_edu.checkpoint as checkpoint

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(checkpoint, "save_weights", read_only)
    with pytest.warns(UserWarning, match="DALLE2_EDU_DATA"):
        out = embed_dataset(clip, images(4), CAPTIONS[:4], cache_dir=tmp_path / "cache", progress=False)
    assert out["image_emb"].shape == (4, clip.embed_dim) and not (tmp_path / "cache").exists()


def test_attention_runs_in_fp32_under_cpu_bf16_autocast():
    """open_clip's attention layers (the text tower's nn.MultiheadAttention, the ResNet's AttentionPool2d) compute in
    fp32 under bf16 autocast on the CPU, where torch's bf16 flash-attention kernel is slow; weights and state-dict
    names stay open_clip's, and the embeddings follow fp32 within bf16 rounding."""
    from open_clip.model import CLIP
    from open_clip.modified_resnet import AttentionPool2d

    from dalle2_edu.stages.clip import attention_in_fp32_under_cpu_bf16

    torch.manual_seed(0)
    config = tiny_config(vision_layers=[1, 1, 1, 1], vision_width=16, vision_heads=2)
    model = ProductCLIP(config).eval()
    assert type(model.model.visual.attnpool) is AttentionPool2d  # open_clip's own classes until asked
    attention_in_fp32_under_cpu_bf16(model.model)
    layers = [m for m in model.modules() if isinstance(m, (torch.nn.MultiheadAttention, AttentionPool2d))]
    assert any(isinstance(m, AttentionPool2d) for m in layers) and any(
        isinstance(m, torch.nn.MultiheadAttention) for m in layers)  # fmt: skip
    assert all(type(m).__name__.endswith("FP32OnCPU") for m in layers)
    plain = CLIP(**config.open_clip_config())
    assert list(model.model.state_dict()) == list(plain.state_dict())  # the same names: shipped weights load
    dtypes = []
    hooks = [m.register_forward_hook(lambda m, i, out: dtypes.append((out[0] if isinstance(out, tuple) else out).dtype))
             for m in layers]  # fmt: skip
    x, captions = images(4), CAPTIONS[:4]
    with torch.no_grad():
        ref = model.encode_image(x), model.encode_text(captions)
        dtypes.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model.encode_image(x), model.encode_text(captions)
    for h in hooks:
        h.remove()
    assert dtypes and set(dtypes) == {torch.float32}  # computed in fp32 inside autocast
    for a, b in zip(ref, low):
        assert F.cosine_similarity(a.float(), b.float(), dim=-1).min() > 0.99


@pytest.mark.parametrize("amp", ["bf16", "fp32"])
def test_train_clip_computes_attention_in_fp32_only_when_it_trains_in_bf16_on_the_cpu(amp):
    import warnings

    from open_clip.modified_resnet import AttentionPool2d

    config = tiny_config(vision_layers=[1, 1, 1, 1], vision_width=16, vision_heads=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # forced bf16 on a CPU without native bf16 warns (tests/test_precision.py)
        _, trainer = train_clip(config, steps=1, batch_size=4, images=images(8), captions=CAPTIONS[:8], device="cpu",
                                progress=False, amp=amp)  # fmt: skip
    swapped = type(trainer.model.model.visual.attnpool).__name__.endswith("FP32OnCPU")
    assert swapped == (amp == "bf16")
    assert type(trainer.ema_model.model.visual.attnpool) is AttentionPool2d  # the returned model keeps open_clip's
