"""ImageCaptionFolder: a user's own pictures with their caption file, and clear errors for bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from dalle2_edu.datasets.folder import ImageCaptionFolder, load_pixels


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
    (folder / "captions.csv").write_text("file,caption\nwide.png,a red card\ntall.jpg\n")
    with pytest.raises(ValueError, match="line 3: fewer fields than the header"):
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


# ----------------------------------------------------------------------------------------------------------------------
# pictures of more than 8 bits


def gradient(width=32, height=32):
    """A left-to-right gradient from 0 to 1, float64 (height, width)."""
    return np.repeat(np.linspace(0, 1, width)[None], height, axis=0)


def load_one(folder, name, resolution=16):
    write_jsonl(folder, [{"file": name, "caption": "a gradient"}])
    return ImageCaptionFolder(folder, resolution=resolution, progress=False)[0]["image"]


def test_16_bit_and_float_pictures_are_read_by_their_range(tmp_path):
    Image.fromarray(np.round(gradient() * 255).astype(np.uint8)).save(tmp_path / "g8.png")
    Image.fromarray(np.round(gradient() * 65535).astype(np.uint16)).save(tmp_path / "g16.png")
    Image.fromarray(gradient().astype(np.float32), "F").save(tmp_path / "gf.tiff")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I") and Image.open(tmp_path / "gf.tiff").mode == "F"
    reference = load_one(tmp_path, "g8.png")
    assert reference[:, :, 0].max() < -0.6 and reference[:, :, -1].min() > 0.6  # dark on the left, light on the right
    for name in ("g16.png", "gf.tiff"):
        image = load_one(tmp_path, name)
        torch.testing.assert_close(image, reference, atol=1.01 / 127.5, rtol=0)  # at most one grey level apart
        assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])


def test_pictures_of_unknown_range_are_refused(tmp_path):
    Image.fromarray((gradient() * 255).astype(np.float32), "F").save(tmp_path / "f255.tiff")
    with pytest.raises(ValueError, match=r"f255\.tiff is a floating-point picture with values from 0 to 255.*\[0, 1\]"):
        load_one(tmp_path, "f255.tiff")
    nan = gradient().astype(np.float32)
    nan[0, 0] = np.nan
    Image.fromarray(nan, "F").save(tmp_path / "nan.tiff")
    with pytest.raises(ValueError, match=r"nan\.tiff.*1 NaN or infinite"):
        load_one(tmp_path, "nan.tiff")
    Image.fromarray((gradient() * 100000).astype(np.int32), "I").save(tmp_path / "i32.tiff")
    with pytest.raises(ValueError, match=r"i32\.tiff holds integer values from 0 to 100000.*16-bit PNG"):
        load_one(tmp_path, "i32.tiff")


def test_a_picture_too_large_to_open_safely_is_named(folder, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1500)  # grey.png has 32 x 32 pixels, wide.png over twice the limit
    write_jsonl(folder, [{"file": "sub/grey.png", "caption": "a"}, {"file": "wide.png", "caption": "b"}])
    with pytest.raises(ValueError, match=r"wide\.png is too large to open safely.*MAX_IMAGE_PIXELS"):
        ImageCaptionFolder(folder, progress=False)


@pytest.mark.parametrize("resolution", [True, False, 0, -8, 2.5, "32", None])
def test_resolution_must_be_a_positive_int(folder, resolution):
    write_jsonl(folder, [{"file": "wide.png", "caption": "a"}])
    with pytest.raises(ValueError, match="resolution must be a positive whole number"):
        ImageCaptionFolder(folder, resolution=resolution)


def test_numpy_int_resolution_is_fine(folder):
    write_jsonl(folder, [{"file": "wide.png", "caption": "a"}])
    assert ImageCaptionFolder(folder, resolution=np.int64(8), progress=False)[0]["image"].shape == (3, 8, 8)


# ----------------------------------------------------------------------------------------------------------------------
# caption files: encodings, types, names


def test_latin1_and_utf16_without_bom_are_refused_naming_the_line(folder):
    text = '{"file": "wide.png", "caption": "a red card"}\n{"file": "tall.jpg", "caption": "a crème card"}\n'
    (folder / "captions.jsonl").write_bytes(text.encode("latin-1"))
    with pytest.raises(ValueError, match=r"captions\.jsonl, line 2, column 38: byte 0xe8 is not UTF-8.*Latin-1.*UTF-8"):
        ImageCaptionFolder(folder)
    (folder / "captions.jsonl").write_bytes(text.encode("utf-16-le"))
    with pytest.raises(ValueError, match=r"line 1: holds NUL bytes.*UTF-16.*save it as UTF-8"):
        ImageCaptionFolder(folder)
    (folder / "captions.jsonl").unlink()
    (folder / "captions.csv").write_bytes("file,caption\nwide.png,a café card\n".encode("cp1252"))
    with pytest.raises(ValueError, match=r"captions\.csv, line 2.*not UTF-8"):
        ImageCaptionFolder(folder)


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16"])  # a UTF-8 byte-order mark; UTF-16 as Notepad saves it
@pytest.mark.parametrize("name", ["captions.jsonl", "captions.csv"])
def test_byte_order_marks_are_read(folder, encoding, name):
    if name.endswith(".jsonl"):
        text = '{"file": "wide.png", "caption": "a crème card"}\r\n{"file": "tall.jpg", "caption": "a blue card"}\r\n'
    else:
        text = "file,caption\r\nwide.png,a crème card\r\ntall.jpg,a blue card\r\n"
    (folder / name).write_bytes(text.encode(encoding))
    data = ImageCaptionFolder(folder, resolution=8, progress=False)
    assert data.captions == ["a crème card", "a blue card"]


def test_a_caption_that_is_not_a_string_is_called_so(folder):
    write_jsonl(folder, [{"file": "wide.png", "caption": 5}])
    with pytest.raises(ValueError, match=r"line 1: the caption for 'wide\.png' must be a string.*got 5 \(int\)") as err:
        ImageCaptionFolder(folder)
    assert "empty" not in str(err.value)
    write_jsonl(folder, [{"file": 3, "caption": "a"}])
    with pytest.raises(ValueError, match="file name must be a non-empty string, got 3"):
        ImageCaptionFolder(folder)


def test_file_names_leading_outside_the_folder_are_refused(tmp_path):
    outside = tmp_path / "secret.png"
    write_picture(outside)
    folder = tmp_path / "pics"
    (folder / "sub").mkdir(parents=True)
    write_picture(folder / "inside.png")
    (folder / "link_out.png").symlink_to(outside)
    (folder / "link_in.png").symlink_to(folder / "inside.png")
    for name, problem in [
        ("../secret.png", "leads to .*secret.png"),
        (str(outside), "is an absolute path"),
        ("link_out.png", "leads to .*secret.png"),
        ("sub/../../secret.png", "leads to .*secret.png"),
    ]:
        write_jsonl(folder, [{"file": "inside.png", "caption": "ok"}, {"file": name, "caption": "sneaky"}])
        with pytest.raises(ValueError, match=rf"line 2: the file name .* {problem}, outside the folder.*allow_outside"):
            ImageCaptionFolder(folder)
        allowed = ImageCaptionFolder(folder, resolution=8, progress=False, allow_outside=True)
        assert len(allowed) == 2 and allowed.files[1].resolve() == outside
    write_jsonl(folder, [{"file": "link_in.png", "caption": "a link inside the folder is fine"}])
    assert len(ImageCaptionFolder(folder, resolution=8, progress=False)) == 1


# ----------------------------------------------------------------------------------------------------------------------
# which caption file


def test_hugging_face_metadata_files(folder):
    write_jsonl(
        folder,
        [{"file_name": "wide.png", "text": "a red card", "extra": 1}, {"file_name": "tall.jpg", "text": "a blue card"}],
    )
    (folder / "captions.jsonl").rename(folder / "metadata.jsonl")
    data = ImageCaptionFolder(folder, resolution=8, progress=False)
    assert data.captions_file.name == "metadata.jsonl" and data.captions == ["a red card", "a blue card"]
    (folder / "metadata.jsonl").unlink()
    (folder / "metadata.csv").write_text("file_name,text\nsub/grey.png,a grey card\n")
    data = ImageCaptionFolder(folder, resolution=8, progress=False)
    assert data.captions_file.name == "metadata.csv" and data.names == ["sub/grey.png"]


def test_several_caption_files_are_named_and_one_can_be_chosen(folder):
    write_jsonl(folder, [{"file": "wide.png", "caption": "from captions.jsonl"}])
    (folder / "metadata.jsonl").write_text('{"file_name": "tall.jpg", "text": "from metadata.jsonl"}\n')
    (folder / "metadata.csv").write_text("file_name,text\ntall.jpg,from metadata.csv\n")
    with pytest.raises(ValueError, match=r"3 caption files.*captions\.jsonl.*metadata\.jsonl.*metadata\.csv.*only one"):
        ImageCaptionFolder(folder)
    chosen = ImageCaptionFolder(folder / "metadata.jsonl", resolution=8, progress=False)
    assert chosen.root == folder and chosen.captions == ["from metadata.jsonl"]
    with pytest.raises(ValueError, match="not a caption file"):
        ImageCaptionFolder(folder / "wide.png")


def test_no_caption_file_lists_the_names_with_an_example(folder):
    with pytest.raises(FileNotFoundError) as err:
        ImageCaptionFolder(folder)
    message = str(err.value)
    assert "holds 2 pictures" in message  # wide.png and tall.jpg; sub/grey.png is in a sub-folder
    for name in ("captions.jsonl", "captions.csv", "metadata.jsonl", "metadata.csv"):
        assert name in message
    assert '{"file": "mug1.png", "caption": "a red mug on a wooden table"}' in message
    (folder / "sub" / "metadata.jsonl").write_text('{"file_name": "grey.png", "text": "a grey card"}\n')
    with pytest.raises(FileNotFoundError, match=r"sub/metadata\.jsonl in a sub-folder: to use it, pass .*sub"):
        ImageCaptionFolder(folder)


def test_empty_folder_and_folder_without_pictures(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"is empty: put your pictures in it.*captions\.jsonl"):
        ImageCaptionFolder(tmp_path)
    (tmp_path / "notes.txt").write_text("nothing here")
    with pytest.raises(FileNotFoundError, match="holds no pictures"):
        ImageCaptionFolder(tmp_path)


# ----------------------------------------------------------------------------------------------------------------------
# all at once, and a fingerprint


@pytest.mark.parametrize("check_images", [True, False])
def test_tensors_returns_every_picture_as_uint8(folder, check_images):
    write_jsonl(
        folder,
        [
            {"file": "wide.png", "caption": "a red card"},
            {"file": "tall.jpg", "caption": "a blue card"},
            {"file": "sub/grey.png", "caption": "a grey card"},
        ],
    )
    data = ImageCaptionFolder(folder, resolution=16, check_images=check_images, progress=False)
    images, captions = data.tensors()
    assert images.shape == (3, 3, 16, 16) and images.dtype == torch.uint8
    assert captions == ["a red card", "a blue card", "a grey card"]
    for i in range(3):
        assert torch.equal(images[i].float() / 127.5 - 1, data[i]["image"])
        assert torch.equal(images[i], load_pixels(data.files[i], 16))
    assert data.images is images  # decoded once
    assert images[0, 0].float().mean() > 150 and images[1, 2].float().mean() > 150  # red, then blue


def test_fingerprint_names_the_content(tmp_path, folder):
    write_jsonl(folder, [{"file": "wide.png", "caption": "a red card"}, {"file": "tall.jpg", "caption": "a blue card"}])
    print_ = ImageCaptionFolder(folder, resolution=8, progress=False).fingerprint()
    assert len(print_) == 64
    assert ImageCaptionFolder(folder, resolution=16, check_images=False).fingerprint() == print_

    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)  # another place, other file dates, another caption file format
    (copy / "captions.jsonl").unlink()
    (copy / "metadata.csv").write_text("file_name,text\nwide.png,  a red card\ntall.jpg,a blue card\n")
    assert ImageCaptionFolder(copy, progress=False).fingerprint() == print_

    (copy / "metadata.csv").write_text("file_name,text\nwide.png,a red card\ntall.jpg,a navy card\n")
    assert ImageCaptionFolder(copy, progress=False).fingerprint() != print_  # a caption changed
    (copy / "metadata.csv").write_text("file_name,text\ntall.jpg,a blue card\nwide.png,a red card\n")
    assert ImageCaptionFolder(copy, progress=False).fingerprint() != print_  # the order changed
    (copy / "metadata.csv").write_text("file_name,text\nwide.png,a red card\ntall.jpg,a blue card\n")
    write_picture(copy / "wide.png", size=(80, 40), colour=(201, 40, 40))
    assert ImageCaptionFolder(copy, progress=False).fingerprint() != print_  # a picture changed
