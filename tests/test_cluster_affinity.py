"""The kinds of affinity (layered blocks, general blocks, sparse) behind one protocol agree on every graph."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from modscope.cluster.affinity import Affinity, BlockAffinity, LayeredAffinity, SparseAffinity, as_affinity
from modscope.cluster.bipartite import eigenproblem_size, layered_eigenpairs
from modscope.graph import Layer, WeightGraph


@st.composite
def layered_graphs(draw):
    sizes = draw(st.lists(st.integers(1, 6), min_size=2, max_size=5))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    density = draw(st.sampled_from([0.3, 0.7, 1.0]))  # sparse blocks leave dead units
    shapes = [(b, a) for a, b in itertools.pairwise(sizes)]
    return WeightGraph.from_weights([rng.uniform(0, 1, s) * (rng.random(s) < density) for s in shapes])


@settings(max_examples=60, deadline=None)
@given(layered_graphs(), st.integers(0, 1000))
def test_layered_and_sparse_kinds_agree(graph, seed):
    layered, general = LayeredAffinity(graph.blocks), SparseAffinity(graph.adjacency())
    full = graph.adjacency().toarray()
    live = np.flatnonzero(full.sum(1) > 0)
    for aff in (layered, general):
        assert aff.n_total == graph.n_nodes and aff.n == live.size
        np.testing.assert_array_equal(aff.live, live)
        np.testing.assert_allclose(aff.degrees, full.sum(1)[live], rtol=1e-12)
        np.testing.assert_allclose(aff.dense(), full[np.ix_(live, live)], rtol=1e-12)
        x = np.random.default_rng(seed).standard_normal((aff.n, 3))
        np.testing.assert_allclose(aff.matmat(x), full[np.ix_(live, live)] @ x, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(aff.matmat(x[:, 0]), full[np.ix_(live, live)] @ x[:, 0], atol=1e-12)
    # the layered kind keeps only live rows and columns in its blocks
    assert sum(layered.layer_sizes) == layered.n and layered.layer_offsets[-1] == layered.n


@st.composite
def general_graphs(draw):
    """Blocks between any groups, self-blocks (recurrent weights, with a diagonal) and repeated pairs."""
    sizes = draw(st.lists(st.integers(1, 5), min_size=2, max_size=4))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    density = draw(st.sampled_from([0.3, 0.7, 1.0]))
    pairs = draw(st.lists(st.tuples(st.integers(0, len(sizes) - 1), st.integers(0, len(sizes) - 1)),
                          min_size=1, max_size=6))  # fmt: skip
    edges = [(s, d, rng.uniform(0, 1, (sizes[d], sizes[s])) * (rng.random((sizes[d], sizes[s])) < density))
             for s, d in pairs]  # fmt: skip
    layers = [Layer(f"g{i}", n, "linear") for i, n in enumerate(sizes)]
    return WeightGraph(layers, edges=edges)


@settings(max_examples=80, deadline=None)
@given(general_graphs(), st.integers(0, 1000))
def test_block_and_sparse_kinds_agree_on_general_graphs(graph, seed):
    full = graph.adjacency().toarray()
    live = np.flatnonzero(full.sum(1) > 0)
    blocks, sparse = BlockAffinity(graph.edges, graph.layer_sizes), SparseAffinity(graph.adjacency())
    for aff in (blocks, sparse):
        assert aff.n_total == graph.n_nodes and aff.n == live.size
        np.testing.assert_array_equal(aff.live, live)
        np.testing.assert_allclose(aff.degrees, full.sum(1)[live], rtol=1e-12)
        np.testing.assert_allclose(aff.dense(), full[np.ix_(live, live)], rtol=1e-12, atol=1e-15)
        x = np.random.default_rng(seed).standard_normal((aff.n, 3))
        np.testing.assert_allclose(aff.matmat(x), full[np.ix_(live, live)] @ x, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(aff.matmat(x[:, 0]), full[np.ix_(live, live)] @ x[:, 0], atol=1e-12)


def test_as_affinity_picks_the_kind():
    g = WeightGraph.from_weights([np.ones((3, 2)), np.ones((2, 3))])
    layered = as_affinity(g)
    assert isinstance(layered, LayeredAffinity) and as_affinity(layered) is layered
    assert isinstance(as_affinity(g.adjacency()), SparseAffinity)
    assert isinstance(as_affinity(g.adjacency().toarray()), SparseAffinity)
    # only a layered graph has the bipartite reduction: the smaller side (2 + 2 of 7 nodes) vs all nodes
    assert eigenproblem_size(layered) == 3 and eigenproblem_size(as_affinity(g.adjacency())) == 7
    assert layered_eigenpairs(as_affinity(g.adjacency()), 2, "dense", np.random.default_rng(0), 1e-6) is None
    general = WeightGraph([Layer("a", 2, "input"), Layer("b", 2, "linear")], edges=[(0, 1, np.ones((2, 2))),
                          (1, 1, np.eye(2))])  # fmt: skip
    assert isinstance(as_affinity(general), BlockAffinity)


def test_both_kinds_satisfy_the_protocol():
    def n_live(aff: Affinity) -> int:  # typed against the protocol: both kinds are accepted
        return aff.n

    g = WeightGraph.from_weights([np.array([[1.0, 0.0]]), np.array([[2.0]])])  # input 1 is dead
    assert n_live(LayeredAffinity(g.blocks)) == n_live(SparseAffinity(g.adjacency())) == 3


@pytest.mark.parametrize(
    ("matrix", "match"),
    [
        (np.ones((2, 3)), "must be square"),
        (np.ones(3), "must be a 2-D matrix"),
        (np.array([[0.0, np.nan], [np.nan, 0.0]]), "non-finite"),
        (np.array([[0.0, -1.0], [-1.0, 0.0]]), "non-negative"),
        (np.array([[0.0, 1.0], [2.0, 0.0]]), "symmetric"),
        (sp.csr_array(np.array([[0.0, 1.0], [0.0, 0.0]])), "symmetric"),
    ],
)
def test_sparse_kind_refuses_bad_matrices(matrix, match):
    with pytest.raises(ValueError, match=match):
        SparseAffinity(matrix)
