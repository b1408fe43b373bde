"""A user's own folder of pictures with captions, ready for the models.

The folder holds the pictures and one captions file:

* ``captions.jsonl``: one JSON object per line, ``{"file": "a.png", "caption": "a red mug"}``; the keys
  ``"image"`` (for ``"file"``) and ``"text"`` (for ``"caption"``) are accepted too; blank lines are skipped.
* ``captions.csv``: a header row ``file,caption`` (or ``image``/``text``), then one row per picture.

File names are relative to the folder (sub-folders allowed). Pictures are converted to RGB (transparent parts
become white), turned upright by their EXIF orientation, their short side resized to the resolution, and the
middle cropped square.

Problems are reported eagerly, at construction, naming the file and the fix: a missing folder or captions file,
a malformed line, a missing picture, an empty caption, and (with ``check_images=True``, the default) a picture
that cannot be decoded. With ``check_images=False`` construction only checks that the pictures exist, and a
picture that cannot be decoded raises when it is loaded, still naming the file.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset
from tqdm.auto import tqdm

CAPTION_FILES = ("captions.jsonl", "captions.csv")
_FILE_KEYS = ("file", "image")
_CAPTION_KEYS = ("caption", "text")


def _pick_key(entry: dict | set, keys: tuple[str, ...]) -> str | None:
    return next((k for k in keys if k in entry), None)


def _read_jsonl(path: Path) -> list[tuple[int, str, str]]:
    """:return: (line number, file, caption) for each non-blank line."""
    entries = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(
                    f"{path}, line {number}: not valid JSON ({err.msg}); each line must be one object like "
                    '{"file": "a.png", "caption": "a red mug"}'
                ) from None
            if not isinstance(entry, dict):
                raise ValueError(f"{path}, line {number}: expected a JSON object, got {type(entry).__name__}")
            file_key, caption_key = _pick_key(entry, _FILE_KEYS), _pick_key(entry, _CAPTION_KEYS)
            if file_key is None or caption_key is None:
                raise ValueError(
                    f"{path}, line {number}: needs keys 'file' (or 'image') and 'caption' (or 'text'), "
                    f"found {sorted(entry)}"
                )
            entries.append((number, entry[file_key], entry[caption_key]))
    return entries


def _read_csv(path: Path) -> list[tuple[int, str, str]]:
    """:return: (line number, file, caption) for each row after the header."""
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        fields = [name.strip() for name in reader.fieldnames or []]
        reader.fieldnames = fields
        file_key, caption_key = _pick_key(set(fields), _FILE_KEYS), _pick_key(set(fields), _CAPTION_KEYS)
        if file_key is None or caption_key is None:
            raise ValueError(f"{path}: the first line must be the header 'file,caption', found {fields}")
        entries = []
        for row in reader:
            if None in row:  # DictReader files surplus fields under the key None
                raise ValueError(
                    f"{path}, line {reader.line_num}: more fields than the header has; "
                    'put a caption that contains commas in double quotes, e.g. a.png,"a red, round mug"'
                )
            if not any((value or "").strip() for value in row.values()):
                continue
            entries.append((reader.line_num, row[file_key], row[caption_key]))
    return entries


def load_image(path: str | os.PathLike, resolution: int) -> torch.Tensor:
    """Load a picture as the models want it.

    :param path: a picture file PIL can read.
    :param resolution: side of the square output in pixels.
    :return: float32 tensor (3, resolution, resolution), RGB in [-1, 1].
    :raises ValueError: if the file cannot be decoded, naming it.
    """
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            img.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"cannot decode picture {path} ({err}); replace it or remove its caption line") from None
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        img = Image.new("RGB", rgba.size, (255, 255, 255))
        img.paste(rgba, mask=rgba.getchannel("A"))
    img = img.convert("RGB")
    w, h = img.size
    scale = resolution / min(w, h)
    new_w, new_h = max(resolution, round(w * scale)), max(resolution, round(h * scale))
    img = img.resize((new_w, new_h), Image.Resampling.BICUBIC)  # PIL filters are anti-aliased when shrinking
    left, top = (new_w - resolution) // 2, (new_h - resolution) // 2
    img = img.crop((left, top, left + resolution, top + resolution))
    pixels = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
    return pixels.float() / 127.5 - 1


class ImageCaptionFolder(Dataset):
    """Pictures and captions from a folder, as ``dict(image=float32 (3, R, R) in [-1, 1], caption=str)``.

    :param path: the folder, holding the pictures and ``captions.jsonl`` or ``captions.csv`` (see module docs).
    :param resolution: side in pixels of the square pictures returned (the short side is resized, then the
        middle cropped).
    :param check_images: decode every picture at construction (with a progress bar), so that a corrupt file is
        reported now rather than during training.
    :param progress: show the progress bar while checking pictures.
    :raises FileNotFoundError: the folder, its captions file or a picture named in it is missing.
    :raises ValueError: both captions files exist, a line is malformed, a caption is empty, no entries, or (with
        ``check_images``) a picture cannot be decoded.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        resolution: int = 32,
        check_images: bool = True,
        progress: bool = True,
    ):
        self.root = Path(path)
        if not self.root.is_dir():
            raise FileNotFoundError(f"folder {self.root} does not exist; check the path (relative to {Path.cwd()})")
        if not isinstance(resolution, int) or resolution <= 0:
            raise ValueError(f"resolution must be a positive int, got {resolution!r}")
        self.resolution = resolution
        present = [self.root / name for name in CAPTION_FILES if (self.root / name).is_file()]
        if not present:
            raise FileNotFoundError(
                f"no captions file in {self.root}: add captions.jsonl (lines like "
                '{"file": "a.png", "caption": "a red mug"}) or captions.csv (header file,caption)'
            )
        if len(present) > 1:
            raise ValueError(f"{self.root} holds both captions.jsonl and captions.csv; keep only one")
        self.captions_file = present[0]
        read = _read_jsonl if self.captions_file.suffix == ".jsonl" else _read_csv
        self.files: list[Path] = []
        self.captions: list[str] = []
        for line, file, caption in read(self.captions_file):
            where = f"{self.captions_file}, line {line}"
            if not isinstance(file, str) or not file.strip():
                raise ValueError(f"{where}: the file name is empty or not a string")
            if not isinstance(caption, str) or not caption.strip():
                raise ValueError(f"{where}: empty caption for {file!r}; write a caption or remove the line")
            image_path = self.root / file.strip()
            if not image_path.is_file():
                raise FileNotFoundError(f"{where}: picture {image_path} not found; add it or remove the line")
            self.files.append(image_path)
            self.captions.append(caption.strip())
        if not self.files:
            raise ValueError(f"{self.captions_file} has no entries; add one line per picture")
        if check_images:
            for image_path in tqdm(self.files, desc="checking pictures", disable=not progress, unit="img"):
                load_image(image_path, self.resolution)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict:
        """:return: ``dict(image=float32 (3, R, R) in [-1, 1], caption=str)``."""
        return dict(image=load_image(self.files[i], self.resolution), caption=self.captions[i])

    def __repr__(self) -> str:
        return f"ImageCaptionFolder({str(self.root)!r}, resolution={self.resolution}, n={len(self)})"
