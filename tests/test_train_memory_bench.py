"""benchmarks/train_memory.py's measuring parts: reading a process's memory, the growth slope, the step lookup.
(The whole benchmark trains for minutes; its one real run is in docs/BENCHMARKS.md.)"""

import os
import sys

import pytest
from bench_scripts import load_benchmark


def _load():
    return load_benchmark("train_memory")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_read_status_sees_this_process_grow_and_none_for_a_gone_one():
    bench = _load()
    before = bench.read_status(os.getpid())
    block = bytearray(64 * 1024 * 1024)  # 64 MiB, touched so it is resident
    for i in range(0, len(block), 4096):
        block[i] = 1
    after = bench.read_status(os.getpid())
    assert after["VmRSS"] - before["VmRSS"] >= 60 * 1024 * 1024
    assert after["VmHWM"] >= after["VmRSS"]
    del block
    assert bench.read_status(2**22 + 12345) is None  # above Linux's largest pid


def test_slope_is_least_squares_per_thousand_steps():
    bench = _load()
    assert bench.slope_per_1000([(500, 100.0), (750, 101.0), (1000, 102.0)]) == pytest.approx(4.0)
    assert bench.slope_per_1000([(500, 100.0), (600, 100.0)]) == 0.0
    assert bench.slope_per_1000([(500, 100.0)]) == 0.0  # too few points: no slope rather than a division by zero


def test_at_fraction_picks_the_first_sample_at_or_past_the_step():
    bench = _load()
    samples = [{"step": s, "rss_mib": float(s)} for s in (1, 40, 120, 510, 990, 1000)]
    assert bench.at_fraction(samples, 1000, 0.1)["step"] == 120
    assert bench.at_fraction(samples, 1000, 0.5)["step"] == 510
    assert bench.at_fraction(samples, 2000, 1.0)["step"] == 1000  # never reached: the last sample


def test_bad_arguments_stop_with_a_message():
    bench = _load()
    with pytest.raises(SystemExit):
        bench.main(["--steps", "5"])
