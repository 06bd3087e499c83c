"""Lesions of the modules the structural lens finds: importance and dependencies (SPEC §1.4)."""

from modscope.lesion.silence import silenced
from modscope.lesion.study import (
    LABELS,
    LesionStudy,
    ModuleLesion,
    PairLesion,
    class_accuracy,
    lesion_modules,
    lesion_pairs,
)

__all__ = [
    "LABELS",
    "LesionStudy",
    "ModuleLesion",
    "PairLesion",
    "class_accuracy",
    "lesion_modules",
    "lesion_pairs",
    "silenced",
]
