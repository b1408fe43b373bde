"""benchmarks/sampler_sweep.py end to end in its --tiny smoke mode (8 pictures, calls 2 and 3, DDPM-4), its
argument checks, and the goal line computed from the numbers."""

import json
import math

import pytest
import torch
from bench_scripts import load_benchmark

SWEPT = ("ddim", "ddpm", "dpmpp2m", "euler", "heun")
NUMBERS = ("fid", "kid", "kid_std", "fid_floor", "seconds", "seconds_per_picture")


def _load():
    return load_benchmark("sampler_sweep")


@pytest.fixture
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _finite(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def test_tiny_run_writes_every_row_and_field(tmp_path, _one_thread):
    bench = _load()
    path = tmp_path / "sweep.json"
    report = bench.main(["--tiny", "--threads", "1", "--no-progress", "--json", str(path)])
    saved = json.loads(path.read_text())
    assert saved["rows"] == report["rows"]
    shipped = bench.SHIPPED_GUIDANCE
    assert shipped == 3.0  # UnCLIP.generate's default, read from its signature

    got = {(r["sampler"], r["calls"], r["guidance"], r["reference"]) for r in saved["rows"]}
    want = {(s, c, g, False) for s in SWEPT for c in (2, 3) for g in (shipped, 1.0)}
    want |= {("ddpm", 4, g, True) for g in (shipped, 1.0)}
    assert got == want and len(saved["rows"]) == len(want)

    for row in saved["rows"]:
        for key in NUMBERS:
            assert _finite(row[key]), (row, key)
        assert row["fid"] >= 0 and row["kid_std"] >= 0 and row["seconds_per_picture"] > 0
        assert row["fid_floor"] == saved["fid_floor"] and row["fid_n"] == 8
        for attr in ("category", "colour", "pattern"):
            assert _finite(row["fidelity"][attr]) and 0 <= row["fidelity"][attr] <= 1
        assert row["fidelity"]["n"] == 8
        # counted by a hook on the network: Heun with an even budget makes one call less
        assert row["network_calls"] == (row["calls"] - 1 if row["sampler"] == "heun" and row["calls"] % 2 == 0
                                        else row["calls"])  # fmt: skip

    for key in ("fid_floor", "kid_floor", "kid_floor_std", "estimate_seconds", "sweep_seconds", "total_seconds"):
        assert _finite(saved[key]), key
    assert all(_finite(v) and v > 0 for v in saved["probe_seconds_per_picture_call"].values())

    nll = saved["nll_2d"]
    assert [r["method"].split(",")[0] for r in nll["rows"]] == ["exact mixture density", "probability-flow ODE",
                                                                "VLB"]  # fmt: skip
    for r in nll["rows"]:
        assert _finite(r["nll_nats"]) and _finite(r["nll_se"]) and _finite(r["bits_per_dim"])
    exact, ode, vlb = (r["nll_nats"] for r in nll["rows"])
    assert abs(ode - exact) < 0.05 and vlb > exact  # the ODE is exact with the ideal denoiser; the VLB a bound

    g = saved["goal"]
    assert isinstance(g["met"], bool) and g["line"].startswith("Goal") and "DDPM-4" in g["line"]
    assert g["line"] in saved["markdown"] and "DPM-Solver++(2M)" in saved["markdown"]


def test_goal_is_computed_from_the_numbers():
    bench = _load()

    def row(sampler, calls, fid, reference=False, guidance=3.0):
        return dict(sampler=sampler, calls=calls, network_calls=calls, guidance=guidance, fid=fid, reference=reference)

    ref = row("ddpm", 1000, 10.0, reference=True)
    met = bench.goal([ref, row("ddim", 20, 10.9), row("euler", 50, 9.0)], 1000)
    assert met["met"] and met["by_guidance"]["3"]["row"] == "ddim-20-g3" and "MET" in met["line"]
    missed = bench.goal([ref, row("ddim", 20, 11.5), row("euler", 50, 9.0), row("heun", 10, 30.0)], 1000)
    assert not missed["met"] and "NOT MET" in missed["line"] and "best ddim at 20 calls" in missed["line"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--samplers", "ddim,foo"], "unknown sampler 'foo' in --samplers; choose among ddim, ddpm, dpmpp2m"),
        (["--calls", "5,0"], "--calls must be whole numbers >= 1"),
        (["--calls", "-3"], "--calls must be whole numbers >= 1"),
        (["--calls", "5,ten"], "--calls wants comma-separated whole numbers, got 'ten'"),
        (["--n", "1"], "--n must be >= 2"),
        (["--reference-steps", "0"], "--reference-steps must be >= 1"),
        (["--guidance", "3,-1"], "--guidance wants distinct finite scales >= 0"),
    ],
)
def test_bad_arguments_are_refused_clearly(argv, message, capsys):
    bench = _load()
    with pytest.raises(SystemExit) as err:
        bench.parse_args(argv)
    assert err.value.code == 2
    assert message in capsys.readouterr().err


def test_calls_past_the_process_are_refused_not_clamped():
    bench = _load()
    args = bench.parse_args(["--samplers", "dpmpp2m", "--calls", "1000"])
    with pytest.raises(SystemExit, match=r"--calls 1000 is more than dpmpp2m can make .*\(at most 999\)"):
        bench.check_against_process(args, 1000)
    args = bench.parse_args(["--reference-steps", "2000"])
    with pytest.raises(SystemExit, match="--reference-steps 2000 is more than the decoder's 1000 steps"):
        bench.check_against_process(args, 1000)
