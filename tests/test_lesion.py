"""Lesions: a planted module that carries one class is found important for exactly that class;
silencing works after any activation and is undone afterwards."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from modscope.cluster import spectral_partition
from modscope.graph import WeightGraph
from modscope.lesion import LesionStudy, lesion_modules, lesion_pairs, silenced

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
