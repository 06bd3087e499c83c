"""Spectral clustering of weight graphs, n-cut, and the shuffle test (SPEC §1.2-1.3)."""

from modscope.cluster.affinity import Affinity
from modscope.cluster.clusterability import check_n_jobs, clusterability, null_graphs, worker_count
from modscope.cluster.ncut import ncut
from modscope.cluster.partition import Partition
from modscope.cluster.result import ClusterabilityResult, cohens_d, null_summary, shuffle_seed
from modscope.cluster.spectral import SOLVERS, spectral_partition

__all__ = [
    "SOLVERS",
    "Affinity",
    "ClusterabilityResult",
    "Partition",
    "check_n_jobs",
    "clusterability",
    "cohens_d",
    "ncut",
    "null_graphs",
    "null_summary",
    "shuffle_seed",
    "spectral_partition",
    "worker_count",
]
