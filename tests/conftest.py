import os

import pytest
import torch

os.environ.setdefault("DALLE2_EDU_FAST", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_collection_modifyitems(config, items):
    """Browser tests are opt-in: they run only when ``-m`` names the ``browser`` marker (``make test`` does so when
    Chromium is installed)."""
    if "browser" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="opt-in: run with `pytest -m browser` (needs Chromium and Playwright)")
    for item in items:
        if "browser" in item.keywords:
            item.add_marker(skip)
