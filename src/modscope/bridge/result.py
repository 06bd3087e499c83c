"""The result of :func:`modscope.bridge.bridge`, with every setting that produced it.

Persisted as every modscope result is (:mod:`modscope.persist`): ``to_dict`` / ``from_dict`` (which
validates), ``save`` / ``load`` as JSON; :meth:`BridgeResult.section` is its ``"bridge"`` section of a
results document (:mod:`modscope.results`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from modscope.atomic import finite
from modscope.bridge.null import null_stats
from modscope.persist import JsonResult, data_frame, nan_if_none
from modscope.results import bridge_section, table

__all__ = ["NULLS", "BridgeResult"]

#: The two null models: same-size random partitions, and the masks of shuffled networks.
NULLS = ("partitions", "shuffled")


def _matrix(v: Any, shape: tuple[int, ...], what: str) -> np.ndarray:
    a = np.array([[nan_if_none(x) for x in row] for row in v] if len(shape) == 2
                 else [nan_if_none(x) for x in v], dtype=float)  # fmt: skip
    if a.shape != shape:
        raise ValueError(f"bridge result {what!r} must have shape {shape}, got {a.shape}")
    return a


def _plain(v: Any) -> Any:
    """JSON-able: arrays as lists (also inside dicts), non-finite floats as None."""
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return finite(v.tolist() if isinstance(v, np.ndarray) else v)


@dataclass(frozen=True, repr=False)
class BridgeResult(JsonResult):
    """How a partition and a set of task masks agree (rules in :mod:`modscope.bridge.scores`).

    Attributes
    ----------
    tasks : tuple of str
        The masks, in order (``n_tasks``).
    k : int
        Number of clusters of the partition.
    granularity : {"weight", "unit"}
        Weight masks (a ``MaskSet``) or unit masks; the weight scores exist for weight masks only.
    weight_share, unit_share : ndarray, shape (k, n_tasks)
        Share of each mask's kept weights inside each cluster (``None`` for unit masks); of its used units.
    across : ndarray, shape (n_tasks,)
        Share of each mask's kept weights joining two clusters (``None`` for unit masks).
    units : dict
        Units used by ``"one task"``, by ``"none"`` and ``"shared"`` by several (the ARI/NMI use the first).
    scores : dict of str to float
        ``"ari"``, ``"nmi"`` and ``"<score>[<task>]"`` (:func:`~modscope.bridge.scores.score_names`).
    null_partitions : dict of str to ndarray, shape (n_null,)
        Each score under ``n_null`` same-size random partitions (:mod:`modscope.bridge.null`).
    null_shuffled : dict of str to ndarray, shape (n_shuffled,)
        Each score for the masks of the shuffled networks given (empty arrays when none were).
    seed, n_null, n_shuffled : the settings; ``rules`` names every rule used (unit rule, assignment, nulls,
        p-values, how masks were read onto the graph).
    """

    tasks: tuple[str, ...]
    k: int
    granularity: str
    weight_share: np.ndarray | None
    across: np.ndarray | None
    unit_share: np.ndarray
    units: dict[str, int]
    scores: dict[str, float]
    null_partitions: dict[str, np.ndarray]
    null_shuffled: dict[str, np.ndarray]
    seed: int
    n_null: int
    n_shuffled: int = 0
    rules: dict[str, str] = field(default_factory=dict)

    # ------------------------------------------------------------------ reading
    @property
    def ari(self) -> float:
        return self.scores["ari"]

    @property
    def nmi(self) -> float:
        return self.scores["nmi"]

    def null(self, score: str, null: str = "partitions") -> dict[str, float]:
        """``{"mean", "std", "p"}`` of ``score`` against ``null`` (``"partitions"`` or ``"shuffled"``): the
        null's mean and sd, and the one-sided p (NaN where the null is missing)."""
        if null not in NULLS:
            raise ValueError(f"null must be one of {NULLS}, got {null!r}")
        if score not in self.scores:
            raise KeyError(f"no score {score!r}; scores are {list(self.scores)}")
        values = (self.null_partitions if null == "partitions" else self.null_shuffled)[score]
        return null_stats(self.scores[score], values)

    def p_value(self, score: str, null: str = "partitions") -> float:
        """One-sided p of ``score`` against ``null`` (``"partitions"`` or ``"shuffled"``; NaN without it)."""
        return self.null(score, null)["p"]

    def __repr__(self) -> str:
        what = "inside" if self.granularity == "weight" else "concentration"
        inside = ", ".join(f"{t}: {self.scores[f'{what}[{t}]']:.2f}" for t in self.tasks)
        return (
            f"BridgeResult(tasks={len(self.tasks)}, k={self.k}, ARI={self.ari:.3f} "
            f"(p={self.p_value('ari'):.3g}), "
            f"NMI={self.nmi:.3f} (p={self.p_value('nmi'):.3g}), {what} {{{inside}}}, n_null={self.n_null}, "
            f"n_shuffled={self.n_shuffled}, seed={self.seed})"
        )

    def to_frame(self) -> Any:
        """Long format, one row per cluster (then ``"across"``) and mask: cluster, mask, weight_share,
        unit_share (needs pandas)."""
        rows = []
        for c in range(self.k):
            for t, task in enumerate(self.tasks):
                w = None if self.weight_share is None else float(self.weight_share[c, t])
                rows.append({"cluster": str(c), "mask": task, "weight_share": w,
                             "unit_share": float(self.unit_share[c, t])})  # fmt: skip
        if self.across is not None:
            for t, task in enumerate(self.tasks):
                rows.append({"cluster": "across", "mask": task, "weight_share": float(self.across[t]),
                             "unit_share": None})  # fmt: skip
        return data_frame(rows, ["cluster", "mask", "weight_share", "unit_share"])

    def score_rows(self) -> list[list[Any]]:
        """Per score: name, observed, mean, sd and p under each null (NaN where a null is missing)."""
        rows = []
        for name, value in self.scores.items():
            part, shuf = self.null(name), self.null(name, "shuffled")
            rows.append([name, value, part["mean"], part["std"], part["p"], shuf["mean"], shuf["p"]])
        return rows

    def section(self, title: str, note: str = "") -> dict:
        """This result as a ``"bridge"`` section of results.json (heat maps and the score table)."""
        columns = ["score", "observed", "random partitions: mean", "sd", "p", "shuffled networks: mean", "p"]
        scores = table("Scores against their nulls", columns, _plain(self.score_rows()),
                       note=f"p one-sided (score at least as large); {self.n_null} same-size random "
                       f"partitions, {self.n_shuffled} shuffled networks.")  # fmt: skip
        return bridge_section(
            title, clusters=[str(c) for c in range(self.k)], masks=list(self.tasks),
            weight_share=None if self.weight_share is None else _plain(self.weight_share),
            unit_share=_plain(self.unit_share), scores=scores, note=note,
        )  # fmt: skip

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        return _plain({f.name: getattr(self, f.name) for f in fields(self)})

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BridgeResult:
        """Rebuild from :meth:`to_dict`; ``ValueError`` naming the key that does not fit."""
        if not isinstance(d, Mapping):
            raise ValueError(f"a bridge result must be a JSON object, got {type(d).__name__}")
        names = {f.name for f in fields(cls)}
        if missing := sorted(names - set(d) - {"n_shuffled", "rules"}):
            raise ValueError(f"bridge result lacks the keys {missing}")
        if unknown := sorted(set(d) - names):
            raise ValueError(f"unknown bridge result keys {unknown}")
        d = dict(d)
        tasks, k = tuple(str(t) for t in d["tasks"]), d["k"]
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"bridge result 'k' must be a positive int, got {k!r}")
        if d["granularity"] not in ("weight", "unit"):
            raise ValueError(
                f"bridge result 'granularity' must be 'weight' or 'unit', got {d['granularity']!r}"
            )
        d["tasks"] = tasks
        d["unit_share"] = _matrix(d["unit_share"], (k, len(tasks)), "unit_share")
        for key, shape in (("weight_share", (k, len(tasks))), ("across", (len(tasks),))):
            d[key] = None if d[key] is None else _matrix(d[key], shape, key)
        d["scores"] = {str(n): nan_if_none(v) for n, v in d["scores"].items()}
        for key in ("null_partitions", "null_shuffled"):
            if set(d[key]) != set(d["scores"]):
                raise ValueError(f"bridge result {key!r} must hold one null per score {sorted(d['scores'])}")
            d[key] = {n: _matrix(v, (len(v),), key) for n, v in d[key].items()}
        d["units"] = {str(n): int(v) for n, v in d["units"].items()}
        return cls(**d)
