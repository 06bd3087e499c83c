"""The bridge's null models and p-values.

*Same-size random partitions*: the cluster labels are permuted among the clustered nodes (label ``>= 0``) of
each graph group (layer), so every cluster keeps its size in every layer and the nodes outside every cluster
stay where they are; what changes is which units a cluster holds. *Shuffled networks* are not drawn here:
their masks are passed in (:func:`modscope.bridge.bridge`).

p-values are one-sided, for a score that is *larger* than its null: ``p = (1 + #{null >= observed}) /
(1 + N)`` over the ``N`` finite null values (Phipson & Smyth 2010: never 0), NaN when the observed score or
every null value is undefined. A null value below the observed one by rounding only (``1e-12`` relative)
counts as reaching it: a null partition that reproduces the observed one must not look smaller.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["null_stats", "p_value", "same_size_labels"]


def same_size_labels(labels: np.ndarray, groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``labels`` (shape ``(n_nodes,)``) permuted within each group of ``groups`` (the group of every node,
    e.g. ``graph.node_layer``) among the nodes whose label is ``>= 0``; a new array."""
    out = labels.copy()
    for g in np.unique(groups):
        idx = np.flatnonzero((groups == g) & (labels >= 0))
        out[idx] = labels[idx[rng.permutation(idx.size)]]
    return out


def p_value(observed: float, null: Sequence[float] | np.ndarray) -> float:
    """One-sided p of ``observed`` being larger than the finite values of ``null`` (module docstring)."""
    values = np.asarray(null, dtype=float)
    values = values[np.isfinite(values)]
    if not math.isfinite(observed) or values.size == 0:
        return math.nan
    # a tolerance, so that a null value equal to the observed one up to rounding counts as reaching it
    reached = np.count_nonzero(values >= observed - 1e-12 * max(1.0, abs(observed)))
    return float((1 + reached) / (1 + values.size))


def null_stats(observed: float, null: Sequence[float] | np.ndarray) -> dict[str, float]:
    """``{"mean", "std", "p"}`` of the finite null values against ``observed`` (NaN where undefined)."""
    values = np.asarray(null, dtype=float)
    values = values[np.isfinite(values)]
    mean = float(values.mean()) if values.size else math.nan
    std = float(values.std(ddof=1)) if values.size > 1 else math.nan
    return {"mean": mean, "std": std, "p": p_value(observed, values)}
