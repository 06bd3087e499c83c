"""What a reproduction writes and a report reads: one ``results.json``, a :class:`RunResult`.

Experiments build every section with the constructors here, which check what they build; the report
checks a document it reads with the same validators (:func:`validate`), so a section is well formed the
same way on both sides. Each section is a plain JSON object whose ``kind`` says how the report draws it:

``"table"`` (:func:`table`)
    ``{"kind", "title", "columns": [str], "rows": [[cell]], "note"?}``.
``"clusterability"`` (:func:`clusterability_section`)
    ``{"kind", "title", "network": str, "k": int, "ncut": float, "nulls": {shuffle: [float]},
    "model": path relative to results.json (a safetensors model), "labels": [int] per graph node}``:
    a histogram of each null with the network's n-cut marked, and the clustered graph drawn from the model
    and the labels (one per node of ``WeightGraph.from_module(model)``, inputs and outputs included).
``"masks"`` (:func:`masks_section`)
    ``{"kind", "title", "layers": [param name], "sizes": {layer: int}, "kept": {task: {layer: int}},
    "iou": {layer: float}, "iomin": {layer: float}, "pair": [task, task], "accuracy": table}``: per-layer
    kept-weight bars per task, IoU/IoMin bars for ``pair``, and the accuracy table (a ``"table"`` object).
``"lines"`` (:func:`lines_section`)
    ``{"kind", "title", "xlabel": str, "ylabel": str, "series": {name: [[x, y], ...]}, "xscale"?: "linear" |
    "log", "note"?, "bands"?: {name: [[x, low, high], ...]}}``: one line per series (mask kept-weight
    curves, sharing against network size, recovery against cross-talk), a band shading an interval around
    the series of its name (a confidence interval).
``"lesions"`` (:func:`lesions_section`)
    ``{"kind", "title", "classes": [str], "modules": [{"name", "label", "p_important", "damage",
    "class_damage": [float]}], "pairs"?: [{"a", "b", "interaction", "p"}]}``: a heat map of per-class
    accuracy drop per module, labelled by importance. Modules are named by :func:`module_name`.
``"bridge"`` (:func:`bridge_section`)
    ``{"kind", "title", "clusters": [str], "masks": [str], "weight_share": [[float]] | null, "unit_share":
    [[float]], "scores": table, "note"?}``: clusters x masks heat maps of the share of each mask's kept
    weights and used units in each cluster, and the scores against their nulls (:mod:`modscope.bridge`).

Numbers may be ``null`` where a value is undefined (JSON has no NaN). This package imports no torch.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from modscope.atomic import write_json_atomic
from modscope.results.sections import (
    SECTION_KINDS,
    bridge_section,
    clusterability_section,
    is_list,
    is_number,
    lesions_section,
    lines_section,
    masks_section,
    module_name,
    table,
    validate_section,
)

__all__ = [
    "FORMAT", "SECTION_KINDS", "RunResult", "bridge_section", "clusterability_section", "lesions_section",
    "lines_section", "masks_section", "module_name", "table", "validate", "validate_section",
]  # fmt: skip

FORMAT = "modscope-results/1"


def validate(result: RunResult) -> None:
    """Every problem of a document, raised (ValueError naming the field) before anything is drawn."""
    for name in ("experiment", "title", "setting", "format"):
        if not isinstance(getattr(result, name), str):
            raise ValueError(f"field {name!r} must be a string, got {getattr(result, name)!r:.80}")
    for name in ("config", "versions", "units"):
        if not isinstance(getattr(result, name), Mapping):
            raise ValueError(f"field {name!r} must be a JSON object, got {getattr(result, name)!r:.80}")
    s = result.seconds
    if not is_number(s) or not math.isfinite(s) or s < 0:
        raise ValueError(f"field 'seconds' must be a wall time in seconds (a number >= 0), got {s!r}")
    for name in ("claims", "sections"):
        if not is_list(getattr(result, name)):
            raise ValueError(f"field {name!r} must be a list, got {getattr(result, name)!r:.80}")
    if not isinstance(result.summary, Mapping) or result.summary.get("kind") != "table":
        raise ValueError(f"field 'summary' must be a 'table' section, got {result.summary!r:.80}")
    validate_section(result.summary)
    for c in result.claims:
        if not isinstance(c, Mapping) or not {"paper", "claim", "ours", "agrees"} <= set(c):
            raise ValueError(f"a claim must be an object with paper, claim, ours and agrees, got {c!r:.80}")
        if c["agrees"] is not None and not isinstance(c["agrees"], bool):
            raise ValueError(
                f"claim {c['claim']!r}: 'agrees' must be true, false or null, got {c['agrees']!r}"
            )
    for section in result.sections:
        validate_section(section)


# ------------------------------------------------------------------------------------ the document
@dataclass(frozen=True)
class RunResult:
    """Everything one reproduction produced; validated on construction (:func:`validate`).

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
        validate(self)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | os.PathLike) -> None:
        write_json_atomic(path, self.to_dict())

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunResult:
        """The document ``d`` (as read from JSON), validated: a ValueError names the field at fault."""
        if not isinstance(d, Mapping) or d.get("format") != FORMAT:
            got = d.get("format") if isinstance(d, Mapping) else type(d).__name__
            raise ValueError(f"not a modscope results document (format {got!r}, want {FORMAT!r})")
        known = [f.name for f in fields(cls)]
        if missing := [k for k in known if k not in d and k not in ("units", "format")]:
            raise ValueError(f"results document lacks {missing}")
        if extra := sorted(set(d) - set(known)):
            raise ValueError(f"results document has unknown keys {extra}")
        d = dict(d)
        for name in ("claims", "sections"):
            if not is_list(d[name]):
                raise ValueError(f"field {name!r} must be a list, got {d[name]!r}")
            d[name] = tuple(d[name])
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
