"""The unCLIP pipeline on tiny, untrained stages saved to a temporary folder: wiring, seeds, shapes, errors, batches,
prompts, CLI."""

import argparse
import itertools

import numpy as np
import pytest
import torch
from tiny_unclip import PROMPTS, D, write_tiny_checkpoints

from dalle2_edu.datasets.catalogue import BACKGROUNDS, CATEGORIES, COLOUR_NAMES, HELD_OUT_PAIRS, PATTERNS, parse_caption
from dalle2_edu.evaluate import eval_prompts
from dalle2_edu.pipeline import CHECKPOINT_FILES, GENERATE_SAMPLER, SEED_BLOCK, UnCLIP, block_seed


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_tiny_checkpoints(tmp_path_factory.mktemp("checkpoints"))


@pytest.fixture(scope="module")
def pipe(folder):
    return UnCLIP.from_pretrained(folder)


def run(pipe, prompt=PROMPTS, **kw):
    return pipe.generate(prompt, **{"n": 2, "steps": 3, "prior_steps": 3, "upsample_steps": 2, "seed": 0, **kw})


def test_generate_shapes_order_and_pil_output(pipe):
    out = run(pipe)
    assert out.tensors.shape == (4, 3, 16, 16) and out.low_res.shape == (4, 3, 8, 8)
    assert out.tensors.min() >= -1 and out.tensors.max() <= 1
    assert out.prompts == [PROMPTS[0]] * 2 + [PROMPTS[1]] * 2
    assert out.image_emb.shape == (4, D)
    images = out.images
    assert len(images) == 4 and images[0].size == (16, 16) and images[0].mode == "RGB"
    assert out.grid().size == (2 * 16 + 3 * 2, 2 * 16 + 3 * 2)  # 2 per row, 2 px padding
    assert run(pipe, upsample=False).tensors.shape == (4, 3, 8, 8)


def test_same_seed_same_images_other_seed_other_images(pipe):
    a, b, c = run(pipe, seed=5), run(pipe, seed=5), run(pipe, seed=6)
    assert torch.equal(a.tensors, b.tensors)
    assert not torch.equal(a.tensors, c.tensors)
    assert not torch.equal(a.image_emb, c.image_emb)  # the prior's draw depends on the seed too


def test_no_prior_feeds_the_text_embedding_to_the_decoder(pipe):
    out = run(pipe, use_prior=False)
    text_emb = pipe.clip.encode_text(PROMPTS).repeat_interleave(2, dim=0)
    assert torch.allclose(out.image_emb, text_emb, atol=1e-5)
    assert not torch.allclose(out.image_emb, run(pipe).image_emb)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(prompt=""), "non-empty string"),
        (dict(prompt=[]), "non-empty"),
        (dict(prompt=["a red mug", "  "]), "non-empty string"),
        (dict(prompt="a red submarine"), "submarine"),
        (dict(n=0), "n must be an int >= 1, got 0"),
        (dict(n=2.5), "n must be an int >= 1, got 2.5"),
        (dict(steps=0), "steps must be an int >= 1, got 0"),
        (dict(guidance_scale=-1.0), "guidance_scale must be a finite number >= 0"),
        (dict(guidance_scale=float("nan")), "guidance_scale must be a finite number >= 0 .*got nan"),
        (dict(prior_guidance_scale=float("inf")), "prior_guidance_scale must be a finite number >= 0 .*got inf"),
        (dict(n_candidates=0), "n_candidates must be an int >= 1"),
        (dict(batch_size=0), "batch_size must be an int >= 1"),
        (dict(upsample_steps=True), "upsample_steps must be an int >= 1, got True"),
    ],
)
def test_bad_arguments_are_named(pipe, kwargs, match):
    with pytest.raises(ValueError, match=match):
        run(pipe, **kwargs)


