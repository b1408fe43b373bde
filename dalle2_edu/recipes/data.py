"""What a recipe trains on: the project's own catalogue, or a user's folder of captioned pictures.

Both give the same three things: captions, uint8 pictures at the resolution a stage asks for (32 for CLIP and the
decoder, 64 for the upsampler, 128 for the second one; a folder is read once at 64 and box-filtered to 32, as the
catalogue makes its 32×32 pictures, and read again at 128 only for the second upsampler), and a fingerprint that
every checkpoint records, so that a stage trained on other data is never silently reused.
"""

from __future__ import annotations

from pathlib import Path

import torch

from dalle2_edu.images import box_downsample

FOLDER_RESOLUTION = 64


class TrainingSet:
    """Captioned pictures for the recipes. Build with :meth:`catalogue` or :meth:`folder`."""

    def __init__(self, kind: str, name: str, captions: list[str], fingerprint: str, loader, labels=None):
        self.kind, self.name, self.captions, self.fingerprint = kind, name, list(captions), fingerprint
        self.labels = labels
        self._loader = loader  # resolution -> uint8 (N, 3, R, R)
        self._images: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.captions)

    @classmethod
    def catalogue(cls, n: int = 20_000, progress: bool = True) -> TrainingSet:
        """The catalogue's training split (seed 0): the data every shipped checkpoint was trained on."""
        from dalle2_edu.datasets.catalogue import GENERATOR_VERSION, ProductCatalogue

        first = ProductCatalogue(n, split="train", seed=0, resolution=32, progress=progress)

        def load(resolution: int) -> torch.Tensor:
            if resolution == 32:
                return first.images
            return ProductCatalogue(n, split="train", seed=0, resolution=resolution, progress=progress).images

        fingerprint = f"catalogue-v{GENERATOR_VERSION}-train-seed0-n{n}"
        return cls("catalogue", f"catalogue (train split, {n} pictures)", first.captions, fingerprint, load,
                   labels=first.labels)  # fmt: skip

    @classmethod
    def folder(cls, path, progress: bool = True) -> TrainingSet:
        """A folder of pictures with ``captions.jsonl`` / ``captions.csv`` / ``metadata.jsonl`` / ``metadata.csv``
        (see :class:`dalle2_edu.datasets.folder.ImageCaptionFolder`), read at 64×64."""
        from dalle2_edu.datasets.folder import ImageCaptionFolder

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"--data folder '{path}' does not exist; pass a folder of pictures with a "
                                    "captions.jsonl (or metadata.jsonl) beside them")  # fmt: skip
        if not path.is_dir():
            raise NotADirectoryError(f"--data '{path}' is a file; pass the folder that holds the pictures and their "
                                     "captions file")  # fmt: skip
        folder = ImageCaptionFolder(path, resolution=FOLDER_RESOLUTION, progress=progress)
        captions = list(folder.captions)
        if len(captions) < 2:
            raise ValueError(f"'{path}' holds {len(captions)} captioned picture(s); training needs at least 2 "
                             "(and a few hundred to learn anything)")  # fmt: skip
        def load(resolution: int) -> torch.Tensor:
            if resolution == 2 * FOLDER_RESOLUTION:  # the second upsampler: read the pictures again, at 128
                return ImageCaptionFolder(path, resolution=resolution, progress=progress).tensors(progress=progress)[0]
            if FOLDER_RESOLUTION % resolution:
                raise ValueError(f"a folder is read at {FOLDER_RESOLUTION}x{FOLDER_RESOLUTION}; {resolution} does not "
                                 "divide it")  # fmt: skip
            pictures = folder.tensors(progress=progress)[0]  # decoded once, kept by the folder
            return box_downsample(pictures, FOLDER_RESOLUTION // resolution)

        return cls("folder", str(path), captions, folder.fingerprint(), load)

    def images(self, resolution: int) -> torch.Tensor:
        """uint8 (N, 3, resolution, resolution) pictures, in the order of :attr:`captions`."""
        if resolution not in self._images:
            self._images[resolution] = self._loader(resolution)
        return self._images[resolution]

    def describe(self) -> dict:
        return {"kind": self.kind, "name": self.name, "pictures": len(self), "fingerprint": self.fingerprint}
