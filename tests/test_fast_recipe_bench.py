"""benchmarks/fast_recipe.py's reading of a run: the table row and issue 13's targets (the runs themselves take half an
hour and are measured, not tested)."""

from bench_scripts import load_benchmark


def _report(seen_colour, seen_category, held_colour, held_category):
    grade = {"pattern": 0.7, "background": 0.6}
    return {"stages": {"clip": {"train_seconds": 60.0}, "decoder": {"train_seconds": 300.0},
                       "evaluate": {"seconds": 50.0, "settings": {"steps": 15},
                                    "seen": {"colour": seen_colour, "category": seen_category, "n": 348, **grade},
                                    "heldout": {"colour": held_colour, "category": held_category, "n": 36, **grade}}}}


def test_a_run_meets_the_targets_only_when_every_figure_and_the_time_do():
    bench = load_benchmark("fast_recipe")
    row = bench.row_from_report(_report(0.95, 0.75, 0.90, 0.72), wall_seconds=590.0)
    assert row["stage_seconds"] == {"clip": 60.0, "decoder": 300.0} and row["evaluation_seconds"] == 50.0
    assert row["seen"]["colour"] == 0.95 and row["heldout"]["n"] == 36
    assert row["targets_met"]["all"] and row["targets_met"]["time"]
    slow = bench.row_from_report(_report(0.95, 0.75, 0.90, 0.72), wall_seconds=601.0)
    assert not slow["targets_met"]["time"] and not slow["targets_met"]["all"]
    weak = bench.row_from_report(_report(0.95, 0.75, 0.84, 0.72), wall_seconds=500.0)
    assert weak["targets_met"]["heldout_colour"] is False and not weak["targets_met"]["all"]
    untimed = bench.row_from_report(_report(0.95, 0.75, 0.90, 0.72), wall_seconds=None)
    assert untimed["targets_met"]["time"] is None and untimed["targets_met"]["all"]  # the control: no time of its own
