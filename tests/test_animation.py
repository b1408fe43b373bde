"""Product animations on tiny stages: prompt-to-prompt, picture-to-picture and colour sweeps; GIF and WebP written
with the frames given; the measures; bad input refused with a clear message."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_unclip import PROMPTS, write_tiny_checkpoints

from dalle2_edu.animation import animation_report, colour_prompts, frame_changes, save_animation
from dalle2_edu.cli import main
from dalle2_edu.pipeline import UnCLIP

FAST = {"steps": 2, "prior_steps": 2, "upsample_steps": 2}
MUG = "a {colour} striped mug on a wooden table"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_tiny_checkpoints(tmp_path_factory.mktemp("checkpoints"))


@pytest.fixture(scope="module")
def pipe(folder):
    return UnCLIP.from_pretrained(folder)


def test_prompt_to_prompt_starts_and_ends_at_the_pictures_generate_draws(pipe):
    out = pipe.animate(PROMPTS[0], PROMPTS[1], frames=4, seed=2, **FAST)
    assert out.tensors.shape == (4, 3, 16, 16) and out.nrow == 4
    assert out.prompts[0] == PROMPTS[0] and out.prompts[-1] == PROMPTS[1] and "0.33 of the way" in out.prompts[1]
    for frame, prompt in ((0, PROMPTS[0]), (3, PROMPTS[1])):  # same prior draw, same decoder noise as generate
        ref = pipe.generate(prompt, n=1, seed=2, upsample=False, sampler="ddim", **FAST)  # animations run DDIM
        assert torch.allclose(out.image_emb[frame], ref.image_emb[0], atol=1e-4)
        assert torch.allclose(out.low_res[frame], ref.low_res[0], atol=1e-4)
    # every frame is upsampled from the same starting noise: as if it were upsampled alone with seed + 2
    assert torch.allclose(out.tensors[1], pipe.upsample(out.low_res[1:2], 2, seed=4)[0], atol=1e-4)
    again = pipe.animate(PROMPTS[0], PROMPTS[1], frames=4, seed=2, **FAST)
    assert torch.equal(out.tensors, again.tensors)  # one seed fixes every draw
    assert not torch.equal(out.tensors, pipe.animate(PROMPTS[0], PROMPTS[1], frames=4, seed=3, **FAST).tensors)
    assert out.settings["operation"] == "animate" and out.settings["keys"] == PROMPTS


def test_colour_sweep_passes_every_colour_and_loops_back(pipe):
    assert colour_prompts(MUG, ["red", "orange"]) == ["a red striped mug on a wooden table",
                                                       "an orange striped mug on a wooden table"]  # fmt: skip
    assert colour_prompts("a red mug on white", ["blue", "green"]) == ["a blue mug on white", "a green mug on white"]
    out = pipe.animate(MUG, colours=["red", "blue", "black"], frames=6, loop=True, **FAST)
    keys = colour_prompts(MUG, ["red", "blue", "black"])
    assert [out.prompts[j] for j in (0, 2, 4)] == keys  # 6 frames over 3 segments: a key every other frame
    assert "of the way from" in out.prompts[5] and keys[0] in out.prompts[5]  # on its way back to red
    report = animation_report(out)
    assert report["frames"] == 6 and len(report["category_read"]) == 6 and report["category"] == "mug"
    assert report["key_colours"] == ["red", "blue", "black"] and 0 <= report["key_colour_accuracy"] <= 1
    assert report["frame_change_max"] >= report["frame_change_mean"] > 0


def test_picture_to_picture_follows_interpolate(pipe):
    a, b = (pipe.generate(p, n=1, seed=0, **FAST).tensors for p in PROMPTS)
    out = pipe.animate(a, b, frames=3, steps=2, upsample=False)
    ref = pipe.interpolate(a, b, steps=3, decoder_steps=2, upsample=False)
    assert torch.equal(out.tensors, ref.tensors)
    with pytest.raises(ValueError, match="both be prompts or both be pictures"):
        pipe.animate(PROMPTS[0], b, frames=3)
    with pytest.raises(ValueError, match="cannot loop back"):
        pipe.animate(a, b, frames=3, loop=True)


def test_frame_changes_are_mean_absolute_pixel_changes():
    frames = torch.full((3, 3, 4, 4), -1.0)
    frames[1] = 1.0  # 0 → 255 → 0 levels
    assert frame_changes(frames).tolist() == [255.0, 255.0]


def test_gif_and_webp_hold_every_frame(pipe, tmp_path):
    out = pipe.animate(PROMPTS[0], PROMPTS[1], frames=5, **FAST)
    gif, webp = save_animation(out.tensors, tmp_path / "mug.gif", duration=60, scale=2, comment={"seed": 0})
    for path in (gif, webp):
        with Image.open(path) as image:
            assert image.n_frames == 5 and image.size == (32, 32)
    expected = np.asarray(out.images[-1].resize((32, 32), Image.NEAREST), dtype=np.int16)
    with Image.open(gif) as image:
        assert image.info["duration"] == 60 and json.loads(image.info["comment"]) == {"seed": 0}
        image.seek(4)
        last = np.asarray(image.convert("RGB"), dtype=np.int16)
    assert np.abs(last - expected).mean() < 8  # the GIF's palette rounds colours a little
    with Image.open(webp) as image:  # lossless: the last WebP frame is the last picture exactly
        image.seek(4)
        assert np.array_equal(np.asarray(image.convert("RGB"), dtype=np.int16), expected)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda p, t: p.animate(PROMPTS[0], PROMPTS[1], frames=1), r"frames must be an int >= 2 \(the two ends"),
        (lambda p, t: p.animate(MUG, colours=["red", "teal"]), r"unknown colour\(s\) 'teal'; choose among red, "),
        (lambda p, t: p.animate(MUG, colours=["red"]), "at least two colours"),
        (lambda p, t: p.animate("a mug on white", colours="all"), "names no colour"),
        (lambda p, t: p.animate(PROMPTS[0], PROMPTS[1], colours="all"), "not both"),
        (lambda p, t: p.animate(PROMPTS[0]), "not neither"),
        (lambda p, t: p.animate("a red submarine", PROMPTS[1], frames=2), "submarine"),
        (lambda p, t: save_animation(torch.zeros(3, 3, 8, 8), t / "missing" / "a.gif"),
         "the folder '.*missing' does not exist; create it first"),
        (lambda p, t: save_animation(torch.zeros(3, 3, 8, 8), t / "a.png"), r"name the file \*.gif"),
        (lambda p, t: save_animation(torch.zeros(1, 3, 8, 8), t / "a.gif"), "frames must be an int >= 2"),
        (lambda p, t: save_animation(torch.zeros(3, 3, 8, 8), t / "a.gif", duration=5), "duration must be an int >="),
    ],
)  # fmt: skip
def test_bad_input_is_refused_with_a_clear_message(pipe, tmp_path, call, match):
    with pytest.raises(ValueError, match=match):
        call(pipe, tmp_path)


def test_cli_animate_writes_gif_and_webp_and_measures(folder, tmp_path, capsys):
    gif = tmp_path / "sweep.gif"
    argv = ["animate", MUG, "--colours", "red,blue", "--frames", "3", "--steps", "2", "--out", str(gif),
            "--checkpoints", str(folder), "--scale", "1", "--device", "cpu", "--measure"]  # fmt: skip
    assert main(argv) == 0
    shown = capsys.readouterr().out
    assert "frame-to-frame change" in shown and "category held in" in shown
    assert Image.open(gif).n_frames == 3 and Image.open(gif.with_suffix(".webp")).n_frames == 3
    assert main(["animate", PROMPTS[0], PROMPTS[1], "--frames", "1", "--out", str(gif)]) == 1
    assert "--frames must be an int >= 2" in capsys.readouterr().err
    assert main(["animate", PROMPTS[0], PROMPTS[1], "--out", str(tmp_path / "no" / "a.gif")]) == 1
    assert "does not exist; create it first" in capsys.readouterr().err
    assert main(["animate", MUG, "--colours", "red,teal", "--checkpoints", str(folder), "--out", str(gif)]) == 1
    assert "unknown colour(s) 'teal'" in capsys.readouterr().err
