"""Is a network more clusterable than chance? The shuffle test of Filan et al. (arXiv:2103.03386, §3).

The n-cut of the trained network is compared with the n-cuts of ``n_shuffles`` networks whose weights
were permuted within each layer. Every shuffle draws from its own seed, spawned from the master seed, so
the result does not depend on the number of worker processes.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from joblib import Parallel, delayed
from threadpoolctl import threadpool_limits

from modscope.atomic import write_json_atomic
from modscope.cluster.affinity import as_affinity
from modscope.cluster.layered_affinity import LayeredAffinity
from modscope.cluster.spectral import N_INIT, Partition, check_k, partition_affinity
from modscope.graph import WeightGraph, shuffle_blocks
from modscope.graph.shuffle import check_shuffle

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class ClusterabilityResult:
    """Outcome of :func:`clusterability`.

    Attributes
    ----------
    ncut : float
        n-cut of the network's own partition.
    partition : Partition
        That partition.
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
    k, n_shuffles, shuffle, seed : the settings used.
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

    def to_dict(self) -> dict[str, Any]:
        d = {key: getattr(self, key) for key in self.__dataclass_fields__}
        d["partition"] = self.partition.to_dict()
        d["null_ncuts"] = self.null_ncuts.tolist()
        # JSON has no NaN/inf; an undefined z (all shuffles equal) is written as null.
        d["z"] = self.z if math.isfinite(self.z) else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClusterabilityResult:
        d = dict(d)
        d["partition"] = Partition.from_dict(d["partition"])
        d["null_ncuts"] = np.asarray(d["null_ncuts"], dtype=float)
        d["z"] = float("nan") if d["z"] is None else d["z"]
        return cls(**d)

    def save(self, path: str | os.PathLike) -> None:
        """Write the result as JSON, atomically (a crash never leaves half a file)."""
        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> ClusterabilityResult:
        """Read :meth:`save`'s JSON, or the JSON written by ``modscope cluster --json``."""
        try:
            doc = json.loads(Path(path).read_text())
            # `modscope cluster --json` nests the result beside the model and settings.
            return cls.from_dict(doc["result"] if "result" in doc and "ncut" not in doc else doc)
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"{path} is not a clusterability result: {exc}") from exc


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


def _seeds(seed: int, n_shuffles: int) -> tuple[np.random.SeedSequence, list[np.random.SeedSequence]]:
    """The network's own clustering seed and one seed per shuffle, all spawned from ``seed``."""
    own, *per_shuffle = np.random.SeedSequence(seed).spawn(n_shuffles + 1)
    return own, per_shuffle


def _child(seed_seq: np.random.SeedSequence, j: int) -> np.random.SeedSequence:
    # The j-th child, derived from the spawn key rather than with the stateful spawn(): the same seed
    # sequence gives the same children however often it is used.
    return np.random.SeedSequence(seed_seq.entropy, spawn_key=(*seed_seq.spawn_key, j))


def _shuffled(blocks, shuffle: str, seed_seq: np.random.SeedSequence) -> list[np.ndarray]:
    return shuffle_blocks(blocks, shuffle, np.random.default_rng(_child(seed_seq, 0)))


def null_graphs(graph: WeightGraph, n_shuffles: int = 50, shuffle: str = "layer", seed: int = 0):
    """The shuffled graphs :func:`clusterability` scores for these arguments, in order (a generator)."""
    check_shuffle(shuffle)
    for s in _seeds(seed, n_shuffles)[1]:
        yield graph.with_blocks(_shuffled(graph.blocks, shuffle, s))


def _one_shuffle(blocks, k: int, shuffle: str, solver: str, n_init: int, seed_seq) -> float:
    shuffled = _shuffled(blocks, shuffle, seed_seq)
    cluster_seed = _child(seed_seq, 1)
    return partition_affinity(
        LayeredAffinity(shuffled), k, seed=cluster_seed, solver=solver, n_init=n_init
    ).ncut


