"""The catalogue's optional cache: a read-only or damaged cache is a warning, not a crash; files follow the umask."""

from __future__ import annotations

import errno
import os
import tempfile

import numpy as np
import pytest
import torch

from dalle2_edu.datasets import ProductCatalogue
from dalle2_edu.utils import DATA_ENV


def small(cache_dir, **kwargs) -> ProductCatalogue:
    return ProductCatalogue(n=3, split="train", seed=5, resolution=32, cache_dir=cache_dir, progress=False, **kwargs)


@pytest.fixture(scope="module")
def expected():
    return small(None)


def same(a: ProductCatalogue, b: ProductCatalogue) -> bool:
    return torch.equal(a.images, b.images) and a.captions == b.captions and torch.equal(a.labels, b.labels)


def test_an_unwritable_default_cache_gives_a_warning_naming_the_data_folder(tmp_path, monkeypatch, expected):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the data folder should be")  # mkdir fails, even for root
    monkeypatch.setenv(DATA_ENV, str(blocker))
    with pytest.warns(UserWarning, match=rf"could not write the cache file .*not-a-folder.*{DATA_ENV}.*cache_dir=None"):
        data = small("default")
    assert same(data, expected)


def test_a_read_only_file_system_gives_a_warning(tmp_path, monkeypatch, expected):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.warns(UserWarning, match=rf"Read-only file system.*{DATA_ENV}"):
        data = small(tmp_path)
    assert same(data, expected) and list(tmp_path.iterdir()) == []


def test_a_damaged_cache_is_drawn_again_and_rewritten(tmp_path, expected):
    path = small(tmp_path).cache_path
    assert path.exists()
    path.write_bytes(path.read_bytes()[:100])
    with pytest.warns(UserWarning, match=r"ignoring the unreadable dataset cache .*drawing the data again"):
        assert same(small(tmp_path), expected)
    np.savez(path, images=np.zeros((2, 3, 32, 32), np.uint8), captions=np.array(["a", "b"]), labels=np.zeros((2, 4)))
    with pytest.warns(UserWarning, match="holds 2 items"):
        assert same(small(tmp_path), expected)
    with np.load(path) as data:
        assert np.array_equal(data["images"], expected.images.numpy())  # rewritten


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_the_cache_file_follows_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        path = small(tmp_path).cache_path
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == mode
