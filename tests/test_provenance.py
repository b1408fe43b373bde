"""Provenance: pictures carry their metadata, `info` prints it, `generate --from` redraws them pixel for pixel, and
pictures without metadata, with other checkpoints or in another format are refused with a clear message."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_unclip import PROMPTS, write_tiny_checkpoints

from dalle2_edu.checkpoint import weights_digest
from dalle2_edu.cli import main
from dalle2_edu.pipeline import CHECKPOINT_FILES, GENERATE_SAMPLER, GENERATE_UPSAMPLE_STEPS, SEED_BLOCK, UnCLIP
from dalle2_edu.provenance import (
    METADATA_KEY,
    check_checkpoints,
    png_info,
    read_metadata,
    redraw,
    seed_group,
)

FAST = {"steps": 2, "prior_steps": 2, "upsample_steps": 2}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_tiny_checkpoints(tmp_path_factory.mktemp("checkpoints"))


@pytest.fixture(scope="module")
def pipe(folder):
    return UnCLIP.from_pretrained(folder)


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def rewrite(path, meta: dict, to) -> None:
    """Save the picture at ``path`` again as ``to`` with ``meta`` in place of its metadata."""
    Image.open(path).convert("RGB").save(to, pnginfo=png_info(meta))


def test_cli_round_trip_generate_info_redraw_gives_identical_pixels(folder, tmp_path, capsys):
    out = tmp_path / "gen"
    argv = ["generate", *PROMPTS, "--n", "2", "--steps", "2", "--out", str(out), "--checkpoints", str(folder),
            "--scale", "1", "--seed", "7", "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    picture = out / "01_1_blue-cap-with-dots-white-background.png"  # the last picture: prompt 1, copy 1
    meta = read_metadata(picture)
    assert meta["generated-by"] == "dalle2_edu" and meta["operation"] == "generate"
    assert (meta["prompt"], meta["index"], meta["seed"], meta["n"]) == (PROMPTS[1], 3, 7, 2)
    assert (meta["steps"], meta["guidance_scale"], meta["size"]) == (2, 3.0, [16, 16])
    assert meta["sampler"] == GENERATE_SAMPLER
    assert meta["use_prior"] is True and meta["upsample"] is True
    assert meta["upsample_steps"] == GENERATE_UPSAMPLE_STEPS
    assert meta["call"] == {"prompt_count": 2, "first_prompt": 0, "prompts": PROMPTS}
    for stage, file in CHECKPOINT_FILES.items():
        if stage == "upsampler128":  # the tiny folder has no second upsampler: the picture records none
            assert meta["checkpoints"][stage] is None
            continue
        assert meta["checkpoints"][stage] == {"file": file, "sha256": weights_digest(folder / file)}
    text = Image.open(picture).text
    assert text["Software"].startswith("dalle2_edu") and PROMPTS[1] in text["Description"]
    assert "grid.png" not in [p.name for p in out.iterdir() if p.suffix != ".png"]

    capsys.readouterr()
    assert main(["info", str(picture)]) == 0
    shown = capsys.readouterr().out
    assert f"prompt: {PROMPTS[1]}" in shown and "seed: 7" in shown and meta["checkpoints"]["decoder"]["sha256"] in shown
    assert main(["info", str(picture), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == meta

    again = tmp_path / "again"
    assert main(["generate", "--from", str(picture), "--checkpoints", str(folder), "--out", str(again),
                 "--device", "cpu"]) == 0  # fmt: skip
    assert "identical" in capsys.readouterr().out
    redrawn = again / picture.name
    assert np.array_equal(pixels(redrawn), pixels(picture))
    assert read_metadata(redrawn) == meta  # the redrawn picture carries the same metadata

    # redrawing into the picture's own folder never overwrites it
    assert main(["generate", "--from", str(picture), "--checkpoints", str(folder), "--out", str(out),
                 "--device", "cpu"]) == 0  # fmt: skip
    assert np.array_equal(pixels(out / f"{picture.stem}_redrawn.png"), pixels(picture))


def test_a_picture_beyond_the_first_seed_block_is_redrawn_exactly(pipe, tmp_path):
    n, batch = SEED_BLOCK + 3, 32  # two blocks; the decoder works 32 at a time
    kw = dict(n=n, seed=3, upsample=False, batch_size=batch, **FAST)
    full = pipe.generate(PROMPTS[0], **kw)
    # first_picture skips the groups before the picture and hands over exactly the call's pictures from it on
    rest = torch.cat([c.tensors for c in pipe.generate_batches(PROMPTS[0], first_picture=SEED_BLOCK + 1, **kw)])
    assert torch.equal(rest, full.tensors[SEED_BLOCK + 1 :])
    assert seed_group(SEED_BLOCK + 1, n, batch) == (SEED_BLOCK, n)
    path = full.save(tmp_path, indices=[SEED_BLOCK + 1])[0]
    assert path.name == f"00_{SEED_BLOCK + 1:02d}_a-red-striped-mug-on-a-wooden-table.png"
    again = redraw(pipe, path)
    assert again.start == SEED_BLOCK + 1 and torch.equal(again.tensors[0], full.tensors[SEED_BLOCK + 1])
    with pytest.raises(ValueError, match=r"first_picture must be an int in \[0, 66\]"):
        pipe.generate_batches(PROMPTS[0], first_picture=n, **kw)


def test_a_picture_of_a_later_prompt_in_a_long_call_records_only_its_seed_group(pipe, tmp_path):
    prompts = [PROMPTS[0]] * (SEED_BLOCK + 1) + [PROMPTS[1]]  # 66 prompts × n = 1: picture 65 is in block 1
    full = list(pipe.generate_batches(prompts, n=1, seed=2, upsample=False, **FAST))[-1]
    meta = full.metadata(len(full.prompts) - 1)
    assert meta["index"] == SEED_BLOCK + 1 and meta["prompt"] == PROMPTS[1]
    assert meta["call"] == {"prompt_count": SEED_BLOCK + 2, "first_prompt": SEED_BLOCK, "prompts": prompts[SEED_BLOCK:]}
    assert torch.equal(redraw(pipe, meta).tensors[0], full.tensors[-1])


def test_a_png_without_metadata_is_refused_with_a_clear_message(folder, tmp_path, capsys):
    plain = tmp_path / "plain.png"
    Image.new("RGB", (16, 16), "red").save(plain)
    with pytest.raises(ValueError, match="carries no dalle2_edu metadata .* not saved by dalle2_edu"):
        read_metadata(plain)
    assert main(["info", str(plain)]) == 1
    assert "carries no dalle2_edu metadata" in capsys.readouterr().err
    assert main(["generate", "--from", str(plain), "--checkpoints", str(folder), "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "python -m dalle2_edu generate" in err
    foreign = tmp_path / "foreign.png"
    Image.new("RGB", (4, 4)).save(foreign, pnginfo=png_info({"generated-by": "someone else"}))
    with pytest.raises(ValueError, match="dalle2_edu did not write"):
        read_metadata(foreign)


def test_a_file_that_is_not_a_png_is_refused(tmp_path, capsys):
    jpeg = tmp_path / "picture.jpg"
    Image.new("RGB", (16, 16), "blue").save(jpeg)
    with pytest.raises(ValueError, match="is a JPEG picture, not a PNG"):
        read_metadata(jpeg)
    text = tmp_path / "notes.png"
    text.write_text("not a picture at all")
    with pytest.raises(ValueError, match="not a picture Pillow can read"):
        read_metadata(text)
    assert main(["info", str(tmp_path / "missing.png")]) == 1
    assert "no picture" in capsys.readouterr().err


def test_metadata_naming_other_checkpoints_is_refused_naming_both(pipe, folder, tmp_path, capsys):
    out = pipe.generate(PROMPTS[0], n=1, seed=1, **FAST)
    path = out.save(tmp_path / "a")[0]
    meta = read_metadata(path)
    other = "0" * 64
    meta["checkpoints"]["decoder"]["sha256"] = other
    moved = tmp_path / "other.png"
    rewrite(path, meta, moved)
    mine = weights_digest(folder / CHECKPOINT_FILES["decoder"])
    with pytest.raises(ValueError, match=f"decoder weights sha256 {other} .* holds sha256 {mine}"):
        check_checkpoints(pipe, moved)
    assert main(["generate", "--from", str(moved), "--checkpoints", str(folder), "--out", str(tmp_path / "b")]) == 1
    err = capsys.readouterr().err
    assert other in err and mine in err and "--checkpoints" in err
    assert not (tmp_path / "b").exists() or not any((tmp_path / "b").iterdir())  # refused before drawing


def test_generate_needs_prompts_or_from_but_not_both(folder, tmp_path, capsys):
    assert main(["generate", "--checkpoints", str(folder), "--out", str(tmp_path)]) == 1
    assert "needs one or more prompts" in capsys.readouterr().err
    picture = UnCLIP.from_pretrained(folder).generate(PROMPTS[0], n=1, **FAST).save(tmp_path)[0]
    assert main(["generate", PROMPTS[0], "--from", str(picture), "--checkpoints", str(folder)]) == 1
    assert "not both" in capsys.readouterr().err


def test_edits_record_their_settings_and_an_unrecorded_source_cannot_be_redrawn(pipe, tmp_path):
    source = pipe.generate(PROMPTS[0], n=1, seed=0, **FAST).tensors
    out = pipe.variations(source, n=2, steps=2, upsample_steps=2, seed=5)
    meta = out.metadata(1)
    assert (meta["operation"], meta["index"], meta["seed"], meta["eta"], meta["n"]) == ("variations", 1, 5, 0.8, 2)
    assert meta["checkpoints"]["clip"]["sha256"] == weights_digest(pipe.checkpoint_files["clip"])
    with pytest.raises(ValueError, match="does not record the picture it started from"):
        redraw(pipe, meta)
    meta = pipe.text_diff(source, PROMPTS[0], "a blue striped mug on a wooden table", amount=[0.2, 0.4], steps=2,
                          upsample_steps=2).metadata(0)  # fmt: skip
    assert meta["operation"] == "text_diff" and meta["amount"] == [0.2, 0.4]


def test_save_refuses_bad_indices_and_a_folder_that_is_a_file(pipe, tmp_path):
    out = pipe.generate(PROMPTS[0], n=2, **FAST)
    with pytest.raises(ValueError, match=r"index must be an int in \[0, 1\] \(this Generation holds 2 pictures\)"):
        out.save(tmp_path, indices=[2])
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="is a file"):
        out.save(tmp_path / "file")
    made_by_hand = type(out)(out.tensors, out.prompts, out.image_emb, out.low_res)
    assert made_by_hand.metadata(0)["operation"] == "unknown"  # still marked as dalle2_edu's, with what it knows
    assert read_metadata(made_by_hand.save(tmp_path / "plain")[0])["prompt"] == PROMPTS[0]
    with pytest.raises(ValueError, match="unknown.* cannot be redrawn"):
        redraw(pipe, made_by_hand.metadata(0))
    assert METADATA_KEY in Image.open(out.save(tmp_path / "x")[0]).text


def test_a_record_without_a_sampler_is_redrawn_with_ddim_whatever_the_methods_default():
    from dalle2_edu.provenance import DEFAULT_SAMPLER, _call_kwargs

    def method(prompt, steps=10, sampler="dpmpp2m"):  # a later default: old records must not pick it up
        return None

    assert DEFAULT_SAMPLER == "ddim"
    assert _call_kwargs(method, {"steps": 25, "seed": 1}, skip=())["sampler"] == "ddim"
    assert _call_kwargs(method, {"steps": 25, "sampler": "euler"}, skip=())["sampler"] == "euler"

    def no_sampler(prompt, steps=10):
        return None

    assert "sampler" not in _call_kwargs(no_sampler, {"steps": 25}, skip=())
    with pytest.raises(ValueError, match="'euler' sampler"):
        _call_kwargs(no_sampler, {"steps": 25, "sampler": "euler", "version": "0.9"}, skip=())


def test_a_record_without_an_upsampler_spacing_is_redrawn_evenly_spaced(pipe, tmp_path):
    from dalle2_edu.provenance import _call_kwargs

    kwargs = _call_kwargs(pipe.generate_batches, {"steps": 3, "upsample_steps": 3}, skip=())
    assert kwargs["upsample_spacing"] == "even"  # drawn before generate took the quadratic spacing
    assert _call_kwargs(pipe.generate_batches, {"upsample_spacing": "quad"}, skip=())["upsample_spacing"] == "quad"
    kw = {**FAST, "upsample_steps": 3}  # 3 of 20 steps: the two spacings differ
    out = pipe.generate(PROMPTS[0], n=1, seed=2, **kw)
    meta = out.metadata(0)
    assert meta["upsample_spacing"] == "quad"
    assert torch.equal(redraw(pipe, out.save(tmp_path)[0]).tensors[0], out.tensors[0])
    even = pipe.generate(PROMPTS[0], n=1, seed=2, upsample_spacing="even", **kw)
    assert not torch.equal(even.tensors, out.tensors)
    old = {k: v for k, v in meta.items() if k != "upsample_spacing"}
    assert torch.equal(redraw(pipe, old).tensors[0], even.tensors[0])
