"""The playground's pick, save and edit, without a browser: press the toggles and buttons in Python, then check the
files written, their metadata, and that the edits are the package's calls on the picked picture."""

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_unclip import PROMPTS, write_tiny_checkpoints

from dalle2_edu.pipeline import UnCLIP
from dalle2_edu.provenance import read_metadata, redraw
from dalle2_edu.widgets import REGIONS, PromptPlayground, region_mask


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    return UnCLIP.from_pretrained(write_tiny_checkpoints(tmp_path_factory.mktemp("checkpoints")))


def playground(pipe, tmp_path, **kw):
    return PromptPlayground(pipe, prompt=PROMPTS[0], n=2, steps=2, prior_steps=2, seed=3,
                            save_folder=str(tmp_path / "picked"), **kw)  # fmt: skip


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_save_writes_the_picked_pictures_with_metadata_that_redraws_them(pipe, tmp_path):
    play = playground(pipe, tmp_path)
    play.generate_button.click()
    assert len(play.picks) == 2 and not any(t.value for t in play.picks)
    play.picks[1].value = True
    play.save_button.click()
    assert len(play.saved) == 1 and play.saved[0].parent == tmp_path / "picked"
    assert "saved 1 picture(s)" in play.status.value and play.saved[0].name in play.status.value
    meta = read_metadata(play.saved[0])
    assert meta == play.result.metadata(1)
    assert (meta["operation"], meta["prompt"], meta["index"], meta["seed"], meta["steps"]) == (
        "generate", PROMPTS[0], 1, 3, 2)  # fmt: skip
    # the playground draws what generate draws, so the saved picture is redrawn pixel for pixel
    assert np.array_equal(np.asarray(redraw(pipe, play.saved[0]).images[0]), pixels(play.saved[0]))
    play.picks[0].value = True
    play.save_button.click()  # both now; the one saved before keeps its file, the new copy gets "-2"
    names = sorted(p.name for p in (tmp_path / "picked").iterdir())
    assert names == ["00_0_a-red-striped-mug-on-a-wooden-table.png", "00_1_a-red-striped-mug-on-a-wooden-table-2.png",
                     "00_1_a-red-striped-mug-on-a-wooden-table.png"]  # fmt: skip
    play.seed.value = 4
    play.generate_button.click()
    assert not any(t.value for t in play.picks)  # a new set of pictures: nothing picked yet


def test_save_without_pictures_a_pick_or_a_usable_folder_says_what_to_do(pipe, tmp_path):
    play = playground(pipe, tmp_path)
    assert play.save() is False and "press Generate first" in play.status.value
    play.generate_button.click()
    assert play.save() is False and "no picture picked" in play.status.value
    play.picks[0].value = True
    play.save_folder.value = "  "
    assert play.save() is False and "save-to box is empty" in play.status.value
    (tmp_path / "a-file").write_text("")
    play.save_folder.value = str(tmp_path / "a-file")
    assert play.save() is False and "is a file" in play.status.value
    assert play.edit() is True  # a pick is all the edit needs
    play.edit_kind.value = "variations"
    for toggle in play.picks:
        toggle.value = False
    assert play.edit() is False and "no picture picked" in play.status.value


def test_edit_first_picked_runs_the_edit_on_it_and_a_saved_edit_is_redrawn_exactly(pipe, tmp_path):
    play = playground(pipe, tmp_path)
    play.generate_button.click()
    shown = play.result
    play.picks[1].value = True
    play.edit_kind.value = "variations"
    play.edit_button.click()
    assert play.status.value == ""
    expected = pipe.variations(shown.tensors[1:2], n=2, guidance_scale=3.0, steps=2, seed=3)
    assert torch.equal(play.result.tensors, expected.tensors)
    assert play.result.settings["source"] == shown.metadata(1)
    play.picks[0].value = True
    play.save_button.click()
    meta = read_metadata(play.saved[0])
    assert meta["operation"] == "variations" and meta["source"]["index"] == 1
    assert np.array_equal(np.asarray(redraw(pipe, play.saved[0]).images[0]), pixels(play.saved[0]))

    variation = play.result.tensors[0:1]
    play.picks[0].value = True
    play.edit_kind.value, play.colour.value = "recolour", "blue"
    play.edit_button.click()
    target = "a blue striped mug on a wooden table"
    expected = pipe.text_diff(variation, PROMPTS[0], target, amount=[0.3, 0.6], steps=2, seed=3)
    assert torch.equal(play.result.tensors, expected.tensors) and play.source_prompts == [target] * 2

    source = play.result.tensors[1:2]
    play.picks[1].value = True
    play.edit_kind.value, play.region.value = "inpaint", "left half"
    play.prompt.value = PROMPTS[1]
    play.edit_button.click()
    expected = pipe.inpaint(source, region_mask("left half", 16), PROMPTS[1], n=2, steps=2, prior_steps=2, seed=3)
    assert torch.equal(play.result.tensors, expected.tensors)
    assert play.result.settings["mask_region"] == "left half"
    play.picks[0].value = True
    play.save_button.click()
    # an inpainting of a recolouring of a variation of a generated picture: the chain is redrawn from the file
    assert np.array_equal(np.asarray(redraw(pipe, play.saved[0]).images[0]), pixels(play.saved[0]))


def test_region_masks_cover_what_they_say():
    assert region_mask("centre", 8)[2:6, 2:6].all() and region_mask("centre", 8).sum() == 16
    assert region_mask("top half", 8)[:4].all() and region_mask("top half", 8)[4:].sum() == 0
    assert region_mask("right half", 8)[:, 4:].all() and region_mask("right half", 8)[:, :4].sum() == 0
    assert all(region_mask(r, 16).sum() > 0 for r in REGIONS)
    with pytest.raises(ValueError, match="unknown region 'middle'; choose one of centre"):
        region_mask("middle", 8)
