"""n-cut, spectral partitions and the shuffle test: known answers, references, invariants, errors."""

import importlib
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
from modscope.seeding import derive

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


@pytest.mark.parametrize("patience", [0, 4])
def test_clusterability_identical_for_any_number_of_jobs(planted_graph, patience, monkeypatch):
    module = importlib.import_module("modscope.cluster.clusterability")  # the name is also a function

    monkeypatch.setattr(module, "available_cpus", lambda: 2)  # two workers even on a 1-CPU machine
    seen = []
    r1 = clusterability(
        planted_graph, k=3, n_shuffles=6, seed=3, n_jobs=1, patience=patience,
        progress=lambda *call: seen.append(call),
    )  # fmt: skip
    r2 = clusterability(planted_graph, k=3, n_shuffles=6, seed=3, n_jobs=2, patience=patience)
    assert r1.to_dict() == r2.to_dict()
    # serial: one call per shuffle, after the network's own clustering (done = 0)
    assert [c[:3] for c in seen] == [("shuffles", d, 6) for d in range(7)]
    assert seen[0][3] == {"ncut": r1.ncut}


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
    with pytest.raises(ValueError, match=r"r\.json' is not a saved ClusterabilityResult"):
        ClusterabilityResult.load(path)


def test_clusterability_argument_errors(planted_graph):
    with pytest.raises(ValueError, match="n_shuffles"):
        clusterability(planted_graph, n_shuffles=1)
    with pytest.raises(ValueError, match="shuffle must be one of"):
        clusterability(planted_graph, shuffle="all")
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="n_jobs"):
            clusterability(planted_graph, n_jobs=bad)
    with pytest.raises(ValueError, match="seed"):
        clusterability(planted_graph, seed=-1)
    with pytest.raises(ValueError, match="patience"):
        clusterability(planted_graph, patience=-1)
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
    from modscope.cluster import null_graphs, shuffle_seed

    r = clusterability(planted_graph, k=3, n_shuffles=3, seed=9)
    nulls = list(null_graphs(planted_graph, n_shuffles=3, seed=9))
    assert len(nulls) == 3
    for g in nulls:
        for before, after in zip(planted_graph.blocks, g.blocks):
            np.testing.assert_array_equal(np.sort(before, axis=None), np.sort(after, axis=None))
    # each null graph, clustered with its shuffle's seed, gives exactly the n-cut clusterability reported
    redone = [spectral_partition(g, k=3, seed=shuffle_seed(9, j)) for j, g in enumerate(nulls)]
    assert [p.ncut for p in redone] == r.null_ncuts.tolist()
    assert [p.n_restarts for p in redone] == r.null_restarts.tolist()
    assert shuffle_seed(9, 2) == derive(9, "shuffle", 2)


# ---------------------------------------------------------------------- one API: settings, persistence


def test_clusterability_partition_is_spectral_partition(planted_graph):
    for seed in (0, 5):
        r = clusterability(planted_graph, k=3, n_shuffles=2, seed=seed, n_init=3, patience=2)
        p = spectral_partition(planted_graph, k=3, seed=seed, n_init=3, patience=2)
        assert r.partition.to_dict() == p.to_dict()
        assert r.ncut == p.ncut


def test_data_argument_only_is_positional(planted_graph):
    from modscope.cluster import null_graphs

    with pytest.raises(TypeError):
        spectral_partition(planted_graph, 3)
    with pytest.raises(TypeError):
        clusterability(planted_graph, 3)
    with pytest.raises(TypeError):
        next(null_graphs(planted_graph, 3))


def test_partition_records_every_setting_and_reproduces_from_them(planted_graph):
    p = spectral_partition(planted_graph, k=3, seed=11, solver="lanczos", n_init=4, patience=3, max_init=9)
    assert (p.seed, p.n_init, p.patience, p.max_init, p.solver, p.k) == (11, 4, 3, 9, "lanczos", 3)
    assert p.tol == 1e-6
    assert 4 <= p.n_restarts <= 9 and p.ncut == p.ncut_restarts.min()
    assert p.ncut_spread == pytest.approx(np.ptp(p.ncut_restarts))
    again = spectral_partition(
        planted_graph, k=p.k, seed=p.seed, solver=p.solver, n_init=p.n_init, patience=p.patience,
        max_init=p.max_init,
    )  # fmt: skip
    assert again.to_dict() == p.to_dict()


