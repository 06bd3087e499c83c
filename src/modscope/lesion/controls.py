"""The random same-size controls of a module's lesion, and the test against them (SPEC §1.4).

A module of ``n`` units in a layer of ``N`` is compared with sets of ``n`` units of the same layer. There
are only ``C = C(N, n)`` distinct such sets, the module itself among them, and that number decides what
the comparison can say:

* ``C == 1`` (the module is the whole layer): every control is the module itself, so the comparison is
  empty. The module is labelled ``"whole layer"``, draws no controls, and its p-values are NaN; its damage
  is still measured and reported.
* ``C - 1 <= n_random``: the controls are all ``C - 1`` other sets, in lexicographic order, each once (at
  most ``n_random`` lesions). The p-values are then exact (the module's rank among every set of its size):
  ``p_important = (1 + #{others >= damage}) / C``, the smallest possible being ``1 / C``.
* otherwise: ``n_random`` independent uniform draws (the module's own set may be drawn), the Monte Carlo
  p-value ``(1 + #{draws >= damage}) / (1 + n_random)`` -- valid for any ``C``, never below
  ``1 / (1 + n_random)``.

Under the null hypothesis the module is a uniformly random set of its size, so no test can give a p-value
below ``1 / C``: when ``1 / C > alpha`` no damage, however large, could reach the level, and the module is
labelled ``"untestable"`` (its p-values are still computed and recorded) rather than ``"not significant"``.
Only the modules tested at level ``alpha`` (labels :data:`TESTED`) enter Fisher's combined p-value and the
pair lesions; those two conditions depend on the sizes alone, never on the damages, so excluding them keeps
the combined test valid.
"""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np

__all__ = ["TESTED", "UNTESTED", "control_sets", "distinct_sets", "verdict"]

#: Labels of the modules tested against their controls.
TESTED = ("important", "prunable", "not significant")
#: Labels of the modules whose layer cannot supply a test at level alpha (see the module docstring).
UNTESTED = ("whole layer", "untestable")


def distinct_sets(layer_size: int, n_units: int, cap: int) -> int:
    """``C(layer_size, n_units)`` if it is at most ``cap``, else ``cap + 1`` (no huge integers for wide
    layers: ``C(N, i)`` grows with ``i`` up to ``N / 2``, so the product can stop early)."""
    m = min(n_units, layer_size - n_units)
    count = 1
    for i in range(1, m + 1):
        count = count * (layer_size - m + i) // i
        if count > cap:
            return cap + 1
    return count


def control_sets(
    layer_size: int, units: np.ndarray, n_random: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """The control unit sets of a module (``units``, sorted, of a layer of ``layer_size``): none for a whole
    layer, every other set of its size when there are at most ``n_random``, else ``n_random`` draws of
    ``rng`` (the only case that uses it)."""
    distinct = distinct_sets(layer_size, len(units), cap=n_random + 1)
    if distinct == 1:
        return []
    if distinct - 1 <= n_random:
        own = tuple(int(u) for u in units)
        every = combinations(range(layer_size), len(own))
        return [np.array(s, dtype=np.int64) for s in every if s != own]
    return [rng.choice(layer_size, units.size, replace=False) for _ in range(n_random)]


def verdict(damage: float, random: np.ndarray, distinct: int, alpha: float) -> tuple[float, float, str]:
    """``(p_important, p_prunable, label)`` of a module of ``damage`` against its controls' ``random``
    damages, shape ``(n_controls,)``; ``distinct``: the number of sets of its size its layer holds, exact
    at least up to ``1 / alpha`` (:func:`distinct_sets` with ``cap=ceil(1 / alpha)``)."""
    if distinct == 1:
        return math.nan, math.nan, "whole layer"
    p_imp = float((1 + np.count_nonzero(random >= damage)) / (1 + random.size))
    p_pru = float((1 + np.count_nonzero(random <= damage)) / (1 + random.size))
    if 1.0 / distinct > alpha:
        return p_imp, p_pru, "untestable"
    label = "important" if p_imp <= alpha else "prunable" if p_pru <= alpha else "not significant"
    return p_imp, p_pru, label
