"""Leading eigenvectors of a layered graph through its bipartite structure.

Edges of a layered graph only join layer ``l`` to ``l + 1``, so colouring even layers one side and odd
layers the other makes it bipartite: ``S = D^-1/2 A D^-1/2 = [[0, G], [G^T, 0]]`` with ``G`` mapping the
smaller side to the larger. The eigenpairs of ``S`` are ``(+-sigma_i, (u_i, +-v_i) / sqrt(2))`` for the
singular triplets of ``G``, so the ``k`` largest algebraic eigenvalues of ``S`` are the ``k`` largest
singular values of ``G``, and ``v_i`` are the leading eigenvectors of the Gram matrix ``C = G^T G``: a
problem on the smaller side alone, with a squared (better separated) spectrum.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

from modscope.cluster.affinity import Affinity
from modscope.cluster.eigen import top_eigenpairs
from modscope.cluster.layered_affinity import LayeredAffinity


def eigenproblem_size(aff: Affinity) -> int:
    """Unknowns of the eigenproblem: the smaller bipartite side of a layered graph, else all nodes."""
    if not isinstance(aff, LayeredAffinity):
        return aff.n
    even = int(sum(aff.layer_sizes[0::2]))
    return min(even, aff.n - even)


class LayeredGram:
    """``C = G^T G`` of a layered affinity, as a dense matrix or an operator on the smaller side."""

    def __init__(self, aff: LayeredAffinity):
        sizes, off = aff.layer_sizes, aff.layer_offsets
        dinv = 1.0 / np.sqrt(aff.degrees)
        self.n_layers = len(sizes)
        even = sum(sizes[0::2])
        self.small_parity = 0 if even <= aff.n - even else 1
        self.small = [layer for layer in range(self.n_layers) if layer % 2 == self.small_parity]
        self.big = [layer for layer in range(self.n_layers) if layer % 2 != self.small_parity]
        self.sizes, self.off = sizes, off
        self.n_small = int(sum(sizes[layer] for layer in self.small))
        self.small_off = dict(
            zip(self.small, np.concatenate([[0], np.cumsum([sizes[s] for s in self.small])]))
        )
        # G[m, a]: block of G from small layer a to its neighbouring big layer m, normalized.
        self.g: dict[tuple[int, int], np.ndarray] = {}
        for i, b in enumerate(aff.blocks):
            nb = dinv[off[i + 1] : off[i + 2], None] * b * dinv[None, off[i] : off[i + 1]]  # layer i -> i+1
            if i % 2 == self.small_parity:  # i small, i + 1 big
                self.g[(i + 1, i)] = nb
            else:  # i big, i + 1 small
                self.g[(i, i + 1)] = np.ascontiguousarray(nb.T)

    def _nbrs(self, m: int) -> list[int]:
        return [a for a in (m - 1, m + 1) if (m, a) in self.g]

    def _slice(self, a: int) -> slice:
        return slice(self.small_off[a], self.small_off[a] + self.sizes[a])

    def dense(self) -> np.ndarray:
        c = np.zeros((self.n_small, self.n_small))
        for m in self.big:
            for a in self._nbrs(m):
                for b in self._nbrs(m):
                    c[self._slice(a), self._slice(b)] += self.g[(m, a)].T @ self.g[(m, b)]
        return c

    def apply_g(self, y: np.ndarray) -> dict[int, np.ndarray]:
        """``G y`` per big layer, for ``y`` on the small side (``(n_small,)`` or ``(n_small, m)``)."""
        out = {}
        for m in self.big:
            z = np.zeros((self.sizes[m], *y.shape[1:]))
            for a in self._nbrs(m):
                z += self.g[(m, a)] @ y[self._slice(a)]
            out[m] = z
        return out

    def matmat(self, y: np.ndarray) -> np.ndarray:
        z = self.apply_g(y)
        out = np.zeros_like(y, dtype=np.float64)
        for m in self.big:
            for a in self._nbrs(m):
                out[self._slice(a)] += self.g[(m, a)].T @ z[m]
        return out

    def eigenvectors_of_s(self, v: np.ndarray, sigma: np.ndarray) -> np.ndarray:
        """Eigenvectors ``(u, v) / sqrt(2)`` of ``S`` in node order, from ``C``'s eigenvectors ``v``."""
        u = self.apply_g(v / sigma)
        x = np.empty((self.off[-1], v.shape[1]))
        for layer in range(self.n_layers):
            part = u[layer] if layer in u else v[self._slice(layer)]
            x[self.off[layer] : self.off[layer + 1]] = part
        return x / np.sqrt(2.0)


def layered_eigenpairs(
    aff: Affinity, k: int, solver: str, rng: np.random.Generator, tol: float
) -> tuple[np.ndarray, np.ndarray] | None:
    """The ``k`` largest eigenvalues of ``S`` (ascending) and their ``(n, k)`` eigenvectors.

    ``None`` when ``aff`` is not layered, or when the smaller side has fewer than ``k`` non-zero singular
    values (the top of ``S``'s spectrum then holds zeros whose eigenvectors this reduction does not give).
    """
    if not isinstance(aff, LayeredAffinity):
        return None
    gram = LayeredGram(aff)
    n = gram.n_small
    if k > n or (solver != "dense" and k >= n - 1):
        return None
    if solver == "dense":
        w, v = scipy.linalg.eigh(gram.dense(), subset_by_index=[n - k, n - 1], check_finite=False)
    else:
        w, v = top_eigenpairs(gram.matmat, n, k, solver, rng, tol)
    if w.min() <= 1e-12 * max(w.max(), 1e-300):
        return None
    sigma = np.sqrt(w)
    return sigma, gram.eigenvectors_of_s(v, sigma)
