"""Which important modules depend on each other (Filan et al. arXiv:2103.03386 §6; SPEC §1.4).

For a pair of important modules a, b the interaction is ``damage(a and b) - damage(a) - damage(b)``: 0
when their damages add up, positive when losing both hurts more than the sum (each backs the other up),
negative when one already does the other's harm. It is compared with the same quantity for ``n_random``
random pairs of unit sets of the same sizes in the same layers (groups of a general graph; disjoint within
a layer), two-sided: ``p = (1 + #{|random| >= |interaction|}) / (1 + n_random)``.

Only modules labelled ``"important"`` are paired. A ``"whole layer"`` module, whatever its damage, is never
one: each of its controls would be the module itself, so a pair's controls would keep it silenced and only
vary the partner -- no comparison of the pair with random sets. ``"untestable"`` modules are not paired
either (:mod:`modscope.lesion.controls`). An important module's layer holds at least ``1 / alpha`` sets of
its size, so its pairs always have that many distinct control pairs.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
from torch import Tensor, nn

from modscope.graph import WeightGraph
from modscope.lesion.results import LesionStudy, ModuleLesion, PairLesion, PairStudy
from modscope.lesion.silence import hidden_groups, sites_of
from modscope.lesion.study import check_eval_set, check_int, class_accuracy, damage
from modscope.progress import Progress, notify
from modscope.seeding import check_seed, numpy_rng

__all__ = ["lesion_pairs"]


def lesion_pairs(
    model: nn.Module,
    graph: WeightGraph,
    study: LesionStudy,
    eval_set: tuple[Tensor, Tensor],
    *,
    n_random: int | None = None,
    seed: int = 0,
    progress: Progress | None = None,
) -> PairStudy:
    """Double lesions of every pair of ``"important"`` modules of ``study``, tested for interaction
    (``"whole layer"`` and ``"untestable"`` modules are never important, so never paired).

    Parameters
    ----------
    model, graph : as given to :func:`~modscope.lesion.lesion_modules`.
    study : its result; ``ValueError`` if it does not fit ``graph`` or was measured on another ``eval_set``.
    eval_set : the (inputs, labels) tensors ``study`` was measured on.
    n_random : int, default ``study.n_random``
        Random control pairs per pair; each costs three passes over ``eval_set``.
    seed : int, default 0
        The controls of the pair of modules (l1, c1), (l2, c2) draw from
        ``modscope.seeding.numpy_rng(seed, "lesion pair", l1, c1, l2, c2)``.
    progress : callable(label, done, total, info), optional
        Called as ``("pairs", done, total, {})`` after each pair.

    Returns
    -------
    A :class:`~modscope.lesion.PairStudy`: one :class:`~modscope.lesion.PairLesion` per pair, in the order
    of ``study.modules``, and the settings.
    """
    n_random = study.n_random if n_random is None else check_int(n_random, "n_random", 1)
    seed = check_seed(seed, "seed")
    eval_set = check_eval_set(eval_set)
    sites = sites_of(model, graph)
    hidden = set(hidden_groups(graph, sites))
    for m in study.modules:
        if m.layer not in hidden or graph.layers[m.layer].name != m.layer_name:
            raise ValueError(
                f"study's module in layer {m.layer} ({m.layer_name!r}) is not a hidden layer of the graph: "
                "was the study made on another graph?"
            )
    base = class_accuracy(model, eval_set, n_classes=study.n_classes)
    if len(eval_set[1]) != study.n_eval or not np.allclose(base, study.class_accuracy, rtol=0, atol=1e-12):
        raise ValueError(
            f"the model's per-class accuracy on eval_set ({len(eval_set[1])} examples) differs from the "
            f"study's ({study.n_eval} examples): pass the model and eval_set the study was measured on"
        )
    important = [i for i, m in enumerate(study.modules) if m.label == "important"]
    pairs = list(combinations(important, 2))
    out: list[PairLesion] = []
    notify(progress, "pairs", 0, len(pairs))
    for i, j in pairs:
        a, b = study.modules[i], study.modules[j]
        joint = damage(model, graph, eval_set, base, _union(a, b), sites)[0]
        interaction = joint - a.damage - b.damage
        rng = numpy_rng(seed, "lesion pair", a.layer, a.cluster, b.layer, b.cluster)
        random = []
        for _ in range(n_random):
            ra = _random_like(graph, a, rng)
            rb = _random_like(graph, b, rng, avoid=ra if a.layer == b.layer else None)
            da = damage(model, graph, eval_set, base, {a.layer: ra}, sites)[0]
            db = damage(model, graph, eval_set, base, {b.layer: rb}, sites)[0]
            both = _merge({a.layer: ra}, {b.layer: rb})
            random.append(damage(model, graph, eval_set, base, both, sites)[0] - da - db)
        random = np.array(random)
        p = float((1 + np.count_nonzero(np.abs(random) >= abs(interaction))) / (1 + n_random))
        out.append(PairLesion(i, j, joint, interaction, tuple(random.tolist()), p))
        notify(progress, "pairs", len(out), len(pairs))
    return PairStudy(pairs=tuple(out), n_random=n_random, seed=seed, n_eval=study.n_eval)


def _random_like(graph: WeightGraph, m: ModuleLesion, rng, avoid: np.ndarray | None = None) -> np.ndarray:
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
