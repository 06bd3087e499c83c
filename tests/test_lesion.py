"""Lesions: a planted module that carries one class is found important for exactly that class;
silencing works after any activation and is undone afterwards; a module that is its whole layer, or whose
layer holds too few sets of its size, is labelled so and left out of the combined test."""

import json
import math
import sys
from itertools import combinations

import numpy as np
import pytest
import torch
from scipy.stats import combine_pvalues
from torch import nn

import modscope
from modscope.cluster import Partition, spectral_partition
from modscope.graph import WeightGraph
from modscope.lesion import (
    LABELS,
    TESTED,
    UNTESTED,
    LesionStudy,
    PairStudy,
    class_accuracy,
    lesion_modules,
    lesion_pairs,
    silenced,
)
from modscope.lesion.controls import control_sets, distinct_sets, verdict
from modscope.seeding import numpy_rng

WIDTH = 8  # hidden units per class


def planted(n_classes=3):
    """Input feature c feeds hidden units c*WIDTH..: those units alone feed output c."""
    model = nn.Sequential(
        nn.Linear(n_classes, n_classes * WIDTH), nn.ReLU(), nn.Linear(n_classes * WIDTH, n_classes)
    )
    with torch.no_grad():
        for layer in (model[0], model[2]):
            layer.weight.zero_()
            layer.bias.zero_()
        for c in range(n_classes):
            model[0].weight[c * WIDTH : (c + 1) * WIDTH, c] = 1.0
            model[2].weight[c, c * WIDTH : (c + 1) * WIDTH] = 1.0
    g = torch.Generator().manual_seed(0)
    y = torch.arange(300) % n_classes
    x = 2.0 * nn.functional.one_hot(y, n_classes).float() + 0.5 * torch.rand(300, n_classes, generator=g)
    return model, (x, y)


@pytest.fixture(scope="module")
def study():
    model, data = planted()
    graph = WeightGraph.from_module(model)
    partition = spectral_partition(graph, k=3)
    return model, graph, data, lesion_modules(model, graph, partition, data, n_random=20, seed=0)


def test_planted_modules_are_important_for_their_class_only(study):
    result = study[3]
    assert result.accuracy == 1.0
    assert len(result.modules) == 3
    for m in result.modules:
        cls = m.units[0] // WIDTH
        assert sorted(m.units) == list(range(cls * WIDTH, (cls + 1) * WIDTH))
        expected = np.zeros(3)
        expected[cls] = 1.0
        np.testing.assert_allclose(m.class_damage, expected)
        assert m.damage == pytest.approx(1 / 3)
        assert max(m.random_damage) == 0.0  # 8 random units of 24 never hold a whole class
        assert m.p_important == pytest.approx(1 / 21) and m.label == "important"
    assert result.combined_p < 0.01


def test_silencing_is_undone_and_study_round_trips(study):
    model, graph, data, result = study
    assert result.modules
    x = data[0][:5]
    before = model(x)
    with pytest.raises(RuntimeError), silenced(model, graph, {1: [0, 1]}):
        raise RuntimeError("boom")
    assert all(not m._forward_pre_hooks for m in model.modules())
    assert torch.equal(model(x), before)
    back = LesionStudy.from_dict(json.loads(json.dumps(result.to_dict())))
    assert back == result


def test_pairs_of_independent_modules_do_not_interact(study):
    model, graph, data, result = study
    pairs = lesion_pairs(model, graph, result, data, n_random=5)
    assert len(pairs) == 3
    for p in pairs:
        assert p.damage == pytest.approx(2 / 3) and p.interaction == pytest.approx(0.0)
        assert p.p_value == 1.0


def test_silencing_after_sigmoid_zeroes_the_unit_output():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Sigmoid(), nn.Linear(5, 3))
    graph = WeightGraph.from_module(model)
    x = torch.randn(7, 4)
    reference = nn.Sequential(*[m for m in model])
    with silenced(model, graph, {1: [2, 4]}):
        out = model(x)
    h = torch.sigmoid(model[0](x))
    h[:, [2, 4]] = 0.0  # sigmoid(0) = 0.5: zeroing the pre-activation would not silence the unit
    torch.testing.assert_close(out, model[2](h))
    assert torch.equal(model(x), reference(x))


