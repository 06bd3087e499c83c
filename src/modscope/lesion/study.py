"""Which modules matter (Filan et al. arXiv:2103.03386 §6; SPEC §1.4).

A module is the set of units of one hidden layer that fall in one cluster. Lesioning it (silencing its
units, :func:`~modscope.lesion.silence.silenced`) changes the per-class accuracy; the control is
``n_random`` random sets of the same size drawn from the same layer. The damage of a lesion is the drop
in overall accuracy. On a general graph (residual adds, concatenations: :mod:`modscope.graph.trace`) a
"layer" is a group of the graph -- a weight layer's outputs, a residual stream (``residual="merge"``) or
one layer's copy of it (``residual="filan"``) -- and the hidden ones are those read by a weight layer,
inputs excepted (:func:`~modscope.lesion.silence.hidden_groups`). Per module:

* ``p_important`` = (1 + #{random damage >= module damage}) / (1 + #controls): the module hurts more
  than chance;
* ``p_prunable`` = (1 + #{random damage <= module damage}) / (1 + #controls): it hurts less than chance;
* the label is ``"important"`` when ``p_important <= alpha``, ``"prunable"`` when ``p_prunable <= alpha``,
  else ``"not significant"``.

A module that is its whole layer has no control that differs from it (label ``"whole layer"``, p-values
NaN), and one whose layer holds fewer than ``1 / alpha`` sets of its size cannot reach the level
(``"untestable"``); when the layer holds at most ``n_random`` other such sets, all of them are the
controls and the p-values are exact. :mod:`modscope.lesion.controls` gives the reasons. Across the tested
modules the ``p_important`` values are combined with Fisher's method. Pairs of important modules:
:mod:`modscope.lesion.pairs`.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
import torch
from scipy.stats import combine_pvalues
from torch import Tensor, nn

from modscope.cluster import Partition
from modscope.graph import WeightGraph
from modscope.graph.sites import UnitSites
from modscope.lesion.controls import TESTED, control_sets, distinct_sets, verdict
from modscope.lesion.results import LesionStudy, ModuleLesion
from modscope.lesion.silence import hidden_groups, silenced, sites_of
from modscope.progress import Progress, notify
from modscope.seeding import check_seed, numpy_rng

__all__ = ["class_accuracy", "lesion_modules"]


def class_accuracy(
    model: nn.Module, eval_set: tuple[Tensor, Tensor], *, n_classes: int | None = None, batch_size: int = 1024
) -> np.ndarray:
    """Per-class accuracy of ``model`` on ``eval_set = (inputs, labels)``, shape ``(n_classes,)``.

    ``labels`` are class ids, shape ``(N,)``; ``n_classes`` defaults to ``labels.max() + 1``; a class
    without examples gets accuracy 0. The model runs in eval mode (its mode is restored), without gradients,
    ``batch_size`` examples at a time.
    """
    x, y = check_eval_set(eval_set)
    n_classes = int(y.max()) + 1 if n_classes is None else n_classes
    check_int(batch_size, "batch_size", 1)
    was_training = model.training
    model.eval()
    hits = torch.zeros(n_classes, dtype=torch.float64)
    try:
        with torch.no_grad():
            pred = torch.cat([model(x[i : i + batch_size]).argmax(-1) for i in range(0, len(x), batch_size)])
    finally:
        model.train(was_training)
    hits.index_add_(0, y, (pred.cpu() == y).to(torch.float64))
    counts = torch.bincount(y, minlength=n_classes).to(torch.float64)
    return (hits / counts.clamp(min=1)).numpy()


def check_int(value: Any, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return int(value)


def check_eval_set(eval_set: Any) -> tuple[Tensor, Tensor]:
    """``eval_set`` as ``(inputs, labels)`` tensors, or a ValueError saying what is wrong with it."""
    if not isinstance(eval_set, (tuple, list)) or len(eval_set) != 2:
        what = type(eval_set).__name__
        raise ValueError(f"eval_set must be a pair (inputs, labels) of tensors, got {what}")
    x, y = eval_set
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise ValueError(f"eval_set must hold tensors, got ({type(x).__name__}, {type(y).__name__})")
    if y.ndim != 1 or y.dtype.is_floating_point or y.dtype == torch.bool:
        raise ValueError(f"eval_set labels must be class ids, shape (N,), got {y.dtype} {tuple(y.shape)}")
    if len(x) != len(y) or len(y) == 0:
        raise ValueError(f"eval_set needs as many inputs as labels (>= 1), got {len(x)} and {len(y)}")
    if int(y.min()) < 0:
        raise ValueError(f"eval_set labels must be class ids >= 0, got {int(y.min())}")
    return x, y.cpu().long()


def damage(
    model: nn.Module,
    graph: WeightGraph,
    eval_set: tuple,
    base: np.ndarray,
    units: dict[int, np.ndarray],
    sites: UnitSites | None = None,
) -> tuple[float, np.ndarray]:
    """(overall, per-class) accuracy drop from ``base`` while ``units`` (layer -> unit ids) are silenced
    (``sites``: :func:`~modscope.lesion.silence.sites_of` the model and graph)."""
    with silenced(model, graph, units, sites=sites):
        acc = class_accuracy(model, eval_set, n_classes=len(base))
    return float(base.mean() - acc.mean()), base - acc


def _modules(
    graph: WeightGraph, partition: Partition, min_units: int, hidden: list[int]
) -> list[tuple[int, int, np.ndarray]]:
    labels = np.asarray(partition.labels)
    if labels.shape != (graph.n_nodes,):
        raise ValueError(f"partition has {labels.size} labels but the graph has {graph.n_nodes} nodes")
    off = graph.offsets
    found = []
    for layer in hidden:
        lab = labels[off[layer] : off[layer + 1]]
        for c in np.unique(lab[lab >= 0]):
            units = np.flatnonzero(lab == c)
            if units.size >= min_units:
                found.append((layer, int(c), units))
    return found


def lesion_modules(
    model: nn.Module,
    graph: WeightGraph,
    partition: Partition,
    eval_set: tuple[Tensor, Tensor],
    *,
    n_random: int = 20,
    min_units: int = 2,
    alpha: float = 0.05,
    seed: int = 0,
    progress: Progress | None = None,
) -> LesionStudy:
    """Lesion every module (hidden layer or group x cluster with at least ``min_units`` units) of ``model``.

    Parameters
    ----------
    model : nn.Module
        The network ``graph`` was built from (``WeightGraph.from_module(model)``, outputs included; for a
        general graph, any ``residual`` rule: the model is traced once more to find each group's readers).
    graph, partition : the clustered graph (e.g. ``clusterability(...).partition``).
    eval_set : (inputs, labels) tensors; labels are class ids, shape ``(N,)``. Every lesion is one pass
        over it, and a study makes ``1 + modules * (1 + n_random)`` of them.
    n_random : int, default 20
        Random same-size unit sets per module (the control), drawn from the module's layer. The smallest
        p-value possible is ``1 / (1 + n_random)``. A layer with at most ``n_random`` other sets of the
        module's size gives all of them instead (fewer lesions, exact p-values), a whole layer none.
    min_units : int, default 2
        Smaller modules are skipped.
    alpha : float, default 0.05
        Level of the importance labels.
    seed : int, default 0
        The controls of the module in cluster ``c`` of layer ``l`` draw from
        ``modscope.seeding.numpy_rng(seed, "lesion", l, c)``: a module's controls do not depend on which
        other modules are studied.
    progress : callable(label, done, total, info), optional
        Called as ``("modules", done, total, {"important": count})`` after each module.

    Returns
    -------
    A :class:`~modscope.lesion.LesionStudy` with every setting above. Modules labelled ``"whole layer"``
    or ``"untestable"`` keep their damage but are left out of its ``combined_p``.
    """
    n_random = check_int(n_random, "n_random", 1)
    min_units = check_int(min_units, "min_units", 1)
    seed = check_seed(seed, "seed")
    if not (isinstance(alpha, numbers.Real) and 0.0 < alpha < 1.0):
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    eval_set = check_eval_set(eval_set)
    base = class_accuracy(model, eval_set)
    sites = sites_of(model, graph)
    modules = _modules(graph, partition, min_units, hidden_groups(graph, sites))
    out: list[ModuleLesion] = []
    notify(progress, "modules", 0, len(modules), {"important": 0})
    for layer, cluster, units in modules:
        hurt, per_class = damage(model, graph, eval_set, base, {layer: units}, sites)
        rng = numpy_rng(seed, "lesion", layer, cluster)
        size = graph.layers[layer].size
        controls = control_sets(size, units, n_random, rng)
        random = np.array([damage(model, graph, eval_set, base, {layer: s}, sites)[0] for s in controls])
        # exact up to the count at which 1 / count <= alpha: all verdict needs to know
        distinct = distinct_sets(size, units.size, cap=math.ceil(1 / alpha))
        p_imp, p_pru, label = verdict(hurt, random, distinct, alpha)
        out.append(
            ModuleLesion(
                layer=layer,
                layer_name=graph.layers[layer].name,
                cluster=cluster,
                units=tuple(int(u) for u in units),
                damage=hurt,
                class_damage=tuple(per_class.tolist()),
                random_damage=tuple(random.tolist()),
                p_important=p_imp,
                p_prunable=p_pru,
                label=label,
            )
        )
        important = sum(m.label == "important" for m in out)
        notify(progress, "modules", len(out), len(modules), {"important": important})
    # Untested modules' p-values (NaN for a whole layer) would only dilute the combined test.
    tested = [m.p_important for m in out if m.label in TESTED]
    combined = float(combine_pvalues(tested, method="fisher").pvalue) if tested else 1.0
    return LesionStudy(
        accuracy=float(base.mean()),
        class_accuracy=tuple(base.tolist()),
        modules=tuple(out),
        combined_p=combined,
        n_random=n_random,
        alpha=float(alpha),
        seed=seed,
        min_units=min_units,
        n_eval=len(eval_set[1]),
    )
