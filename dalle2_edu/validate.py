"""The rules for the numbers a user passes in, in one place, so that every entry point says the same thing.

Every float and int argument of :class:`~dalle2_edu.pipeline.UnCLIP` (``generate``, ``variations``, ``interpolate``,
``text_diff``, ``inpaint``, ``decode``, ``upsample``, ``invert``) and of the widgets goes through these checks, and a
command line can call them on its flags before any work starts.

- A real number is a Python ``int``/``float``, a NumPy scalar (``np.float32(0.5)``), a 0-d array or a 0-d tensor.
  ``True``/``False`` are refused (``guidance_scale=True`` is a slip, not 1.0), and so are NaN and ±inf: a NaN
  guidance scale or η does not fail inside the sampler, it quietly draws NaN (black) pictures.
- An integer is a Python or NumPy int (or a 0-d integer tensor); a float, even 2.0, is refused, as ``range`` does.
- Every refusal is a :class:`ValueError` naming the argument, the value and the accepted range, e.g.
  ``guidance_scale must be a finite number >= 0 (1 = no guidance), got nan``.

    >>> check_float("eta", np.float32(0.5), low=0, high=1)
    0.5
    >>> check_seed(2**63)
    Traceback (most recent call last):
    ...
    ValueError: seed must be an int in [0, 9223372036854775807] (2**63 - 1), got 9223372036854775808
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch

SEED_MAX = 2**63 - 1
"""The largest seed: seeds are stored as int64 (in tensors, NumPy and JSON reports) and ``seed + 2`` must still be a
valid ``torch.Generator`` seed."""

INT_MAX = 2**63 - 1
"""The largest integer any argument may hold (int64): torch cannot index or count beyond it."""


def _scalar(value):
    """A 0-d array or tensor → its Python number; anything else unchanged."""
    if isinstance(value, torch.Tensor | np.ndarray) and value.ndim == 0:
        if value.dtype in (torch.bool, np.bool_):
            return bool(value.item())
        return value.item()
    return value


def _range_text(low, high, low_inclusive: bool = True, high_inclusive: bool = True) -> str:
    if low is not None and high is not None:
        return f"in {'[' if low_inclusive else '('}{low:g}, {high:g}{']' if high_inclusive else ')'}"
    if low is not None:
        return f"{'>=' if low_inclusive else '>'} {low:g}"
    if high is not None:
        return f"{'<=' if high_inclusive else '<'} {high:g}"
    return ""


def check_float(
    name: str,
    value,
    *,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
    hint: str = "",
) -> float:
    """``value`` as a finite Python float within the given bounds.

    :param name: the argument's name, as the user wrote it (``"guidance_scale"``, or ``"--guidance-scale"``).
    :param low, high: the bounds (None: unbounded on that side); ``low_inclusive``/``high_inclusive`` say whether the
        bound itself is allowed.
    :param hint: appended to the accepted range in the message, e.g. ``"(1 = no guidance)"``.
    :raises ValueError: not a real number, a bool, NaN or ±inf, or out of range; the message names all three.
    """
    number = _scalar(value)
    what = " ".join(filter(None, ["a finite number", _range_text(low, high, low_inclusive, high_inclusive), hint]))
    if isinstance(number, bool | np.bool_) or not isinstance(number, numbers.Real):
        raise ValueError(f"{name} must be {what}, got {value!r}")
    number = float(number)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be {what}, got {number}")
    too_low = low is not None and (number < low if low_inclusive else number <= low)
    too_high = high is not None and (number > high if high_inclusive else number >= high)
    if too_low or too_high:
        raise ValueError(f"{name} must be {what}, got {number:g}")
    return number


def check_int(name: str, value, *, low: int | None = None, high: int | None = None, hint: str = "") -> int:
    """``value`` as a Python int in [``low``, ``high``] (``high`` defaults to :data:`INT_MAX`).

    :raises ValueError: a bool, a float (1.5, and 2.0 too: pass an int), something not a number, or out of range.
    """
    high = INT_MAX if high is None else high
    number = _scalar(value)
    if low is None:
        what = f"an int <= {high}" if high != INT_MAX else "an int"
    else:
        what = f"an int >= {low}" if high == INT_MAX else f"an int in [{low}, {high}]"
    what = f"{what} {hint}".strip()
    if isinstance(number, bool | np.bool_) or not isinstance(number, numbers.Integral):
        raise ValueError(f"{name} must be {what}, got {value!r}")
    number = int(number)
    if (low is not None and number < low) or number > high:
        raise ValueError(f"{name} must be {what}, got {number}")
    return number


def check_count(name: str, value, low: int = 1) -> int:
    """A number of things (pictures, steps, candidates): an int >= ``low`` (1 by default)."""
    return check_int(name, value, low=low)


def check_counts(**counts) -> tuple[int, ...]:
    """Several counts at once, in the order given: ``n, steps = check_counts(n=n, steps=steps)``."""
    return tuple(check_count(name, value) for name, value in counts.items())


def check_seed(seed, name: str = "seed") -> int:
    """A random seed: an int in [0, :data:`SEED_MAX`] = [0, 2**63 - 1].

    Negative seeds are refused rather than wrapped (torch maps -1 to 2**64 - 1, so -1 and 18446744073709551615 would
    draw the same pictures), and so are floats (``1.5`` is not a seed).
    """
    number = _scalar(seed)
    if isinstance(number, bool | np.bool_) or not isinstance(number, numbers.Integral) or not 0 <= number <= SEED_MAX:
        raise ValueError(f"{name} must be an int in [0, {SEED_MAX}] (2**63 - 1), got {seed!r}")
    return int(number)


def offset_seed(seed: int, k: int) -> int:
    """``seed + k`` wrapped into [0, :data:`SEED_MAX`]: the seed of a later stage (the pipeline's decoder draws from
    ``seed + 1``, its upsampler from ``seed + 2``). It is ``seed + k`` itself unless that passes SEED_MAX, so the
    largest seeds stay usable too."""
    return (seed + k) % (SEED_MAX + 1)


def check_prompts(prompt, name: str = "prompt") -> list[str]:
    """One prompt or a non-empty list/tuple of them → a list of non-blank strings (a list may repeat a prompt).

    Whether the words are known is for the CLIP that reads them to say
    (:meth:`~dalle2_edu.stages.clip.ProductCLIP.tokenize`).
    """
    prompts = [prompt] if isinstance(prompt, str) else list(prompt) if isinstance(prompt, list | tuple) else None
    if not prompts:
        raise ValueError(f"{name} must be a non-empty string or a non-empty list of strings, got {prompt!r}")
    for p in prompts:
        if not isinstance(p, str) or not p.strip():
            raise ValueError(f"every {name} must be a non-empty string (e.g. 'a red mug'), got {p!r}")
    return prompts


def check_guidance_scale(value, name: str = "guidance_scale") -> float:
    """A classifier-free guidance scale s: finite and >= 0.

    ε̂ = ε̂(x_t, ∅) + s · (ε̂(x_t, z) - ε̂(x_t, ∅)): s = 1 is plain conditional sampling and s > 1 follows the
    condition more closely. s = 0 is allowed on purpose: it is the unconditional model, the baseline notebook 09
    compares guidance against. s < 0 pushes away from the condition (an "anti-prompt"), which this toolkit does not
    teach, so it is refused. There is no upper bound: large scales are valid maths (the pictures saturate).
    """
    return check_float(name, value, low=0.0, hint="(0 = unconditional, 1 = no guidance, 3 is a good default)")


def check_eta(value, name: str = "eta") -> float:
    """DDIM's η: finite, in [0, 1].

    σ_t = η · √((1 - ᾱ_{t-1}) / (1 - ᾱ_t)) · √(1 - ᾱ_t / ᾱ_{t-1}): η = 0 is deterministic DDIM and η = 1 has the
    step variance of ancestral (DDPM) sampling. η > 1 asks for more noise than a step can carry: once σ_t² exceeds
    1 - ᾱ_{t-1} the sampler's √(1 - ᾱ_{t-1} - σ_t²) term has no real value (it is clamped to 0, dropping the model's
    noise estimate), so the result is no longer a DDIM sample; it is refused rather than silently changed.
    """
    return check_float(name, value, low=0.0, high=1.0, hint="(0 = deterministic, 1 = as noisy as DDPM)")


def check_amounts(amount, name: str = "amount", low: float = 0.0, high: float = 1.0) -> list[float]:
    """A text-diff strength θ, or several: one real number, or a non-empty list/tuple/1-D array/1-D tensor of them, each
    in [``low``, ``high``] (θ = 0 leaves the picture as it is, θ = 1 is the text direction alone).

    :return: the amounts as a list of Python floats.
    """
    scalar = _scalar(amount)
    if isinstance(scalar, numbers.Real) and not isinstance(scalar, bool | np.bool_):
        return [check_float(name, scalar, low=low, high=high)]
    if isinstance(amount, torch.Tensor | np.ndarray):
        if amount.ndim != 1:
            raise ValueError(f"{name} must be a number or a 1-D list of numbers, got an array of shape {amount.shape}")
        amount = amount.tolist()
    if not isinstance(amount, list | tuple) or not amount:
        what = _range_text(low, high)
        raise ValueError(f"{name} must be a number {what} or a non-empty list of them, got {amount!r}")
    return [check_float(f"every {name}", a, low=low, high=high) for a in amount]
