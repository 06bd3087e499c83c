"""The mask-application table of SPEC §2.2 (Csordás et al. 2021, §3): one score per condition and
evaluation set, with per-class accuracy and confusion matrices. :func:`~modscope.masks.evaluate_masks`
fills it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

from modscope.persist import JsonResult, data_frame, nan_if_none

__all__ = ["KINDS", "Condition", "EvalResult", "Kind", "MaskEvalTable"]

Kind = Literal["full", "mask", "inverted", "early", "late"]
KINDS = ("full", "mask", "inverted", "early", "late")


@dataclass(frozen=True)
class Condition:
    """How the model is evaluated: ``full``; ``mask`` / ``inverted`` (only / all but ``task``'s kept weights);
    ``early`` / ``late`` (``task``'s mask on the early / late half of the masked layers, the rest full)."""

    kind: Kind
    task: str | None = None

    def __str__(self) -> str:
        return {
            "full": "full",
            "mask": f"{self.task}",
            "inverted": f"~{self.task}",
            "early": f"{self.task}[early]",
            "late": f"{self.task}[late]",
        }[self.kind]


@dataclass(frozen=True)
class EvalResult:
    """Score of one condition on one evaluation set: mean ``score`` over ``n`` examples; with the accuracy
    metric also ``per_class`` accuracy (``nan`` for absent classes) and ``confusion[true][predicted]``."""

    condition: Condition
    eval_set: str
    score: float
    n: int
    per_class: tuple[float, ...] | None = None
    confusion: tuple[tuple[int, ...], ...] | None = None

    @classmethod
    def from_dict(cls, r: Mapping[str, Any]) -> EvalResult:
        return cls(
            Condition(**r["condition"]),
            r["eval_set"],
            nan_if_none(r["score"]),
            int(r["n"]),
            None if r["per_class"] is None else tuple(nan_if_none(v) for v in r["per_class"]),
            None if r["confusion"] is None else tuple(tuple(int(v) for v in row) for row in r["confusion"]),
        )


@dataclass(frozen=True)
class MaskEvalTable(JsonResult):
    """All :class:`EvalResult` of :func:`~modscope.masks.evaluate_masks` and its settings: the ``tasks``
    whose masks were applied, the ``eval_sets``, the ``early_layers`` / ``late_layers`` split and the
    ``metric`` (``"accuracy"`` or the qualified name of a custom metric; ``None`` when read from a file
    written before the metric was recorded)."""

    results: tuple[EvalResult, ...]
    tasks: tuple[str, ...]
    eval_sets: tuple[str, ...]
    early_layers: tuple[str, ...]
    late_layers: tuple[str, ...]
    metric: str | None = "accuracy"

    def get(self, kind: Kind, task: str | None, eval_set: str) -> EvalResult:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if kind != "full" and task not in self.tasks:
            raise ValueError(f"unknown task {task!r}; tasks are {list(self.tasks)}")
        if eval_set not in self.eval_sets:
            raise ValueError(f"unknown evaluation set {eval_set!r}; sets are {list(self.eval_sets)}")
        want = Condition(kind, None if kind == "full" else task)
        for r in self.results:
            if r.condition == want and r.eval_set == eval_set:
                return r
        raise ValueError(f"condition {want} on {eval_set!r} was not evaluated")

    def score(self, kind: Kind, task: str | None, eval_set: str) -> float:
        return self.get(kind, task, eval_set).score

    def confusion_delta(self, kind: Kind, task: str | None, eval_set: str) -> tuple[tuple[int, ...], ...]:
        """Confusion matrix under a condition minus the full model's (the class-removal experiment)."""
        full, other = self.get("full", None, eval_set), self.get(kind, task, eval_set)
        if full.confusion is None or other.confusion is None:
            raise ValueError("confusion matrices exist only with metric='accuracy' and class-valued targets")
        return tuple(
            tuple(b - a for a, b in zip(ra, rb, strict=True))
            for ra, rb in zip(full.confusion, other.confusion, strict=True)
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MaskEvalTable:
        return cls(
            tuple(EvalResult.from_dict(r) for r in d["results"]),
            tuple(d["tasks"]),
            tuple(d["eval_sets"]),
            tuple(d["early_layers"]),
            tuple(d["late_layers"]),
            d.get("metric"),
        )

    def to_frame(self) -> Any:
        """One row per condition and evaluation set: condition (as printed: ``full``, ``a``, ``~a``,
        ``a[early]``, ``a[late]``), kind, task, eval_set, score, n (needs pandas)."""
        columns = ["condition", "kind", "task", "eval_set", "score", "n"]
        rows = (
            dict(zip(columns, (str(c), c.kind, c.task, r.eval_set, r.score, r.n)))
            for r in self.results
            for c in (r.condition,)
        )
        return data_frame(rows, columns)

    def __repr__(self) -> str:
        head = (
            f"MaskEvalTable(metric={self.metric!r}, tasks={list(self.tasks)}, "
            f"early_layers={len(self.early_layers)}, late_layers={len(self.late_layers)})"
        )
        scores = {(str(r.condition), r.eval_set): r.score for r in self.results}
        conditions = list(dict.fromkeys(str(r.condition) for r in self.results))
        width = max([len(c) for c in conditions] + [9])
        cols = [max(len(s), 7) for s in self.eval_sets]
        lines = [head, "  " + " " * width + "".join(f"  {s:>{w}}" for s, w in zip(self.eval_sets, cols))]
        for c in conditions:
            cells = (scores.get((c, s)) for s in self.eval_sets)
            text = "".join(f"  {'-' if v is None else f'{v:.4f}':>{w}}" for v, w in zip(cells, cols))
            lines.append(f"  {c:<{width}}{text}")
        return "\n".join(lines)
