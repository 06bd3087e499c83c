"""Checks every experiment shares: config values (before anything is written) and unit files read back.

Each raises ValueError naming the key and the value at fault.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from modscope.checks import check_real
from modscope.cluster import check_n_jobs as check_n_jobs_value

__all__ = [
    "NUMBER", "check_choice", "check_fields", "check_fraction", "check_int", "check_n_jobs", "check_number",
    "check_sizes",
]  # fmt: skip

#: A number in a unit file: JSON has no NaN, so an undefined value is stored as null.
NUMBER = (int, float, type(None))


def check_int(config: Mapping[str, Any], key: str, low: int) -> int:
    """``config[key]`` as an int >= ``low``."""
    v = config[key]
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise ValueError(f"{key} must be an int >= {low}, got {v!r}")
    return v


def check_number(config: Mapping[str, Any], key: str, *, positive: bool) -> float:
    """``config[key]`` as a finite float, > 0 (``positive``) or >= 0 (:func:`modscope.checks.check_real`)."""
    return check_real(config[key], key, positive=positive)


_HIGH = {"open": ("in (0, 1)", lambda v: v < 1), "closed": ("in (0, 1]", lambda v: v <= 1),
         "none": ("positive", lambda v: True)}  # fmt: skip


def check_fraction(config: Mapping[str, Any], key: str, *, high: str = "open") -> float:
    """``config[key]`` as a positive number, below 1 (``high="open"``), at most 1 (``"closed"``) or
    unbounded (``"none"``)."""
    want, below = _HIGH[high]
    v = config[key]
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
    if not ok or not below(v):
        raise ValueError(f"{key} must be a number {want}, got {v!r}")
    return float(v)


def check_choice(config: Mapping[str, Any], key: str, choices: Sequence[str]) -> str:
    if config[key] not in choices:
        raise ValueError(f"{key} must be one of {list(choices)}, got {config[key]!r}")
    return config[key]


def check_n_jobs(config: Mapping[str, Any], key: str = "n_jobs") -> int:
    """A worker count: a positive int, or -1 for one per CPU (:func:`modscope.cluster.check_n_jobs`)."""
    return check_n_jobs_value(config[key], key)


def check_sizes(config: Mapping[str, Any], key: str, template: str, pattern: str, example: str) -> str:
    """The model spec ``template`` filled with ``config[key]`` (layer sizes like ``example``), validated."""
    from modscope.models import parse_spec

    v = config[key]
    if not isinstance(v, str) or not re.fullmatch(pattern, v):
        raise ValueError(f"{key} must be layer sizes like {example!r}, got {v!r}")
    spec = template.format(v)
    parse_spec(spec)  # zero sizes etc.: a SpecError (a ValueError) naming the spec
    return spec


def check_fields(doc: Any, schema: Mapping[str, Any], where: str = "") -> None:
    """``doc`` is a JSON object with every key of ``schema``; each value an instance of the schema's type
    (or tuple of types), or itself such an object when the schema gives a nested mapping."""
    if not isinstance(doc, Mapping):
        raise ValueError(f"{repr(where) if where else 'the document'} must be a JSON object, got {doc!r:.60}")
    for key, want in schema.items():
        name = f"{where}.{key}" if where else key
        if key not in doc:
            raise ValueError(f"lacks the key {name!r}")
        if isinstance(want, Mapping):
            check_fields(doc[key], want, name)
        elif not isinstance(doc[key], want) or (isinstance(doc[key], bool) and want in (int, NUMBER)):
            kinds = want if isinstance(want, tuple) else (want,)
            names = " or ".join("null" if t is type(None) else t.__name__ for t in kinds)
            raise ValueError(f"{name!r} must be {names}, got {doc[key]!r:.60}")


def finite_or_none(value: float) -> float | None:
    """``value`` as a float, or ``None`` where it is NaN or infinite (JSON has neither; e.g. an ARI that is
    undefined because no unit is used by one task only)."""
    return float(value) if math.isfinite(value) else None
