"""Overlap metrics between masks (SPEC §2.2): kept weights, IoU, IoMin, sharing and stability.

Per layer means per masked parameter. A ratio whose denominator is zero (e.g. IoU of two empty masks) is
``nan``: undefined, not 0 or 1.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from modscope.masks.mask import Mask
from modscope.masks.maskset import MaskSet
from modscope.persist import JsonResult, data_frame, nan_if_none

__all__ = ["Overlap", "Stability", "iomin", "iou", "mask_stability", "sharing"]


def _ratio(num: int, den: int) -> float:
    return num / den if den else math.nan


def _per_layer(d: Mapping[str, Any]) -> dict[str, float]:
    return {str(k): nan_if_none(v) for k, v in d.items()}


def _fmt(per_layer: Mapping[str, float]) -> str:
    return "{" + ", ".join(f"{k!r}: {v:.3f}" for k, v in per_layer.items()) + "}"


@dataclass(frozen=True)
class Overlap(JsonResult):
    """A ratio per layer (``param name -> value``) and over all layers together (``total``, weights pooled,
    not an average of the layers: ``numerator / denominator``)."""

    per_layer: Mapping[str, float]
    total: float
    numerator: int = 0
    denominator: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "per_layer": dict(self.per_layer),
            "total": self.total,
            "numerator": self.numerator,
            "denominator": self.denominator,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Overlap:
        total = nan_if_none(d["total"])
        return cls(_per_layer(d["per_layer"]), total, int(d["numerator"]), int(d["denominator"]))

    def to_frame(self) -> Any:
        """One row per layer: layer, value (needs pandas)."""
        return data_frame(({"layer": k, "value": v} for k, v in self.per_layer.items()), ["layer", "value"])

    def __repr__(self) -> str:
        return (
            f"Overlap(total={self.total:.4f} ({self.numerator}/{self.denominator}), "
            f"per_layer={_fmt(self.per_layer)})"
        )


def _layers(a: Mask, b: Mask, layers: Iterable[str] | None) -> list[str]:
    a._check_compatible(b, "iou")
    names = list(a) if layers is None else list(layers)
    unknown = [n for n in names if n not in a]
    if unknown:
        raise ValueError(f"layers {unknown} are not masked; masked layers are {list(a)}")
    return names


def _overlap(a: Mask, b: Mask, layers: Iterable[str] | None, denominator) -> Overlap:
    per_layer, num_total, den_total = {}, 0, 0
    for n in _layers(a, b, layers):
        inter = int(torch.logical_and(a[n], b[n]).sum())
        den = denominator(a[n], b[n], inter)
        per_layer[n] = _ratio(inter, den)
        num_total += inter
        den_total += den
    return Overlap(per_layer, _ratio(num_total, den_total), num_total, den_total)


def iou(a: Mask, b: Mask, *, layers: Iterable[str] | None = None) -> Overlap:
    """Intersection over union ``|A ∩ B| / |A ∪ B|`` per layer and total (over ``layers``, default all)."""
    return _overlap(a, b, layers, lambda x, y, inter: int(x.sum()) + int(y.sum()) - inter)


def iomin(a: Mask, b: Mask, *, layers: Iterable[str] | None = None) -> Overlap:
    """Intersection over the smaller mask ``|A ∩ B| / min(|A|, |B|)``; 1 when one contains the other.

    The total uses ``min(|A|, |B|)`` of the pooled layers."""
    names = _layers(a, b, layers)
    per_layer = {}
    inter_total = 0
    for n in names:
        inter = int(torch.logical_and(a[n], b[n]).sum())
        per_layer[n] = _ratio(inter, min(int(a[n].sum()), int(b[n].sum())))
        inter_total += inter
    den = min(sum(int(a[n].sum()) for n in names), sum(int(b[n].sum()) for n in names))
    return Overlap(per_layer, _ratio(inter_total, den), inter_total, den)


def sharing(masks: MaskSet) -> dict[str, Overlap]:
    """Per task A: the fraction of A's kept weights also kept by at least one other task's mask."""
    if len(masks) < 2:
        raise ValueError(f"sharing needs at least two tasks, got {list(masks.tasks)}")
    out = {}
    for task in masks.tasks:
        others = None
        for t in masks.tasks:
            if t != task:
                others = masks[t] if others is None else others | masks[t]
        a = masks[task]
        per_layer, num, den = {}, 0, 0
        for n in a:
            shared = int(torch.logical_and(a[n], others[n]).sum())
            kept = int(a[n].sum())
            per_layer[n] = _ratio(shared, kept)
            num, den = num + shared, den + kept
        out[task] = Overlap(per_layer, _ratio(num, den), num, den)
    return out


@dataclass(frozen=True)
class Stability(JsonResult):
    """IoU of one task's masks trained with different seeds: ``pairwise[i][j]`` for runs i, j (diagonal 1),
    their mean over pairs, and the mean per layer."""

    task: str
    pairwise: tuple[tuple[float, ...], ...]
    mean: float
    per_layer: Mapping[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "pairwise": [list(r) for r in self.pairwise],
            "mean": self.mean,
            "per_layer": dict(self.per_layer),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Stability:
        pairwise = tuple(tuple(nan_if_none(v) for v in row) for row in d["pairwise"])
        return cls(str(d["task"]), pairwise, nan_if_none(d["mean"]), _per_layer(d["per_layer"]))

    def __repr__(self) -> str:
        return (
            f"Stability(task={self.task!r}, runs={len(self.pairwise)}, mean={self.mean:.4f}, "
            f"per_layer={_fmt(self.per_layer)})"
        )


def mask_stability(runs: Sequence[MaskSet], task: str) -> Stability:
    """Mask stability (SPEC §2.2): IoU between the masks of ``task`` from several runs (e.g. seeds)."""
    if len(runs) < 2:
        raise ValueError(f"mask stability needs at least two runs, got {len(runs)}")
    masks = [run[task] for run in runs]
    k = len(masks)
    matrix = [[1.0] * k for _ in range(k)]
    layer_sums: dict[str, list[float]] = {n: [] for n in masks[0]}
    totals = []
    for i, j in itertools.combinations(range(k), 2):
        o = iou(masks[i], masks[j])
        matrix[i][j] = matrix[j][i] = o.total
        totals.append(o.total)
        for n, v in o.per_layer.items():
            layer_sums[n].append(v)
    return Stability(
        task,
        tuple(tuple(r) for r in matrix),
        sum(totals) / len(totals),
        {n: sum(v) / len(v) for n, v in layer_sums.items()},
    )
