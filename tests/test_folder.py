"""ImageCaptionFolder: a user's own pictures with captions.jsonl or captions.csv, and clear errors for bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from dalle2_edu.datasets.folder import ImageCaptionFolder


def write_picture(path, size=(40, 30), colour=(200, 40, 40), mode="RGB"):
    """A picture of one colour with a white vertical band in the middle, to check centre cropping."""
    pixels = np.zeros((size[1], size[0], 3), np.uint8) + np.array(colour, np.uint8)
    pixels[:, size[0] // 2 - 1 : size[0] // 2 + 1] = 255
    Image.fromarray(pixels).convert(mode).save(path)


def write_jsonl(folder, entries):
    (folder / "captions.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))


@pytest.fixture
def folder(tmp_path):
    write_picture(tmp_path / "wide.png", size=(80, 40))
    write_picture(tmp_path / "tall.jpg", size=(30, 90), colour=(40, 40, 200))
    (tmp_path / "sub").mkdir()
    write_picture(tmp_path / "sub" / "grey.png", size=(32, 32), mode="L")
    return tmp_path


def test_jsonl_with_aliases_resize_and_crop(folder):
    write_jsonl(
        folder,
        [
            {"file": "wide.png", "caption": "a red card"},
            {"image": "tall.jpg", "text": "  a blue card "},
            {"file": "sub/grey.png", "caption": "a grey card"},
        ],
    )
    (folder / "captions.jsonl").write_text((folder / "captions.jsonl").read_text() + "\n")  # blank lines are fine
    data = ImageCaptionFolder(folder, resolution=16, progress=False)
    assert len(data) == 3
    items = [data[i] for i in range(3)]
    assert [item["caption"] for item in items] == ["a red card", "a blue card", "a grey card"]
    for item in items:
        assert item["image"].shape == (3, 16, 16) and item["image"].dtype == torch.float32
        assert -1 <= item["image"].min() and item["image"].max() <= 1
    red = items[0]["image"]
    assert red[0, 0, 0] > 0.5 and red[1, 0, 0] < -0.5  # red corner
    assert red[:, :, 7:9].mean() > red[:, :, :4].mean()  # the white band stays in the middle after cropping
    assert items[1]["image"][2].mean() > 0.4  # the blue picture is blue
    grey = items[2]["image"]
    assert torch.allclose(grey[0], grey[1]) and torch.allclose(grey[1], grey[2])  # greyscale became RGB


def test_csv(folder):
    (folder / "captions.csv").write_text('file,caption\nwide.png,"a red card, wide"\ntall.jpg,a blue card\n')
    data = ImageCaptionFolder(folder, resolution=32, progress=False)
    assert len(data) == 2
    assert data[0]["caption"] == "a red card, wide"
    assert data[1]["image"].shape == (3, 32, 32)
    (folder / "captions.csv").write_text("file,caption\nwide.png,a red card, wide\n")
    with pytest.raises(ValueError, match="line 2.*double quotes"):
        ImageCaptionFolder(folder)


def test_transparent_pixels_become_white(tmp_path):
    pixels = np.zeros((8, 8, 4), np.uint8)  # fully transparent black
    Image.fromarray(pixels, "RGBA").save(tmp_path / "clear.png")
    write_jsonl(tmp_path, [{"file": "clear.png", "caption": "nothing"}])
    assert torch.allclose(ImageCaptionFolder(tmp_path, resolution=8, progress=False)[0]["image"], torch.ones(3, 8, 8))


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        ImageCaptionFolder(tmp_path / "nowhere")


def test_no_captions_file(folder):
    with pytest.raises(FileNotFoundError, match="captions.jsonl"):
        ImageCaptionFolder(folder)


def test_malformed_json_names_the_line(folder):
    (folder / "captions.jsonl").write_text('{"file": "wide.png", "caption": "ok"}\n{"file": "tall.jpg", caption}\n')
    with pytest.raises(ValueError, match=r"captions\.jsonl, line 2"):
        ImageCaptionFolder(folder)


def test_missing_keys_and_bad_csv_header(folder):
    write_jsonl(folder, [{"path": "wide.png", "caption": "a red card"}])
    with pytest.raises(ValueError, match="line 1.*'file'"):
        ImageCaptionFolder(folder)
    (folder / "captions.jsonl").unlink()
    (folder / "captions.csv").write_text("name,label\nwide.png,a red card\n")
    with pytest.raises(ValueError, match="header"):
        ImageCaptionFolder(folder)


def test_missing_picture_is_named(folder):
    write_jsonl(folder, [{"file": "wide.png", "caption": "a"}, {"file": "gone.png", "caption": "b"}])
    with pytest.raises(FileNotFoundError, match=r"gone\.png.*remove the line"):
        ImageCaptionFolder(folder)


def test_empty_caption_is_named(folder):
    (folder / "captions.csv").write_text("file,caption\nwide.png,a red card\ntall.jpg,   \n")
    with pytest.raises(ValueError, match=r"line 3.*empty caption for 'tall\.jpg'"):
        ImageCaptionFolder(folder)


def test_corrupt_picture_is_named(folder):
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a picture")
    write_jsonl(folder, [{"file": "wide.png", "caption": "a"}, {"file": "broken.png", "caption": "b"}])
    with pytest.raises(ValueError, match=r"broken\.png"):
        ImageCaptionFolder(folder, progress=False)
    lazy = ImageCaptionFolder(folder, check_images=False)  # only existence checked now ...
    assert lazy[0]["image"].shape == (3, 32, 32)
    with pytest.raises(ValueError, match=r"broken\.png"):  # ... decoding fails on loading, naming the file
        lazy[1]


def test_both_caption_files_or_none_listed(folder):
    write_jsonl(folder, [])
    with pytest.raises(ValueError, match="no entries"):
        ImageCaptionFolder(folder)
    (folder / "captions.csv").write_text("file,caption\n")
    with pytest.raises(ValueError, match="both"):
        ImageCaptionFolder(folder)
