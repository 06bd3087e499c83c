"""Null models: the same network with the weights of each layer shuffled.

Filan et al. (arXiv:2103.03386, §3) compare a trained network's n-cut with networks whose weights were
permuted within each layer: same layer sizes, same per-layer multiset of weights, structure destroyed.
The shuffle acts on the graph's per-layer edge blocks, so for a conv layer it permutes the channel-edge
block, and for an MLP it is exactly a permutation of ``|W|``.

On a general graph (:class:`WeightGraph` with ``edges``) each *weight layer's* block is permuted: the
blocks with the same ``graph.sources`` entry (one layer reading a concatenation, split by the groups it
reads) together, each weight layer apart from every other. Residual adds and identities are not edges
(their units are merged, :mod:`modscope.graph.trace`), so nothing is ever shuffled across them; the groups,
which block joins which groups, and each layer's multiset of weights are kept.
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


def shuffle_graph_blocks(graph: WeightGraph, kind: str, rng: np.random.Generator) -> list[np.ndarray]:
    """The blocks of ``graph``, each weight layer's permuted (all its blocks together; module docstring)."""
    if len(set(graph.sources)) == len(graph.sources):  # one block per weight layer (every chain)
        return shuffle_blocks(graph.blocks, kind, rng)
    check_shuffle(kind)
    out: list[np.ndarray | None] = [None] * len(graph.blocks)
    for source in dict.fromkeys(graph.sources):  # in order of first appearance
        members = [i for i, s in enumerate(graph.sources) if s == source]
        flat = np.concatenate([graph.blocks[i].ravel() for i in members])
        (shuffled,) = shuffle_blocks([flat], kind, rng)
        start = 0
        for i in members:
            size = graph.blocks[i].size
            out[i] = shuffled[start : start + size].reshape(graph.blocks[i].shape)
            start += size
    return out


def shuffle_graph(
    graph: WeightGraph, kind: str = "layer", seed: int | np.random.Generator = 0
) -> WeightGraph:
    """A shuffled copy of ``graph`` (see :func:`shuffle_graph_blocks`); ``seed`` fixes the permutation."""
    return graph.with_blocks(shuffle_graph_blocks(graph, kind, np.random.default_rng(seed)))
