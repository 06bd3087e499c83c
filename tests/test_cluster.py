"""n-cut, spectral partitions and the shuffle test: known answers, references, invariants, errors."""

import itertools
import json

import networkx as nx
import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.cluster import SpectralClustering
from sklearn.metrics import adjusted_rand_score

from modscope.cluster import (
    SOLVERS,
    ClusterabilityResult,
    Partition,
    clusterability,
    cohens_d,
    ncut,
    null_summary,
    spectral_partition,
)
from modscope.graph import WeightGraph

# ---------------------------------------------------------------------- n-cut known answers


def test_ncut_two_triangles_by_hand():
    # Two unit-weight triangles {0,1,2}, {3,4,5} joined by the edge 2-3 of weight 0.5.
    a = np.zeros((6, 6))
    for i, j in [(0, 1), (0, 2), (1, 2), (3, 4), (3, 5), (4, 5)]:
        a[i, j] = a[j, i] = 1.0
    a[2, 3] = a[3, 2] = 0.5
    # vol of each side = 2 + 2 + 2.5 = 6.5, cut = 0.5  ->  0.5/6.5 * 2
    assert ncut(a, np.array([0, 0, 0, 1, 1, 1])) == pytest.approx(2 * 0.5 / 6.5)
    # {0} vs rest: cut 2, vol 2 -> 1; rest: cut 2, vol 13 - 2 = 11
    assert ncut(a, np.array([0, 1, 1, 1, 1, 1])) == pytest.approx(1 + 2 / 11)
    # everything in one cluster: no cut
    assert ncut(a, np.zeros(6, dtype=int)) == 0.0
    # every node alone: each cluster loses all its edges -> n-cut = number of nodes
    assert ncut(a, np.arange(6)) == pytest.approx(6.0)


def test_ncut_of_layered_graph_matches_its_adjacency():
    w1 = np.array([[1.0, 2.0], [3.0, 0.0]])
    w2 = np.array([[0.5, 1.5]])
    g = WeightGraph.from_weights([w1, w2])
    labels = np.array([0, 1, 0, 1, 1])
    # by hand: edges (node ids) 2-0:1, 2-1:2, 3-0:3, 4-2:0.5, 4-3:1.5
    # cluster 0 = {0, 2}: vol = 4 + 3.5 = 7.5, internal 1 -> cut 7.5 - 2 = 5.5
    # cluster 1 = {1, 3, 4}: vol = 2 + 4.5 + 2 = 8.5, internal 1.5 -> cut 8.5 - 3 = 5.5
    expected = 5.5 / 7.5 + 5.5 / 8.5
    assert ncut(g, labels) == pytest.approx(expected)
    assert ncut(g.adjacency(), labels) == pytest.approx(expected)


def test_ncut_ignores_minus_one_nodes_with_their_edges():
    a = np.ones((4, 4)) - np.eye(4)
    # node 3 left out: the rest is a triangle split {0} | {1, 2}
    # {0}: vol 2, cut 2 -> 1; {1,2}: vol 4, cut 2 -> 0.5
    assert ncut(a, np.array([0, 1, 1, -1])) == pytest.approx(1.5)


