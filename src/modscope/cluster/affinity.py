"""The affinity matrix ``A`` as an operator: what the eigensolvers and the n-cut need from a graph.

Spectral clustering (Ng, Jordan & Weiss 2001; Shi & Malik 2000) never needs ``A`` itself, only

* the live nodes ``V+ = {v : d_v > 0}`` (nodes without edges are left out and labelled ``-1``), where
  ``d = A 1`` are the weighted degrees;
* products ``Y = A X`` on the live nodes, for ``X`` of shape ``(n,)`` or ``(n, m)``: the eigensolvers apply
  ``S = D^-1/2 A D^-1/2`` as ``x -> d^-1/2 * A (d^-1/2 * x)``, and the n-cut of a one-hot labelling ``H``
  reads ``assoc(c, c) = (H^T A H)_cc`` and ``vol(c) = (H^T d)_c``;
* a dense copy, for the small graphs solved by LAPACK.

Three kinds implement it: :class:`~modscope.cluster.layered_affinity.LayeredAffinity`, the block
structure of a layered weight graph (dense per-layer products, and the bipartite reduction of
:mod:`modscope.cluster.bipartite`); :class:`~modscope.cluster.block_affinity.BlockAffinity`, the dense
blocks of a general weight graph (residual, concatenating, recurrent, attention networks: blocks join
arbitrary groups, no longer bipartite); and :class:`~modscope.cluster.sparse_affinity.SparseAffinity`,
any symmetric non-negative matrix stored as scipy sparse. :func:`as_affinity` picks the kind.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from modscope.cluster.block_affinity import BlockAffinity
from modscope.cluster.layered_affinity import LayeredAffinity
from modscope.cluster.sparse_affinity import SparseAffinity
from modscope.graph import WeightGraph

__all__ = ["Affinity", "BlockAffinity", "LayeredAffinity", "SparseAffinity", "as_affinity"]


class Affinity(Protocol):
    """A symmetric non-negative affinity restricted to its ``n`` live (non-zero degree) nodes.

    Attributes:
        n: number of live nodes; the operator acts on vectors of this length.
        n_total: number of nodes of the original graph, live or not.
        live: ``(n,)`` original node id of each row of the operator, increasing.
        degrees: ``(n,)`` weighted degree ``d_v = sum_u A[v, u]`` of each live node (all positive).
    """

    n: int
    n_total: int
    live: np.ndarray
    degrees: np.ndarray

    def matmat(self, x: np.ndarray) -> np.ndarray:
        """``A @ x`` for ``x`` of shape ``(n,)`` or ``(n, m)``, on the live nodes."""
        ...

    def dense(self) -> np.ndarray:
        """The ``(n, n)`` dense affinity on the live nodes: only for small graphs."""
        ...


def as_affinity(source: WeightGraph | Affinity | Any) -> Affinity:
    """The affinity of ``source``: a :class:`WeightGraph` keeps its blocks (layered or general); an affinity
    is returned as it is; anything else (a scipy sparse matrix or an array of shape ``(n, n)``) is checked
    to be square, finite, non-negative and symmetric and stored sparse.
    """
    if isinstance(source, WeightGraph):
        if source.is_layered:
            return LayeredAffinity(source.blocks)
        return BlockAffinity(source.edges, source.layer_sizes)
    if isinstance(source, (LayeredAffinity, BlockAffinity, SparseAffinity)):
        return source
    return SparseAffinity(source)
