"""What a lesion study returns: frozen records of every module and pair, with the settings that produced them.

Each result follows modscope's persistence convention (:mod:`modscope.persist`): ``to_dict`` /
``from_dict`` (plain JSON types), ``save`` / ``load`` (JSON, atomic) and ``to_frame()`` (pandas, optional).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from modscope.lesion.controls import TESTED, UNTESTED
from modscope.persist import JsonResult, data_frame, nan_if_none

__all__ = ["LABELS", "LesionStudy", "ModuleLesion", "PairLesion", "PairStudy"]

#: Every module label: the three outcomes of a test, then the two kinds of module that cannot be tested
#: against random same-size sets of their layer (:mod:`modscope.lesion.controls`).
LABELS = (*TESTED, *UNTESTED)


def _floats(values: Any) -> tuple[float, ...]:
    return tuple(nan_if_none(v) for v in values)


def _mean(values: tuple[float, ...]) -> float:
    return sum(values) / len(values) if values else math.nan


@dataclass(frozen=True)
class ModuleLesion:
    """One module (the units of hidden layer ``layer`` -- a group of a general graph -- in cluster
    ``cluster``) and its lesion test.

    ``damage``: drop of the overall accuracy when ``units`` are silenced; ``class_damage``: drop per class,
    shape ``(n_classes,)``; ``random_damage``: the damage of each random same-size control, shape
    ``(n_random,)`` (fewer when the layer holds fewer other sets of the module's size, none for a whole
    layer); ``p_important`` / ``p_prunable``: the one-sided tests against the controls (NaN for a whole
    layer); ``label``: one of :data:`LABELS`.
    """

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

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("units", "class_damage", "random_damage"):
            d[key] = list(d[key])
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModuleLesion:
        if d["label"] not in LABELS:
            raise ValueError(f"label must be one of {LABELS}, got {d['label']!r}")
        return cls(
            layer=int(d["layer"]),
            layer_name=str(d["layer_name"]),
            cluster=int(d["cluster"]),
            units=tuple(int(u) for u in d["units"]),
            damage=nan_if_none(d["damage"]),
            class_damage=_floats(d["class_damage"]),
            random_damage=_floats(d["random_damage"]),
            p_important=nan_if_none(d["p_important"]),
            p_prunable=nan_if_none(d["p_prunable"]),
            label=d["label"],
        )

    def __repr__(self) -> str:
        return (
            f"ModuleLesion(layer={self.layer} {self.layer_name!r}, cluster={self.cluster}, "
            f"units={len(self.units)}, damage={self.damage:.4g}, p_important={self.p_important:.3g}, "
            f"label={self.label!r})"
        )


@dataclass(frozen=True)
class LesionStudy(JsonResult):
    """:func:`~modscope.lesion.lesion_modules`'s result: the intact model's ``accuracy`` and
    ``class_accuracy`` (shape ``(n_classes,)``), one :class:`ModuleLesion` per module, Fisher's combined
    p-value of the tested modules' ``p_important`` (those labelled ``"whole layer"`` or ``"untestable"``
    are left out; 1.0 without tested modules), and the settings: ``n_random`` controls per module, level
    ``alpha``, ``seed``, ``min_units``, and ``n_eval`` (examples evaluated per lesion)."""

    accuracy: float
    class_accuracy: tuple[float, ...]
    modules: tuple[ModuleLesion, ...]
    combined_p: float
    n_random: int
    alpha: float
    seed: int
    min_units: int
    n_eval: int

    @property
    def n_classes(self) -> int:
        return len(self.class_accuracy)

    def count(self, label: str) -> int:
        """How many modules carry ``label`` (one of :data:`LABELS`)."""
        if label not in LABELS:
            raise ValueError(f"label must be one of {LABELS}, got {label!r}")
        return sum(m.label == label for m in self.modules)

    def to_dict(self) -> dict[str, Any]:
        d = {key: getattr(self, key) for key in self.__dataclass_fields__}
        d["class_accuracy"] = list(self.class_accuracy)
        d["modules"] = [m.to_dict() for m in self.modules]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LesionStudy:
        return cls(
            accuracy=float(d["accuracy"]),
            class_accuracy=_floats(d["class_accuracy"]),
            modules=tuple(ModuleLesion.from_dict(m) for m in d["modules"]),
            combined_p=float(d["combined_p"]),
            n_random=int(d["n_random"]),
            alpha=float(d["alpha"]),
            seed=int(d["seed"]),
            min_units=int(d["min_units"]),
            n_eval=int(d["n_eval"]),
        )

    @property
    def n_tested(self) -> int:
        """How many modules were tested against their controls (the others are ``"whole layer"`` or
        ``"untestable"``); Fisher's ``combined_p`` combines these."""
        return sum(m.label in TESTED for m in self.modules)

    def to_frame(self) -> Any:
        """One row per module: layer, layer_name, cluster, n_units, damage, the random controls' mean
        damage (NaN without controls), their number n_controls, p_important, p_prunable, label, then
        ``damage_class_<c>`` per class (needs pandas)."""
        classes = [f"damage_class_{c}" for c in range(self.n_classes)]
        rows = [
            {
                "layer": m.layer,
                "layer_name": m.layer_name,
                "cluster": m.cluster,
                "n_units": len(m.units),
                "damage": m.damage,
                "random_damage_mean": _mean(m.random_damage),
                "n_controls": len(m.random_damage),
                "p_important": m.p_important,
                "p_prunable": m.p_prunable,
                "label": m.label,
                **dict(zip(classes, m.class_damage)),
            }
            for m in self.modules
        ]
        columns = ["layer", "layer_name", "cluster", "n_units", "damage", "random_damage_mean", "n_controls"]
        return data_frame(rows, [*columns, "p_important", "p_prunable", "label", *classes])

    def __repr__(self) -> str:
        counts = ", ".join(f"{self.count(label)} {label}" for label in LABELS)
        return (
            f"LesionStudy(accuracy={self.accuracy:.4g}, {len(self.modules)} modules: {counts}; "
            f"combined_p={self.combined_p:.3g} over {self.n_tested} tested; n_random={self.n_random}, "
            f"alpha={self.alpha}, seed={self.seed}, min_units={self.min_units}, n_eval={self.n_eval})"
        )


