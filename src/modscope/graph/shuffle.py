"""Null models: the same network with the weights of each layer shuffled.

Filan et al. (arXiv:2103.03386, §3) compare a trained network's n-cut with networks whose weights were
permuted within each layer: same layer sizes, same per-layer multiset of weights, structure destroyed.
The shuffle acts on the graph's per-layer edge blocks, so for a conv layer it permutes the channel-edge
block, and for an MLP it is exactly a permutation of ``|W|``.
"""

from __future__ import annotations

import numpy as np

from modscope.graph.weight_graph import WeightGraph

SHUFFLES = ("layer", "layer_nonzero")


def check_shuffle(kind: str) -> str:
    if kind not in SHUFFLES:
        raise ValueError(f"shuffle must be one of {SHUFFLES}, got {kind!r}")
    return kind


def shuffle_blocks(blocks, kind: str, rng: np.random.Generator) -> list[np.ndarray]:
    """Each block with its entries permuted.

    ``"layer"`` permutes all entries (zeros included); ``"layer_nonzero"`` permutes only the non-zero
    entries among themselves, so the sparsity pattern of a pruned network is kept.
    """
    check_shuffle(kind)
    out = []
    for b in blocks:
        flat = np.array(b, dtype=np.float64).ravel()  # a copy: the graph's blocks are read-only
        if kind == "layer":
            rng.shuffle(flat)
        else:
            nz = np.flatnonzero(flat)
            flat[nz] = flat[nz[rng.permutation(nz.size)]]
        out.append(flat.reshape(np.shape(b)))
    return out


def shuffle_graph(
    graph: WeightGraph, kind: str = "layer", seed: int | np.random.Generator = 0
) -> WeightGraph:
    """A shuffled copy of ``graph`` (see :func:`shuffle_blocks`); ``seed`` fixes the permutation."""
    return graph.with_blocks(shuffle_blocks(graph.blocks, kind, np.random.default_rng(seed)))
