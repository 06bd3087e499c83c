"""The mask-application table of SPEC §2.2 (Csordás et al. 2021, §3): every evaluation set under the full
model, each task's mask, its inverted mask and its half-masks, with per-class accuracy and confusion matrices.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from modscope.masks.apply import masked_call
from modscope.masks.mask import Mask
from modscope.masks.maskset import MaskSet

__all__ = ["Condition", "EvalResult", "MaskEvalTable", "evaluate_masks"]

Kind = Literal["full", "mask", "inverted", "early", "late"]
_KINDS = ("full", "mask", "inverted", "early", "late")
Metric = Literal["accuracy"] | Callable[[Any, Tensor], Tensor]


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


@dataclass(frozen=True)
class MaskEvalTable:
    """All :class:`EvalResult` of :func:`evaluate_masks`; serializes to and from JSON."""

    results: tuple[EvalResult, ...]
    tasks: tuple[str, ...]
    eval_sets: tuple[str, ...]
    early_layers: tuple[str, ...]
    late_layers: tuple[str, ...]

    def get(self, kind: Kind, task: str | None, eval_set: str) -> EvalResult:
        if kind not in _KINDS:
            raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
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

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MaskEvalTable:
        results = tuple(
            EvalResult(
                Condition(**r["condition"]),
                r["eval_set"],
                r["score"],
                r["n"],
                None if r["per_class"] is None else tuple(r["per_class"]),
                None if r["confusion"] is None else tuple(tuple(row) for row in r["confusion"]),
            )
            for r in d["results"]
        )
        return cls(
            results,
            tuple(d["tasks"]),
            tuple(d["eval_sets"]),
            tuple(d["early_layers"]),
            tuple(d["late_layers"]),
        )

    @classmethod
    def from_json(cls, text: str) -> MaskEvalTable:
        return cls.from_dict(json.loads(text))


def _as_args(inputs: Any) -> tuple[Tensor, ...]:
    return tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)


def _run(model: nn.Module, mask: Mask | None, batches: Iterable, metric: Metric, name: str) -> tuple:
    total, n = 0.0, 0
    confusion: Tensor | None = None
    for batch in batches:
        inputs, targets = batch
        args = _as_args(inputs)
        out = masked_call(model, mask, *args) if mask is not None else model(*args)
        b = len(targets)
        if metric == "accuracy":
            if not isinstance(out, Tensor) or out.shape[:-1] != targets.shape:
                raise ValueError(
                    f"eval set {name!r}: accuracy needs outputs (..., classes) matching targets, got outputs "
                    f"{getattr(out, 'shape', type(out))} and targets {tuple(targets.shape)}"
                )
            pred = out.argmax(-1)
            total += float((pred == targets).reshape(b, -1).all(1).sum())
            c = out.shape[-1]
            counts = torch.bincount((targets.reshape(-1) * c + pred.reshape(-1)).long(), minlength=c * c)
            confusion = counts.reshape(c, c) if confusion is None else confusion + counts.reshape(c, c)
        else:
            s = metric(out, targets)
            s = torch.as_tensor(s, dtype=torch.float64)
            total += float(s.sum()) if s.ndim else float(s) * b
        n += b
    if n == 0:
        raise ValueError(f"evaluation set {name!r} yields no examples")
    per_class = conf = None
    if confusion is not None:
        rows = confusion.sum(1)
        per_class = tuple(float(confusion[i, i] / rows[i]) if rows[i] else math.nan for i in range(len(rows)))
        conf = tuple(tuple(int(v) for v in row) for row in confusion.tolist())
    return total / n, n, per_class, conf


def evaluate_masks(
    model: nn.Module,
    masks: MaskSet,
    eval_sets: Mapping[str, Iterable],
    metric: Metric = "accuracy",
    *,
    tasks: Iterable[str] | None = None,
    split: int | None = None,
) -> MaskEvalTable:
    """Evaluate every condition (full, mask X, inverted X, X on early layers, X on late layers) on every set.

    Args:
        model: the frozen model the masks were trained on (evaluated in eval mode, restored afterwards;
            never modified: masks are applied functionally).
        masks: the trained masks (binary read-out, deterministic).
        eval_sets: ``name -> re-iterable of (inputs, targets)`` batches.
        metric: ``"accuracy"``: outputs ``(B, ..., C)`` logits, targets ``(B, ...)`` class indices; an example
            is correct when every position is; per-class accuracy and the ``C x C`` confusion matrix count
            positions. Or ``metric(outputs, targets)`` returning per-example scores ``(B,)`` (or their mean).
        tasks: the masks to test (default all).
        split: the first ``split`` masked layers (model order) are "early", the rest "late"; default half,
            rounded up.

    Returns:
        A :class:`MaskEvalTable`.
    """
    if not eval_sets:
        raise ValueError(f"eval_sets must be a non-empty mapping name -> batches, got {eval_sets!r}")
    if metric != "accuracy" and not callable(metric):
        raise ValueError(f"metric must be 'accuracy' or a callable, got {metric!r}")
    tasks = tuple(masks.tasks if tasks is None else tasks)
    unknown = [t for t in tasks if t not in masks]
    if unknown:
        raise ValueError(f"unknown tasks {unknown}; the masks have {list(masks.tasks)}")
    masks.check_model(model)
    layers = masks.param_names
    split = (len(layers) + 1) // 2 if split is None else split
    if not 0 <= split <= len(layers):
        raise ValueError(f"split must be in [0, {len(layers)}], got {split}")
    early, late = layers[:split], layers[split:]
    conditions: list[tuple[Condition, Mask | None]] = [(Condition("full"), None)]
    for t in tasks:
        m = masks[t]
        conditions += [
            (Condition("mask", t), m),
            (Condition("inverted", t), ~m),
            (Condition("early", t), m.restrict(early)),
            (Condition("late", t), m.restrict(late)),
        ]
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    results = []
    try:
        with torch.no_grad():
            for cond, mask in conditions:
                for name, batches in eval_sets.items():
                    score, n, per_class, conf = _run(model, mask, batches, metric, name)
                    results.append(EvalResult(cond, name, score, n, per_class, conf))
    finally:
        for m, mode in modes:
            m.training = mode
    return MaskEvalTable(tuple(results), tasks, tuple(eval_sets), early, late)