def test_missing_folder_and_files_say_how_to_make_them(folder, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist.*train all"):
        UnCLIP.from_pretrained(tmp_path / "nowhere")
    (tmp_path / CHECKPOINT_FILES["clip"]).write_bytes((folder / CHECKPOINT_FILES["clip"]).read_bytes())
    with pytest.raises(FileNotFoundError, match="prior.safetensors.*train all"):
        UnCLIP.from_pretrained(tmp_path)
    for stage in ("prior", "decoder"):
        (tmp_path / CHECKPOINT_FILES[stage]).write_bytes((folder / CHECKPOINT_FILES[stage]).read_bytes())
    no_upsampler = UnCLIP.from_pretrained(tmp_path)  # the upsampler is optional: bilinear instead
    assert no_upsampler.upsampler is None
    assert run(no_upsampler).tensors.shape == (4, 3, 16, 16)


def test_cli_generate_writes_a_grid_and_pictures(folder, tmp_path):
    from dalle2_edu.cli import main

    out = tmp_path / "out"
    main(["generate", *PROMPTS, "--n", "2", "--steps", "2", "--out", str(out), "--checkpoints", str(folder),
          "--scale", "1", "--device", "cpu"])  # fmt: skip
    assert (out / "grid.png").exists()
    assert len(list(out.glob("0*_*.png"))) == 4


def test_eval_prompts_cover_seen_and_held_out_combinations():
    seen, seen_labels = eval_prompts("seen")
    held, held_labels = eval_prompts("heldout")
    n_pairs = len(CATEGORIES) * len(COLOUR_NAMES)
    assert len(seen) == (n_pairs - len(HELD_OUT_PAIRS)) * len(PATTERNS) and len(held) == len(HELD_OUT_PAIRS) * 3
    for prompts, labels in ((seen, seen_labels), (held, held_labels)):
        for p, row in zip(prompts, labels.tolist()):
            names = parse_caption(p)
            assert [CATEGORIES.index(names["category"]), COLOUR_NAMES.index(names["colour"]),
                    PATTERNS.index(names["pattern"]), BACKGROUNDS.index(names["background"])] == row  # fmt: skip
    held_pairs = {(CATEGORIES[c], COLOUR_NAMES[k]) for c, k, _, _ in held_labels.tolist()}
    assert held_pairs == set(HELD_OUT_PAIRS)
    assert not {(CATEGORIES[c], COLOUR_NAMES[k]) for c, k, _, _ in seen_labels.tolist()} & set(HELD_OUT_PAIRS)
    with pytest.raises(ValueError, match="seen"):
        eval_prompts("train")


def test_cli_demo_grades_its_pictures(folder, tmp_path, monkeypatch):
    import json

    from dalle2_edu import cli

    monkeypatch.setattr(cli, "DEMO_PROMPTS", tuple(PROMPTS))
    out = tmp_path / "demo"
    assert cli.main(["demo", "--checkpoints", str(folder), "--steps", "2", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["fidelity"]["n"] == 8 and 0 <= report["fidelity"]["colour"] <= 1
    assert (out / "grid.png").read_bytes()[:4] == b"\x89PNG"


# ------------------------------------------------------------------------------------------------ one rule per argument
PICTURE = torch.zeros(1, 3, 16, 16)
MASK = torch.ones(16, 16)


def calls(pipe):
    """Every entry point that takes a guidance scale, by name, with the keywords to add."""
    return {
        "generate": lambda **kw: run(pipe, **kw),
        "variations": lambda **kw: pipe.variations(PICTURE, n=1, steps=2, **kw),
        "interpolate": lambda **kw: pipe.interpolate(PICTURE, PICTURE, steps=2, decoder_steps=2, **kw),
        "text_diff": lambda **kw: pipe.text_diff(PICTURE, PROMPTS[0], PROMPTS[1], steps=2, **kw),
        "inpaint": lambda **kw: pipe.inpaint(PICTURE, MASK, PROMPTS[0], n=1, steps=2, **kw),
        "decode": lambda **kw: pipe.decode(torch.zeros(1, D), steps=2, **kw),
    }


@pytest.mark.parametrize("entry", ["generate", "variations", "interpolate", "text_diff", "inpaint", "decode"])
@pytest.mark.parametrize("scale", [float("nan"), -5, float("inf"), np.float32("nan"), True])
def test_every_entry_point_refuses_a_bad_guidance_scale_with_generates_message(pipe, entry, scale):
    with pytest.raises(ValueError) as expected:
        run(pipe, guidance_scale=scale)
    with pytest.raises(ValueError) as got:
        calls(pipe)[entry](guidance_scale=scale)
    assert str(got.value) == str(expected.value)
    assert str(got.value).startswith("guidance_scale must be a finite number >= 0")


@pytest.mark.parametrize("eta", [float("nan"), -0.5, 1.5, float("inf")])
def test_variations_and_decode_refuse_a_bad_eta(pipe, eta):
    with pytest.raises(ValueError, match=r"eta must be a finite number in \[0, 1\]"):
        pipe.variations(PICTURE, n=1, steps=2, eta=eta)
    with pytest.raises(ValueError, match=r"eta must be a finite number in \[0, 1\]"):
        pipe.decode(torch.zeros(1, D), eta=eta)


def test_numpy_and_0d_tensor_numbers_are_taken_like_python_ones(pipe):
    a = run(pipe, guidance_scale=2.5, n=np.int64(2), steps=np.int32(3), seed=np.uint8(4))
    b = run(pipe, guidance_scale=np.float32(2.5), n=2, steps=3, seed=torch.tensor(4))
    assert torch.equal(a.tensors, b.tensors)


@pytest.mark.parametrize(
    "entry",
    ["generate", "variations", "interpolate", "text_diff", "inpaint", "decode", "image_embeddings_from_text",
     "upsample", "generate_batches", "decoder_start_noise"],
)  # fmt: skip
@pytest.mark.parametrize("seed", [2**63, 2**64, -1, 1.5, True])
def test_every_entry_point_refuses_a_bad_seed(pipe, entry, seed):
    everywhere = {
        **calls(pipe),
        "image_embeddings_from_text": lambda **kw: pipe.image_embeddings_from_text(PROMPTS, 1, **kw),
        "upsample": lambda **kw: pipe.upsample(torch.zeros(1, 3, 8, 8), steps=2, **kw),
        "generate_batches": lambda **kw: pipe.generate_batches(PROMPTS, n=1, **kw),
        "decoder_start_noise": lambda **kw: pipe.decoder_start_noise(3, **kw),
    }
    with pytest.raises(ValueError, match=r"^seed must be an int in \[0, 9223372036854775807\]"):
        everywhere[entry](seed=seed)


def test_empty_batches_are_refused_by_name(pipe):
    with pytest.raises(ValueError, match=r"image_emb is an empty batch, shape \(0, 16\)"):
        pipe.decode(torch.zeros(0, D), steps=2)
    with pytest.raises(ValueError, match="low_res is an empty batch"):
        pipe.invert(torch.zeros(0, 3, 8, 8), torch.zeros(0, D), steps=2)
    with pytest.raises(ValueError, match="image is an empty batch"):
        pipe.encode_image(torch.zeros(0, 3, 16, 16))


def test_the_largest_seed_works(pipe):
    out = run(pipe, seed=2**63 - 1)
    assert out.tensors.shape == (4, 3, 16, 16) and torch.isfinite(out.tensors).all()


# ------------------------------------------------------------------------------------------------ batches
def test_pictures_do_not_depend_on_the_batch_size(pipe):
    # 2 prompts x 35 = 70 pictures: two seed blocks, and batch sizes that cut across them
    kw = dict(n=35, steps=2, prior_steps=2, upsample_steps=2, seed=3)
    whole = pipe.generate(PROMPTS, batch_size=1000, **kw)
    for batch_size in (2, 64, 100):
        part = pipe.generate(PROMPTS, batch_size=batch_size, **kw)
        assert torch.equal(part.image_emb, whole.image_emb)  # the prior runs per seed block, whatever the batch size
        # the same noise; only the float rounding of a differently sized batch differs (measured up to 3e-5)
        assert torch.allclose(part.low_res, whole.low_res, atol=1e-4)
        assert torch.allclose(part.tensors, whole.tensors, atol=1e-4)
        assert part.prompts == whole.prompts == [PROMPTS[0]] * 35 + [PROMPTS[1]] * 35
    assert not torch.allclose(whole.tensors[:35], whole.tensors[35:70], atol=0.1)  # blocks draw different noise


def test_a_call_within_one_seed_block_is_the_stages_run_by_hand(pipe):
    out = run(pipe, seed=5)
    z = pipe.image_embeddings_from_text(PROMPTS, 2, prior_steps=3, seed=5)
    low = pipe.decode(z, 3.0, 3, seed=6, sampler=GENERATE_SAMPLER)  # decode's own default stays DDIM (the edits')
    assert torch.equal(out.image_emb, z) and torch.equal(out.low_res, low)
    assert torch.equal(out.tensors, pipe.upsample(low, 2, seed=7, sampler=GENERATE_SAMPLER))
    three = run(pipe, seed=5, upsample_steps=3)  # generate's upsampler visits DDIM's quadratic spacing of steps
    quad = pipe.upsample(low, 3, seed=7, sampler=GENERATE_SAMPLER, spacing="quad")
    assert torch.equal(three.tensors, quad) and not torch.equal(quad, pipe.upsample(low, 3, seed=7, sampler="ddpm"))
    ddim = run(pipe, seed=5, sampler="ddim")  # and generate with DDIM is decode and upsample with their defaults
    assert torch.equal(ddim.low_res, pipe.decode(z, 3.0, 3, seed=6))
    assert torch.equal(ddim.tensors, pipe.upsample(ddim.low_res, 2, seed=7))
    assert torch.equal(
        pipe.decoder_start_noise(4, seed=5), torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(6))
    )
    assert block_seed(5, 0) == 5 and len({block_seed(s, k) for s in range(3) for k in range(3)}) == 9


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_generate_batches_streams_chunks_of_at_most_batch_size(pipe, monkeypatch, sampler):
    kw = dict(n=35, steps=2, prior_steps=2, upsample_steps=2, seed=1, sampler=sampler)
    decoded, upsampled = [], []
    decode, upsample = pipe.decode, pipe.upsample
    monkeypatch.setattr(pipe, "decode", lambda z, *a, **k: decoded.append(len(z)) or decode(z, *a, **k))
    monkeypatch.setattr(pipe, "upsample", lambda x, *a, **k: upsampled.append(len(x)) or upsample(x, *a, **k))
    chunks = pipe.generate_batches(PROMPTS, batch_size=16, **kw)
    assert not decoded  # nothing is drawn before the first chunk is asked for
    first = next(chunks)
    # a deterministic sampler decodes batch_size pictures at a time; a stochastic one a seed block at a time (its
    # step noise comes from the block's seed), as the prior and the upsampler always do
    bound = 16 if sampler == "ddim" else SEED_BLOCK
    assert len(first.prompts) == 16 and first.start == 0 and max(decoded) <= bound
    rest = list(chunks)
    assert [c.start for c in rest] == [16, 32, 48, 64] and [len(c.prompts) for c in rest] == [16, 16, 16, 6]
    assert max(decoded) <= bound and max(upsampled) <= SEED_BLOCK  # working memory is bounded, not growing with n
    whole = pipe.generate(PROMPTS, batch_size=16, **kw)
    assert torch.equal(torch.cat([first.tensors, *(c.tensors for c in rest)]), whole.tensors)
    assert [p for c in [first, *rest] for p in c.prompts] == whole.prompts
    assert sum(c.timings["decoder_s"] for c in [first, *rest]) == pytest.approx(whole.timings["decoder_s"], rel=2)


def test_generate_batches_checks_its_arguments_before_the_first_chunk(pipe):
    with pytest.raises(ValueError, match="submarine"):
        pipe.generate_batches("a red submarine", n=2)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        pipe.generate_batches(PROMPTS, batch_size=0)


def test_a_repeated_prompt_gets_a_row_of_its_own(pipe):
    out = run(pipe, prompt=[PROMPTS[0], PROMPTS[0]])
    assert out.tensors.shape == (4, 3, 16, 16) and out.prompts == [PROMPTS[0]] * 4
    assert out.grid().size == (2 * 16 + 3 * 2, 2 * 16 + 3 * 2)  # two rows of two, not one row of four
    assert not torch.equal(out.tensors[:2], out.tensors[2:])  # each copy draws its own pictures
    assert out.grid(nrow=4).size == (4 * 16 + 5 * 2, 16 + 2 * 2)


# ------------------------------------------------------------------------------------------------ CLIP inputs
def test_prompts_ending_in_punctuation_read_as_without_it(pipe):
    plain = run(pipe, prompt=PROMPTS)
    for mark in (".", "!", "?!", "…"):
        out = run(pipe, prompt=[PROMPTS[0] + mark, f'"{PROMPTS[1]}"{mark}'])
        assert torch.equal(out.tensors, plain.tensors)
    with pytest.raises(ValueError, match=r"unknown prompt word\(s\) \['submarine'\]"):
        run(pipe, prompt="a red submarine.")
    with pytest.raises(ValueError, match="holds only punctuation"):
        run(pipe, prompt="...")


def test_the_shipped_clip_reads_every_catalogue_caption_as_before_and_takes_full_stops():
    import open_clip

    from dalle2_edu.datasets.catalogue import make_caption
    from dalle2_edu.stages.clip import load_clip

    tokenizer = load_clip("data/checkpoints/clip_tiny.safetensors").tokenizer
    products = itertools.product(CATEGORIES, COLOUR_NAMES, PATTERNS, BACKGROUNDS, range(4))
    captions = sorted({
        make_caption(dict(category=c, colour=k, pattern=p, background=b), np.random.default_rng(i))
        for i, (c, k, p, b, _) in enumerate(products)
    })  # fmt: skip
    assert len(captions) > 2000 and any("," in c for c in captions) and any(":" in c for c in captions)
    # the compact ids stand for exactly open_clip's BPE ids, punctuation included: what the checkpoint was trained on
    expected = open_clip.tokenize(captions, context_length=tokenizer.context_length)
    assert torch.equal(tokenizer.to_bpe(tokenizer(captions)), expected)
    assert torch.equal(tokenizer("a red mug on white."), tokenizer("a red mug on white"))
    assert torch.equal(tokenizer("blue cap with dots, white background!"), tokenizer(PROMPTS[1]))


class _Settings:  # a Python object inside a weights file, as training scripts often store their settings
    lr = 1e-3


def test_a_pickled_open_clip_file_is_refused_without_suggesting_to_unpickle_it(folder, tmp_path):
    from dalle2_edu.stages.clip import load_clip, load_pretrained_open_clip

    clip = load_clip(folder / CHECKPOINT_FILES["clip"])
    config = clip.config.open_clip_config()
    for extra in (_Settings(), argparse.Namespace(lr=1e-3)):
        path = tmp_path / "epoch_3.pt"
        torch.save({"state_dict": clip.model.state_dict(), "args": extra}, path)
        with pytest.raises(ValueError) as err:
            load_pretrained_open_clip("dalle2-edu-test-pickle", path, model_config=config)
        message = str(err.value)
        assert "pickle" in message and "not loaded" in message and "safetensors" in message
        assert "weights_only" not in message and err.value.__cause__ is None and err.value.__suppress_context__
    torch.save(clip.model.state_dict(), tmp_path / "plain.pt")  # tensors only: loads as before
    model, _, _ = load_pretrained_open_clip("dalle2-edu-test-pickle", tmp_path / "plain.pt")
    assert not model.training


def test_size_stops_the_cascade_where_asked_and_the_second_upsampler_adds_a_stage(folder):
    """size = the decoder's side (no upsampler), twice it (the first upsampler, the default) or four times it (the
    second upsampler, loaded from upsampler128.safetensors when present)."""
    from tiny_unclip import perturbed

    from dalle2_edu.nets.unet import UNetConfig
    from dalle2_edu.stages.upsampler import Upsampler, UpsamplerConfig, save_upsampler

    pipe = UnCLIP.from_pretrained(folder)
    assert pipe.sizes == [8, 16] and pipe.upsampler128 is None
    assert torch.equal(run(pipe, size=8).tensors, run(pipe, upsample=False).tensors)
    assert torch.equal(run(pipe, size=16).tensors, run(pipe).tensors)
    with pytest.raises(ValueError, match="upsampler128"):
        run(pipe, size=32)  # four times the decoder's side needs the second upsampler
    with pytest.raises(ValueError, match="8, 16"):
        run(pipe, size=12)

    second = folder.parent / "with_second"
    second.mkdir()
    for f in folder.iterdir():
        (second / f.name).write_bytes(f.read_bytes())
    unet = UNetConfig.tiny(image_size=32, attention_resolutions=(), low_res_channels=3).to_dict()
    save_upsampler(perturbed(Upsampler(UpsamplerConfig(unet=unet, diffusion={"num_timesteps": 20}, crop_size=8)), 3),
                   second / CHECKPOINT_FILES["upsampler128"])  # fmt: skip
    pipe2 = UnCLIP.from_pretrained(second)
    assert pipe2.sizes == [8, 16, 32] and "upsampler128" in pipe2.checkpoint_files
    big, mid = run(pipe2, size=32), run(pipe2)
    assert big.tensors.shape == (4, 3, 32, 32) and torch.equal(big.low_res, mid.low_res)
    assert torch.equal(mid.tensors, run(pipe, size=16).tensors)  # the default still stops at the first upsampler
    assert big.settings["size"] == 32
    from dalle2_edu.stages.upsampler import upsample

    low = mid.low_res[:2]
    by_hand = upsample(*pipe2.upsampler128, upsample(*pipe2.upsampler, low, steps=2, seed=5), steps=2, seed=6)
    assert torch.equal(pipe2.upsample(low, 2, seed=5, size=32), by_hand)  # stage 2 draws from seed + 1


def test_generate_picks_the_upsamplers_spacing_by_sampler_and_refuses_bad_ones(pipe):
    assert run(pipe, seed=1).metadata(0)["upsample_spacing"] == "quad"  # ddpm's default
    assert run(pipe, seed=1, sampler="dpmpp2m").metadata(0)["upsample_spacing"] == "even"  # a solver picks its own
    with pytest.raises(ValueError, match="upsample_spacing='quad' applies to the ddim and ddpm samplers"):
        run(pipe, sampler="euler", upsample_spacing="quad")
    with pytest.raises(ValueError, match="upsample_spacing must be one of even, quad"):
        run(pipe, upsample_spacing="log")
