"""The clustered weight-graph figure."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.collections import LineCollection, PathCollection

from modscope.cluster import spectral_partition
from modscope.graph import WeightGraph
from modscope.plot import edge_list, node_positions, plot_partition


@pytest.fixture(scope="module")
def clustered():
    rng = np.random.default_rng(0)
    weights = [rng.normal(size=(8, 10)), rng.normal(size=(6, 8)), rng.normal(size=(3, 6))]
    weights[0][:, 0] = 0.0  # input unit 0 has no edges: label -1, drawn grey
    graph = WeightGraph.from_weights(weights)
    return graph, spectral_partition(graph, k=3, seed=0)


def _collections(fig):
    ax = fig.axes[0]
    points = [c for c in ax.collections if isinstance(c, PathCollection)]
    lines = [c for c in ax.collections if isinstance(c, LineCollection)]
    return points, lines


def test_one_point_per_node_and_all_edges(clustered):
    graph, partition = clustered
    fig = plot_partition(graph, partition)
    points, lines = _collections(fig)
    assert len(points) == 1 and len(points[0].get_offsets()) == graph.n_nodes
    assert len(lines) == 1 and len(lines[0].get_segments()) == graph.n_edges
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels[0].startswith("input") and "layer3" in labels[-1]
    assert "k = 3" in fig.axes[0].get_title() and f"{partition.ncut:.3f}" in fig.axes[0].get_title()


def test_isolated_nodes_are_grey(clustered):
    graph, partition = clustered
    assert partition.labels[0] == -1
    points, _ = _collections(plot_partition(graph, partition))
    colors = points[0].get_facecolors()
    assert np.allclose(colors[0][:3], 0.6)
    assert not np.allclose(colors[1:][:, :3], 0.6, atol=1e-3)


@pytest.mark.parametrize("max_edges", [0, 1, 25])
def test_at_most_max_edges_strongest(clustered, max_edges):
    graph, partition = clustered
    _, lines = _collections(plot_partition(graph, partition, max_edges=max_edges))
    assert len(lines[0].get_segments()) == max_edges
    src, _, w = edge_list(graph, max_edges)
    assert np.all(np.diff(w) >= 0)  # weakest first: strongest drawn on top
    assert np.all((w > 0) & (w <= 1))
    gap = graph.node_layer[src]
    for i, block in enumerate(graph.blocks):  # each gap keeps its own strongest edges
        rel = np.sort(block[block > 0] / block.max())
        kept = np.sort(w[gap == i])
        assert np.array_equal(kept, rel[rel.size - kept.size :])
    _, _, w = edge_list(graph, max_edges, relative_to="global")
    top = max(b.max() for b in graph.blocks)
    overall = np.sort(np.concatenate([b[b > 0] for b in graph.blocks])) / top
    assert np.allclose(np.sort(w), overall[overall.size - max_edges :])


def test_edge_budget_is_shared_by_the_gaps(clustered):
    graph, _ = clustered
    src, _, _ = edge_list(graph, 30)
    counts = np.bincount(graph.node_layer[src], minlength=3)
    assert counts.sum() == 30 and counts.min() == 10  # 18, 48 and 72 edges: 10 each
    src, _, _ = edge_list(graph, 100)
    assert np.bincount(graph.node_layer[src], minlength=3)[2] == 18  # the small gap gives its leftover on


def test_edges_are_shaded_by_strength(clustered):
    graph, partition = clustered
    _, lines = _collections(plot_partition(graph, partition))
    alpha = lines[0].get_colors()[:, 3]
    _, _, w = edge_list(graph)
    assert np.allclose(alpha / alpha.max(), w / w.max())


def test_positions_band_clusters(clustered):
    graph, partition = clustered
    pos = node_positions(graph, partition.labels)
    off = graph.offsets
    for li in range(len(graph.layers)):
        idx = np.arange(off[li], off[li + 1])
        assert np.all(pos[idx, 0] == li)
        by_height = partition.labels[idx][np.argsort(-pos[idx, 1])]
        live = by_height[by_height >= 0]
        assert np.all(np.diff(live) >= 0)  # contiguous bands, top to bottom
        assert np.all(by_height[len(live) :] == -1)  # unclustered nodes at the bottom


def test_writes_png_and_uses_given_axes(clustered, tmp_path):
    from matplotlib.figure import Figure

    graph, partition = clustered
    path = tmp_path / "out" / "graph.png"
    fig = plot_partition(graph, partition, path)
    assert path.read_bytes()[:4] == b"\x89PNG"
    mine = Figure()
    ax = mine.add_subplot()
    assert plot_partition(graph, partition, ax=ax) is mine
    assert fig is not mine


def test_rejects_mismatched_partition_and_bad_max_edges(clustered):
    graph, partition = clustered
    other = WeightGraph.from_weights([np.ones((2, 3))])
    with pytest.raises(ValueError, match="labels"):
        plot_partition(other, partition)
    with pytest.raises(ValueError, match="-1"):
        plot_partition(graph, partition, max_edges=-1)
