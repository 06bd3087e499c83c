"""Which units and edges each task's mask uses: the unit-level view both lenses can be compared on.

**Unit rule.** A unit (graph node) is *used* by a task when the task's mask keeps at least one weight on an
edge incident to it (for a convolution: any kept kernel entry of an ``(out, in)`` slice, :mod:`.layout`).
The masks' *unit assignment* gives every unit the task using it; units used by no task are ``NONE`` and
units used by several are ``SHARED``. A unit-granularity mask (one bool per unit) gives the used units
directly: :func:`unit_usage` (``MaskSet`` holds weight masks only, so unit masks are passed as arrays).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from modscope.bridge.layout import block_sources, kept_counts
from modscope.graph import WeightGraph

__all__ = ["NONE", "SHARED", "Usage", "assignment", "unit_usage", "weight_usage"]

#: Assignment of a unit used by no task / by several tasks (task ``t`` is ``t``).
NONE, SHARED = -1, -2


@dataclass(frozen=True)
class Usage:
    """What the masks use on one graph.

    Attributes:
        tasks: task names, in mask order.
        used: bool, shape ``(n_tasks, n_nodes)``: unit ``u`` is used by task ``t``.
        ends: int, shape ``(n_edges, 2)``: the two nodes (source, destination) of every edge some mask keeps;
            ``None`` for unit masks.
        counts: int, shape ``(n_edges, n_tasks)``: kept weights of each task on each of those edges (a conv
            edge counts its kept kernel entries); ``None`` for unit masks.
    """

    tasks: tuple[str, ...]
    used: np.ndarray
    ends: np.ndarray | None = None
    counts: np.ndarray | None = None

    @property
    def granularity(self) -> str:
        return "unit" if self.counts is None else "weight"

    @cached_property
    def assignment(self) -> np.ndarray:
        """:func:`assignment` of :attr:`used`, computed once (the nulls read it for every draw)."""
        return assignment(self.used)


def weight_usage(graph: WeightGraph, masks: Mapping[str, Mapping[str, Any]], *, model: Any = None) -> Usage:
    """The :class:`Usage` of weight masks (``task -> {param: bool tensor}``, a ``MaskSet``) on ``graph``."""
    tasks = tuple(masks)
    if not tasks:
        raise ValueError("masks holds no task")
    first = masks[tasks[0]]
    for t in tasks[1:]:
        if set(masks[t]) != set(first):
            raise ValueError(f"mask {t!r} covers other parameters than mask {tasks[0]!r}")
    sources = block_sources(graph, {n: tuple(t.shape) for n, t in first.items()})
    per_task = [kept_counts(graph, masks[t], model=model, sources=sources) for t in tasks]
    off = graph.offsets
    ends, counts = [], []
    for b, e in enumerate(graph.edges):
        blocks = [c[b] for c in per_task]
        if blocks[0] is None:
            continue
        stack = np.stack(blocks, axis=-1)  # (out, in, tasks)
        r, c = np.nonzero(stack.any(axis=-1))
        ends.append(np.stack([c + off[e.src], r + off[e.dst]], axis=1))
        counts.append(stack[r, c])
    ends_a = np.concatenate(ends).astype(np.int64) if ends else np.zeros((0, 2), np.int64)
    counts_a = np.concatenate(counts).astype(np.int64) if counts else np.zeros((0, len(tasks)), np.int64)
    used = np.zeros((len(tasks), graph.n_nodes), dtype=bool)
    for t in range(len(tasks)):
        kept = ends_a[counts_a[:, t] > 0]
        used[t, kept.ravel()] = True
    return Usage(tasks, used, ends_a, counts_a)


def unit_usage(graph: WeightGraph, units: Mapping[str, Sequence[bool] | np.ndarray]) -> Usage:
    """The :class:`Usage` of unit masks: ``task -> bool array (n_nodes,)``, in ``graph``'s node order."""
    tasks = tuple(units)
    if not tasks:
        raise ValueError("units holds no task")
    rows = []
    for t in tasks:
        a = np.asarray(units[t])
        if a.dtype != np.bool_ or a.shape != (graph.n_nodes,):
            raise ValueError(
                f"unit mask {t!r} must be a bool array of shape ({graph.n_nodes},) (one per graph node), "
                f"got {a.dtype} {a.shape}"
            )
        rows.append(a)
    return Usage(tasks, np.stack(rows))


def assignment(used: np.ndarray) -> np.ndarray:
    """Per unit: the index of the one task using it, :data:`NONE` or :data:`SHARED`; shape ``(n_nodes,)``."""
    n_users = used.sum(axis=0)
    out = np.where(n_users == 0, NONE, SHARED).astype(np.int64)
    one = n_users == 1
    out[one] = used[:, one].argmax(axis=0)
    return out
