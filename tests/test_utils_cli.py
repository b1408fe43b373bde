import json
import random

import numpy as np
import pytest
import torch

from dalle2_edu import fast_mode, get_device, set_seed
from dalle2_edu.cli import main
from dalle2_edu.utils import data_dir


def test_set_seed_fixes_every_source():
    def draw():
        return random.random(), np.random.rand(), torch.rand(1).item()

    set_seed(5)
    a = draw()
    g = set_seed(5)
    assert draw() == a
    assert torch.equal(torch.rand(3, generator=g), torch.rand(3, generator=torch.Generator().manual_seed(5)))
    set_seed(6)
    assert draw() != a
    with pytest.raises(ValueError, match="non-negative int"):
        set_seed(-1)


def test_device_and_fast_mode(monkeypatch):
    assert get_device("cpu") == torch.device("cpu")
    assert get_device("auto").type in {"cpu", "cuda", "mps"}
    monkeypatch.setenv("DALLE2_EDU_FAST", "1")
    assert fast_mode()
    monkeypatch.setenv("DALLE2_EDU_FAST", "0")
    assert not fast_mode()
    monkeypatch.setenv("DALLE2_EDU_DATA", "/tmp/somewhere")
    assert str(data_dir()) == "/tmp/somewhere"


def test_cli_toy2d_writes_a_picture_and_a_report(tmp_path):
    out = tmp_path / "demo"
    args = ["toy2d", "--steps", "30", "--hidden", "16", "--depth", "1", "--vlb-points", "50", "--out", str(out)]
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["steps"] == 30 and "gap_nats" in report
    png = (out / "denoising.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_cli_rejects_bad_arguments(capsys):
    with pytest.raises(SystemExit):
        main(["toy2d", "--dataset", "spiral"])
    assert "invalid choice" in capsys.readouterr().err
