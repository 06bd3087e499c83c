"""The affinity of a layered weight graph, kept as its per-layer edge blocks.

A layered graph with layer sizes ``n_0, ..., n_L`` has edges only between consecutive layers, given by the
blocks ``B_l`` of shape ``(n_{l+1}, n_l)``. Its affinity is block tridiagonal with zero diagonal blocks,

    ``A = [[0, B_0^T, 0, ...], [B_0, 0, B_1^T, ...], [0, B_1, 0, ...], ...]``,

so with ``X_l`` the rows of ``X`` on layer ``l``, ``(A X)_l = B_{l-1} X_{l-1} + B_l^T X_{l+1}``, and the
degrees are ``d_l = B_{l-1} 1 + B_l^T 1``. Applied block by block these are dense BLAS products, faster
than a sparse matrix for the dense layers of trained networks, and need no ``2 * n_edges`` CSR copy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class LayeredAffinity:
    """The :class:`~modscope.cluster.affinity.Affinity` of a layered graph given by its ``(out, in)`` blocks.

    ``blocks[l]`` has shape ``(layer_sizes[l + 1], layer_sizes[l])``, non-negative (as in
    :class:`~modscope.graph.WeightGraph`, whose ``blocks`` are checked). After restriction to the live
    nodes, ``blocks`` holds the live rows and columns only, ``layer_sizes`` the live units per layer and
    ``layer_offsets`` (length ``len(layer_sizes) + 1``) the first operator row of each layer.
    """

    def __init__(self, blocks: Sequence[np.ndarray]):
        sizes = [blocks[0].shape[1]] + [b.shape[0] for b in blocks]
        self.n_total = int(sum(sizes))
        deg = np.zeros(self.n_total)
        off = np.concatenate([[0], np.cumsum(sizes)])
        for i, b in enumerate(blocks):
            deg[off[i] : off[i + 1]] += b.sum(axis=0)
            deg[off[i + 1] : off[i + 2]] += b.sum(axis=1)
        alive = deg > 0
        self.live = np.flatnonzero(alive)
        self.n = int(self.live.size)
        self.degrees = deg[self.live]
        keep = [alive[off[i] : off[i + 1]] for i in range(len(sizes))]
        self.blocks = [np.ascontiguousarray(b[keep[i + 1]][:, keep[i]]) for i, b in enumerate(blocks)]
        self.layer_sizes = [int(k.sum()) for k in keep]
        self.layer_offsets = np.concatenate([[0], np.cumsum(self.layer_sizes)])

    def matmat(self, x: np.ndarray) -> np.ndarray:
        """``A @ x`` for ``x`` of shape ``(n,)`` or ``(n, m)`` (live nodes only), block by block."""
        y = np.zeros_like(x, dtype=np.float64)
        o = self.layer_offsets
        for i, b in enumerate(self.blocks):
            lo, mid, hi = o[i], o[i + 1], o[i + 2]
            y[mid:hi] += b @ x[lo:mid]
            y[lo:mid] += b.T @ x[mid:hi]
        return y

    def dense(self) -> np.ndarray:
        """The ``(n, n)`` dense affinity: only for small graphs."""
        a = np.zeros((self.n, self.n))
        o = self.layer_offsets
        for i, b in enumerate(self.blocks):
            a[o[i + 1] : o[i + 2], o[i] : o[i + 1]] = b
            a[o[i] : o[i + 1], o[i + 1] : o[i + 2]] = b.T
        return a
