"""The one set of rules for user-facing numbers (dalle2_edu.validate): what passes, what is refused, and that the
message names the argument, the value and the accepted range."""

import math

import numpy as np
import pytest
import torch

from dalle2_edu.validate import (
    SEED_MAX,
    check_amounts,
    check_count,
    check_counts,
    check_eta,
    check_float,
    check_guidance_scale,
    check_int,
    check_seed,
)


@pytest.mark.parametrize(
    "value", [0.5, np.float32(0.5), np.float64(0.5), torch.tensor(0.5), np.array(0.5), torch.tensor(0.5).half()]
)
def test_check_float_takes_every_kind_of_real_number(value):
    out = check_float("x", value, low=0, high=1)
    assert out == 0.5 and type(out) is float


def test_check_float_takes_ints_and_respects_inclusive_and_exclusive_bounds():
    assert check_float("x", 1, low=0, high=1) == 1.0 and type(check_float("x", np.int64(3))) is float
    assert check_float("x", 0, low=0) == 0.0
    with pytest.raises(ValueError, match=r"x must be a finite number > 0, got 0"):
        check_float("x", 0, low=0, low_inclusive=False)
    with pytest.raises(ValueError, match=r"x must be a finite number in \[0, 1\), got 1"):
        check_float("x", 1.0, low=0, high=1, high_inclusive=False)


@pytest.mark.parametrize(
    "value, shown",
    [
        (float("nan"), "nan"),
        (np.float32("nan"), "nan"),
        (torch.tensor(float("nan")), "nan"),
        (float("inf"), "inf"),
        (-math.inf, "-inf"),
        (True, "True"),
        (np.bool_(False), r"(np\.)?False_?"),
        ("0.5", "'0.5'"),
        (None, "None"),
        (torch.tensor([0.5]), r"tensor\(\[0.5000\]\)"),
        (1 + 2j, r"\(1\+2j\)"),
        (1.5, "1.5"),
        (-0.25, "-0.25"),
    ],
)
def test_check_float_refuses_with_the_name_the_value_and_the_range(value, shown):
    with pytest.raises(ValueError, match=rf"^scale must be a finite number in \[0, 1\] \(a hint\), got {shown}$"):
        check_float("scale", value, low=0, high=1, hint="(a hint)")


@pytest.mark.parametrize("value", [3, np.int64(3), np.uint8(3), torch.tensor(3), np.array(3)])
def test_check_int_takes_python_numpy_and_0d_integers(value):
    out = check_int("n", value, low=1)
    assert out == 3 and type(out) is int


@pytest.mark.parametrize(
    "value, match",
    [
        (True, r"n must be an int >= 1, got True"),
        (1.5, r"n must be an int >= 1, got 1.5"),
        (2.0, r"n must be an int >= 1, got 2.0"),  # a float is not a count, even a whole one
        (np.float32(2), r"n must be an int >= 1, got (np\.float32\()?2\.0"),
        ("3", r"n must be an int >= 1, got '3'"),
        (0, r"n must be an int >= 1, got 0"),
        (-4, r"n must be an int >= 1, got -4"),
        (2**63, r"n must be an int >= 1, got 9223372036854775808"),  # beyond int64: torch could not count it
    ],
)
def test_check_int_refuses_bools_floats_and_out_of_range(value, match):
    with pytest.raises(ValueError, match=match):
        check_int("n", value, low=1)


def test_check_int_with_both_bounds_and_counts():
    assert check_int("k", 5, low=0, high=5) == 5
    with pytest.raises(ValueError, match=r"k must be an int in \[0, 5\] \(at most five\), got 6"):
        check_int("k", 6, low=0, high=5, hint="(at most five)")
    assert check_count("steps", np.int32(7)) == 7
    with pytest.raises(ValueError, match="steps must be an int >= 1, got 0"):
        check_count("steps", 0)
    assert check_counts(n=2, steps=np.int64(3)) == (2, 3)
    with pytest.raises(ValueError, match="steps must be an int >= 1, got 2.5"):
        check_counts(n=2, steps=2.5)


@pytest.mark.parametrize("seed", [0, 1, SEED_MAX, np.int64(7), np.uint64(7), torch.tensor(7)])
def test_check_seed_takes_ints_in_the_int64_range(seed):
    assert check_seed(seed) == int(seed) and type(check_seed(seed)) is int


@pytest.mark.parametrize("seed", [2**63, 2**64, 2**64 + 1, -1, 1.5, 2.0, True, "0", None])
def test_check_seed_refuses_too_large_negative_and_non_integer_seeds(seed):
    with pytest.raises(ValueError, match=r"^seed must be an int in \[0, 9223372036854775807\] \(2\*\*63 - 1\), got "):
        check_seed(seed)


def test_guidance_scale_rule():
    assert check_guidance_scale(0) == 0.0  # the unconditional model: allowed on purpose
    assert check_guidance_scale(np.float32(3.0)) == 3.0 and check_guidance_scale(100) == 100.0
    for bad in (float("nan"), -5, -0.01, float("inf"), True):
        with pytest.raises(ValueError, match=r"^guidance_scale must be a finite number >= 0 \(0 = unconditional"):
            check_guidance_scale(bad)
    with pytest.raises(ValueError, match="^prior_guidance_scale must be"):
        check_guidance_scale(-1, "prior_guidance_scale")


def test_eta_rule():
    assert check_eta(0) == 0.0 and check_eta(np.float32(1.0)) == 1.0 and check_eta(torch.tensor(0.75)) == 0.75
    for bad in (float("nan"), -0.1, 1.5, float("inf")):
        with pytest.raises(ValueError, match=r"^eta must be a finite number in \[0, 1\] \(0 = deterministic"):
            check_eta(bad)


def test_amounts_take_one_number_or_a_list_in_any_form():
    assert check_amounts(np.float32(0.5)) == [0.5]
    assert check_amounts(torch.tensor(0.25)) == [0.25]
    assert check_amounts(1) == [1.0]
    assert check_amounts([0, 0.5, np.float32(1)]) == [0.0, 0.5, 1.0]
    assert check_amounts((0.25,)) == [0.25]
    assert check_amounts(np.array([0.3, 0.6])) == [0.3, 0.6]
    assert check_amounts(torch.tensor([0.5, 0.75])) == [0.5, 0.75]
    for bad, match in [
        (1.5, r"amount must be a finite number in \[0, 1\], got 1.5"),
        ([0.5, float("nan")], r"every amount must be a finite number in \[0, 1\], got nan"),
        ([0.5, -1], r"every amount must be a finite number in \[0, 1\], got -1"),
        ([], r"amount must be a number in \[0, 1\] or a non-empty list of them, got \[\]"),
        ("0.5", r"amount must be a number in \[0, 1\] or a non-empty list of them, got '0.5'"),
        (np.zeros((2, 2)), "1-D list"),
        (True, "amount must be a number"),
    ]:
        with pytest.raises(ValueError, match=match):
            check_amounts(bad)
