"""How many k-means restarts make the reported n-cut reproducible across seeds? (issue 11, item 4)

For each graph, ``--seeds`` clusterings ``spectral_partition(graph, k=12, seed=s, n_init=--max-restarts,
patience=0)`` record the n-cut of every restart (``Partition.ncut_restarts``). Restart ``i`` of seed ``s``
draws from ``derive(s, "kmeans", i)`` whatever the stopping rule, so the first ``n`` restarts of these runs
*are* the runs with ``n_init=n``: the n-cut a rule reports for seed ``s`` is the minimum over the prefix the
rule stops at (:func:`modscope.cluster.spectral.enough_restarts`). Per rule the table gives the median
number of restarts, the median seconds of one clustering (eigensolver + those restarts, timed), and the
spread (max - min) and standard deviation of the reported n-cut over the seeds. For scale, the standard
deviation of the n-cuts of ``--nulls`` layer-shuffled copies (clustered with the default rule) is printed.

Graphs (k = 12, one BLAS thread):

* ``mlp``      -- ``mlp:784-256x4-10`` from the model specs, random (Glorot) init;
* ``mlp-trained`` -- ``mlp:64-256x4-10`` trained on the digits and pruned (``clusterability-mlp`` recipe,
  ``--train-steps`` updates per phase; sklearn's digits, so it runs offline);
* ``vgg16``    -- ``vgg16`` from the model specs (CIFAR-10 sizes, conv + classifier channel graph, 5,261
  nodes), random (Kaiming) init: no trained VGG ships with modscope.

Usage: ``python benchmarks/bench_partition_stability.py [--graphs mlp,mlp-trained,vgg16] [--seeds 8]`` (about
4 minutes of one CPU with the defaults).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
from threadpoolctl import threadpool_limits

from modscope.cluster import clusterability, spectral_partition
from modscope.cluster.spectral import N_INIT, PATIENCE, enough_restarts
from modscope.graph import WeightGraph

K = 12
FIXED = (1, 5, 10, 20, 40)
ADAPTIVE = ((5, 10), (10, 10), (10, 20), (20, 20))


def build(name: str, train_steps: int) -> WeightGraph:
    from modscope.models import build_model

    if name == "mlp":
        return WeightGraph.from_module(build_model("mlp:784-256x4-10", seed=0))
    if name == "vgg16":
        return WeightGraph.from_module(build_model("vgg16", seed=0))
    if name == "mlp-trained":
        from modscope.training.recipes import run_recipe

        model, *_ = run_recipe(
            "clusterability-mlp", dataset="digits", spec="mlp:{in}-256x4-{out}", prune=True, seed=0,
            steps=train_steps,
        )  # fmt: skip
        return WeightGraph.from_module(model)
    raise SystemExit(f"unknown graph {name!r}")


def stop_at(ncuts: np.ndarray, n_init: int, patience: int) -> int | None:
    """Restarts the rule makes on this sequence (None: more than were recorded)."""
    for t in range(1, ncuts.size + 1):
        if enough_restarts(ncuts[:t], n_init=n_init, patience=patience):
            return t
    return None


def measure(name: str, graph: WeightGraph, seeds: int, max_restarts: int, nulls: int) -> None:
    runs, seconds = [], []
    for s in range(seeds):
        t = time.perf_counter()
        p = spectral_partition(graph, k=K, seed=s, n_init=max_restarts, patience=0)
        seconds.append(time.perf_counter() - t)
        runs.append(p.ncut_restarts)
    # eigensolver seconds: a run with one restart, minus that restart
    t = time.perf_counter()
    spectral_partition(graph, k=K, seed=0, n_init=1, patience=0)
    one = time.perf_counter() - t
    per_restart = (np.median(seconds) - one) / (max_restarts - 1)
    eigen = max(one - per_restart, 0.0)
    restarts = np.array(runs)
    print(f"\n== {name}: {graph}")
    print(f"eigensolver {eigen:.3f} s, one k-means restart {1000 * per_restart:.1f} ms (median)")
    print(
        f"single restarts over all seeds: min {restarts.min():.4f}  median {np.median(restarts):.4f}  "
        f"max {restarts.max():.4f}  (share within 1e-3 of the best: "
        f"{np.mean(restarts <= restarts.min() + 1e-3):.2f})"
    )
    print(f"{'rule':>22} {'restarts':>9} {'time s':>7} {'n-cut spread':>13} {'n-cut sd':>9} {'median':>8}")
    rules = [(f"n_init={n}", n, 0) for n in FIXED if n <= max_restarts]
    rules += [(f"n_init={a}, patience={m}", a, m) for a, m in ADAPTIVE]
    for label, n_init, patience in rules:
        lengths = [stop_at(r, n_init, patience) for r in restarts]
        if None in lengths:
            print(f"{label:>22}  needs more than {max_restarts} restarts for some seed")
            continue
        best = np.array([r[:t].min() for r, t in zip(restarts, lengths)])
        n = float(np.median(lengths))
        print(
            f"{label:>22} {n:9.1f} {eigen + n * per_restart:7.2f} {np.ptp(best):13.4f} "
            f"{best.std(ddof=1):9.4f} {np.median(best):8.4f}"
        )
    if nulls:
        r = clusterability(graph, k=K, n_shuffles=nulls, seed=0)
        print(
            f"{nulls} layer shuffles (n_init={N_INIT}, patience={PATIENCE}): null sd {r.null_std:.4f}, "
            f"mean {r.null_mean:.4f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--graphs", default="mlp,mlp-trained,vgg16")
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--max-restarts", type=int, default=100)
    parser.add_argument("--nulls", type=int, default=5, help="shuffles for the null sd (0: none)")
    parser.add_argument("--train-steps", type=int, default=300)
    args = parser.parse_args()
    print(f"cpus: {os.cpu_count()}  python {sys.version.split()[0]}  k = {K}  seeds 0..{args.seeds - 1}")
    graphs = [(name, build(name, args.train_steps)) for name in args.graphs.split(",")]
    with threadpool_limits(limits=1):
        for name, graph in graphs:
            measure(name, graph, args.seeds, args.max_restarts, args.nulls)


if __name__ == "__main__":
    main()