def _chunk(args: tuple, indexed_seeds: list) -> list[tuple[int, float]]:
    # One BLAS/OpenMP thread per clustering, in the parent as in the workers: the result then does not
    # depend on how the work is spread, and processes, not threads, use the cores. Entered once per chunk:
    # each entry inspects the loaded libraries (milliseconds).
    with threadpool_limits(limits=1):
        return [(i, _one_shuffle(*args, s)) for i, s in indexed_seeds]


def clusterability(
    model_or_graph: Any,
    k: int = 12,
    n_shuffles: int = 50,
    shuffle: str = "layer",
    seed: int = 0,
    n_jobs: int = 1,
    progress: Progress | None = None,
    *,
    solver: str = "auto",
    n_init: int = N_INIT,
) -> ClusterabilityResult:
    """n-cut of a network against ``n_shuffles`` shuffled copies of it.

    Parameters
    ----------
    model_or_graph : nn.Module or WeightGraph
        A module is turned into a graph with :meth:`WeightGraph.from_module` (defaults).
    k : int, default 12
        Clusters per partition.
    n_shuffles : int, default 50
        Null networks; at least 2.
    shuffle : {"layer", "layer_nonzero"}, default "layer"
        Permute all entries of each layer's edge block, or only its non-zero entries.
    seed : int, default 0
        Master seed; the network's own partition and every shuffle get seeds spawned from it.
    n_jobs : int, default 1
        Worker processes for the shuffles (``-1``: one per CPU). The result is identical for any value.
    progress : callable(done, total), optional
        Called after each finished clustering (the network's own first).
    solver, n_init : see :func:`spectral_partition`.
    """
    graph = (
        model_or_graph if isinstance(model_or_graph, WeightGraph) else WeightGraph.from_module(model_or_graph)
    )
    check_shuffle(shuffle)
    if isinstance(n_shuffles, bool) or not isinstance(n_shuffles, (int, np.integer)) or n_shuffles < 2:
        raise ValueError(f"n_shuffles must be an int >= 2, got {n_shuffles!r}")
    if not isinstance(n_jobs, (int, np.integer)) or n_jobs == 0 or n_jobs < -1:
        raise ValueError(f"n_jobs must be a positive int or -1, got {n_jobs!r}")
    n_jobs = (os.cpu_count() or 1) if n_jobs == -1 else int(n_jobs)
    total = n_shuffles + 1

    own_seed, shuffle_seeds = _seeds(seed, n_shuffles)
    aff = as_affinity(graph)
    k = check_k(k, aff.n)
    args = (graph.blocks, k, shuffle, solver, n_init)
    if n_jobs == 1:
        results = ([(i, _one_shuffle(*args, s))] for i, s in enumerate(shuffle_seeds))
        limit = threadpool_limits(limits=1)  # for the whole loop below
    else:
        # loky workers: no `if __name__ == "__main__"` needed in user scripts. Shuffles go in chunks (about
        # 8 per worker) so the weight blocks travel once per chunk, not once per shuffle. Dispatch starts
        # now, so the workers' start-up overlaps the network's own clustering below.
        chunks = np.array_split(np.arange(n_shuffles), min(n_shuffles, 8 * n_jobs))
        results = Parallel(n_jobs=min(n_jobs, n_shuffles), return_as="generator_unordered")(
            delayed(_chunk)(args, [(int(i), shuffle_seeds[i]) for i in chunk]) for chunk in chunks
        )
        limit = threadpool_limits(limits=1)
    null = np.empty(n_shuffles)
    with limit:
        partition = partition_affinity(aff, k, seed=own_seed, solver=solver, n_init=n_init)
        if progress:
            progress(1, total)
        done = 1
        for chunk in results:
            for i, value in chunk:
                null[i] = value
            done += len(chunk)
            if progress:
                progress(done, total)
    return ClusterabilityResult(
        ncut=partition.ncut,
        partition=partition,
        null_ncuts=null,
        k=partition.k,
        n_shuffles=int(n_shuffles),
        shuffle=shuffle,
        seed=int(seed),
        **null_summary(partition.ncut, null),
    )
