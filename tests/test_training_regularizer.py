"""clusterability_penalty: gradients, invariance to unit rescaling, agreement with the weight graph."""

from __future__ import annotations

import functools
import itertools

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from modscope.graph import WeightGraph
from modscope.models import build_model
from modscope.training import clusterability_penalty, path_flow, train
from modscope.training.regularizer import weight_blocks

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


def _randomize_batchnorms(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.weight.copy_(torch.randn(m.num_features, generator=g, dtype=m.weight.dtype))
                m.running_var.copy_(torch.rand(m.num_features, generator=g, dtype=m.weight.dtype) + 0.5)
    return model.eval()


def _bn_everywhere():
    """BatchNorm right after a conv (rows), after a nonlinearity (next columns) and at the output (rows)."""
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2), nn.BatchNorm2d(4),
        nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 2 * 2, 5), nn.ReLU(),
        nn.BatchNorm1d(5), nn.Linear(5, 3), nn.Tanh(), nn.BatchNorm1d(3),
    )  # fmt: skip


@pytest.mark.parametrize(
    "make",
    [
        lambda: build_model("mlp:5-7-6-3", 0),
        lambda: build_model("cnn:2x8x8:bc4-M-bc6-f5-f3", 0),
        _bn_everywhere,
        lambda: nn.Sequential(
            nn.Conv2d(4, 6, 3, groups=2), nn.ReLU(), nn.Conv2d(6, 6, 1, groups=3), nn.ReLU(),
            nn.Conv2d(6, 2, 1),
        ),
    ],
    ids=["mlp", "cnn-bn", "bn-rows-columns-output", "grouped-conv"],
)
@pytest.mark.parametrize("channel_norm", ["l1", "l2"])
def test_penalty_blocks_are_the_weight_graph_blocks(make, channel_norm):
    model = _randomize_batchnorms(make().double(), seed=5)
    graph = WeightGraph.from_module(model, channel_norm=channel_norm)
    blocks = weight_blocks(model, channel_norm=channel_norm)
    assert len(blocks) == len(graph.blocks)
    for got, want in zip(blocks, graph.blocks):
        np.testing.assert_array_equal(got.detach().numpy(), want)  # one rule, the same float64 operations
    got = clusterability_penalty(model, n_eigs=3, invariant=False, channel_norm=channel_norm).item()
    a = graph.adjacency().toarray()
    d = a.sum(1)
    want = scipy.linalg.eigvalsh(np.eye(len(d)) - a / np.sqrt(np.outer(d, d)))[1:4].sum()
    assert got == pytest.approx(want, rel=1e-10)


def test_batchnorm_is_folded_by_hand_and_differentiable():
    model = nn.Sequential(
        nn.Conv2d(2, 2, (1, 2), bias=False), nn.BatchNorm2d(2, eps=1.0), nn.ReLU(),
        nn.BatchNorm2d(2, eps=1.0), nn.Conv2d(2, 1, 1, bias=False),
    ).eval()  # fmt: skip
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[[[1.0, -2.0]], [[0.5, 0.5]]], [[[-3.0, 0.0]], [[2.0, -2.0]]]]))
        model[1].weight.copy_(torch.tensor([4.0, -0.5]))  # |gamma| / sqrt(var + eps) = (2, 0.5)
        model[1].running_var.copy_(torch.tensor([3.0, 0.0]))
        model[3].weight.copy_(torch.tensor([1.0, 3.0]))  # (0.5, 1)
        model[3].running_var.copy_(torch.tensor([3.0, 8.0]))
        model[4].weight.copy_(torch.tensor([[[[-1.0]], [[3.0]]]]))
    first, second = weight_blocks(model)
    # kernel-slice l1 norms [[3, 1], [3, 4]] scaled by row; |W| = [1, 3] of the second conv scaled by column
    assert first.tolist() == [[6.0, 2.0], [1.5, 2.0]] and second.tolist() == [[0.5, 3.0]]
    first.sum().backward()  # d/dgamma of sum_j |gamma_j| / sqrt(var_j + 1) * (row sum j)
    assert model[1].weight.grad.tolist() == [0.5 * 4.0, -1.0 * 7.0]
    assert model[0].weight.grad[1, 1].tolist() == [[0.5, -0.5]]  # sign(K) * row scale


def test_penalty_follows_a_replaced_layer():
    model = build_model("mlp:5-7-6-3", 0)
    before = clusterability_penalty(model, n_eigs=2, invariant=False)
    model.fc2 = nn.Linear(7, 6)
    with torch.no_grad():
        model.fc2.weight.copy_(torch.eye(6, 7))
    after = weight_blocks(model)[1]
    assert torch.equal(after, torch.eye(6, 7))
    assert clusterability_penalty(model, n_eigs=2, invariant=False).item() != pytest.approx(before.item())
