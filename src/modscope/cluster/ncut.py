"""Normalized cut (Shi & Malik 2000), the clusterability score of Filan et al. (arXiv:2103.03386).

``ncut = sum_c cut(c) / vol(c)`` with ``cut(c)`` the weight of the edges leaving cluster ``c`` and
``vol(c)`` the sum of the degrees of its nodes. It lies in ``[0, k]``; lower is more modular.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from modscope.cluster.affinity import Affinity, as_affinity
from modscope.cluster.sparse_affinity import SparseAffinity


@dataclass(frozen=True)
class ClusterStats:
    """Per-cluster size, cut and volume, for clusters ``0..k-1``."""

    sizes: np.ndarray
    cuts: np.ndarray
    volumes: np.ndarray

    @property
    def ncut(self) -> float:
        # A cluster of isolated nodes (volume 0) has no edge to cut: it adds 0, not 0/0.
        with np.errstate(invalid="ignore", divide="ignore"):
            terms = np.where(self.volumes > 0, self.cuts / self.volumes, 0.0)
        return float(np.clip(terms, 0.0, 1.0).sum())


def cluster_stats(affinity: Affinity, labels: np.ndarray, k: int) -> ClusterStats:
    """Stats of ``labels`` (shape ``(affinity.n,)``, values in ``0..k-1``) on the live nodes."""
    onehot = np.zeros((affinity.n, k))
    onehot[np.arange(affinity.n), labels] = 1.0
    within = np.einsum("ic,ic->c", onehot, affinity.matmat(onehot))  # assoc(c, c)
    volumes = np.bincount(labels, weights=affinity.degrees, minlength=k)
    # cut = vol - assoc; clip the rounding error of a cluster with (almost) no outside edge.
    cuts = np.maximum(volumes - within, 0.0)
    return ClusterStats(np.bincount(labels, minlength=k), cuts, volumes)


def ncut(adjacency: Any, labels: Any) -> float:
    """The normalized cut of a partition.

    Parameters
    ----------
    adjacency : WeightGraph, scipy sparse matrix or array of shape (n, n)
        A symmetric, non-negative affinity.
    labels : array of int, shape (n,)
        Cluster of each node. Nodes labelled ``-1`` are left out, with their edges.

    Returns
    -------
    float in ``[0, k]`` for ``k`` distinct labels. A cluster whose volume is 0 adds 0.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array, got dtype {labels.dtype} shape {labels.shape}")
    if labels.size and labels.min() < -1:
        raise ValueError(f"labels must be >= -1 (-1 = left out), found {labels.min()}")
    aff = as_affinity(adjacency)
    if labels.size != aff.n_total:
        raise ValueError(f"labels has {labels.size} entries for a graph of {aff.n_total} nodes")
    kept = labels >= 0
    if not kept.all():
        # Leave out the -1 nodes *with* their edges: rebuild the affinity on the kept nodes.
        import scipy.sparse as sp

        full = adjacency.adjacency() if hasattr(adjacency, "adjacency") else sp.csr_array(adjacency)
        idx = np.flatnonzero(kept)
        aff = SparseAffinity(sp.csr_array(full)[idx][:, idx])
        labels = labels[idx]
    _, dense_labels = np.unique(labels[aff.live], return_inverse=True)
    k = int(dense_labels.max()) + 1 if dense_labels.size else 0
    return cluster_stats(aff, dense_labels, k).ncut
