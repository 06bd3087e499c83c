"""The affinity matrix ``A`` as an operator: products with blocks of vectors, never a dense copy.

A layered weight graph is applied block by block (``Y[l+1] += B_l X[l]``, ``Y[l] += B_l^T X[l+1]``): dense
BLAS products that are faster than a sparse matrix for the dense layers of trained networks and need no
``2 * n_edges`` CSR copy. Any other graph is a symmetric scipy sparse matrix.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from modscope.graph import WeightGraph


class Affinity:
    """A symmetric non-negative affinity restricted to its live (non-zero degree) nodes.

    ``live`` maps the operator's rows to the original node ids; ``n_total`` is the original node count.
    A layered graph keeps its ``blocks`` (live nodes only), ``layer_sizes`` and ``layer_offsets``; any
    other graph is the sparse ``matrix`` (and ``blocks`` is None).
    """

    def __init__(self, source: WeightGraph | Any):
        if isinstance(source, WeightGraph):
            self._init_blocks(source.blocks)
        else:
            self._init_matrix(source)
        self._restrict()

    @classmethod
    def from_blocks(cls, blocks) -> Affinity:
        """The affinity of a layered graph given by its ``(out, in)`` edge blocks."""
        self = cls.__new__(cls)
        self._init_blocks(blocks)
        self._restrict()
        return self

    # -------------------------------------------------------------- construction
    def _init_blocks(self, blocks) -> None:
        sizes = [blocks[0].shape[1]] + [b.shape[0] for b in blocks]
        self.n_total = int(sum(sizes))
        deg = np.zeros(self.n_total)
        off = np.concatenate([[0], np.cumsum(sizes)])
        for i, b in enumerate(blocks):
            deg[off[i] : off[i + 1]] += b.sum(axis=0)
            deg[off[i + 1] : off[i + 2]] += b.sum(axis=1)
        self._degrees_all = deg
        self.blocks = blocks
        self.layer_sizes = sizes
        self.matrix = None

    def _init_matrix(self, a: Any) -> None:
        if sp.issparse(a):
            m = sp.csr_array(a, dtype=np.float64)
        else:
            arr = np.asarray(a, dtype=np.float64)
            if arr.ndim != 2:
                raise ValueError(f"adjacency must be a 2-D matrix, got shape {arr.shape}")
            m = sp.csr_array(arr)
        if m.shape[0] != m.shape[1]:
            raise ValueError(f"adjacency must be square, got shape {m.shape}")
        m.sum_duplicates()
        if not np.all(np.isfinite(m.data)):
            raise ValueError("adjacency has non-finite entries (NaN or inf)")
        if m.nnz and m.data.min() < 0:
            raise ValueError(f"adjacency must be non-negative, found {m.data.min():.3g}")
        diff = abs(m - m.T)
        scale = abs(m).max() if m.nnz else 0.0
        if diff.nnz and diff.max() > 1e-10 * max(scale, 1.0):
            raise ValueError("adjacency must be symmetric (an undirected graph)")
        self.n_total = m.shape[0]
        self._degrees_all = np.asarray(m.sum(axis=1)).ravel()
        self.matrix = m
        self.blocks = None

    def _restrict(self) -> None:
        self.live = np.flatnonzero(self._degrees_all > 0)
        self.n = int(self.live.size)
        self.degrees = self._degrees_all[self.live]
        if self.matrix is not None:
            self.matrix = self.matrix[self.live][:, self.live]
            return
        alive = self._degrees_all > 0
        off = np.concatenate([[0], np.cumsum(self.layer_sizes)])
        keep = [alive[off[i] : off[i + 1]] for i in range(len(self.layer_sizes))]
        self.blocks = [np.ascontiguousarray(b[keep[i + 1]][:, keep[i]]) for i, b in enumerate(self.blocks)]
        self.layer_sizes = [int(k.sum()) for k in keep]
        self.layer_offsets = np.concatenate([[0], np.cumsum(self.layer_sizes)])

    # -------------------------------------------------------------- products
    def matmat(self, x: np.ndarray) -> np.ndarray:
        """``A @ x`` for ``x`` of shape ``(n,)`` or ``(n, m)`` (live nodes only)."""
        if self.matrix is not None:
            return self.matrix @ x
        y = np.zeros_like(x, dtype=np.float64)
        o = self.layer_offsets
        for i, b in enumerate(self.blocks):
            lo, mid, hi = o[i], o[i + 1], o[i + 2]
            y[mid:hi] += b @ x[lo:mid]
            y[lo:mid] += b.T @ x[mid:hi]
        return y

    def dense(self) -> np.ndarray:
        """The ``(n, n)`` dense affinity: only for small graphs."""
        if self.matrix is not None:
            return self.matrix.toarray()
        a = np.zeros((self.n, self.n))
        o = self.layer_offsets
        for i, b in enumerate(self.blocks):
            a[o[i + 1] : o[i + 2], o[i] : o[i + 1]] = b
            a[o[i] : o[i + 1], o[i + 1] : o[i + 2]] = b.T
        return a
