"""The one training path: recipes, the runner's provenance and refusals, your own folder, the command line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dalle2_edu.checkpoint import weights_digest
from dalle2_edu.cli import main
from dalle2_edu.datasets.shapes import read_shapes, write_shapes_folder
from dalle2_edu.recipes import RECIPES, Runner, TrainingError, check_checkpoint_set, recipe_for, scale_steps
from dalle2_edu.recipes.settings import STAGE_FILES
from dalle2_edu.utils import resolve_precision

REPO = Path(__file__).resolve().parents[1]


def run(out, stages, **kw):
    kw.setdefault("recipe", "tiny")
    return Runner(out=out, device="cpu", progress=False, **kw).run(stages)


@pytest.fixture(scope="module")
def catalogue_run(tmp_path_factory):
    """clip + prior + decoder trained with the tiny recipe on the catalogue (seconds)."""
    out = tmp_path_factory.mktemp("tiny_catalogue")
    run(out, "clip,prior,decoder")
    return out


@pytest.fixture(scope="module")
def gadgets(tmp_path_factory):
    """A folder of 48 captioned pictures of nouns the catalogue never uses (gizmo, widget, sprocket)."""
    folder = tmp_path_factory.mktemp("gadgets")
    write_shapes_folder(folder, n=48, seed=0)
    return folder


def test_every_recipe_names_every_stage_and_steps_scale_with_the_folder():
    for name, stages in RECIPES.items():
        assert set(stages) == set(STAGE_FILES), name
    assert scale_steps(1000, 20_000) == 1000
    assert scale_steps(1000, 500) == 1000  # never fewer than the recipe
    assert scale_steps(1000, 80_000) == 2000  # sqrt(4)
    assert scale_steps(1000, 10**7) == 4000  # clamped at 4x
    s = recipe_for("fast", "decoder", n_pictures=45_000)
    assert s.steps == round(RECIPES["fast"]["decoder"].steps * 1.5) and s.n_train == 45_000  # sqrt(45 000 / 20 000)
    with pytest.raises(ValueError, match="untrained"):
        recipe_for("fast", "clip", steps=0)
    with pytest.raises(ValueError, match="unknown recipe"):
        recipe_for("huge", "clip")


def test_the_runner_records_what_each_stage_was_trained_against(catalogue_run):
    out = catalogue_run
    clip_digest = weights_digest(out / STAGE_FILES["clip"])
    for stage in ("prior", "decoder"):
        report = json.loads((out / STAGE_FILES[stage]).with_suffix(".json").read_text())
        assert report["trained_against"]["upstream"] == {"clip": clip_digest}
        assert report["trained_against"]["data"].startswith("catalogue-")
        assert report["command"].startswith("python -m dalle2_edu train")
        assert report["settings"]["steps"] == RECIPES["tiny"][stage].steps
        # what --precision auto resolved to on this machine: bf16 on a CPU with AMX / AVX-512 BF16, else fp32
        assert report["precision"] == ("bf16" if resolve_precision("auto", torch.device("cpu")) else "fp32")
    summary = json.loads((out / "report.json").read_text())
    assert set(summary["stages"]) == {"clip", "prior", "decoder"}
    # a second run is a no-op: every stage is up to date
    again = run(out, "clip,prior")
    assert all(again["stages"][s].get("skipped") == "up to date" for s in ("clip", "prior"))


def test_a_retrained_clip_makes_the_prior_stale_and_the_pipeline_refuses_the_mixed_set(catalogue_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(catalogue_run, out)
    old_prior = weights_digest(out / STAGE_FILES["prior"])
    run(out, "clip", steps=RECIPES["tiny"]["clip"].steps + 2)  # CLIP changes; the decoder is left behind
    with pytest.raises(ValueError, match="prior.safetensors' was trained against another CLIP"):
        check_checkpoint_set(out)
    from dalle2_edu.pipeline import UnCLIP

    with pytest.raises(ValueError, match="another CLIP"):
        UnCLIP.from_pretrained(out, upsampler=False)
    report = run(out, "prior,decoder")  # retrains both against the new CLIP, old runs moved aside
    assert "skipped" not in report["stages"]["prior"]
    assert weights_digest(out / STAGE_FILES["prior"]) != old_prior
    assert (out / "runs" / "prior.stale-1" / "checkpoint.pt").exists()  # nothing trained is deleted...
    assert weights_digest(out / "runs" / "prior.replaced-1" / STAGE_FILES["prior"]) == old_prior  # ...or overwritten
    check_checkpoint_set(out)  # consistent again


def test_the_runner_refuses_what_would_lose_or_mix_work(tmp_path, gadgets, catalogue_run):
    from dalle2_edu.utils import data_dir

    with pytest.raises(TrainingError, match="shipped checkpoints.*--overwrite-shipped"):
        run(data_dir() / "checkpoints", "clip")
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(TrainingError, match="is a file"):
        run(afile, "clip")
    with pytest.raises(TrainingError, match="first run `python -m dalle2_edu train clip"):
        run(tmp_path / "empty", "prior")
    with pytest.raises(TrainingError, match="attribute labels"):
        run(tmp_path / "x", "classifier", data=gadgets)
    with pytest.raises(TrainingError, match="trained on catalogue.*another --out"):
        run(catalogue_run, "clip", data=gadgets)
    with pytest.raises(TrainingError, match="run folder"):
        run(catalogue_run / "runs" / "clip", "clip")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run(tmp_path / "y", "clip", data=tmp_path / "no_such_folder")
    with pytest.raises(FileNotFoundError, match="--init-decoder: no weights file.*image32_attributes.safetensors"):
        run(tmp_path / "w", "decoder", init_decoder=tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="holds a clip, not a decoder"):
        run(tmp_path / "w", "decoder", init_decoder=catalogue_run / STAGE_FILES["clip"])
    (tmp_path / "no_captions").mkdir()
    (tmp_path / "no_captions" / "a.png").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="no caption file.*metadata.jsonl"):
        run(tmp_path / "z", "clip", data=tmp_path / "no_captions")


def test_train_all_on_your_own_folder_then_generate_from_it(tmp_path, gadgets, capsys, monkeypatch):
    out = tmp_path / "mine"
    assert main(["train", "all", "--recipe", "tiny", "--data", str(gadgets), "--out", str(out), "--device", "cpu",
                 "--no-progress"]) == 0  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    assert report["data"]["kind"] == "folder" and report["data"]["pictures"] == 48
    assert 0 <= report["stages"]["evaluate"]["retrieval"]["accuracy"] <= 1
    clip = json.loads((out / "clip_tiny.json").read_text())
    assert clip["trained_against"]["data"] == report["data"]["fingerprint"]
    pictures = tmp_path / "pictures"
    assert main(["generate", "a red gizmo", "a blue widget.", "--n", "2", "--steps", "2", "--checkpoints", str(out),
                 "--out", str(pictures), "--scale", "1"]) == 0  # fmt: skip
    assert len(list(pictures.glob("0*_*.png"))) == 4 and (pictures / "grid.png").exists()
    import dalle2_edu.cli as cli

    monkeypatch.setattr(cli, "GRID_MAX_PICTURES", 3)  # more pictures than a grid holds: streamed singles only
    many = tmp_path / "many"
    assert main(["generate", "a red gizmo", "a blue widget", "--n", "2", "--steps", "2", "--batch-size", "1",
                 "--checkpoints", str(out), "--out", str(many)]) == 0  # fmt: skip
    assert len(list(many.glob("0*_*.png"))) == 4 and not (many / "grid.png").exists()
    readings = read_shapes(torch.zeros(1, 3, 8, 8, dtype=torch.uint8) + 255)
    assert readings[0]["shape"] is None  # a blank picture reads as nothing
    capsys.readouterr()
    assert main(["generate", "a red mug", "--checkpoints", str(out), "--out", str(pictures)]) == 1
    err = capsys.readouterr().err
    assert "unknown prompt word(s) ['mug']" in err and "gizmo" in err and "Traceback" not in err


def test_cli_errors_are_one_line_with_the_right_exit_code(tmp_path, capsys):
    assert main(["train", "clip", "--recipe", "tiny", "--steps", "0", "--out", str(tmp_path / "a")]) == 1
    assert "0 would save an untrained model" in capsys.readouterr().err
    old = ["pretrain", "--recipe", "tiny", "--stages", "clip", "--clip-steps", "0", "--out", str(tmp_path / "p")]
    assert main(old) == 1
    assert "0 would save an untrained model" in capsys.readouterr().err  # the old command, now an alias of train
    assert main(["toy2d", "--steps", "-3", "--out", str(tmp_path / "t")]) == 1
    assert "--steps must be" in capsys.readouterr().err
    assert main(["toy2d", "--depth", "-1", "--out", str(tmp_path / "t")]) == 1
    assert "--depth must be" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["train", "clip", "--recipe", "tiny", "--device", "cuda", "--out", str(tmp_path / "c")]) == 1
        assert "no CUDA GPU" in capsys.readouterr().err
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["generate", "a red mug", "--out", str(afile)]) == 1
    assert "is a file" in capsys.readouterr().err
    assert main(["generate", "a red mug", "--scale", "0", "--out", str(tmp_path / "g")]) == 1
    assert "--scale must be" in capsys.readouterr().err
    assert main(["generate", "a red mug", "--guidance-scale", "nan", "--out", str(tmp_path / "g")]) == 1
    assert "--guidance-scale must be a finite number" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        main(["train"])
    assert usage.value.code == 2
    with pytest.raises(ValueError):  # --debug shows the real exception
        main(["--debug", "toy2d", "--steps", "-3", "--out", str(tmp_path / "t")])


def test_torchrun_trains_a_stage_with_two_processes(catalogue_run, tmp_path):
    """`torchrun --standalone --nproc-per-node=2 -m dalle2_edu train prior` (gloo on the CPU) completes, and only
    rank 0 writes the weights and the report."""
    out = tmp_path / "ddp"
    shutil.copytree(catalogue_run, out)
    shutil.rmtree(out / "runs" / "prior")
    (out / STAGE_FILES["prior"]).unlink()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DALLE2_EDU_FAST": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "dalle2_edu",
           "train", "prior", "--recipe", "tiny", "--out", str(out), "--device", "cpu", "--no-progress"]  # fmt: skip
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    report = json.loads((out / STAGE_FILES["prior"]).with_suffix(".json").read_text())
    assert report["world_size"] == 2 and report["command"].startswith("torchrun")
    assert result.stdout.count("[train] prior: done") == 1  # one rank reports
