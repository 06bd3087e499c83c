"""A clustering of a graph's nodes, with every setting that produced it.

Persisted as every modscope result is (:mod:`modscope.persist`): ``to_dict`` / ``from_dict`` (which
validates), ``save`` / ``load`` as JSON.
"""

from __future__ import annotations

import json
import math
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

import numpy as np

from modscope.persist import JsonResult


def check_keys(d: Any, cls: type, what: str) -> dict[str, Any]:
    """``d`` as a dict whose keys are fields of ``cls`` (every field without a default present)."""
    if not isinstance(d, dict):
        raise ValueError(f"a {what} must be a JSON object, got {type(d).__name__}")
    names = {f.name for f in fields(cls)}
    required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
    if unknown := sorted(set(d) - names):
        raise ValueError(f"unknown {what} keys {unknown}; expected some of {sorted(names)}")
    if missing := sorted(required - set(d)):
        raise ValueError(f"{what} lacks the keys {missing}")
    return dict(d)


def _array(d: dict, key: str, dtype: Any, ndim: int = 1) -> np.ndarray:
    try:
        a = np.asarray(d[key], dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"partition {key!r} is not an array of {np.dtype(dtype).name}: {exc}") from exc
    if a.ndim != ndim:
        raise ValueError(f"partition {key!r} must be {ndim}-D, got shape {a.shape}")
    return a


@dataclass(frozen=True, repr=False)
class Partition(JsonResult):
    """A clustering of a graph's nodes (:func:`~modscope.cluster.spectral_partition`).

    Attributes
    ----------
    labels : ndarray of int, shape (n_nodes,)
        Cluster of every node in ``0..k-1``; ``-1`` for nodes with no edges (left out of the clustering).
    ncut : float
        Normalized cut, in ``[0, k]``: the lowest over the k-means restarts.
    k : int
        Number of clusters asked for.
    sizes, cuts, volumes : ndarray, shape (k,)
        Per-cluster node count, weight of edges leaving the cluster, and sum of degrees.
    eigenvalues : ndarray, shape (k,)
        The ``k`` largest eigenvalues of ``D^-1/2 A D^-1/2`` (the first is 1), descending.
    solver : str
        The eigensolver used (``"auto"`` resolved; ``"stored"`` for labels read back without a clustering).
    seed, n_init, patience, max_init, tol : the settings that produced it (see
        :func:`~modscope.cluster.spectral_partition`); ``None`` when unknown (labels stored without them).
    ncut_restarts : ndarray, shape (n_restarts,)
        n-cut of every k-means restart, in order; ``ncut`` is their minimum. Their spread shows how far a
        single restart can land from the best (:attr:`ncut_spread`).
    """

    labels: np.ndarray
    ncut: float
    k: int
    sizes: np.ndarray
    cuts: np.ndarray
    volumes: np.ndarray
    eigenvalues: np.ndarray
    solver: str
    seed: int | None = None
    n_init: int | None = None
    patience: int | None = None
    max_init: int | None = None
    tol: float | None = None
    ncut_restarts: np.ndarray = field(default_factory=lambda: np.empty(0))

    @property
    def n_restarts(self) -> int:
        """k-means restarts made (``len(ncut_restarts)``; 0 when not recorded)."""
        return int(self.ncut_restarts.size)

    @property
    def ncut_spread(self) -> float:
        """``max - min`` of the restarts' n-cuts (``nan`` when not recorded)."""
        r = self.ncut_restarts
        return float(r.max() - r.min()) if r.size else float("nan")

    def __repr__(self) -> str:
        left_out = int((self.labels < 0).sum())
        restarts = ""
        if self.n_restarts:
            restarts = f" (best of {self.n_restarts} restarts, spread {self.ncut_spread:.4f})"
        return (
            f"Partition(k={self.k}, ncut={self.ncut:.4f}{restarts}, nodes={self.labels.size}"
            f"{f' ({left_out} without edges)' if left_out else ''}, sizes={self.sizes.tolist()}, "
            f"solver={self.solver!r}, seed={self.seed}, n_init={self.n_init}, patience={self.patience})"
        )

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        return {key: (v.tolist() if isinstance(v, np.ndarray) else v) for key, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Partition:
        """Rebuild from :meth:`to_dict` (older files without the settings load with ``None`` for them)."""
        d = check_keys(d, cls, "partition")
        for key, dtype in (("labels", np.int64), ("sizes", np.int64)):
            d[key] = _array(d, key, dtype)
        for key in ("cuts", "volumes", "eigenvalues"):
            # JSON writes NaN (unknown) as null
            d[key] = _array({key: [np.nan if v is None else v for v in d[key]]}, key, float)
        if "ncut_restarts" in d:
            d["ncut_restarts"] = _array(d, "ncut_restarts", float)
        if isinstance(d["k"], bool) or not isinstance(d["k"], int) or d["k"] < 1:
            raise ValueError(f"partition 'k' must be a positive int, got {d['k']!r}")
        for key in ("sizes", "cuts", "volumes", "eigenvalues"):
            if d[key].shape != (d["k"],):
                raise ValueError(f"partition {key!r} must have k={d['k']} entries, got {d[key].size}")
        if d["labels"].size and not -1 <= d["labels"].min() <= d["labels"].max() < d["k"]:
            raise ValueError(f"partition labels must lie in -1..{d['k'] - 1}")
        if d["ncut"] is None or not math.isfinite(d["ncut"]):
            d["ncut"] = float("nan")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())
