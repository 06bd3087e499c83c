"""The blocks of a weight graph as edges between groups of units, and the symmetric adjacency they make."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import scipy.sparse as sp

from modscope.graph.layer import GraphError, Layer


class Edge(NamedTuple):
    """One weight block of a general graph: ``block`` (shape ``(layers[dst].size, layers[src].size)``, the
    ``(out, in)`` convention) joins unit ``i`` of group ``src`` to unit ``j`` of group ``dst`` by
    ``block[j, i]``. ``src == dst`` is a self-block (a recurrent or residual weight within one group)."""

    src: int
    dst: int
    block: np.ndarray


def check_edges(layers: Sequence[Layer], edges: Sequence[Any]) -> list[Edge]:
    """Read-only float64 copies of ``(src, dst, block)`` triples, checked: valid groups, block shape
    ``(layers[dst].size, layers[src].size)``, finite and non-negative weights."""
    checked = []
    for i, edge in enumerate(edges):
        src, dst, block = _edge_parts(edge, i, len(layers))
        b = np.array(block, dtype=np.float64, copy=True)
        want = (layers[dst].size, layers[src].size)
        what = f"block {i} ({layers[src].name} -> {layers[dst].name})"
        if b.shape != want:
            raise GraphError(f"{what} has shape {b.shape}, expected {want}")
        if not np.all(np.isfinite(b)):
            raise GraphError(f"{what} has non-finite weights (NaN or inf)")
        if np.any(b < 0):
            raise GraphError(f"{what} has negative edge weights")
        b.setflags(write=False)
        checked.append(Edge(src, dst, b))
    return checked


def adjacency_of(edges: Sequence[Edge], offsets: np.ndarray) -> sp.csr_array:
    """The symmetric adjacency of ``edges`` on nodes numbered by group ``offsets`` (last entry: node count).

    ``A[u, v]`` sums the weights joining ``u`` and ``v`` in either direction; a self-loop is stored once.
    """
    rows, cols, vals = [], [], []
    for e in edges:
        r, c = np.nonzero(e.block)
        rows.append(r + offsets[e.dst])
        cols.append(c + offsets[e.src])
        vals.append(e.block[r, c])
    n = int(offsets[-1])
    # 32-bit indices where they fit: scikit-learn's graph code refuses 64-bit ones.
    idx = np.int32 if n < 2**31 else np.int64
    r = np.concatenate(rows).astype(idx)
    c = np.concatenate(cols).astype(idx)
    v = np.concatenate(vals)
    mirror = r != c  # a self-loop is one edge, not two
    rr, cc = np.concatenate([r, c[mirror]]), np.concatenate([c, r[mirror]])
    a = sp.csr_array((np.concatenate([v, v[mirror]]), (rr, cc)), (n, n))
    a.sum_duplicates()
    a.indices, a.indptr = a.indices.astype(idx), a.indptr.astype(idx)
    return a


def _edge_parts(edge: Any, i: int, n_layers: int) -> tuple[int, int, Any]:
    try:
        src, dst, block = edge
    except (TypeError, ValueError):
        raise GraphError(f"edges[{i}] must be a (src, dst, block) triple") from None
    for name, g in (("src", src), ("dst", dst)):
        if isinstance(g, bool) or not isinstance(g, (int, np.integer)) or not 0 <= g < n_layers:
            raise GraphError(f"edges[{i}] has {name}={g!r}; groups are 0..{n_layers - 1}")
    return int(src), int(dst), block