@dataclass(frozen=True)
class PairLesion:
    """Modules ``a`` and ``b`` (indices into ``LesionStudy.modules``) silenced together: the joint
    ``damage``, the ``interaction`` ``damage(a and b) - damage(a) - damage(b)``, the same quantity for each
    random control pair (shape ``(n_random,)``) and the two-sided ``p_value``."""

    a: int
    b: int
    damage: float
    interaction: float
    random_interaction: tuple[float, ...]
    p_value: float

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["random_interaction"] = list(self.random_interaction)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PairLesion:
        return cls(
            a=int(d["a"]),
            b=int(d["b"]),
            damage=nan_if_none(d["damage"]),
            interaction=nan_if_none(d["interaction"]),
            random_interaction=_floats(d["random_interaction"]),
            p_value=float(d["p_value"]),
        )

    def __repr__(self) -> str:
        return (
            f"PairLesion(a={self.a}, b={self.b}, damage={self.damage:.4g}, "
            f"interaction={self.interaction:.4g}, p_value={self.p_value:.3g})"
        )


@dataclass(frozen=True)
class PairStudy(JsonResult):
    """:func:`~modscope.lesion.lesion_pairs`'s result: one :class:`PairLesion` per pair of important
    modules (iterating over a ``PairStudy`` yields them), and the settings ``n_random`` (control pairs per
    pair), ``seed`` and ``n_eval`` (examples evaluated per lesion)."""

    pairs: tuple[PairLesion, ...]
    n_random: int
    seed: int
    n_eval: int

    def __iter__(self) -> Iterator[PairLesion]:
        return iter(self.pairs)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> PairLesion:
        return self.pairs[i]

    def to_dict(self) -> dict[str, Any]:
        return {
            "pairs": [p.to_dict() for p in self.pairs],
            "n_random": self.n_random,
            "seed": self.seed,
            "n_eval": self.n_eval,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PairStudy:
        return cls(
            pairs=tuple(PairLesion.from_dict(p) for p in d["pairs"]),
            n_random=int(d["n_random"]),
            seed=int(d["seed"]),
            n_eval=int(d["n_eval"]),
        )

    def to_frame(self) -> Any:
        """One row per pair: a, b, damage, interaction, the random controls' mean interaction, p_value
        (needs pandas)."""
        columns = ["a", "b", "damage", "interaction", "random_interaction_mean", "p_value"]
        rows = [
            {
                **{k: getattr(p, k) for k in ("a", "b", "damage", "interaction", "p_value")},
                "random_interaction_mean": sum(p.random_interaction) / len(p.random_interaction),
            }
            for p in self.pairs
        ]
        return data_frame(rows, columns)

    def __repr__(self) -> str:
        return (
            f"PairStudy({len(self.pairs)} pairs; n_random={self.n_random}, seed={self.seed}, "
            f"n_eval={self.n_eval})"
        )
