"""The lens bridge: clusters of the weight graph (structural lens) against task masks (functional lens).

:func:`bridge` reads each task's mask onto the graph (:mod:`.layout`), finds the units each task uses
(:mod:`.usage`), and measures per cluster and mask how the kept weights and used units fall, how
concentrated each mask is, and how the clusters agree with the masks' unit assignment (ARI, NMI)
(:mod:`.scores`), every score against same-size random partitions and the masks of shuffled networks
(:mod:`.null`). The result is a :class:`BridgeResult`.
"""

from modscope.bridge.connect import RULES, bridge, check_partition, inside_share, usage_of
from modscope.bridge.layout import BlockSource, block_sources, fold, kept_counts
from modscope.bridge.null import null_stats, p_value, same_size_labels
from modscope.bridge.result import NULLS, BridgeResult
from modscope.bridge.scores import PER_TASK, Observation, observe, score_names
from modscope.bridge.usage import NONE, SHARED, Usage, assignment, unit_usage, weight_usage

__all__ = [
    "NONE", "NULLS", "PER_TASK", "RULES", "SHARED", "BlockSource", "BridgeResult", "Observation", "Usage",
    "assignment", "block_sources", "bridge", "check_partition", "fold", "inside_share", "kept_counts",
    "null_stats", "observe", "p_value", "same_size_labels", "score_names", "unit_usage", "usage_of",
    "weight_usage",
]  # fmt: skip
