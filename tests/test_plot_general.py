"""The clustered-graph figure of a general graph (residual adds, concatenations): one column per group."""

import numpy as np
from matplotlib.collections import LineCollection, PathCollection

from modscope.cluster import spectral_partition
from modscope.graph import WeightGraph
from modscope.plot import edge_list, plot_partition
from test_graph_residual import DenseLike, ResidualMLP


def test_a_general_graph_is_drawn_with_every_block():
    for graph in (
        WeightGraph.from_module(ResidualMLP(), residual="merge"),  # a stream written back: blocks point left
        WeightGraph.from_module(ResidualMLP(), residual="filan"),
        WeightGraph.from_module(DenseLike(), input_shape=(2, 4, 4)),  # concatenations: non-neighbour columns
    ):
        assert not graph.is_layered
        partition = spectral_partition(graph, k=2, seed=0)
        ax = plot_partition(graph, partition).axes[0]
        (points,) = [c for c in ax.collections if isinstance(c, PathCollection)]
        (lines,) = [c for c in ax.collections if isinstance(c, LineCollection)]
        assert len(points.get_offsets()) == graph.n_nodes and len(lines.get_segments()) == graph.n_edges
        assert [t.get_text().split("\n")[0] for t in ax.get_xticklabels()] == [g.name for g in graph.layers]
        # Every block's edges, each from its src group's column to its dst group's column.
        src, dst, w = edge_list(graph)
        pairs = {(e.src, e.dst) for e in graph.edges}
        assert set(zip(graph.node_layer[src].tolist(), graph.node_layer[dst].tolist())) == pairs
        assert w.size == graph.n_edges and np.all((w > 0) & (w <= 1))
        x = np.array([p[0] for s in lines.get_segments() for p in s[:1]])
        np.testing.assert_array_equal(np.sort(x), np.sort(graph.node_layer[src].astype(float)))


def test_the_edge_budget_is_shared_by_the_blocks():
    graph = WeightGraph.from_module(ResidualMLP(), residual="merge")  # 6 blocks of 80, 60 or 40 edges
    assert sorted(e.block.size for e in graph.edges) == [40, 60, 60, 60, 60, 80]
    src, dst, _ = edge_list(graph, 60)
    block = graph.node_layer[src] * len(graph.layers) + graph.node_layer[dst]
    assert np.unique(block, return_counts=True)[1].tolist() == [10] * 6
