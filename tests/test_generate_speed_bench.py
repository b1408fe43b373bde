"""benchmarks/generate_speed.py: the old settings it compares against are real ``generate`` arguments, and one tiny
run (1 picture, 1 repeat, 1 thread) writes both rows with every stage's time."""

import inspect
import json
import math

import pytest
import torch
from bench_scripts import load_benchmark

from dalle2_edu.pipeline import UnCLIP


def _load():
    return load_benchmark("generate_speed")


def test_old_defaults_are_generate_arguments_and_current_defaults_are_read_from_the_signature():
    bench = _load()
    params = inspect.signature(UnCLIP.generate).parameters
    assert set(bench.OLD_DEFAULTS) <= set(params) and set(bench.DEFAULTS_2026_12_04) == set(bench.OLD_DEFAULTS)
    current = bench.current_defaults()
    assert {k: v for k, v in current.items() if k != "upsample_spacing"} == {
        k: params[k].default for k in bench.OLD_DEFAULTS if k != "upsample_spacing"}
    assert params["upsample_spacing"].default is None  # generate resolves it by the sampler: quad for ddpm
    assert current["upsample_spacing"] == "quad"


def test_tiny_run_times_both_settings(tmp_path):
    bench = _load()
    threads = torch.get_num_threads()
    try:
        report = bench.main(["--n", "1", "--repeats", "1", "--threads", "1", "--upsampler-quality", "2",
                             "--json", str(tmp_path / "speed.json")])  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    assert json.loads((tmp_path / "speed.json").read_text()) == report
    rows = report["rows"]
    assert set(rows) == {"2026-12-03 defaults", "2026-12-04 defaults", "current defaults"}
    for row in rows.values():
        for key in ("total_s", "prior_s", "decoder_s", "upsampler_s"):
            assert math.isfinite(row[key]) and row[key] >= 0, (key, row)
        assert row["prior_s"] + row["decoder_s"] + row["upsampler_s"] <= row["total_s"] * 1.01 + 1e-3
        graded = row["upsampler_quality"]
        assert graded["n"] == 2 and graded["sampler"] == row["settings"]["sampler"]
        assert graded["steps"] == row["settings"]["upsample_steps"] and math.isfinite(graded["diffusion"]["psnr_db"])
        assert graded["spacing"] == row["settings"]["upsample_spacing"]
    assert "upsampler_quality" not in report["markdown"] and report["markdown"].count("\n") == 4  # header + 3 rows
    old, new = rows["2026-12-03 defaults"]["total_s"], rows["current defaults"]["total_s"]
    assert report["speedup"] == pytest.approx(old / new, rel=1e-2)
    mid = rows["2026-12-04 defaults"]["total_s"]
    assert report["speedup_vs_2026_12_04"] == pytest.approx(mid / new, rel=1e-2)


def test_bad_arguments_stop_with_a_message(tmp_path):
    bench = _load()
    with pytest.raises(SystemExit):
        bench.main(["--repeats", "0", "--json", str(tmp_path / "x.json")])
