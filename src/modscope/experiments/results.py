"""What a reproduction writes: one ``results.json`` a report can be rebuilt from without recomputing.

The document is a :class:`RunResult`. Its ``sections`` are plain JSON objects, each with a ``kind`` that
says how the report draws it:

``"table"``
    ``{"kind", "title", "columns": [str], "rows": [[cell]], "note"?}``.
``"clusterability"``
    ``{"kind", "title", "network": str, "k": int, "ncut": float, "nulls": {shuffle: [float]},
    "model": path relative to results.json (a safetensors model), "labels": [int] per graph node}``:
    a histogram of each null with the network's n-cut marked, and the clustered graph drawn from the model
    and the labels (one per node of ``WeightGraph.from_module(model)``, inputs and outputs included).
``"masks"``
    ``{"kind", "title", "layers": [param name], "sizes": {layer: int}, "kept": {task: {layer: int}},
    "iou": {layer: float}, "iomin": {layer: float}, "pair": [task, task], "accuracy": table}``: per-layer
    kept-weight bars per task, IoU/IoMin bars for ``pair``, and the accuracy table (a ``"table"`` object).
``"lines"``
    ``{"kind", "title", "xlabel": str, "ylabel": str, "series": {name: [[x, y], ...]}, "xscale"?: "linear" |
    "log", "note"?}``: one line per series (mask kept-weight curves, sharing against network size).
``"lesions"``
    ``{"kind", "title", "classes": [str], "modules": [{"name", "label", "p_important", "damage",
    "class_damage": [float]}], "pairs"?: [{"a", "b", "interaction", "p"}]}``: a heat map of per-class
    accuracy drop per module, labelled by importance.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from modscope.atomic import write_json_atomic

__all__ = ["FORMAT", "SECTION_KINDS", "RunResult", "table"]

FORMAT = "modscope-results/1"
SECTION_KINDS = ("table", "clusterability", "masks", "lines", "lesions")


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], note: str = "") -> dict:
    """A ``"table"`` section; every row has one cell per column."""
    for r in rows:
        if len(r) != len(columns):
            raise ValueError(f"table {title!r}: row {list(r)} has {len(r)} cells for {len(columns)} columns")
    doc = {"kind": "table", "title": title, "columns": list(columns), "rows": [list(r) for r in rows]}
    if note:
        doc["note"] = note
    return doc


@dataclass(frozen=True)
class RunResult:
    """Everything one reproduction produced.

    Attributes:
        experiment: registry name (``"clusterability"``, ``"addmul"``, ...).
        title: one line for the report's heading.
        setting: ``"quick"``, ``"paper"`` or ``"custom"``.
        summary: the headline ``"table"`` section, shown first.
        claims: ``{"paper", "claim", "ours", "agrees"}`` per claim of the papers checked by this run
            (``agrees`` is ``True``, ``False`` or ``None`` when the run cannot tell).
        sections: the other sections, in report order (kinds in :data:`SECTION_KINDS`).
        config: the exact settings, seeds included.
        versions: library versions (:func:`modscope.versions.versions`).
        seconds: wall time of the whole run, summed over resumed segments.
        units: the raw per-unit results (one per network), keyed as in the run folder.
    """

    experiment: str
    title: str
    setting: str
    summary: Mapping[str, Any]
    claims: tuple[Mapping[str, Any], ...]
    sections: tuple[Mapping[str, Any], ...]
    config: Mapping[str, Any]
    versions: Mapping[str, str]
    seconds: float
    units: Mapping[str, Any] = field(default_factory=dict)
    format: str = FORMAT

    def __post_init__(self) -> None:
        for s in (self.summary, *self.sections):
            if not isinstance(s, Mapping):
                raise ValueError(f"a section must be a JSON object, got {type(s).__name__}")
            if s.get("kind") not in SECTION_KINDS:
                kind = s.get("kind")
                raise ValueError(f"section {s.get('title')!r} has kind {kind!r}; use {SECTION_KINDS}")
        if self.summary["kind"] != "table":
            raise ValueError(f"the summary must be a 'table' section, got {self.summary['kind']!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | os.PathLike) -> None:
        write_json_atomic(path, self.to_dict())

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunResult:
        if d.get("format") != FORMAT:
            raise ValueError(f"not a modscope results document (format {d.get('format')!r}, want {FORMAT!r})")
        known = {f.name for f in fields(cls)}
        required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
        if missing := sorted(required - set(d)):
            raise ValueError(f"results document lacks {missing}")
        if extra := sorted(set(d) - known):
            raise ValueError(f"results document has unknown keys {extra}")
        d = dict(d)
        d["claims"] = tuple(d["claims"])
        d["sections"] = tuple(d["sections"])
        return cls(**d)

    @classmethod
    def load(cls, path: str | os.PathLike) -> RunResult:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no results file at {path}")
        try:
            doc = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise ValueError(f"{path} is not a modscope results document")
        return cls.from_dict(doc)
