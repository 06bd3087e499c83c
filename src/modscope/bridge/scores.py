"""The bridge's statistics of one partition against one :class:`~modscope.bridge.usage.Usage` (pure numpy).

Per cluster ``c`` and task ``t``:

* ``weight_share[c, t]``: share of ``t``'s kept weights whose two units both lie in ``c``; what no cluster
  holds, ``across[t] = 1 - sum_c weight_share[c, t]``, joins two clusters (or a unit outside every cluster);
* ``unit_share[c, t]``: share of the units ``t`` uses that lie in ``c``.

Per task: ``inside`` (``sum_c weight_share``), ``concentration`` (``max_c unit_share``), its entropy form
``entropy_concentration = 1 - H(unit_share[:, t]) / log k`` (1: one cluster, 0: spread evenly), and
``weight_concentration`` (``max_c weight_share``). Agreement: the adjusted Rand index and the normalized
mutual information (scikit-learn, arithmetic mean) between the clusters and the unit assignment, over the
units used by exactly one task and inside a cluster; undefined (NaN) when those units belong to fewer than
two tasks.

Read the weight scores against their nulls with care: every kept weight lies on an edge of the graph, and a
clustering cuts few edges, so against same-size random partitions a mask's weights are "inside" whenever
the network is clusterable at all, whatever the mask (on two disconnected modules, every mask is 100%
inside). The unit scores (ARI, NMI, concentration) ask which units each mask uses, and are the test of the
masks themselves; for the weight scores compare with the share of all the network's weights
(:func:`modscope.bridge.inside_share`) or with the masks of shuffled networks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from modscope.bridge.usage import Usage

__all__ = ["PER_TASK", "Observation", "observe", "score_names"]

PER_TASK = ("inside", "concentration", "entropy_concentration", "weight_concentration")
_WEIGHT_ONLY = ("inside", "weight_concentration")


def score_names(tasks: tuple[str, ...], granularity: str) -> list[str]:
    """``"ari"``, ``"nmi"``, then ``"<score>[<task>]"`` per task (weight scores only for weight masks)."""
    per = [s for s in PER_TASK if granularity == "weight" or s not in _WEIGHT_ONLY]
    return ["ari", "nmi", *(f"{s}[{t}]" for t in tasks for s in per)]


@dataclass(frozen=True)
class Observation:
    """The statistics of one partition (see the module docstring); weight parts ``None`` for unit masks."""

    weight_share: np.ndarray | None
    across: np.ndarray | None
    unit_share: np.ndarray
    scores: dict[str, float]


def _shares(counts: np.ndarray, total: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, counts / np.where(total > 0, total, 1), np.nan)


def observe(labels: np.ndarray, k: int, usage: Usage) -> Observation:
    """The statistics of the partition ``labels`` (shape ``(n_nodes,)``, ``-1`` outside every cluster) into
    ``k`` clusters."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    n_tasks = len(usage.tasks)
    scores: dict[str, float] = {}
    unit_counts = np.zeros((k, n_tasks))
    for t in range(n_tasks):
        lab = labels[usage.used[t]]
        unit_counts[:, t] = np.bincount(lab[lab >= 0], minlength=k)[:k]
    unit_share = _shares(unit_counts, usage.used.sum(axis=1)[None, :])
    weight_share = across = None
    if usage.counts is not None:
        a, b = labels[usage.ends[:, 0]], labels[usage.ends[:, 1]]
        inside = (a == b) & (a >= 0)
        weight_counts = np.zeros((k, n_tasks))
        for t in range(n_tasks):
            weight_counts[:, t] = np.bincount(a[inside], weights=usage.counts[inside, t], minlength=k)[:k]
        weight_share = _shares(weight_counts, usage.counts.sum(axis=0)[None, :])
        across = 1.0 - weight_share.sum(axis=0)
    assign = usage.assignment
    keep = (assign >= 0) & (labels >= 0)
    if np.unique(assign[keep]).size >= 2:
        scores["ari"] = float(adjusted_rand_score(assign[keep], labels[keep]))
        scores["nmi"] = float(normalized_mutual_info_score(assign[keep], labels[keep]))
    else:
        scores["ari"] = scores["nmi"] = math.nan
    for t, task in enumerate(usage.tasks):
        p = unit_share[:, t]
        if weight_share is not None:
            scores[f"inside[{task}]"] = float(np.sum(weight_share[:, t]))
        scores[f"concentration[{task}]"] = float(np.max(p))
        scores[f"entropy_concentration[{task}]"] = _entropy_concentration(p, k)
        if weight_share is not None:
            scores[f"weight_concentration[{task}]"] = float(np.max(weight_share[:, t]))
    return Observation(weight_share, across, unit_share, scores)


def _entropy_concentration(p: np.ndarray, k: int) -> float:
    if k < 2 or not np.all(np.isfinite(p)):
        return math.nan
    q = p[p > 0]
    return float(1.0 + np.sum(q * np.log(q)) / math.log(k))