def test_first_restarts_do_not_depend_on_how_many_follow():
    rng = np.random.default_rng(7)
    g = WeightGraph.from_weights([rng.uniform(0, 1, (30, 40)), rng.uniform(0, 1, (20, 30))])
    few = spectral_partition(g, k=6, seed=2, n_init=3, patience=0)
    many = spectral_partition(g, k=6, seed=2, n_init=12, patience=0)
    assert few.n_restarts == 3 and many.n_restarts == 12
    np.testing.assert_array_equal(few.ncut_restarts, many.ncut_restarts[:3])
    assert many.ncut <= few.ncut


def test_stopping_rule_by_hand():
    from modscope.cluster.spectral import enough_restarts

    # best 5.0 at restart 1, no gain after: with patience 2, enough after 3 restarts (n_init 1)
    assert not enough_restarts([5.0, 5.1], n_init=1, patience=2)
    assert enough_restarts([5.0, 5.1, 5.0], n_init=1, patience=2)
    assert not enough_restarts([5.0, 5.1, 5.0], n_init=4, patience=2)
    # a gain resets the count; a gain below the relative IMPROVEMENT (1e-4) does not
    assert not enough_restarts([5.0, 5.1, 4.0, 4.2], n_init=1, patience=2)
    assert enough_restarts([5.0, 5.1, 4.9999, 5.2], n_init=1, patience=3)
    assert enough_restarts([5.0], n_init=1, patience=0)


def test_restarts_follow_the_rule_and_stop_at_max_init():
    from modscope.cluster.spectral import enough_restarts

    rng = np.random.default_rng(8)
    g = WeightGraph.from_weights([rng.uniform(0, 1, (40, 50)), rng.uniform(0, 1, (30, 40))])
    p = spectral_partition(g, k=8, seed=0, n_init=2, patience=3)
    r = p.ncut_restarts.tolist()
    assert enough_restarts(r, n_init=2, patience=3)
    assert not any(enough_restarts(r[:t], n_init=2, patience=3) for t in range(1, len(r)))
    capped = spectral_partition(g, k=8, seed=0, n_init=2, patience=1000, max_init=7)
    assert capped.n_restarts == 7
    with pytest.raises(ValueError, match="max_init"):
        spectral_partition(g, k=8, n_init=5, max_init=3)
    with pytest.raises(ValueError, match="patience"):
        spectral_partition(g, k=8, patience=1.5)


def test_partition_save_load_and_repr(tmp_path):
    rng = np.random.default_rng(9)
    g = WeightGraph.from_weights([rng.uniform(0, 1, (12, 10)), rng.uniform(0, 1, (5, 12))])
    p = spectral_partition(g, k=3, seed=1)
    p.save(tmp_path / "sub" / "p.json")
    back = Partition.load(tmp_path / "sub" / "p.json")
    assert back.to_dict() == p.to_dict()
    np.testing.assert_array_equal(back.ncut_restarts, p.ncut_restarts)
    assert not list((tmp_path / "sub").glob(".*.tmp"))  # the atomic write left no temporary file
    text = repr(p)
    assert text.startswith("Partition(k=3, ncut=") and f"best of {p.n_restarts} restarts" in text
    assert "seed=1" in text and "\n" not in text


def test_partition_from_dict_validates():
    good = spectral_partition(np.ones((6, 6)) - np.eye(6), k=2).to_dict()
    before = ("labels", "ncut", "k", "sizes", "cuts", "volumes", "eigenvalues", "solver")
    old = {key: good[key] for key in before}
    assert Partition.from_dict(old).seed is None  # written before the settings were recorded
    for bad, match in [
        ({**good, "surprise": 1}, "unknown partition keys"),
        ({key: v for key, v in good.items() if key != "labels"}, "lacks the keys"),
        ({**good, "sizes": [1, 2, 3]}, "k=2 entries"),
        ({**good, "labels": [0, 1, 5, 0, 0, 0]}, "labels must lie"),
        ({**good, "labels": [[0, 1]]}, "1-D"),
    ]:
        with pytest.raises(ValueError, match=match):
            Partition.from_dict(bad)


