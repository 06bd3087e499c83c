"""Weight graphs: units as nodes, weight magnitudes as edges (SPEC §1.1), and their shuffled null models."""

from modscope.graph.layer import CHANNEL_NORMS, GraphError, Layer
from modscope.graph.shuffle import SHUFFLES, shuffle_blocks, shuffle_graph, shuffle_graph_blocks
from modscope.graph.weight_graph import Edge, WeightGraph

__all__ = [
    "CHANNEL_NORMS",
    "SHUFFLES",
    "Edge",
    "GraphError",
    "Layer",
    "WeightGraph",
    "shuffle_blocks",
    "shuffle_graph",
    "shuffle_graph_blocks",
]
