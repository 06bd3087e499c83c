"""modscope's clusterability against the reference pipeline, on the same graphs, in one run.

Reference = scikit-learn ``SpectralClustering(affinity="precomputed", eigen_solver="arpack",
assign_labels="kmeans", n_init=25)``, once per graph (the network and each of its shuffles), scored with
the same n-cut. Scenarios:

* ``mlp``   -- MLP 784-256x4-10, Glorot-uniform weights, k = 12, 1 + 50 clusterings;
* ``large`` -- 8 dense 1024x1024 layers (9,216 nodes): one clustering, time and peak memory, in a child
  process (the reference too, with a time limit);
* ``vgg``   -- the channel graph of VGG-16's 13 conv layers (4,227 nodes) with 50 shuffles; the reference
  runs on the network and its first ``--vgg-ref`` shuffles (it is slow), compared per clustering.

Usage: ``python benchmarks/bench_clusterability.py [--scenarios mlp,large,vgg] [--jobs 2]``.
Wall-clock seconds (``time.perf_counter``); peak memory = the child's maximum resident set size.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

from modscope.cluster import clusterability, ncut, null_graphs, spectral_partition
from modscope.graph import WeightGraph

K = 12


def glorot_mlp(sizes: list[int], seed: int) -> WeightGraph:
    rng = np.random.default_rng(seed)
    mats = [rng.uniform(-1, 1, (b, a)) * np.sqrt(6 / (a + b)) for a, b in itertools.pairwise(sizes)]
    return WeightGraph.from_weights(mats)


def vgg16_channel_graph(seed: int) -> WeightGraph:
    import torch
    from torch import nn

    torch.manual_seed(seed)
    layers, c = [], 3
    for v in [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            conv = nn.Conv2d(c, v, 3, padding=1)
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            layers += [conv, nn.ReLU()]
            c = v
    return WeightGraph.from_module(nn.Sequential(*layers))


def reference(graph: WeightGraph, seed: int) -> tuple[float, float]:
    """(seconds, n-cut) of scikit-learn's pipeline on ``graph``."""
    from sklearn.cluster import SpectralClustering

    adjacency = graph.adjacency()
    t = time.perf_counter()
    labels = (
        SpectralClustering(
            K,
            affinity="precomputed",
            eigen_solver="arpack",
            assign_labels="kmeans",
            n_init=25,
            random_state=seed,
        )
        .fit(adjacency)
        .labels_
    )
    return time.perf_counter() - t, ncut(adjacency, labels)


def timed_clusterability(graph: WeightGraph, jobs: int, n_shuffles: int = 50):
    t = time.perf_counter()
    r = clusterability(graph, k=K, n_shuffles=n_shuffles, seed=0, n_jobs=jobs)
    return time.perf_counter() - t, r


def compare(name: str, graph: WeightGraph, jobs: int, n_ref: int) -> dict:
    print(f"\n== {name}: {graph}")
    results = {}
    for j in sorted({1, jobs}):
        seconds, r = timed_clusterability(graph, j)
        results[j] = (seconds, r)
        print(f"modscope clusterability, 1 + 50 clusterings, n_jobs={j}: {seconds:7.2f} s")
    if jobs > 1:
        # A study clusters many networks in one process: the worker pool is then already running.
        seconds, _ = timed_clusterability(graph, jobs)
        results[f"{jobs}-warm"] = (seconds, r)
        print(
            f"modscope clusterability, 1 + 50 clusterings, n_jobs={jobs}, workers already started: "
            f"{seconds:7.2f} s"
        )
    ours_ncuts = np.concatenate([[r.ncut], r.null_ncuts])
    graphs = [graph, *null_graphs(graph, n_shuffles=50, seed=0)][: n_ref + 1]
    ref = [reference(g, seed=i) for i, g in enumerate(graphs)]
    ref_seconds = np.array([s for s, _ in ref])
    ref_ncuts = np.array([c for _, c in ref])
    m = len(graphs)
    ref_total = ref_seconds.mean() * 51
    print(
        f"reference on {m} of the 51 graphs: {ref_seconds.sum():7.2f} s "
        f"({ref_seconds.mean():.3f} s each; x51 = {ref_total:.1f} s)"
    )
    out = {"graph": repr(graph), "reference_seconds_each": ref_seconds.mean(), "graphs_compared": m}
    for j, (seconds, _) in results.items():
        ratio = ref_total / seconds
        print(f"speed-up, n_jobs={j}: {ratio:6.1f}x  (reference x51 / modscope)")
        out[f"modscope_seconds_jobs{j}"] = seconds
        out[f"speedup_jobs{j}"] = ratio
    ours_same = ours_ncuts[:m]
    print(
        f"mean n-cut on the same {m} graphs: modscope {ours_same.mean():.4f}  "
        f"reference {ref_ncuts.mean():.4f}  "
        f"(difference {ours_same.mean() - ref_ncuts.mean():+.4f}; must be <= +0.01)"
    )
    out.update(ncut_modscope=ours_same.mean(), ncut_reference=ref_ncuts.mean())
    return out


def child_large(which: str) -> None:
    """Run one clustering of the large graph in this (child) process and print seconds, n-cut, peak RSS."""
    graph = glorot_mlp([1024] * 9, seed=0)
    if which == "modscope":
        t = time.perf_counter()
        p = spectral_partition(graph, k=K, seed=0)
        seconds, value = time.perf_counter() - t, p.ncut
    else:
        seconds, value = reference(graph, seed=0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    print(json.dumps({"seconds": seconds, "ncut": value, "peak_gib": peak}))


def large(timeout: float) -> dict:
    print("\n== large: 8 dense 1024x1024 layers (9,216 nodes, 8.4M edges), one clustering, k = 12")
    out = {}
    for which in ("modscope", "reference"):
        cmd = [sys.executable, __file__, "--child-large", which]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True)
            r = json.loads(done.stdout.strip().splitlines()[-1])
            print(
                f"{which:9s}: {r['seconds']:7.2f} s  peak memory {r['peak_gib']:.2f} GiB  "
                f"n-cut {r['ncut']:.4f}"
            )
            out[which] = r
        except subprocess.TimeoutExpired:
            print(f"{which:9s}: did not finish within {timeout:.0f} s")
            out[which] = None
    if out.get("reference") and out.get("modscope"):
        print(f"speed-up: {out['reference']['seconds'] / out['modscope']['seconds']:.1f}x")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scenarios", default="mlp,large,vgg")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--vgg-ref", type=int, default=5, help="shuffles the reference clusters in 'vgg'")
    parser.add_argument("--ref-timeout", type=float, default=600.0, help="seconds for the large reference")
    parser.add_argument("--json", help="write the numbers here")
    parser.add_argument("--child-large", choices=["modscope", "reference"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_large:
        child_large(args.child_large)
        return
    print(f"cpus: {os.cpu_count()}  python {sys.version.split()[0]}")
    report = {}
    for name in args.scenarios.split(","):
        if name == "mlp":
            report["mlp"] = compare(
                "mlp 784-256x4-10 (Glorot uniform)", glorot_mlp([784, *[256] * 4, 10], 0), args.jobs, n_ref=50
            )
        elif name == "large":
            report["large"] = large(args.ref_timeout)
        elif name == "vgg":
            report["vgg"] = compare(
                "vgg16 conv channel graph", vgg16_channel_graph(0), args.jobs, args.vgg_ref
            )
        else:
            parser.error(f"unknown scenario {name!r}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