def test_partition_load_errors_name_the_file(tmp_path):
    path = tmp_path / "p.json"
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"p\.json' is not a saved Partition"):
        Partition.load(path)
    with pytest.raises(FileNotFoundError, match=r"missing\.json"):
        Partition.load(tmp_path / "missing.json")


def test_clusterability_result_records_settings_and_reads_back(planted_graph, tmp_path):
    r = clusterability(planted_graph, k=3, n_shuffles=3, seed=4, solver="dense", n_init=2, patience=1)
    assert (r.solver, r.n_init, r.patience, r.seed, r.shuffle) == ("dense", 2, 1, 4, "layer")
    assert r.null_restarts.shape == (3,) and np.all(r.null_restarts >= 2)
    assert r.ncut_spread == r.partition.ncut_spread
    r.save(tmp_path / "r.json")
    back = ClusterabilityResult.load(tmp_path / "r.json")
    assert back.to_dict() == r.to_dict() and back.null_restarts.dtype == np.int64
    text = repr(r)
    assert text.startswith("ClusterabilityResult(ncut=") and "restarts, spread" in text
    assert f"p={r.p_value:.4g}" in text and "solver='dense'" in text
    with pytest.raises(ValueError, match="unknown clusterability result keys"):
        ClusterabilityResult.from_dict({**r.to_dict(), "typo": 1})
    with pytest.raises(ValueError, match="n_shuffles=3"):
        ClusterabilityResult.from_dict({**r.to_dict(), "null_ncuts": [1.0]})


def test_clusterability_nulls_to_frame(planted_graph):
    pd = pytest.importorskip("pandas")
    from modscope.cluster import shuffle_seed

    r = clusterability(planted_graph, k=3, n_shuffles=4, seed=2)
    frame = r.to_frame()
    assert isinstance(frame, pd.DataFrame) and frame.index.name == "shuffle"
    assert list(frame.columns) == ["seed", "ncut", "restarts", "at_or_below"]
    assert frame["ncut"].tolist() == r.null_ncuts.tolist()
    assert frame["seed"].tolist() == [shuffle_seed(2, j) for j in range(4)]
    assert frame["at_or_below"].sum() + 1 == round(r.p_value * 5)


def test_to_frame_without_pandas_says_what_to_install(planted_graph, monkeypatch):
    import sys

    r = clusterability(planted_graph, k=3, n_shuffles=2, seed=0)
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas now raises ImportError
    with pytest.raises(ImportError, match="pip install pandas"):
        r.to_frame()


# ---------------------------------------------------------------------- worker processes


def test_worker_count_is_capped_by_cpus_and_tasks(monkeypatch):
    module = importlib.import_module("modscope.cluster.clusterability")  # the name is also a function
    from modscope.cluster import worker_count

    monkeypatch.setattr(module, "available_cpus", lambda: 4)
    assert worker_count(1000, 50) == 4
    assert worker_count(-1, 50) == 4
    assert worker_count(-1, 3) == 3
    assert worker_count(3, 2) == 2 and worker_count(1, 50) == 1
    for bad in (0, -2, -1000, 2.0, None, True):
        with pytest.raises(ValueError, match="n_jobs must be a positive int or -1"):
            worker_count(bad, 50)


def test_clusterability_starts_no_more_workers_than_cpus(planted_graph, monkeypatch):
    module = importlib.import_module("modscope.cluster.clusterability")  # the name is also a function

    started = []
    real = module.Parallel

    def spy(*args, **kwargs):
        started.append(kwargs["n_jobs"])
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "Parallel", spy)
    monkeypatch.setattr(module, "available_cpus", lambda: 2)
    r = clusterability(planted_graph, k=3, n_shuffles=5, seed=1, n_jobs=1000)
    assert started == [2]
    monkeypatch.setattr(module, "available_cpus", lambda: 1)
    again = clusterability(planted_graph, k=3, n_shuffles=5, seed=1, n_jobs=1000)
    assert started == [2]  # one CPU: the shuffles run in this process, no pool
    assert again.to_dict() == r.to_dict()
