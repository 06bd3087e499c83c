"""clusterability_penalty: gradients, invariance to unit rescaling, agreement with the weight graph."""

from __future__ import annotations

import functools
import itertools

import numpy as np
import pytest
import scipy.linalg
import torch

from modscope.graph import WeightGraph
from modscope.models import build_model
from modscope.training import clusterability_penalty, path_flow, train

pytestmark = pytest.mark.usefixtures("one_thread")


def _weights(sizes, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, a, generator=g, dtype=dtype) for a, b in itertools.pairwise(sizes)]


@pytest.mark.parametrize("invariant", [True, False])
def test_gradient_matches_finite_differences(invariant):
    ws = [w.requires_grad_() for w in _weights([3, 5, 4, 2], seed=1)]
    fn = functools.partial(
        lambda *w, inv: clusterability_penalty(list(w), n_eigs=3, invariant=inv), inv=invariant
    )
    assert torch.autograd.gradcheck(fn, ws, eps=1e-6, atol=1e-6, rtol=1e-4)


def _double_mlp():
    model = build_model("mlp:5-7-6-3", 0).double()
    with torch.no_grad():
        for m in (model.fc1, model.fc2):
            m.bias.uniform_(-0.5, 0.5, generator=torch.Generator().manual_seed(1))
    return model


def test_invariant_to_rescaling_a_unit_and_global_scaling():
    model = _double_mlp()
    x = torch.randn(10, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    out, base = model(x), clusterability_penalty(model, n_eigs=3)
    raw = clusterability_penalty(model, n_eigs=3, invariant=False)
    with torch.no_grad():  # unit 2 of fc1 (ReLU): incoming weights and bias x c, outgoing / c
        model.fc1.weight[2] *= 7.0
        model.fc1.bias[2] *= 7.0
        model.fc2.weight[:, 2] /= 7.0
        model.fc2.weight[4] *= 0.2  # and unit 4 of fc2, next to it
        model.fc2.bias[4] *= 0.2
        model.out.weight[:, 4] /= 0.2
    assert torch.allclose(model(x), out, rtol=1e-12, atol=1e-12)  # the same function
    assert clusterability_penalty(model, n_eigs=3).item() == pytest.approx(base.item(), rel=1e-10)
    # raw |W| edges would let the optimizer game the penalty by rescaling units
    assert clusterability_penalty(model, n_eigs=3, invariant=False).item() != pytest.approx(
        raw.item(), rel=1e-3
    )
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)
    assert clusterability_penalty(model, n_eigs=3).item() == pytest.approx(base.item(), rel=1e-10)
    with torch.no_grad():
        model.fc2.weight.mul_(0.01)  # scaling one layer (not a rescaling of the function) is also absorbed
    assert clusterability_penalty(model, n_eigs=3).item() == pytest.approx(base.item(), rel=1e-10)


def test_raw_form_matches_the_weight_graph_spectrum():
    model = build_model("mlp:6-8-7-3", 1).double()
    graph = WeightGraph.from_module(model)
    a = graph.adjacency().toarray()
    d = a.sum(1)
    s = a / np.sqrt(np.outer(d, d))
    eig = scipy.linalg.eigvalsh(np.eye(len(d)) - s)
    got = clusterability_penalty(model, n_eigs=4, invariant=False).item()
    assert got == pytest.approx(eig[1:5].sum(), rel=1e-10)
    no_in = clusterability_penalty(model, n_eigs=4, invariant=False, include_inputs=False).item()
    a2 = WeightGraph.from_module(model, include_inputs=False).adjacency().toarray()
    d2 = a2.sum(1)
    eig2 = scipy.linalg.eigvalsh(np.eye(len(d2)) - a2 / np.sqrt(np.outer(d2, d2)))
    assert no_in == pytest.approx(eig2[1:5].sum(), rel=1e-10)


def test_path_flow_blocks_conserve_flow():
    blocks = [w.abs() for w in _weights([4, 6, 5, 3], seed=3)]
    flows = path_flow(blocks)
    assert all(torch.allclose(f.sum(), torch.tensor(1.0, dtype=torch.float64)) for f in flows)
    for left, right in itertools.pairwise(flows):  # what enters a hidden unit leaves it
        assert torch.allclose(left.sum(1), right.sum(0))


def test_modular_network_scores_lower_and_dead_units_do_not_help():
    ws = _weights([8, 8, 8], seed=4)
    block = torch.block_diag(torch.ones(4, 4), torch.ones(4, 4)).double()
    modular = [w * block for w in ws]
    assert clusterability_penalty(modular, n_eigs=1).item() == pytest.approx(0.0, abs=1e-9)
    assert clusterability_penalty(ws, n_eigs=1).item() > 0.1
    dead = [w.clone() for w in ws]
    dead[0][3] = 0  # hidden unit 3 receives nothing: it is isolated in the path-flow graph, eigenvalue 1
    dead[1][:, 3] = 0
    assert clusterability_penalty(dead, n_eigs=1).item() > 0.05


def test_conv_models_and_errors():
    model = build_model("cnn:1x6x6:c4-M-c4-f5-f3", 0)
    value = clusterability_penalty(model, n_eigs=2)
    value.backward()
    assert model.conv1.weight.grad is not None and torch.isfinite(model.conv1.weight.grad).all()
    with pytest.raises(ValueError, match="n_eigs must be a positive int, got 0"):
        clusterability_penalty(model, n_eigs=0)
    with pytest.raises(ValueError, match="has 1846 nodes, more than max_nodes=1000"):
        clusterability_penalty(build_model("mlp:784-256-256-500-50", 0), max_nodes=1000)
    with pytest.raises(ValueError, match=r"weights\[1\] has 3 inputs but weights\[0\] has 4 outputs"):
        clusterability_penalty([torch.ones(4, 2), torch.ones(2, 3)])


def test_training_with_the_regularizer_lowers_it():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 6, generator=g)
    y = (x[:, 0] > 0).long()
    pen = functools.partial(clusterability_penalty, n_eigs=2)
    plain, reg = build_model("mlp:6-12-12-2", 0), build_model("mlp:6-12-12-2", 0)
    train(plain, (x, y), steps=40, batch_size=32, lr=1e-2)
    result = train(reg, (x, y), steps=40, batch_size=32, lr=1e-2, regularizer=(pen, 1.0))
    assert pen(reg).item() < pen(plain).item() - 0.05
    assert result.config["regularizer"] == {"penalty": "clusterability_penalty", "weight": 1.0}
