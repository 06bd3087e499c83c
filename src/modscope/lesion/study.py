"""Which modules matter, and which depend on each other (Filan et al. arXiv:2103.03386 §6; SPEC §1.4).

A module is the set of units of one hidden layer that fall in one cluster. Lesioning it (silencing its
units, :func:`~modscope.lesion.silence.silenced`) changes the per-class accuracy; the control is
``n_random`` random sets of the same size drawn from the same layer. The damage of a lesion is the drop
in overall accuracy. Per module:

* ``p_important`` = (1 + #{random damage >= module damage}) / (1 + n_random): the module hurts more than
  chance;
* ``p_prunable`` = (1 + #{random damage <= module damage}) / (1 + n_random): it hurts less than chance;
* the label is ``"important"`` when ``p_important <= alpha``, ``"prunable"`` when ``p_prunable <= alpha``,
  else ``"not significant"``.

Across modules the ``p_important`` values are combined with Fisher's method. For pairs of important
modules the interaction is ``damage(a and b) - damage(a) - damage(b)``, compared with the same quantity
for random pairs of sets of the same sizes in the same layers (two-sided).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from itertools import combinations
from typing import Any

import numpy as np
import torch
from scipy.stats import combine_pvalues
from torch import nn

from modscope.cluster import Partition
from modscope.graph import WeightGraph
from modscope.lesion.silence import silenced

LABELS = ("important", "prunable", "not significant")


@dataclass(frozen=True)
class ModuleLesion:
    """One module: ``layer`` (graph layer index), its ``cluster``, ``units``, the accuracy ``damage``,
    ``class_damage`` (per-class accuracy drops), the random controls' damages and the test."""

    layer: int
    layer_name: str
    cluster: int
    units: tuple[int, ...]
    damage: float
    class_damage: tuple[float, ...]
    random_damage: tuple[float, ...]
    p_important: float
    p_prunable: float
    label: str


@dataclass(frozen=True)
class LesionStudy:
    """:func:`lesion_modules`'s result: the full model's accuracy and one entry per module."""

    accuracy: float
    class_accuracy: tuple[float, ...]
    modules: tuple[ModuleLesion, ...]
    combined_p: float
    alpha: float
    n_random: int
    seed: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LesionStudy:
        d = dict(d)
        d["modules"] = tuple(ModuleLesion(**{k: _tuple(v) for k, v in m.items()}) for m in d["modules"])
        d["class_accuracy"] = tuple(d["class_accuracy"])
        return cls(**d)


@dataclass(frozen=True)
class PairLesion:
    a: int  # indices into LesionStudy.modules
    b: int
    damage: float
    interaction: float
    random_interaction: tuple[float, ...]
    p_value: float


