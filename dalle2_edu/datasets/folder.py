"""A user's own folder of pictures with captions, ready for the models.

The folder holds the pictures and one caption file, in one of these forms:

* ``captions.jsonl``: one JSON object per line, ``{"file": "a.png", "caption": "a red mug"}``; the keys
  ``"image"`` or ``"file_name"`` (for ``"file"``) and ``"text"`` (for ``"caption"``) are accepted too; blank lines
  are skipped.
* ``captions.csv``: a header row ``file,caption`` (or ``image``/``file_name`` and ``text``), then one row per picture;
  a caption holding a comma goes in double quotes.
* ``metadata.jsonl`` / ``metadata.csv``: the same under the names of the Hugging Face image-folder convention, whose
  keys are ``file_name`` and ``text`` (``{"file_name": "a.png", "text": "a red mug"}``).

A folder holding more than one of these is refused (they could disagree); pass the caption file itself to choose,
e.g. ``ImageCaptionFolder("pics/metadata.jsonl")``: its folder is then the picture folder. Caption files are UTF-8
text (a byte-order mark is fine); UTF-16 with a byte-order mark, as Windows Notepad writes it, is read too, and any
other encoding (Latin-1, Windows-1252) is refused naming the line, since guessing would change letters silently.

File names are relative to the folder (sub-folders allowed). A name that leads outside it (``../a.png``, an absolute
path, or a symbolic link to elsewhere) is refused unless ``allow_outside=True``, so that a caption file from
someone else cannot make training read other files.

Pictures are converted to RGB (transparent parts become white, greyscale is repeated over the three channels),
turned upright by their EXIF orientation, their short side resized to the resolution, and the middle cropped
square. Pictures of more than 8 bits are read by their real range: 16-bit greyscale (e.g. PNG) as 0..65535, and
floating-point greyscale (e.g. a float TIFF) as 0..1; a float picture with values outside [0, 1] (or NaN) is
refused with its range, rather than guessed at. (PIL reads 16-bit colour PNGs as 8-bit RGB itself.)

Problems are reported eagerly, at construction, naming the file and the fix: a missing or empty folder, no caption
file or several, a malformed line, text that is not UTF-8, a missing picture, a caption that is empty or not a
string, a file name leading outside the folder, and (with ``check_images=True``, the default) a picture that
cannot be decoded or is too large to open safely. With ``check_images=False`` construction only checks that the
pictures exist, and a picture that cannot be decoded raises when it is loaded, still naming the file.

For training, ``images, captions = folder.tensors()`` returns every picture at once as uint8 (N, 3, R, R), like
``ProductCatalogue.images``; :meth:`ImageCaptionFolder.fingerprint` names the folder's content, to record which
data a model was trained on.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset
from tqdm.auto import tqdm

CAPTION_FILES = ("captions.jsonl", "captions.csv", "metadata.jsonl", "metadata.csv")
"""The caption file names looked for in a folder; a folder must hold exactly one of them."""
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
"""Suffixes counted as pictures in messages about a folder (any file PIL reads can be named in a caption file)."""
_FILE_KEYS = ("file", "image", "file_name")
_CAPTION_KEYS = ("caption", "text")
_EXAMPLE = '{"file": "mug1.png", "caption": "a red mug on a wooden table"}'
_KEEP_BYTES = 512 * 2**20  # keep the pictures decoded by the construction check when they take at most this much
_FLOAT_SLACK = 1e-3  # float pictures may stray this far outside [0, 1] (rounding) and are clipped


def _pick_key(entry: dict | set, keys: tuple[str, ...]) -> str | None:
    return next((k for k in keys if k in entry), None)


def _read_text(path: Path) -> str:
    """The caption file as text: UTF-8 (with or without a byte-order mark) or UTF-16 with a byte-order mark."""
    data = path.read_bytes()
    save_as_utf8 = "save it as UTF-8 (in most editors: Save As, encoding UTF-8)"
    if data.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        raise ValueError(f"{path} is UTF-32 text; {save_as_utf8}")
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return data.decode("utf-16")  # the byte-order mark says which byte order
        except UnicodeDecodeError as err:
            problem = f"{path} starts like UTF-16 text but is not valid UTF-16 ({err.reason})"
            raise ValueError(f"{problem}; {save_as_utf8}") from None
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    if b"\0" in data:
        line = data[: data.index(b"\0")].count(b"\n") + 1
        raise ValueError(
            f"{path}, line {line}: holds NUL bytes, so it looks like UTF-16 text without a byte-order mark; "
            f"{save_as_utf8}"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        column = err.start - data.rfind(b"\n", 0, err.start)
        raise ValueError(
            f"{path}, line {line}, column {column}: byte 0x{data[err.start]:02x} is not UTF-8 text (the file was "
            f"probably saved as Latin-1 or Windows-1252); {save_as_utf8}"
        ) from None


def _read_jsonl(path: Path) -> list[tuple[int, object, object]]:
    """:return: (line number, file, caption) for each non-blank line."""
    entries = []
    for number, line in enumerate(io.StringIO(_read_text(path)), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(
                f"{path}, line {number}: not valid JSON ({err.msg}); each line must be one object like {_EXAMPLE}"
            ) from None
        if not isinstance(entry, dict):
            kind = type(entry).__name__
            raise ValueError(f"{path}, line {number}: expected a JSON object like {_EXAMPLE}, got a {kind}")
        file_key, caption_key = _pick_key(entry, _FILE_KEYS), _pick_key(entry, _CAPTION_KEYS)
        if file_key is None or caption_key is None:
            raise ValueError(
                f"{path}, line {number}: needs keys 'file' (or 'image', 'file_name') and 'caption' (or 'text'), "
                f"found {sorted(entry)}"
            )
        entries.append((number, entry[file_key], entry[caption_key]))
    return entries


def _read_csv(path: Path) -> list[tuple[int, object, object]]:
    """:return: (line number, file, caption) for each row after the header."""
    reader = csv.DictReader(io.StringIO(_read_text(path), newline=""))
    try:
        fields = [name.strip() for name in reader.fieldnames or []]
        reader.fieldnames = fields
        file_key, caption_key = _pick_key(set(fields), _FILE_KEYS), _pick_key(set(fields), _CAPTION_KEYS)
        if file_key is None or caption_key is None:
            raise ValueError(
                f"{path}: the first line must be the header 'file,caption' (or 'file_name,text'), found {fields}"
            )
        entries = []
        for row in reader:
            if None in row:  # DictReader files surplus fields under the key None
                raise ValueError(
                    f"{path}, line {reader.line_num}: more fields than the header has; "
                    'put a caption that contains commas in double quotes, e.g. a.png,"a red, round mug"'
                )
            if not any((value or "").strip() for value in row.values()):
                continue
            if None in row.values():  # DictReader fills missing fields with None
                raise ValueError(
                    f"{path}, line {reader.line_num}: fewer fields than the header {fields}; write the file name, a "
                    "comma and the caption on each line, e.g. a.png,a red mug"
                )
            entries.append((reader.line_num, row[file_key], row[caption_key]))
    except csv.Error as err:
        raise ValueError(f"{path}, line {reader.line_num}: not valid CSV ({err})") from None
    return entries


def _check_resolution(resolution: object) -> int:
    if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)) or resolution <= 0:
        raise ValueError(f"resolution must be a positive whole number of pixels such as 32 or 64, got {resolution!r}")
    return int(resolution)


def _to_8bit(img: Image.Image, name: object) -> Image.Image:
    """16-bit and floating-point greyscale pictures as 8-bit greyscale, scaled by their real range; others as given."""
    if img.mode.startswith("I"):  # "I;16", "I;16B", ... (16-bit), "I" (32-bit integers; 16-bit PNGs in old PIL)
        pixels = np.asarray(img)
        low, high = int(pixels.min()), int(pixels.max())
        if low < 0 or high > 65535:
            raise ValueError(
                f"picture {name} holds integer values from {low} to {high}, outside the 16-bit range 0..65535, so "
                "their brightness is unknown; save it as an 8-bit or 16-bit PNG"
            )
        return Image.fromarray(np.round(pixels.astype(np.float32) * (255 / 65535)).astype(np.uint8), "L")
    if img.mode == "F":
        pixels = np.asarray(img, dtype=np.float32)
        finite = np.isfinite(pixels)
        low, high = (float(pixels[finite].min()), float(pixels[finite].max())) if finite.any() else (0.0, 0.0)
        if not finite.all() or low < -_FLOAT_SLACK or high > 1 + _FLOAT_SLACK:
            found = f"values from {low:g} to {high:g}" if finite.all() else f"{(~finite).sum()} NaN or infinite values"
            raise ValueError(
                f"picture {name} is a floating-point picture with {found}; only floats in [0, 1] (0 black, 1 white) "
                "are read. Scale it to [0, 1], or save it as an 8-bit or 16-bit PNG"
            )
        return Image.fromarray(np.round(np.clip(pixels, 0, 1) * 255).astype(np.uint8), "L")
    return img


def _decode(source: str | os.PathLike | IO[bytes], name: object, resolution: int) -> torch.Tensor:
    """Decode, convert, resize and crop one picture; ``name`` is what messages call it. :return: uint8 (3, R, R)."""
    try:
        with Image.open(source) as img:
            img = ImageOps.exif_transpose(img)
            img.load()
    except Image.DecompressionBombError as err:
        raise ValueError(
            f"picture {name} is too large to open safely ({err}); shrink it (a few hundred pixels a side is plenty "
            "here), or, if you trust the file, raise PIL.Image.MAX_IMAGE_PIXELS"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"cannot decode picture {name} ({err}); replace it or remove its caption line") from None
    try:
        img = _to_8bit(img, name)
        if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            img = Image.new("RGB", rgba.size, (255, 255, 255))
            img.paste(rgba, mask=rgba.getchannel("A"))
        img = img.convert("RGB")
    except (OSError, ValueError) as err:
        if str(err).startswith("picture "):
            raise
        raise ValueError(
            f"cannot convert picture {name} (PIL mode {img.mode}) to RGB ({err}); save it as an RGB PNG or JPEG"
        ) from None
    w, h = img.size
    scale = resolution / min(w, h)
    new_w, new_h = max(resolution, round(w * scale)), max(resolution, round(h * scale))
    img = img.resize((new_w, new_h), Image.Resampling.BICUBIC)  # PIL filters are anti-aliased when shrinking
    left, top = (new_w - resolution) // 2, (new_h - resolution) // 2
    img = img.crop((left, top, left + resolution, top + resolution))
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


def load_pixels(path: str | os.PathLike, resolution: int) -> torch.Tensor:
    """Load a picture as uint8 RGB, square (see the module docs for how).

    :param path: a picture file PIL can read.
    :param resolution: side of the square output in pixels.
    :return: uint8 tensor (3, resolution, resolution).
    :raises ValueError: the file cannot be decoded, is too large to open safely, or holds values of unknown range,
        naming it.
    """
    return _decode(path, path, _check_resolution(resolution))


def load_image(path: str | os.PathLike, resolution: int) -> torch.Tensor:
    """Load a picture as the models want it: :func:`load_pixels` as float32 (3, resolution, resolution) in [-1, 1].

    :raises ValueError: the file cannot be decoded, is too large to open safely, or holds values of unknown range,
        naming it.
    """
    return load_pixels(path, resolution).float() / 127.5 - 1


def _no_caption_file_message(root: Path) -> str:
    entries = list(root.iterdir())
    if not entries:
        return (
            f"folder {root} is empty: put your pictures in it with a caption file, e.g. captions.jsonl holding one "
            f"line per picture like\n    {_EXAMPLE}"
        )
    pictures = sum(p.suffix.lower() in PICTURE_SUFFIXES for p in entries)
    holds = f"{pictures} picture{'s' if pictures > 1 else ''}" if pictures else "no pictures"
    message = (
        f"no caption file in {root} (it holds {holds}). Add one named {', '.join(CAPTION_FILES[:-1])} or "
        f"{CAPTION_FILES[-1]}, e.g. captions.jsonl holding one line per picture like\n    {_EXAMPLE}\n"
        'metadata.jsonl, the Hugging Face image-folder name, takes {"file_name": ..., "text": ...}; '
        "a .csv file starts with the header file,caption (or file_name,text)."
    )
    nested = sorted(p.relative_to(root) for name in CAPTION_FILES for p in root.glob(f"*/{name}"))
    if nested:
        message += f" There is {nested[0]} in a sub-folder: to use it, pass {root / nested[0].parent}."
    return message


class ImageCaptionFolder(Dataset):
    """Pictures and captions from a folder, as ``dict(image=float32 (3, R, R) in [-1, 1], caption=str)``.

    :param path: the folder, holding the pictures and one caption file (see the module docs), or that caption file.
    :param resolution: side in pixels of the square pictures returned (the short side is resized, then the
        middle cropped).
    :param check_images: decode every picture at construction (with a progress bar), so that a corrupt file is
        reported now rather than during training. The decoded pictures are kept (when they take at most 512 MiB),
        so :meth:`tensors` and indexing do not decode them again.
    :param progress: show a progress bar while reading pictures.
    :param allow_outside: accept file names that lead outside the folder (``../``, absolute paths, symbolic links to
        elsewhere); only for caption files you trust.
    :raises FileNotFoundError: the folder, its caption file or a picture named in it is missing.
    :raises ValueError: several caption files, a malformed line or header, text that is not UTF-8, a caption that is
        empty or not a string, a file name leading outside the folder, no entries, a resolution that is not a
        positive int, or (with ``check_images``) a picture that cannot be decoded.

    Attributes: ``root`` (the folder), ``captions_file``, ``files`` (paths of the pictures), ``names`` (the file
    names as written in the caption file), ``captions`` (str), one entry per caption line.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        resolution: int = 32,
        check_images: bool = True,
        progress: bool = True,
        *,
        allow_outside: bool = False,
    ):
        self.resolution = _check_resolution(resolution)
        self.progress = progress
        path = Path(path)
        if path.is_file():
            if path.suffix.lower() not in (".jsonl", ".csv"):
                raise ValueError(
                    f"{path} is a file but not a caption file (.jsonl or .csv); pass the folder holding your "
                    "pictures and their caption file"
                )
            self.root, self.captions_file = path.parent, path
        elif not path.is_dir():
            raise FileNotFoundError(f"folder {path} does not exist; check the path (relative to {Path.cwd()})")
        else:
            self.root = path
            present = [path / name for name in CAPTION_FILES if (path / name).is_file()]
            if not present:
                raise FileNotFoundError(_no_caption_file_message(path))
            if len(present) > 1:
                names = [p.name for p in present]
                which = f"both {names[0]} and {names[1]}" if len(names) == 2 else f"{len(names)} caption files, {names}"
                raise ValueError(
                    f"{path} holds {which}; keep only one, or pass the caption file to use instead of the folder, "
                    f"e.g. {present[0]}"
                )
            self.captions_file = present[0]
        read = _read_jsonl if self.captions_file.suffix.lower() == ".jsonl" else _read_csv
        root_resolved = self.root.resolve()
        self.files: list[Path] = []
        self.names: list[str] = []
        self.captions: list[str] = []
        for line, file, caption in read(self.captions_file):
            where = f"{self.captions_file}, line {line}"
            if not isinstance(file, str) or not file.strip():
                raise ValueError(f"{where}: the file name must be a non-empty string, got {file!r}")
            if not isinstance(caption, str):
                raise ValueError(
                    f"{where}: the caption for {file!r} must be a string (text in double quotes), got "
                    f"{caption!r} ({type(caption).__name__}); write the words of the caption in double quotes"
                )
            if not caption.strip():
                raise ValueError(f"{where}: empty caption for {file!r}; write a caption or remove the line")
            name = file.strip()
            image_path = self.root / name
            if not allow_outside:
                resolved = image_path.resolve()
                if Path(name).is_absolute() or not resolved.is_relative_to(root_resolved):
                    how = "is an absolute path" if Path(name).is_absolute() else f"leads to {resolved}"
                    raise ValueError(
                        f"{where}: the file name {name!r} {how}, outside the folder {self.root}; name pictures "
                        "relative to the folder (e.g. 'a.png' or 'sub/a.png') and move them into it, or pass "
                        "allow_outside=True if you trust this caption file"
                    )
            if not image_path.is_file():
                raise FileNotFoundError(f"{where}: picture {image_path} not found; add it or remove the line")
            self.files.append(image_path)
            self.names.append(name)
            self.captions.append(caption.strip())
        if not self.files:
            raise ValueError(f"{self.captions_file} has no entries; add one line per picture, like {_EXAMPLE}")
        self._pixels: torch.Tensor | None = None
        self._digests: list[bytes] | None = None
        if check_images:
            keep = len(self.files) * 3 * self.resolution**2 <= _KEEP_BYTES
            self._read_all("checking pictures", decode=True, keep=keep)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict:
        """:return: ``dict(image=float32 (3, R, R) in [-1, 1], caption=str)``."""
        file, caption = self.files[i], self.captions[i]
        pixels = self._pixels[i] if self._pixels is not None else _decode(file, file, self.resolution)
        return dict(image=pixels.float() / 127.5 - 1, caption=caption)

    def tensors(self, progress: bool | None = None) -> tuple[torch.Tensor, list[str]]:
        """Every picture and caption at once, for training: ``images, captions = folder.tensors()``.

        Pictures are decoded on the first call (in parallel threads), unless the construction check kept them, and
        kept for later calls. The returned tensor is shared with the dataset: copy it before changing it in place.

        :param progress: show a progress bar while decoding; default: the ``progress`` given at construction.
        :return: ``(images, captions)``: uint8 tensor (N, 3, R, R) in 0..255 (divide by 127.5 and subtract 1 for the
            models' [-1, 1]) and a list of N captions.
        """
        if self._pixels is None:
            self._read_all("loading pictures", decode=True, keep=True, progress=progress)
        return self._pixels, list(self.captions)

    @property
    def images(self) -> torch.Tensor:
        """All pictures as uint8 (N, 3, R, R), like ``ProductCatalogue.images``: the first of :meth:`tensors`."""
        return self.tensors()[0]

    def fingerprint(self) -> str:
        """SHA-256 naming the data, to record which data a model was trained on (64 hex digits).

        It covers, in order, each entry's file name as written in the caption file, its caption (stripped of outer
        spaces) and the SHA-256 of its picture file's bytes. It does not depend on where the folder is, on file
        dates, on the caption file's format (``captions.csv`` and ``metadata.jsonl`` with the same entries agree),
        nor on the resolution (record that separately). Changing a picture, a caption or the order changes it.
        Pictures are read once for it (during the construction check when there is one).
        """
        if self._digests is None:
            self._read_all("fingerprinting pictures", decode=False, keep=False)
        h = hashlib.sha256(b"dalle2_edu.ImageCaptionFolder v1\0")
        for name, caption, digest in zip(self.names, self.captions, self._digests):
            for field in (name.encode(), caption.encode()):
                h.update(len(field).to_bytes(8, "little") + field)
            h.update(digest)
        return h.hexdigest()

    def _read_one(self, i: int, decode: bool) -> tuple[bytes, torch.Tensor | None]:
        file = self.files[i]
        try:
            data = file.read_bytes()
        except OSError as err:
            raise ValueError(f"cannot read picture {file} ({err}); check its permissions or remove its line") from None
        return hashlib.sha256(data).digest(), _decode(io.BytesIO(data), file, self.resolution) if decode else None

    def _read_all(self, desc: str, decode: bool, keep: bool, progress: bool | None = None) -> None:
        """Read every picture (in threads: PIL decodes outside the GIL), recording its digest and, if ``keep``, its
        pixels; the first picture that fails raises, naming its file."""
        n = len(self.files)
        digests: list[bytes] = []
        pixels = torch.empty(n, 3, self.resolution, self.resolution, dtype=torch.uint8) if keep else None
        workers = min(8, os.cpu_count() or 1, n)
        pool = ThreadPoolExecutor(workers) if workers > 1 else None
        results = (pool.map if pool else map)(self._read_one, range(n), [decode] * n)
        show = self.progress if progress is None else progress
        try:
            for i, (digest, image) in enumerate(tqdm(results, total=n, desc=desc, disable=not show, unit="img")):
                digests.append(digest)
                if pixels is not None:
                    pixels[i] = image
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        self._digests = digests
        if pixels is not None:
            self._pixels = pixels

    def __repr__(self) -> str:
        return f"ImageCaptionFolder({str(self.root)!r}, resolution={self.resolution}, n={len(self)})"