def test_silencing_a_channel_before_flatten():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(3 * 16, 2))
    graph = WeightGraph.from_module(model)
    x = torch.randn(5, 1, 10, 10)
    with silenced(model, graph, {1: [1]}):
        out = model(x)
    feats = model[3](model[2](model[1](model[0](x))))
    feats[:, 16:32] = 0.0  # channel 1 owns flattened features 16..31 (4x4 map)
    torch.testing.assert_close(out, model[4](feats))


def test_bad_layer_is_refused():
    model, _ = planted()
    graph = WeightGraph.from_module(model)
    with pytest.raises(ValueError, match="not a hidden layer"), silenced(model, graph, {0: [0]}):
        pass


@pytest.fixture(scope="module")
def random_net():
    """A random MLP whose modules and controls have varied, non-zero damages."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    x = torch.randn(200, 6)
    y = model(x).argmax(1)  # the model is right on every example: damage = lost accuracy
    graph = WeightGraph.from_module(model)
    return model, graph, spectral_partition(graph, k=5, seed=0), (x, y)


def test_study_records_its_settings_and_round_trips_through_a_file(study, tmp_path):
    model, graph, data, result = study
    settings = (result.n_random, result.alpha, result.seed, result.min_units, result.n_eval)
    assert settings == (20, 0.05, 0, 2, 300)
    assert result.n_classes == 3 and result.count("important") == 3
    result.save(tmp_path / "study.json")
    assert LesionStudy.load(tmp_path / "study.json") == result
    pairs = lesion_pairs(model, graph, result, data, seed=4)
    assert (pairs.n_random, pairs.seed, pairs.n_eval) == (20, 4, 300)  # n_random defaults to the study's
    pairs.save(tmp_path / "pairs.json")
    assert PairStudy.load(tmp_path / "pairs.json") == pairs
    with pytest.raises(ValueError, match="not a saved LesionStudy"):
        LesionStudy.load(tmp_path / "pairs.json")
    with pytest.raises(FileNotFoundError):
        LesionStudy.load(tmp_path / "missing.json")


def test_reprs_are_one_readable_line(study):
    model, graph, data, result = study
    text = repr(result)
    assert "\n" not in text and len(text) < 300
    assert "3 modules: 3 important, 0 prunable, 0 not significant" in text and "n_random=20" in text
    assert repr(result.modules[0]).startswith("ModuleLesion(layer=1 '0', cluster=")
    assert "label='important'" in repr(result.modules[0])
    pairs = lesion_pairs(model, graph, result, data, n_random=2)
    assert repr(pairs).startswith("PairStudy(3 pairs; n_random=2")


def test_to_frame_has_one_row_per_module_and_pair(study):
    pd = pytest.importorskip("pandas")
    model, graph, data, result = study
    frame = result.to_frame()
    assert isinstance(frame, pd.DataFrame) and len(frame) == 3
    assert list(frame.columns[:4]) == ["layer", "layer_name", "cluster", "n_units"]
    assert frame["label"].tolist() == ["important"] * 3 and frame["n_units"].tolist() == [WIDTH] * 3
    for (_, row), m in zip(frame.iterrows(), result.modules):
        assert [row[f"damage_class_{c}"] for c in range(3)] == list(m.class_damage)
    pairs = lesion_pairs(model, graph, result, data, n_random=2).to_frame()
    assert pairs[["a", "b"]].values.tolist() == [[0, 1], [0, 2], [1, 2]]
    assert pairs["interaction"].abs().max() < 1e-12


def test_to_frame_without_pandas_says_how_to_get_it(study, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # makes `import pandas` raise ImportError
    with pytest.raises(ImportError, match="pip install pandas"):
        study[3].to_frame()


def test_controls_come_from_the_modules_own_seed_stream(random_net):
    model, graph, partition, data = random_net
    full = lesion_modules(model, graph, partition, data, n_random=6, min_units=1, seed=11)
    assert any(m.damage > 0 for m in full.modules) and any(max(m.random_damage) > 0 for m in full.modules)
    # Known answer: the controls of a module are draws of numpy_rng(seed, "lesion", layer, cluster).
    m = max(full.modules, key=lambda m: max(m.random_damage))
    rng = numpy_rng(11, "lesion", m.layer, m.cluster)
    base = class_accuracy(model, data)
    expected = []
    for _ in range(6):
        with silenced(model, graph, {m.layer: rng.choice(16, len(m.units), replace=False)}):
            expected.append(float(base.mean() - class_accuracy(model, data, n_classes=4).mean()))
    assert list(m.random_damage) == expected
    # ... so they do not depend on which other modules are studied.
    big = max(len(m.units) for m in full.modules)
    some = lesion_modules(model, graph, partition, data, n_random=6, min_units=big, seed=11)
    assert 0 < len(some.modules) < len(full.modules)
    by_key = {(m.layer, m.cluster): m for m in full.modules}
    assert all(by_key[m.layer, m.cluster] == m for m in some.modules)
    other = lesion_modules(model, graph, partition, data, n_random=6, min_units=1, seed=12)
    assert [m.random_damage for m in other.modules] != [m.random_damage for m in full.modules]


def test_progress_reports_modules_and_pairs(study):
    model, graph, data, _ = study
    calls = []
    record = lambda *a: calls.append(a)
    partition = spectral_partition(graph, k=3)
    result = lesion_modules(model, graph, partition, data, n_random=3, alpha=0.3, progress=record)
    lesion_pairs(model, graph, result, data, progress=record)
    expected = [("modules", d, 3) for d in range(4)] + [("pairs", d, 3) for d in range(4)]
    assert [c[:3] for c in calls] == expected
    assert calls[3][3] == {"important": 3}


def test_bad_arguments_are_named(study):
    model, graph, data, result = study
    partition = spectral_partition(graph, k=3)
    x, y = data
    cases = [
        ({"n_random": 0}, "n_random"),
        ({"min_units": 0}, "min_units"),
        ({"alpha": 1.5}, "alpha"),
        ({"seed": -1}, "seed"),
        ({"seed": None}, "seed"),
    ]
    for kwargs, name in cases:
        with pytest.raises(ValueError, match=name):
            lesion_modules(model, graph, partition, data, **kwargs)
    for bad, what in [((x, y[:-1]), "as many inputs"), ((x, y.float()), "class ids"), (x, "pair")]:
        with pytest.raises(ValueError, match=what):
            lesion_modules(model, graph, partition, bad)
    with pytest.raises(TypeError):
        lesion_modules(model, graph, partition, data, 20)  # settings are keyword-only
    with pytest.raises(ValueError, match="eval_set the study was measured on"):
        lesion_pairs(model, graph, result, (x[:100], y[:100]))
    with pytest.raises(ValueError, match="another graph"):
        lesion_pairs(model, WeightGraph.from_weights([torch.ones(2, 3), torch.ones(3, 2)]), result, data)


def test_lesion_api_at_the_top_level():
    for name in ("lesion_modules", "lesion_pairs", "LesionStudy", "PairStudy", "ModuleLesion", "PairLesion"):
        assert getattr(modscope, name) is getattr(modscope.lesion, name)
        assert name in modscope.__all__ and name in dir(modscope)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        modscope.nope  # noqa: B018


# ---------------------------------------------------- modules that random same-size sets cannot test
def _partition(labels):
    labels = np.asarray(labels)
    k = int(labels.max()) + 1
    zeros = np.zeros(k)
    sizes = np.bincount(labels, minlength=k)
    return Partition(labels, 0.0, k, sizes, zeros, zeros, zeros, solver="stored")


@pytest.fixture(scope="module")
def whole_layer():
    """The planted classes, then a second hidden layer of 6 units (2 per class) that is one cluster:
    silencing that whole layer leaves every output 0, so every example is called class 0 (damage 2/3)."""
    model = nn.Sequential(nn.Linear(3, 24), nn.ReLU(), nn.Linear(24, 6), nn.ReLU(), nn.Linear(6, 3))
    planted_model, data = planted()
    with torch.no_grad():
        model[0].load_state_dict(planted_model[0].state_dict())
        for layer in (model[2], model[4]):
            layer.weight.zero_()
            layer.bias.zero_()
        for c in range(3):
            model[2].weight[2 * c : 2 * c + 2, c * WIDTH : (c + 1) * WIDTH] = 1.0
            model[4].weight[c, 2 * c : 2 * c + 2] = 1.0
    graph = WeightGraph.from_module(model)
    hidden = [u // WIDTH for u in range(3 * WIDTH)]
    partition = _partition([0, 1, 2, *hidden, *[3] * 6, 0, 1, 2])
    return model, graph, data, lesion_modules(model, graph, partition, data, n_random=20, seed=0)


def test_a_whole_layer_module_is_labelled_so_and_left_out_of_the_combined_test(whole_layer, tmp_path):
    _, graph, _, result = whole_layer
    *planted_modules, whole = result.modules
    assert [m.label for m in planted_modules] == ["important"] * 3
    assert (whole.layer, len(whole.units)) == (2, graph.layers[2].size)
    # A large damage that used to read "not significant" (p = 1: every control was the module itself).
    assert whole.label == "whole layer" and whole.damage == pytest.approx(2 / 3)
    np.testing.assert_allclose(whole.class_damage, [0.0, 1.0, 1.0])
    assert whole.random_damage == () and np.isnan(whole.p_important) and np.isnan(whole.p_prunable)
    # Fisher's combined p is the three tested modules' alone.
    assert result.n_tested == 3 and result.count("whole layer") == 1 and result.count("untestable") == 0
    assert result.combined_p == combine_pvalues([1 / 21] * 3, method="fisher").pvalue
    assert result.combined_p < combine_pvalues([1 / 21] * 3 + [1.0], method="fisher").pvalue
    assert "1 whole layer, 0 untestable; combined_p=" in repr(result) and "over 3 tested" in repr(result)
    assert "p_important=nan, label='whole layer'" in repr(whole)
    result.save(tmp_path / "study.json")  # NaN is saved as null and read back as NaN
    assert json.loads((tmp_path / "study.json").read_text())["modules"][3]["p_important"] is None
    assert LesionStudy.load(tmp_path / "study.json") == result


def test_a_whole_layer_module_is_never_paired(whole_layer):
    model, graph, data, result = whole_layer
    pairs = lesion_pairs(model, graph, result, data, n_random=3)
    assert [(p.a, p.b) for p in pairs] == [(0, 1), (0, 2), (1, 2)]


def test_to_frame_shows_the_untested_module(whole_layer):
    pytest.importorskip("pandas")
    frame = whole_layer[3].to_frame()
    assert frame["label"].tolist() == ["important"] * 3 + ["whole layer"]
    assert frame["n_controls"].tolist() == [20, 20, 20, 0]
    last = frame.iloc[3]
    assert np.isnan(last["p_important"]) and np.isnan(last["random_damage_mean"]) and last["n_units"] == 6


def test_all_but_one_unit_is_compared_with_every_other_such_set(random_net):
    """15 of 16 units: the layer holds only C(16, 15) = 16 such sets, so the controls are the 15 others,
    each once in lexicographic order, and the p-value is exact with floor 1/16 > 0.05: untestable."""
    model, graph, _, data = random_net
    labels = np.zeros(graph.n_nodes, dtype=int)
    first = graph.offsets[1]
    labels[first + 4] = 1  # hidden layer 1: unit 4 alone (below min_units), units 0-3 and 5-15 together
    labels[graph.offsets[2] :] = 2
    kwargs = {"n_random": 20, "min_units": 2}
    result = lesion_modules(model, graph, _partition(labels), data, **kwargs, seed=0)
    m = next(m for m in result.modules if m.layer == 1)
    assert m.units == tuple(u for u in range(16) if u != 4)
    base = class_accuracy(model, data)
    expected = []
    for left_out in range(15, -1, -1):  # combinations(range(16), 15) leaves out 15, 14, ..., 0
        if left_out != 4:
            with silenced(model, graph, {1: [u for u in range(16) if u != left_out]}):
                expected.append(float(base.mean() - class_accuracy(model, data, n_classes=4).mean()))
    assert list(m.random_damage) == expected
    assert m.p_important == (1 + sum(d >= m.damage for d in expected)) / 16
    assert m.p_prunable == (1 + sum(d <= m.damage for d in expected)) / 16
    assert m.label == "untestable" and result.count("untestable") == 1
    # Exhaustive controls use no randomness; at alpha = 0.1 >= 1/16 the same exact p-values are tested.
    again = lesion_modules(model, graph, _partition(labels), data, **kwargs, seed=5, alpha=0.1)
    m10 = next(m for m in again.modules if m.layer == 1)
    assert (m10.random_damage, m10.p_important) == (m.random_damage, m.p_important)
    assert m10.label in ("important", "prunable", "not significant")
    tested = [x.p_important for x in result.modules if x.label not in UNTESTED]
    assert result.combined_p == (combine_pvalues(tested, method="fisher").pvalue if tested else 1.0)


def test_distinct_sets_is_the_binomial_coefficient_up_to_its_cap():
    for n_layer in range(1, 30):
        for n in range(1, n_layer + 1):
            for cap in (1, 7, 20, 1000):
                exact = math.comb(n_layer, n)
                assert distinct_sets(n_layer, n, cap) == (exact if exact <= cap else cap + 1)
    assert distinct_sets(100_000, 50_000, cap=40) == 41  # stops early on wide layers


@pytest.mark.parametrize(("n_layer", "n_units"), [(5, 2), (6, 3), (7, 6), (8, 2)])
def test_exhaustive_controls_give_a_valid_exact_test(n_layer, n_units):
    """Known answer: under the null the module is any of the C(N, n) sets with equal chance; its exact
    p-value against the other sets is then uniform on {1/C, ..., 1}: P(p <= a) <= a for every a."""
    damages = numpy_rng(0, "test", n_layer, n_units).random(math.comb(n_layer, n_units))
    index = {s: i for i, s in enumerate(combinations(range(n_layer), n_units))}
    rng = np.random.default_rng(0)
    ps = []
    for module, i in index.items():
        sets = control_sets(n_layer, np.array(module), 100, rng)
        assert len(sets) == len(index) - 1 and module not in {tuple(s) for s in sets}
        random = np.array([damages[index[tuple(s)]] for s in sets])
        ps.append(verdict(float(damages[i]), random, len(index), alpha=0.05)[0])
    ps = np.array(ps)
    np.testing.assert_allclose(np.sort(ps), np.arange(1, len(index) + 1) / len(index))
    assert all(np.mean(ps <= a) <= a + 1e-12 for a in (0.05, 0.1, 0.25, 0.5))


def test_verdict_labels_by_the_number_of_distinct_sets():
    no_controls = np.array([])
    p_imp, p_pru, label = verdict(0.75, no_controls, distinct=1, alpha=0.05)
    assert label == "whole layer" and math.isnan(p_imp) and math.isnan(p_pru)
    top = np.zeros(18)  # the module hurts more than all 18 other sets of a layer that holds 19
    assert verdict(0.5, top, distinct=19, alpha=0.05) == (1 / 19, 1.0, "untestable")
    assert verdict(0.5, np.zeros(19), distinct=20, alpha=0.05) == (1 / 20, 1.0, "important")
    # Sampled controls of a large layer: the Monte Carlo p-value, as before.
    assert verdict(0.5, np.zeros(20), distinct=10**6, alpha=0.05)[::2] == (1 / 21, "important")
    assert set(LABELS) == set(TESTED) | set(UNTESTED)
    # A whole layer draws nothing; a small layer gives every other set; a large one n_random draws.
    rng = np.random.default_rng(0)
    assert control_sets(6, np.arange(6), 20, rng) == []
    assert len(control_sets(6, np.arange(5), 20, rng)) == 5
    assert len(control_sets(21, np.arange(20), 20, rng)) == 20  # C(21, 20) - 1 = 20 others
    drawn = control_sets(22, np.arange(21), 20, np.random.default_rng(3))  # 21 others: drawn
    expected = np.random.default_rng(3)
    assert all(np.array_equal(s, expected.choice(22, 21, replace=False)) for s in drawn) and len(drawn) == 20
