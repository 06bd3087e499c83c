"""The affinity of a general graph: a symmetric non-negative scipy sparse matrix.

For any undirected weighted graph, ``A[u, v] = A[v, u] >= 0`` is the weight of edge ``{u, v}``, the
degrees are ``d = A 1``, and ``A X`` is a sparse product (``O(nnz * m)`` for ``m`` columns).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp


class SparseAffinity:
    """The :class:`~modscope.cluster.affinity.Affinity` of a symmetric matrix, stored sparse (CSR).

    ``source`` is a scipy sparse matrix or anything ``numpy.asarray`` makes a 2-D array of. Raises
    ``ValueError`` when it is not square, has NaN/inf or negative entries, or is not symmetric (to
    ``1e-10`` relative to its largest entry). ``matrix`` holds the live rows and columns only.
    """

    def __init__(self, source: Any):
        if sp.issparse(source):
            m = sp.csr_array(source, dtype=np.float64)
        else:
            arr = np.asarray(source, dtype=np.float64)
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
        degrees = np.asarray(m.sum(axis=1)).ravel()
        self.live = np.flatnonzero(degrees > 0)
        self.n = int(self.live.size)
        self.degrees = degrees[self.live]
        self.matrix = m[self.live][:, self.live]

    def matmat(self, x: np.ndarray) -> np.ndarray:
        """``A @ x`` for ``x`` of shape ``(n,)`` or ``(n, m)`` (live nodes only)."""
        return self.matrix @ x

    def dense(self) -> np.ndarray:
        """The ``(n, n)`` dense affinity: only for small graphs."""
        return self.matrix.toarray()
