"""The lens bridge: does a network's structure (its clusters) match its function (its task masks)?"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np

from modscope.bridge.null import same_size_labels
from modscope.bridge.result import BridgeResult
from modscope.bridge.scores import observe, score_names
from modscope.bridge.usage import NONE, SHARED, Usage, unit_usage, weight_usage
from modscope.graph import WeightGraph
from modscope.progress import Progress, notify
from modscope.seeding import check_seed, numpy_rng

__all__ = ["RULES", "bridge", "check_partition", "inside_share", "usage_of"]

RULES = {
    "unit": "a unit is used by a task when its mask keeps at least one weight on an edge of the graph "
    "incident to it (a conv edge: any kept kernel entry of the (out, in) slice); unit masks give the units",
    "assignment": "ARI and NMI (scikit-learn, arithmetic mean) over the units used by exactly one task and "
    "inside a cluster; units used by none or by several are counted apart",
    "null_partitions": "cluster labels permuted among the clustered nodes of each graph group (every "
    "cluster's size per layer kept); draw i from numpy_rng(seed, 'bridge', 'partition', i)",
    "null_shuffled": "the same scores for the masks of shuffled networks, on their own graph and partition "
    "when given, else on this graph and partition",
    "p": "one-sided, (1 + #{null >= observed}) / (1 + N) over the finite null values",
}


def check_partition(graph: WeightGraph, partition: Any) -> tuple[np.ndarray, int]:
    """``(labels, k)`` of ``partition`` (a :class:`~modscope.cluster.Partition`), checked against ``graph``:
    one label per node, in ``-1..k-1``, every node with edges inside a cluster. ``ValueError`` otherwise."""
    labels, k = getattr(partition, "labels", None), getattr(partition, "k", None)
    if labels is None or k is None:
        raise ValueError(f"partition must be a Partition (labels and k), got {type(partition).__name__}")
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (graph.n_nodes,):
        raise ValueError(f"the partition has {labels.size} labels but the graph has {graph.n_nodes} nodes: "
                         "a partition of another graph?")  # fmt: skip
    if labels.size and (labels.min() < -1 or labels.max() >= k):
        raise ValueError(f"partition labels must lie in -1..{k - 1}, got {labels.min()}..{labels.max()}")
    lost = np.flatnonzero((labels < 0) & (graph.degrees() > 0))
    if lost.size:
        raise ValueError(f"the partition leaves {lost.size} nodes with edges outside every cluster (node "
                         f"{lost[0]}, ...): a partition of another graph?")  # fmt: skip
    return labels, int(k)


def usage_of(graph: WeightGraph, masks: Mapping[str, Any], *, model: Any = None) -> Usage:
    """The :class:`~modscope.bridge.usage.Usage` of weight masks (``task -> {param: bool tensor}``, a
    ``MaskSet``) or of unit masks (``task -> bool array (n_nodes,)``)."""
    if not isinstance(masks, Mapping) or not masks:
        raise ValueError(f"masks must map task names to masks, got {type(masks).__name__}")
    first = next(iter(masks.values()))
    if isinstance(first, Mapping):
        return weight_usage(graph, masks, model=model)
    return unit_usage(graph, masks)


def _shuffled(shuffled: Any, graph: WeightGraph, labels: np.ndarray, k: int, model: Any) -> list:
    if shuffled is None:
        return []
    one = isinstance(shuffled, Mapping) or (isinstance(shuffled, tuple) and shuffled[:1] != () and
                                            isinstance(shuffled[0], WeightGraph))  # fmt: skip
    items = [shuffled] if one else list(shuffled)
    out = []
    for i, item in enumerate(items):
        if isinstance(item, tuple):
            if len(item) != 3:
                raise ValueError(f"shuffled_masks[{i}] must be a MaskSet or (graph, partition, masks)")
            g, p, m = item
            lab, kk = check_partition(g, p)
            out.append((lab, kk, usage_of(g, m)))
        else:
            out.append((labels, k, usage_of(graph, item, model=model)))
    return out


def bridge(
    graph: WeightGraph,
    partition: Any,
    masks: Mapping[str, Any],
    *,
    n_null: int = 200,
    seed: int = 0,
    shuffled_masks: Any = None,
    model: Any = None,
    progress: Progress | None = None,
) -> BridgeResult:
    """Compare a partition of a network's units with the units and weights its task masks use.

    Connects the two lenses: clusters of the weight graph (Filan et al., "Clusterability in Neural
    Networks", arXiv:2103.03386) and binary weight masks per sub-task (Csordás et al., "Are Neural Nets
    Modular?", ICLR 2021, arXiv:2010.02066). Masks are read onto the graph's edges by
    :mod:`modscope.bridge.layout`; the unit rule and the statistics are in :mod:`modscope.bridge.usage` and
    :mod:`modscope.bridge.scores`, the nulls in :mod:`modscope.bridge.null` (all recorded in ``rules``).

    Parameters
    ----------
    graph : WeightGraph
        The network's weight graph (``n_nodes`` units), layered or general.
    partition : Partition
        A clustering of ``graph``'s nodes into ``k`` clusters (labels shape ``(n_nodes,)``, ``-1`` only for
        nodes without edges), e.g. ``spectral_partition(graph)``.
    masks : MaskSet, or mapping of task to bool array of shape (n_nodes,)
        Weight masks (``task -> {param: bool tensor shaped like the parameter}``) over parameters the
        graph's blocks come from (biases ignored), or unit masks (one bool per graph node; only the unit
        scores then).
    n_null : int, default 200
        Same-size random partitions drawn for the null (0: none, p-values NaN).
    seed : int, default 0
        Seed of the random partitions (draw ``i``: ``numpy_rng(seed, "bridge", "partition", i)``).
    shuffled_masks : MaskSet, or sequence of MaskSet or (graph, partition, masks), optional
        Masks trained on shuffled networks, one set per network with the same tasks: the second null. With a
        triple, the network's own graph and partition; a bare MaskSet is read on ``graph`` and ``partition``.
    model : nn.Module, optional
        The network, only to read square ConvTranspose / Embedding weights by their module type.
    progress : callable, optional
        ``progress("bridge", done, total, info)`` after each null draw.

    Returns
    -------
    BridgeResult
        Shares ``(k, n_tasks)``, scores (ARI, NMI, per-task inside share and concentration), each with its
        null distributions and one-sided p-values, and every setting.
    """
    labels, k = check_partition(graph, partition)
    if isinstance(n_null, bool) or not isinstance(n_null, numbers.Integral) or n_null < 0:
        raise ValueError(f"n_null must be an int >= 0, got {n_null!r}")
    seed = check_seed(seed)
    usage = usage_of(graph, masks, model=model)
    shuffled = _shuffled(shuffled_masks, graph, labels, k, model)
    for i, (_, _, u) in enumerate(shuffled):
        if u.tasks != usage.tasks or u.granularity != usage.granularity:
            raise ValueError(f"shuffled_masks[{i}] has tasks {list(u.tasks)} ({u.granularity} masks); the "
                             f"masks have {list(usage.tasks)} ({usage.granularity} masks)")  # fmt: skip
    names = score_names(usage.tasks, usage.granularity)
    obs = observe(labels, k, usage)
    groups = graph.node_layer
    draws: dict[str, list[float]] = {n: [] for n in names}
    total = n_null + len(shuffled)
    for i in range(n_null):
        null = observe(same_size_labels(labels, groups, numpy_rng(seed, "bridge", "partition", i)), k, usage)
        for n in names:
            draws[n].append(null.scores[n])
        notify(progress, "bridge", i + 1, total)
    from_shuffled: dict[str, list[float]] = {n: [] for n in names}
    for j, (lab, kk, u) in enumerate(shuffled):
        s = observe(lab, kk, u).scores
        for n in names:
            from_shuffled[n].append(s[n])
        notify(progress, "bridge", n_null + j + 1, total)
    assign = usage.assignment
    units = {"one task": int(np.count_nonzero(assign >= 0)), "none": int(np.count_nonzero(assign == NONE)),
             "shared": int(np.count_nonzero(assign == SHARED))}  # fmt: skip
    rules = {**RULES, "layout": "module types of model" if model is not None else "parameter shapes"}
    return BridgeResult(
        tasks=usage.tasks, k=k, granularity=usage.granularity, weight_share=obs.weight_share,
        across=obs.across, unit_share=obs.unit_share, units=units, scores=obs.scores,
        null_partitions={n: np.array(v, dtype=float) for n, v in draws.items()},
        null_shuffled={n: np.array(v, dtype=float) for n, v in from_shuffled.items()},
        seed=seed, n_null=int(n_null), n_shuffled=len(shuffled), rules=rules,
    )  # fmt: skip


def inside_share(graph: WeightGraph, partition: Any, mask: Mapping[str, Any], *, model: Any = None) -> float:
    """The share of one weight mask's kept weights (``{param: bool tensor}``) that join two units of the same
    cluster, by the bridge's rules (e.g. for every weight a pruned network keeps: ``p != 0``)."""
    labels, k = check_partition(graph, partition)
    return observe(labels, k, weight_usage(graph, {"mask": mask}, model=model)).scores["inside[mask]"]
