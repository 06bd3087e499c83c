"""Lesions: a planted module that carries one class is found important for exactly that class;
silencing works after any activation and is undone afterwards."""

import json
import sys

import numpy as np
import pytest
import torch
from torch import nn

import modscope
from modscope.cluster import spectral_partition
from modscope.graph import WeightGraph
from modscope.lesion import LesionStudy, PairStudy, class_accuracy, lesion_modules, lesion_pairs, silenced
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
