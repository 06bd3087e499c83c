"""Lesions of the modules the structural lens finds: importance and dependencies (SPEC §1.4).

:func:`lesion_modules` silences each module (the units of one hidden layer -- a group of a general graph:
a residual stream, one layer's copy of it, a concatenated layer -- in one cluster) and tests its
damage against random same-size lesions (:class:`LesionStudy`); :func:`lesion_pairs` tests pairs of
important modules for interaction (:class:`PairStudy`); :func:`silenced` is the silencing itself (Filan et
al., "Clusterability in Neural Networks", arXiv:2103.03386, §6). A module that is its whole layer, or whose
layer holds too few sets of its size for a test at level alpha, is labelled so (:data:`UNTESTED`) rather
than tested (:mod:`modscope.lesion.controls`).
"""

from modscope.lesion.controls import TESTED, UNTESTED
from modscope.lesion.pairs import lesion_pairs
from modscope.lesion.results import LABELS, LesionStudy, ModuleLesion, PairLesion, PairStudy
from modscope.lesion.silence import silenced
from modscope.lesion.study import class_accuracy, lesion_modules

__all__ = [
    "LABELS",
    "TESTED",
    "UNTESTED",
    "LesionStudy",
    "ModuleLesion",
    "PairLesion",
    "PairStudy",
    "class_accuracy",
    "lesion_modules",
    "lesion_pairs",
    "silenced",
]
