"""Is a network more clusterable than chance? The shuffle test of Filan et al. (arXiv:2103.03386, §3).

The n-cut of the trained network is compared with the n-cuts of ``n_shuffles`` networks whose weights
were permuted within each layer. The network's own partition is ``spectral_partition(graph, seed=seed)``;
shuffle ``j`` draws its permutation and its clustering from ``shuffle_seed(seed, j) = derive(seed,
"shuffle", j)`` (:mod:`modscope.seeding`), so the result does not depend on the number of worker processes.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from joblib import Parallel, delayed
from threadpoolctl import threadpool_limits

from modscope.cluster.affinity import as_affinity
from modscope.cluster.result import ClusterabilityResult, null_summary, shuffle_seed
from modscope.cluster.spectral import N_INIT, PATIENCE, check_k, check_restarts, partition_affinity
from modscope.graph import WeightGraph
from modscope.graph.shuffle import check_shuffle, shuffle_graph_blocks
from modscope.progress import Progress, notify
from modscope.seeding import check_seed, numpy_rng


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS tells it, else ``os.cpu_count()``)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def check_n_jobs(n_jobs: Any, name: str = "n_jobs") -> int:
    """``n_jobs`` as an int if it is a positive int or ``-1`` (one worker per CPU), else a ValueError."""
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, (int, np.integer)) or n_jobs == 0 or n_jobs < -1:
        raise ValueError(f"{name} must be a positive int or -1 (one worker per CPU), got {n_jobs!r}")
    return int(n_jobs)


def worker_count(n_jobs: Any, n_tasks: int) -> int:
    """Worker processes for ``n_tasks`` tasks: ``n_jobs`` (``-1`` = one per CPU), capped at the available
    CPUs and at ``n_tasks`` -- more processes than either only cost memory (each holds the graph)."""
    n_jobs = check_n_jobs(n_jobs)
    cpus = available_cpus()
    return max(1, min(cpus if n_jobs == -1 else int(n_jobs), cpus, n_tasks))


def _shuffled(graph: WeightGraph, shuffle: str, seed: int) -> list[np.ndarray]:
    return shuffle_graph_blocks(graph, shuffle, numpy_rng(seed, "permutation"))


def null_graphs(graph: WeightGraph, *, n_shuffles: int = 50, shuffle: str = "layer", seed: int = 0):
    """The shuffled graphs :func:`clusterability` scores for these arguments, in order (a generator).

    Graph ``j``, clustered with ``spectral_partition(g, seed=shuffle_seed(seed, j))``, gives the n-cut
    ``clusterability`` reports for it (same ``k`` and restart settings).
    """
    check_shuffle(shuffle)
    seed = check_seed(seed)
    for j in range(n_shuffles):
        yield graph.with_blocks(_shuffled(graph, shuffle, shuffle_seed(seed, j)))


def _one_shuffle(graph: WeightGraph, k: int, shuffle: str, settings: dict, seed: int) -> tuple[float, int]:
    shuffled = graph.with_blocks(_shuffled(graph, shuffle, seed))
    p = partition_affinity(as_affinity(shuffled), k, seed=seed, **settings)
    return p.ncut, p.n_restarts


def _chunk(args: tuple, indexed_seeds: list) -> list[tuple[int, tuple[float, int]]]:
    # One BLAS/OpenMP thread per shuffle, in the parent as in the workers: the null n-cuts then do not
    # depend on how the work is spread, and processes, not threads, use the cores. Entered once per chunk:
    # each entry inspects the loaded libraries (milliseconds).
    with threadpool_limits(limits=1):
        return [(i, _one_shuffle(*args, s)) for i, s in indexed_seeds]


def clusterability(
    model_or_graph: Any,
    *,
    k: int = 12,
    n_shuffles: int = 50,
    shuffle: str = "layer",
    seed: int = 0,
    n_jobs: int = 1,
    progress: Progress | None = None,
    solver: str = "auto",
    n_init: int = N_INIT,
    patience: int = PATIENCE,
    max_init: int | None = None,
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
        The network's own partition is ``spectral_partition(graph, seed=seed)``; shuffle ``j`` uses
        ``shuffle_seed(seed, j)`` for its permutation and its clustering.
    n_jobs : int, default 1
        Worker processes for the shuffles (``-1``: one per CPU), capped at the CPUs available and at
        ``n_shuffles``. The result is identical for any value.
    progress : callable(label, done, total, info), optional
        :mod:`modscope.progress` protocol, label ``"shuffles"``: called with ``done = 0`` once the
        network's own clustering is finished (``info = {"ncut": ...}``), then as shuffles finish.
    solver, n_init, patience, max_init : see :func:`spectral_partition`; every clustering uses them.
    """
    graph = (
        model_or_graph if isinstance(model_or_graph, WeightGraph) else WeightGraph.from_module(model_or_graph)
    )
    check_shuffle(shuffle)
    seed = check_seed(seed)
    if isinstance(n_shuffles, bool) or not isinstance(n_shuffles, (int, np.integer)) or n_shuffles < 2:
        raise ValueError(f"n_shuffles must be an int >= 2, got {n_shuffles!r}")
    n_shuffles = int(n_shuffles)
    workers = worker_count(n_jobs, n_shuffles)
    n_init, patience, max_init = check_restarts(n_init, patience, max_init)
    settings = {"solver": solver, "n_init": n_init, "patience": patience, "max_init": max_init}

    aff = as_affinity(graph)
    k = check_k(k, aff.n)
    args = (graph, k, shuffle, settings)
    indexed = [(j, shuffle_seed(seed, j)) for j in range(n_shuffles)]
    if workers == 1:
        results = ([(j, _one_shuffle(*args, s))] for j, s in indexed)
    else:
        # loky workers: no `if __name__ == "__main__"` needed in user scripts. Shuffles go in chunks (about
        # 8 per worker) so the weight blocks travel once per chunk, not once per shuffle. Dispatch starts
        # now, so the workers' start-up overlaps the network's own clustering below.
        chunks = np.array_split(np.arange(n_shuffles), min(n_shuffles, 8 * workers))
        results = Parallel(n_jobs=workers, return_as="generator_unordered")(
            delayed(_chunk)(args, [indexed[i] for i in chunk]) for chunk in chunks
        )
    # The network's own clustering runs with the caller's BLAS threads, as spectral_partition does, so
    # that the two give the same partition bit for bit.
    partition = partition_affinity(aff, k, seed=seed, **settings)
    notify(progress, "shuffles", 0, n_shuffles, {"ncut": partition.ncut})
    null = np.empty(n_shuffles)
    restarts = np.empty(n_shuffles, dtype=np.int64)
    with threadpool_limits(limits=1):  # the serial shuffles (a no-op for the pool's)
        done = 0
        for chunk in results:
            for j, (value, n_restarts) in chunk:
                null[j], restarts[j] = value, n_restarts
            done += len(chunk)
            notify(progress, "shuffles", done, n_shuffles)
    return ClusterabilityResult(
        ncut=partition.ncut,
        partition=partition,
        null_ncuts=null,
        k=partition.k,
        n_shuffles=n_shuffles,
        shuffle=shuffle,
        seed=seed,
        solver=solver,
        n_init=n_init,
        patience=patience,
        max_init=max_init,
        null_restarts=restarts,
        **null_summary(partition.ncut, null),
    )
