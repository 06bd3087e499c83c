"""One persistence convention for every result modscope returns.

A result class defines ``to_dict()`` (plain JSON types: dicts, lists, str, int, float, bool, None) and the
classmethod ``from_dict(d)`` (its inverse). :class:`JsonResult` then gives it

- ``save(path)``: the dict as JSON, written atomically (:mod:`modscope.atomic`; NaN and infinities, which
  JSON lacks, are written as ``null`` -- ``from_dict`` reads ``null`` back as NaN where a float belongs);
- ``load(path)``: the classmethod inverse; only JSON is parsed, never pickles, and a file that is not such a
  result raises a ``ValueError`` naming the file and the class.

Tables users read also have ``to_frame()``: a ``pandas.DataFrame`` with one row per entry. pandas is an
optional dependency, imported only there (:func:`data_frame`). Results that hold tensors (``MaskSet``) keep
the same ``save`` / ``load`` names and semantics with safetensors files instead of JSON.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from modscope.atomic import write_json_atomic

__all__ = ["JsonResult", "data_frame", "nan_if_none"]

T = TypeVar("T", bound="JsonResult")


class JsonResult:
    """Mixin: ``save`` / ``load`` as JSON through the class's own ``to_dict`` / ``from_dict``."""

    def save(self, path: str | os.PathLike) -> None:
        """Write :meth:`to_dict` to ``path`` as JSON, atomically (a crash never leaves half a file)."""
        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls: type[T], path: str | os.PathLike) -> T:
        """Read a file written by :meth:`save` (``FileNotFoundError`` if there is none, ``ValueError`` if it
        holds something else)."""
        text = Path(path).read_text()
        try:
            return cls.from_dict(json.loads(text))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"{str(path)!r} is not a saved {cls.__name__}: {exc}") from exc


def nan_if_none(v: Any) -> float:
    """A float read back from JSON: ``None`` (how NaN is saved) becomes NaN."""
    return math.nan if v is None else float(v)


def data_frame(rows: Iterable[Mapping[str, Any]], columns: list[str]) -> Any:
    """``pandas.DataFrame(rows, columns=columns)``; an ImportError that says how to get pandas if it is
    missing (modscope itself does not need it)."""
    try:
        import pandas as pd
    except ImportError as exc:
        raise ImportError("to_frame() needs pandas (not a modscope dependency): pip install pandas") from exc
    return pd.DataFrame(list(rows), columns=columns)
