"""The unCLIP pipeline on tiny, untrained stages saved to a temporary folder: wiring, seeds, shapes, errors, CLI."""

import pytest
import torch
from tiny_unclip import PROMPTS, D, write_tiny_checkpoints

from dalle2_edu.datasets.catalogue import BACKGROUNDS, CATEGORIES, COLOUR_NAMES, HELD_OUT_PAIRS, PATTERNS, parse_caption
from dalle2_edu.evaluate import eval_prompts
from dalle2_edu.pipeline import CHECKPOINT_FILES, UnCLIP


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
        (dict(n=0), "n must be a positive int"),
        (dict(n=2.5), "n must be a positive int"),
        (dict(steps=0), "steps must be a positive int"),
        (dict(guidance_scale=-1.0), "guidance_scale"),
    ],
)
def test_bad_arguments_are_named(pipe, kwargs, match):
    with pytest.raises(ValueError, match=match):
        run(pipe, **kwargs)


def test_missing_folder_and_files_say_how_to_make_them(folder, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist.*pretrain"):
        UnCLIP.from_pretrained(tmp_path / "nowhere")
    (tmp_path / CHECKPOINT_FILES["clip"]).write_bytes((folder / CHECKPOINT_FILES["clip"]).read_bytes())
    with pytest.raises(FileNotFoundError, match="prior.safetensors.*pretrain"):
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