def test_ncut_input_errors():
    a = np.ones((3, 3))
    with pytest.raises(ValueError, match="3 nodes"):
        ncut(a, np.array([0, 1]))
    with pytest.raises(ValueError, match="integer"):
        ncut(a, np.array([0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="symmetric"):
        ncut(np.triu(a), np.array([0, 1, 1]))
    with pytest.raises(ValueError, match="non-negative"):
        ncut(-a, np.array([0, 1, 1]))
    with pytest.raises(ValueError, match="non-finite"):
        ncut(np.full((3, 3), np.nan), np.array([0, 1, 1]))


def _random_graph(rng, n, p):
    a = np.triu(rng.uniform(0.1, 2.0, (n, n)) * (rng.random((n, n)) < p), 1)
    return a + a.T


@pytest.mark.parametrize("seed", range(8))
def test_ncut_equals_networkx_for_two_way_partitions(seed):
    rng = np.random.default_rng(seed)
    a = _random_graph(rng, 30, 0.3)
    labels = rng.integers(0, 2, 30)
    g = nx.from_numpy_array(a)
    side = {i for i in range(30) if labels[i] == 0}
    assert ncut(a, labels) == pytest.approx(nx.normalized_cut_size(g, side, weight="weight"), rel=1e-10)


@settings(max_examples=80, deadline=None)
@given(st.integers(2, 25), st.integers(1, 8), st.floats(0.05, 1.0), st.integers(0, 2**31))
def test_ncut_lies_in_zero_k(n, k, p, seed):
    rng = np.random.default_rng(seed)
    a = _random_graph(rng, n, p)
    labels = rng.integers(0, k, n)
    value = ncut(sp.csr_array(a), labels)
    assert 0.0 <= value <= len(np.unique(labels)) + 1e-12


# ---------------------------------------------------------------------- spectral partitions


def _planted(rng, sizes, p_in=0.9, p_out=0.02):
    n = sum(sizes)
    truth = np.repeat(np.arange(len(sizes)), sizes)
    same = truth[:, None] == truth[None, :]
    prob = np.where(same, p_in, p_out)
    a = np.triu(rng.uniform(0.5, 1.5, (n, n)) * (rng.random((n, n)) < prob), 1)
    return a + a.T, truth


@pytest.mark.parametrize("solver", SOLVERS)
def test_planted_partition_recovered_exactly(solver):
    rng = np.random.default_rng(0)
    a, truth = _planted(rng, [15, 20, 25, 30])
    p = spectral_partition(sp.csr_array(a), k=4, seed=0, solver=solver)
    assert adjusted_rand_score(truth, p.labels) == 1.0
    assert p.ncut == pytest.approx(ncut(a, p.labels))
    assert p.eigenvalues[0] == pytest.approx(1.0)
    assert p.sizes.sum() == 90 and len(p.cuts) == len(p.volumes) == 4


def _planted_layered(rng, widths, modules, inside=1.0, across=0.01):
    """A layered graph whose units belong to `modules` modules; weights strong within a module."""
    member = [rng.permutation(np.arange(w) % modules) for w in widths]
    blocks = []
    for lo, hi in itertools.pairwise(member):
        same = hi[:, None] == lo[None, :]
        blocks.append(rng.uniform(0.5, 1.5, same.shape) * np.where(same, inside, across))
    return WeightGraph.from_weights(blocks), np.concatenate(member)


@pytest.mark.parametrize("solver", SOLVERS)
def test_planted_modules_in_a_layered_graph_recovered(solver):
    rng = np.random.default_rng(1)
    g, truth = _planted_layered(rng, [40, 30, 30, 20], modules=4)
    p = spectral_partition(g, k=4, seed=0, solver=solver)
    assert adjusted_rand_score(truth, p.labels) == 1.0
    assert p.solver == (solver if solver != "auto" else "dense")


def test_solvers_and_paths_agree_on_eigenvalues():
    rng = np.random.default_rng(2)
    blocks = [rng.uniform(0, 1, (30, 50)), rng.uniform(0, 1, (30, 30)), rng.uniform(0, 1, (5, 30))]
    g = WeightGraph.from_weights(blocks)
    reference = spectral_partition(g.adjacency().toarray(), k=6, solver="dense").eigenvalues
    dense_s = np.linalg.eigvalsh(
        (lambda a, d: a / np.sqrt(d[:, None] * d[None, :]))(g.adjacency().toarray(), g.degrees())
    )[::-1][:6]
    np.testing.assert_allclose(reference, dense_s, atol=1e-10)
    for solver in SOLVERS:
        for source in (g, g.adjacency()):
            vals = spectral_partition(source, k=6, solver=solver).eigenvalues
            np.testing.assert_allclose(vals, reference, atol=1e-5)


def test_quality_at_least_that_of_scikit_learn():
    rng = np.random.default_rng(3)
    blocks = [rng.uniform(-1, 1, (64, 100)), rng.uniform(-1, 1, (64, 64)), rng.uniform(-1, 1, (10, 64))]
    g = WeightGraph.from_weights(blocks)
    ours = [spectral_partition(g, k=8, seed=s).ncut for s in range(3)]
    ref = [
        ncut(
            g,
            SpectralClustering(8, affinity="precomputed", eigen_solver="arpack", n_init=25, random_state=s)
            .fit(g.adjacency())
            .labels_,
        )
        for s in range(3)
    ]
    assert np.mean(ours) <= np.mean(ref) + 0.01


def test_zero_degree_nodes_are_labelled_minus_one():
    w1 = np.array([[1.0, 0.0, 2.0], [0.5, 0.0, 1.0], [3.0, 0.0, 0.1]])  # input 1 is dead
    w2 = np.array([[1.0, 1.0, 0.0], [0.0, 2.0, 0.0]])  # hidden 2 feeds nothing but has inputs
    g = WeightGraph.from_weights([w1, w2])
    p = spectral_partition(g, k=2)
    assert p.labels.shape == (g.n_nodes,)
    assert p.labels[1] == -1 and np.all(np.delete(p.labels, 1) >= 0)
    assert p.sizes.sum() == g.n_nodes - 1


def test_disconnected_graph_is_split_at_no_cost():
    a = np.zeros((6, 6))
    a[:3, :3] = 1.0
    a[3:, 3:] = 2.0
    np.fill_diagonal(a, 0.0)
    p = spectral_partition(a, k=2)
    assert p.ncut == pytest.approx(0.0, abs=1e-12)
    assert len(set(p.labels[:3])) == 1 and p.labels[0] != p.labels[3]


def test_partition_errors():
    a = np.ones((5, 5)) - np.eye(5)
    with pytest.raises(ValueError, match="at least 2"):
        spectral_partition(a, k=1)
    with pytest.raises(ValueError, match="smaller than the number of nodes with edges"):
        spectral_partition(a, k=5)
    with pytest.raises(TypeError, match="k must be an int"):
        spectral_partition(a, k=2.5)
    with pytest.raises(ValueError, match="no edges"):
        spectral_partition(np.zeros((4, 4)), k=2)
    with pytest.raises(ValueError, match="solver must be one of"):
        spectral_partition(a, k=2, solver="arpack-shift-invert")
    with pytest.raises(ValueError, match="square"):
        spectral_partition(np.ones((3, 4)), k=2)
    with pytest.raises(ValueError, match="n_init"):
        spectral_partition(a, k=2, n_init=0)


def test_partition_is_seeded_and_serializes():
    rng = np.random.default_rng(4)
    g = WeightGraph.from_weights([rng.uniform(0, 1, (20, 30)), rng.uniform(0, 1, (10, 20))])
    p1, p2 = spectral_partition(g, k=5, seed=7), spectral_partition(g, k=5, seed=7)
    np.testing.assert_array_equal(p1.labels, p2.labels)
    back = Partition.from_dict(json.loads(p1.to_json()))
    np.testing.assert_array_equal(back.labels, p1.labels)
    assert back.ncut == p1.ncut and back.solver == p1.solver


# ---------------------------------------------------------------------- the shuffle test


@pytest.fixture(scope="module")
def planted_graph():
    return _planted_layered(np.random.default_rng(5), [30, 24, 24, 12], modules=3, across=0.05)[0]


def test_clusterability_identical_for_any_number_of_jobs(planted_graph):
    seen = []
    r1 = clusterability(
        planted_graph, k=3, n_shuffles=6, seed=3, n_jobs=1, progress=lambda d, t: seen.append(d)
    )
    r2 = clusterability(planted_graph, k=3, n_shuffles=6, seed=3, n_jobs=2)
    assert r1.to_dict() == r2.to_dict()
    assert seen == list(range(1, 8))  # serial: one call per clustering


def test_clusterability_detects_planted_modules(planted_graph):
    r = clusterability(planted_graph, k=3, n_shuffles=8, seed=0)
    assert r.below_all and r.z < -3
    assert r.p_value == pytest.approx(1 / 9)
    assert r.null_ncuts.shape == (8,)
    assert r.ncut == r.partition.ncut


def test_clusterability_nonzero_shuffle_and_round_trip(planted_graph, tmp_path):
    r = clusterability(planted_graph, k=3, n_shuffles=4, shuffle="layer_nonzero", seed=1)
    path = tmp_path / "r.json"
    r.save(path)
    back = ClusterabilityResult.load(path)
    assert back.to_dict() == r.to_dict() and back.shuffle == "layer_nonzero"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not a clusterability result"):
        ClusterabilityResult.load(path)


def test_clusterability_argument_errors(planted_graph):
    with pytest.raises(ValueError, match="n_shuffles"):
        clusterability(planted_graph, n_shuffles=1)
    with pytest.raises(ValueError, match="shuffle must be one of"):
        clusterability(planted_graph, shuffle="all")
    with pytest.raises(ValueError, match="n_jobs"):
        clusterability(planted_graph, n_jobs=0)
    with pytest.raises(ValueError, match="smaller than the number of nodes"):
        clusterability(planted_graph, k=500)


def test_null_summary_by_hand():
    s = null_summary(1.0, np.array([1.0, 2.0, 3.0]))
    assert s["null_mean"] == 2.0 and s["null_std"] == 1.0 and s["z"] == -1.0
    assert s["p_value"] == pytest.approx(2 / 4)  # the null value 1.0 ties: counted
    assert s["below_all"] is False
    assert null_summary(0.5, np.array([1.0, 2.0, 3.0]))["below_all"] is True


def test_cohens_d_by_hand():
    assert cohens_d([1, 2, 3], [3, 4, 5]) == pytest.approx(-2.0)
    with pytest.raises(ValueError, match="at least 2"):
        cohens_d([1], [2, 3])


def test_bipartite_side_smaller_than_k_falls_back_to_the_full_problem():
    rng = np.random.default_rng(6)
    g = WeightGraph.from_weights([rng.uniform(0, 1, (10, 2)), rng.uniform(0, 1, (2, 10))])  # sides 4 | 10
    reference = spectral_partition(g.adjacency().toarray(), k=6, solver="dense").eigenvalues
    for solver in SOLVERS:
        np.testing.assert_allclose(
            spectral_partition(g, k=6, solver=solver).eigenvalues, reference, atol=1e-6
        )


def test_null_graphs_are_the_shuffles_clusterability_scores(planted_graph):
    from modscope.cluster import null_graphs

    r = clusterability(planted_graph, k=3, n_shuffles=3, seed=9)
    nulls = list(null_graphs(planted_graph, n_shuffles=3, seed=9))
    assert len(nulls) == 3
    for g in nulls:
        for before, after in zip(planted_graph.blocks, g.blocks):
            np.testing.assert_array_equal(np.sort(before, axis=None), np.sort(after, axis=None))
    # each null graph, clustered with its shuffle's seed, gives exactly the n-cut clusterability reported
    from threadpoolctl import threadpool_limits

    from modscope.cluster.affinity import as_affinity
    from modscope.cluster.clusterability import _child, _seeds
    from modscope.cluster.spectral import partition_affinity

    with threadpool_limits(limits=1):
        redone = [
            partition_affinity(as_affinity(g), 3, seed=_child(s, 1)).ncut
            for g, s in zip(nulls, _seeds(9, 3)[1])
        ]
    assert redone == r.null_ncuts.tolist()
