"""The papers' modularity scores from masks (SPEC §2.2; Csordás et al. 2021, §3).

Chance-corrected relative drop of task T's accuracy under a condition m:
``d_T(m) = clip((acc_T(ref) - acc_T(m)) / (acc_T(ref) - chance_T), 0, 1)``, where the reference ``ref`` is the
full network or, as in Csordás et al.'s code and figures, the network under the *control* mask (trained on
every task): the accuracy a mask can reach at all, so that a drop measures what removing weights costs and not
what masking costs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from modscope.masks.maskset import MaskSet
from modscope.masks.metrics import iomin, iou
from modscope.masks.table import Kind, MaskEvalTable
from modscope.persist import JsonResult, nan_if_none

__all__ = ["Reuse", "p_reuse", "p_specialize", "reference_score", "relative_drop"]

Chance = float | Mapping[str, float]


def _chance(chance: Chance, eval_set: str) -> float:
    if isinstance(chance, Mapping):
        if eval_set not in chance:
            raise ValueError(f"no chance level for {eval_set!r}; chance has {list(chance)}")
        return float(chance[eval_set])
    return float(chance)


def reference_score(table: MaskEvalTable, eval_set: str, *, reference: str | None = None) -> float:
    """The score drops are measured from: the full network (``reference=None``) or mask ``reference``."""
    if reference is None:
        return table.score("full", None, eval_set)
    return table.score("mask", reference, eval_set)


def relative_drop(
    table: MaskEvalTable,
    eval_set: str,
    kind: Kind,
    task: str | None,
    *,
    chance: Chance,
    reference: str | None = None,
) -> float:
    """``d_T(m)`` for T = ``eval_set`` and m = condition ``(kind, task)``, in [0, 1].

    ``reference``: ``None`` (the full network) or the name of the mask whose score is the reference, e.g.
    ``"control"``. ``ValueError`` when the reference is not above chance (the drop is undefined)."""
    ref = reference_score(table, eval_set, reference=reference)
    c = _chance(chance, eval_set)
    if not ref > c:
        what = "full-model" if reference is None else f"{reference!r}-mask"
        raise ValueError(
            f"{what} score on {eval_set!r} is {ref}, not above chance {c}: relative drop undefined"
        )
    return min(max((ref - table.score(kind, task, eval_set)) / (ref - c), 0.0), 1.0)


def p_specialize(
    table: MaskEvalTable,
    a: str,
    b: str,
    *,
    chance: Chance,
    mask: str | None = None,
    reference: str | None = None,
) -> float:
    """``P_specialize(A|B) = d_A(not M) - d_B(not M)`` in [-1, 1], ``M = mask`` (default ``a``); 1 means
    removing M's weights kills A and spares B. ``a`` names an evaluation set (and by default the mask), ``b``
    an evaluation set; ``mask`` another mask to remove, e.g. the weights only A's mask keeps; ``reference``
    the mask drops are measured from (default the full network, see :func:`relative_drop`)."""
    mask = a if mask is None else mask
    for name, where, what in (
        (mask, table.tasks, "task"),
        (a, table.eval_sets, "evaluation set"),
        (b, table.eval_sets, "evaluation set"),
    ):
        if name not in where:
            raise ValueError(f"unknown {what} {name!r}; the table has {list(where)}")
    return relative_drop(table, a, "inverted", mask, chance=chance, reference=reference) - relative_drop(
        table, b, "inverted", mask, chance=chance, reference=reference
    )


@dataclass(frozen=True)
class Reuse(JsonResult):
    """P_reuse of two instances of one function (SPEC §2.2): structural = IoU and IoMin of their masks over
    the shared layers (low = separate weights, no reuse); functional = ``1 - d_A2(not A1)``, the share of
    A2's performance that survives removing A1's weights (``nan`` without a table). Read the functional
    score the other way round: 1 = A2 does not need A1's weights (no reuse), 0 = removing them kills A2
    as a reused module would."""

    iou: float
    iomin: float
    functional: float
    layers: tuple[str, ...] = field(default_factory=tuple)
    iou_per_layer: Mapping[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "iou": self.iou,
            "iomin": self.iomin,
            "functional": self.functional,
            "layers": list(self.layers),
            "iou_per_layer": dict(self.iou_per_layer),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Reuse:
        return cls(
            nan_if_none(d["iou"]),
            nan_if_none(d["iomin"]),
            nan_if_none(d["functional"]),
            tuple(d["layers"]),
            {str(k): nan_if_none(v) for k, v in d["iou_per_layer"].items()},
        )

    def __repr__(self) -> str:
        return (
            f"Reuse(iou={self.iou:.4f}, iomin={self.iomin:.4f}, functional={self.functional:.4f}, "
            f"layers={len(self.layers)})"
        )


def p_reuse(
    masks: MaskSet,
    a1: str,
    a2: str,
    *,
    shared_layers: Iterable[str] | None = None,
    table: MaskEvalTable | None = None,
    chance: Chance = 0.0,
    reference: str | None = None,
) -> Reuse:
    """P_reuse of instances ``a1``, ``a2`` of the same function (e.g. the two pairs of double addition).

    ``shared_layers``: the masked parameters both instances use (exclude instance-specific input/output
    layers); ``None`` = all. The functional part needs ``table`` with the mask ``a1`` and evaluation set
    ``a2``, and ``reference`` (a mask name, default the full network) is what its drop is measured from.
    """
    for t in (a1, a2):
        if t not in masks:
            raise ValueError(f"unknown task {t!r}; the masks have {list(masks.tasks)}")
    layers = tuple(masks.param_names if shared_layers is None else shared_layers)
    if not layers:
        raise ValueError("shared_layers is empty: no layer to compare")
    structural = iou(masks[a1], masks[a2], layers=layers)
    functional = math.nan
    if table is not None:
        if a1 not in table.tasks or a2 not in table.eval_sets:
            raise ValueError(
                f"the table needs mask {a1!r} (has {list(table.tasks)}) and evaluation set {a2!r} "
                f"(has {list(table.eval_sets)})"
            )
        functional = 1.0 - relative_drop(table, a2, "inverted", a1, chance=chance, reference=reference)
    return Reuse(
        structural.total,
        iomin(masks[a1], masks[a2], layers=layers).total,
        functional,
        layers,
        dict(structural.per_layer),
    )