def _tuple(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


def class_accuracy(model: nn.Module, eval_set: Any, n_classes: int, batch_size: int = 1024) -> np.ndarray:
    """Per-class accuracy of ``model`` on ``(inputs, labels)`` tensors, shape ``(n_classes,)``."""
    x, y = eval_set
    was_training = model.training
    model.eval()
    hits = torch.zeros(n_classes, dtype=torch.float64)
    try:
        with torch.no_grad():
            pred = torch.cat([model(x[i : i + batch_size]).argmax(-1) for i in range(0, len(x), batch_size)])
    finally:
        model.train(was_training)
    hits.index_add_(0, y, (pred == y).to(torch.float64))
    counts = torch.bincount(y, minlength=n_classes).to(torch.float64)
    return (hits / counts.clamp(min=1)).numpy()


def _modules(graph: WeightGraph, partition: Partition, min_units: int) -> list[tuple[int, int, np.ndarray]]:
    labels = np.asarray(partition.labels)
    if labels.shape != (graph.n_nodes,):
        raise ValueError(f"partition has {labels.size} labels but the graph has {graph.n_nodes} nodes")
    off = graph.offsets
    found = []
    for layer in range(1, len(graph.layers) - 1):
        lab = labels[off[layer] : off[layer + 1]]
        for c in np.unique(lab[lab >= 0]):
            units = np.flatnonzero(lab == c)
            if units.size >= min_units:
                found.append((layer, int(c), units))
    return found


def _damage(
    model, graph, eval_set, n_classes, base, units: dict[int, np.ndarray]
) -> tuple[float, np.ndarray]:
    with silenced(model, graph, units):
        acc = class_accuracy(model, eval_set, n_classes)
    return float(base.mean() - acc.mean()), base - acc


def lesion_modules(
    model: nn.Module,
    graph: WeightGraph,
    partition: Partition,
    eval_set: tuple[torch.Tensor, torch.Tensor],
    *,
    n_random: int = 20,
    min_units: int = 2,
    alpha: float = 0.05,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> LesionStudy:
    """Lesion every module (hidden layer x cluster with at least ``min_units`` units) of ``model``.

    Parameters
    ----------
    model : nn.Module
        The network ``graph`` was built from (``WeightGraph.from_module(model)``, outputs included).
    graph, partition : the clustered graph (e.g. ``clusterability(...).partition``).
    eval_set : (inputs, labels) tensors; labels are class ids.
    n_random : int, default 20
        Random same-size unit sets per module (the control), drawn from the module's layer.
    min_units : int, default 2
        Smaller modules are skipped.
    alpha : float, default 0.05
        Level of the importance labels.
    seed : int, default 0
        Seeds the random sets.
    progress : callable(done, total), optional
        Called after each module.
    """
    if n_random < 1:
        raise ValueError(f"n_random must be at least 1, got {n_random}")
    n_classes = int(eval_set[1].max()) + 1
    base = class_accuracy(model, eval_set, n_classes)
    rng = np.random.default_rng(seed)
    out = []
    modules = _modules(graph, partition, min_units)
    for layer, cluster, units in modules:
        damage, per_class = _damage(model, graph, eval_set, n_classes, base, {layer: units})
        size = graph.layers[layer].size
        random = np.array(
            [
                _damage(
                    model,
                    graph,
                    eval_set,
                    n_classes,
                    base,
                    {layer: rng.choice(size, units.size, replace=False)},
                )[0]
                for _ in range(n_random)
            ]
        )
        p_imp = float((1 + np.count_nonzero(random >= damage)) / (1 + n_random))
        p_pru = float((1 + np.count_nonzero(random <= damage)) / (1 + n_random))
        label = "important" if p_imp <= alpha else "prunable" if p_pru <= alpha else "not significant"
        out.append(
            ModuleLesion(
                layer,
                graph.layers[layer].name,
                cluster,
                tuple(int(u) for u in units),
                damage,
                tuple(per_class.tolist()),
                tuple(random.tolist()),
                p_imp,
                p_pru,
                label,
            )
        )
        if progress is not None:
            progress(len(out), len(modules))
    combined = float(combine_pvalues([m.p_important for m in out], method="fisher").pvalue) if out else 1.0
    return LesionStudy(float(base.mean()), tuple(base.tolist()), tuple(out), combined, alpha, n_random, seed)


def lesion_pairs(
    model: nn.Module,
    graph: WeightGraph,
    study: LesionStudy,
    eval_set: tuple[torch.Tensor, torch.Tensor],
    *,
    n_random: int = 20,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[PairLesion, ...]:
    """Double lesions of every pair of ``"important"`` modules of ``study``, tested for interaction;
    ``progress(done, total)`` is called after each pair."""
    if n_random < 1:
        raise ValueError(f"n_random must be at least 1, got {n_random}")
    n_classes = len(study.class_accuracy)
    base = np.asarray(study.class_accuracy)
    rng = np.random.default_rng(seed)
    important = [i for i, m in enumerate(study.modules) if m.label == "important"]
    out = []
    pairs = list(combinations(important, 2))
    for i, j in pairs:
        a, b = study.modules[i], study.modules[j]
        joint = _damage(model, graph, eval_set, n_classes, base, _union(a, b))[0]
        interaction = joint - a.damage - b.damage
        random = []
        for _ in range(n_random):
            ra = _random_like(graph, a, rng)
            rb = _random_like(graph, b, rng, avoid=ra if a.layer == b.layer else None)
            da = _damage(model, graph, eval_set, n_classes, base, {a.layer: ra})[0]
            db = _damage(model, graph, eval_set, n_classes, base, {b.layer: rb})[0]
            both = _merge({a.layer: ra}, {b.layer: rb})
            random.append(_damage(model, graph, eval_set, n_classes, base, both)[0] - da - db)
        random = np.array(random)
        p = float((1 + np.count_nonzero(np.abs(random) >= abs(interaction))) / (1 + n_random))
        out.append(PairLesion(i, j, joint, interaction, tuple(random.tolist()), p))
        if progress is not None:
            progress(len(out), len(pairs))
    return tuple(out)


def _random_like(graph, m: ModuleLesion, rng, avoid: np.ndarray | None = None) -> np.ndarray:
    pool = np.arange(graph.layers[m.layer].size)
    if avoid is not None:
        pool = np.setdiff1d(pool, avoid)
    return rng.choice(pool, len(m.units), replace=False)


def _merge(x: dict[int, np.ndarray], y: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    out = dict(x)
    for layer, units in y.items():
        out[layer] = np.union1d(out[layer], units) if layer in out else units
    return out


def _union(a: ModuleLesion, b: ModuleLesion) -> dict[int, np.ndarray]:
    return _merge({a.layer: np.asarray(a.units)}, {b.layer: np.asarray(b.units)})
