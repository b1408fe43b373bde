import os

import pytest
import torch

os.environ.setdefault("DALLE2_EDU_FAST", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
