"""The attribute classifier's network: a small CNN that reads a product shot's category, colour, pattern and background.

It is the project's quality meter (:mod:`dalle2_edu.metrics`: prompt fidelity, FID and KID on its features); the
network lives here with the others, its training and its uses in ``metrics``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dalle2_edu.datasets.catalogue import BACKGROUNDS, CATEGORIES, COLOUR_NAMES, LABEL_COLUMNS, PATTERNS
from dalle2_edu.nets.layers import group_norm

ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "category": CATEGORIES,
    "colour": COLOUR_NAMES,
    "pattern": PATTERNS,
    "background": BACKGROUNDS,
}
"""Attribute name -> its value names, in the order of the catalogue's label columns (:data:`LABEL_COLUMNS`)."""
assert tuple(ATTRIBUTES) == LABEL_COLUMNS


def to_model_input(images: torch.Tensor) -> torch.Tensor:
    """Bring pictures to what the classifier reads: float32 (N, 3, 32, 32) in [-1, 1].

    :param images: (N, 3, H, W) with H == W a multiple of 32 (32 or 64 in this project); uint8 in 0..255, or float
        in [-1, 1]. Larger pictures are averaged over (H/32 x H/32) blocks, as the catalogue makes its 32x32 ones.
    :return: float32 (N, 3, 32, 32) in [-1, 1], on the input's device.
    :raises ValueError: for any other shape.
    """
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images must be a tensor (N, 3, H, W), got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[2] != images.shape[3] or images.shape[2] % 32:
        raise ValueError(
            f"images must have shape (N, 3, H, H) with H a multiple of 32 (32 or 64), got {tuple(images.shape)}"
        )
    x = images.float() / 127.5 - 1 if images.dtype == torch.uint8 else images.float()
    factor = images.shape[2] // 32
    return F.avg_pool2d(x, factor) if factor > 1 else x


def _conv(c_in: int, c_out: int) -> nn.Sequential:
    """3x3 convolution (same size), GroupNorm, SiLU."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), group_norm(c_out), nn.SiLU())


class AttributeClassifier(nn.Module):
    """A small CNN that reads a product shot's category, colour, pattern and background.

    Three stages of two 3x3 convolutions each (32x32, 16x16 and 8x8 pixels, ``width``, ``2 width`` and ``3 width``
    channels, GroupNorm and SiLU after every convolution, 2x2 average pooling between stages), a global average pool,
    and one linear layer with SiLU to ``feature_dim`` features: the penultimate layer that :func:`fid` and :func:`kid`
    compare. Four linear heads read the features. GroupNorm (not BatchNorm) makes every picture's output independent
    of the rest of its batch, so features do not change with the batch size.

    :param width: channels of the first stage (about 220k parameters at the default 32).
    :param feature_dim: size of the penultimate feature vector.
    """

    def __init__(self, width: int = 32, feature_dim: int = 128):
        super().__init__()
        self.width, self.feature_dim = width, feature_dim
        c1, c2, c3 = width, 2 * width, 3 * width
        self.body = nn.Sequential(
            _conv(3, c1), _conv(c1, c1), nn.AvgPool2d(2),  # 32 -> 16
            _conv(c1, c2), _conv(c2, c2), nn.AvgPool2d(2),  # 16 -> 8
            _conv(c2, c3), _conv(c3, c3),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(c3, feature_dim), nn.SiLU(),
        )  # fmt: skip
        self.heads = nn.ModuleDict({name: nn.Linear(feature_dim, len(values)) for name, values in ATTRIBUTES.items()})

    @property
    def config(self) -> dict:
        """The constructor arguments, stored with the weights."""
        return dict(model="AttributeClassifier", width=self.width, feature_dim=self.feature_dim)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features.

        :param x: (N, 3, H, H) pictures, uint8 or float in [-1, 1], H = 32 or 64 (see :func:`to_model_input`).
        :return: (N, feature_dim) float32.
        """
        return self.body(to_model_input(x))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """:param x: (N, 3, H, H) pictures, uint8 or float in [-1, 1], H = 32 or 64.
        :return: ``dict(category=(N, 8), colour=(N, 8), pattern=(N, 3), background=(N, 3))`` logits.
        """
        h = self.features(x)
        return {name: head(h) for name, head in self.heads.items()}

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Most likely value of every attribute.

        :param x: (N, 3, H, H) pictures, uint8 or float in [-1, 1], H = 32 or 64.
        :return: int64 (N, 4), columns category, colour, pattern, background (as the catalogue's ``labels``).
        """
        logits = self(x)
        return torch.stack([logits[name].argmax(dim=1) for name in ATTRIBUTES], dim=1)
