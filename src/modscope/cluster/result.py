"""The outcome of the shuffle test (:func:`~modscope.cluster.clusterability`) and its statistics."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from modscope.cluster.partition import Partition, check_keys
from modscope.persist import JsonResult, data_frame
from modscope.seeding import derive


def shuffle_seed(seed: int, j: int) -> int:
    """Seed of shuffle ``j`` under the master ``seed``: its permutation and its clustering flow from it."""
    return derive(seed, "shuffle", j)


@dataclass(frozen=True, repr=False)
class ClusterabilityResult(JsonResult):
    """Outcome of :func:`~modscope.cluster.clusterability`.

    Attributes
    ----------
    ncut : float
        n-cut of the network's own partition.
    partition : Partition
        That partition: ``spectral_partition(graph, k=k, seed=seed, ...)`` with the same settings.
    null_ncuts : ndarray, shape (n_shuffles,)
        n-cut of every shuffled network, in shuffle order.
    null_mean, null_std : float
        Mean and sample standard deviation (ddof=1) of ``null_ncuts``.
    z : float
        ``(ncut - null_mean) / null_std``; negative = more clusterable than the shuffles.
    p_value : float
        One-sided ``(1 + #{null <= ncut}) / (1 + n_shuffles)``.
    below_all : bool
        ``ncut`` is lower than every shuffle's.
    k, n_shuffles, shuffle, seed, solver, n_init, patience, max_init : the settings used (``None`` for
        those not recorded by older files).
    null_restarts : ndarray of int, shape (n_shuffles,)
        k-means restarts each shuffle's clustering made.
    """

    ncut: float
    partition: Partition
    null_ncuts: np.ndarray
    null_mean: float
    null_std: float
    z: float
    p_value: float
    below_all: bool
    k: int
    n_shuffles: int
    shuffle: str
    seed: int
    solver: str | None = None
    n_init: int | None = None
    patience: int | None = None
    max_init: int | None = None
    null_restarts: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))

    @property
    def ncut_spread(self) -> float:
        """Spread (max - min) of the n-cuts of the network's own k-means restarts."""
        return self.partition.ncut_spread

    def __repr__(self) -> str:
        p = self.partition
        restarts = f" (best of {p.n_restarts} restarts, spread {p.ncut_spread:.4f})" if p.n_restarts else ""
        return (
            f"ClusterabilityResult(ncut={self.ncut:.4f}{restarts}, "
            f"null={self.null_mean:.4f} ± {self.null_std:.4f} over {self.n_shuffles} {self.shuffle!r} "
            f"shuffles, z={self.z:.2f}, p={self.p_value:.4g}, below_all={self.below_all}, k={self.k}, "
            f"seed={self.seed}, solver={self.solver!r}, n_init={self.n_init}, patience={self.patience})"
        )

    def to_frame(self) -> Any:
        """The nulls as a ``pandas.DataFrame``, one row per shuffle (index ``shuffle``): its ``seed``
        (:func:`shuffle_seed`), ``ncut``, ``restarts`` and ``at_or_below`` (n-cut <= the network's)."""
        n = self.n_shuffles
        restarts = self.null_restarts if self.null_restarts.size == n else np.full(n, -1)
        rows = (
            {"shuffle": j, "seed": shuffle_seed(self.seed, j), "ncut": float(self.null_ncuts[j]),
             "restarts": int(restarts[j]), "at_or_below": bool(self.null_ncuts[j] <= self.ncut)}
            for j in range(n)
        )  # fmt: skip
        return data_frame(rows, ["shuffle", "seed", "ncut", "restarts", "at_or_below"]).set_index("shuffle")

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["partition"] = self.partition.to_dict()
        d["null_ncuts"] = self.null_ncuts.tolist()
        d["null_restarts"] = self.null_restarts.tolist()
        # JSON has no NaN/inf; an undefined z (all shuffles equal) is written as null.
        d["z"] = self.z if math.isfinite(self.z) else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClusterabilityResult:
        """Rebuild from :meth:`to_dict`, or from the JSON ``modscope cluster --json`` writes (which nests
        the result beside the model and the settings)."""
        if isinstance(d, dict) and "result" in d and "ncut" not in d:
            d = d["result"]
        d = check_keys(d, cls, "clusterability result")
        d["partition"] = Partition.from_dict(d["partition"])
        d["null_ncuts"] = np.asarray(d["null_ncuts"], dtype=float)
        if d["null_ncuts"].shape != (d["n_shuffles"],):
            raise ValueError(f"null_ncuts must have n_shuffles={d['n_shuffles']} entries")
        d["null_restarts"] = np.asarray(d.get("null_restarts", []), dtype=np.int64)
        for key in ("z", "null_std"):
            d[key] = float("nan") if d[key] is None else d[key]
        return cls(**d)


def null_summary(ncut: float, null: np.ndarray) -> dict[str, Any]:
    """Mean, sd, z, one-sided p and below-all of ``ncut`` against the null n-cuts."""
    mean = float(null.mean())
    std = float(null.std(ddof=1)) if null.size > 1 else float("nan")
    z = (ncut - mean) / std if std > 0 else float("nan")
    return {
        "null_mean": mean,
        "null_std": std,
        "z": z,
        "p_value": float((1 + np.count_nonzero(null <= ncut)) / (1 + null.size)),
        "below_all": bool(ncut < null.min()),
    }


def cohens_d(a: Any, b: Any) -> float:
    """Cohen's d of two groups (e.g. n-cuts of trained vs control networks), pooled sd (ddof=1)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.size < 2 or b.size < 2:
        raise ValueError(f"Cohen's d needs at least 2 values per group, got {a.size} and {b.size}")
    pooled = ((a.size - 1) * a.var(ddof=1) + (b.size - 1) * b.var(ddof=1)) / (a.size + b.size - 2)
    return float((a.mean() - b.mean()) / np.sqrt(pooled)) if pooled > 0 else float("nan")
