"""Spectral clustering of weight graphs, n-cut, and the shuffle test (SPEC §1.2-1.3)."""

from modscope.cluster.affinity import Affinity
from modscope.cluster.clusterability import (
    ClusterabilityResult,
    clusterability,
    cohens_d,
    null_graphs,
    null_summary,
)
from modscope.cluster.ncut import ncut
from modscope.cluster.spectral import SOLVERS, Partition, spectral_partition

__all__ = [
    "SOLVERS",
    "Affinity",
    "ClusterabilityResult",
    "Partition",
    "clusterability",
    "cohens_d",
    "ncut",
    "null_graphs",
    "null_summary",
    "spectral_partition",
]
