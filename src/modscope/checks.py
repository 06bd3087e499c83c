"""Argument checks shared by the library's entry points: a clear ValueError naming the parameter and value.

Torch-free, so that any package may use them. Booleans are refused where a number is expected (``True`` is
an ``int`` in Python, and ``lr=True`` is always a mistake).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

__all__ = ["check_finite", "check_positive_int", "check_real"]


def check_positive_int(value: Any, name: str) -> int:
    """``value`` as an int if it is an int >= 1, else ``ValueError("{name} must be a positive int, ...")``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def check_finite(value: Any, name: str) -> float:
    """``value`` as a float if it is a finite real number, else a ValueError naming ``name`` and the value."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def check_real(value: Any, name: str, *, positive: bool = False, below: float | None = None) -> float:
    """``value`` as a float if it is a finite real number that is ``> 0`` (``positive``) or ``>= 0``, and
    ``< below`` when given; else a ValueError naming ``name`` and the value (NaN and infinities included)."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (value <= 0 if positive else value < 0):
        want = "a positive" if positive else "a non-negative"
        raise ValueError(f"{name} must be {want} finite number, got {value!r}")
    if below is not None and value >= below:
        raise ValueError(f"{name} must be in [0, {below:g}), got {value!r}")
    return float(value)
