"""modscope.training.clusterable_init: exact within/across-module ratios, balanced seeded assignment."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from modscope.models import build_model
from modscope.training import ModuleAssignment, clusterable_init

pytestmark = pytest.mark.usefixtures("one_thread")


def _factor(a: ModuleAssignment, src: str, dst: str, inside: float, across: float) -> torch.Tensor:
    s, d = torch.tensor(a.modules_of(src)), torch.tensor(a.modules_of(dst))
    f = torch.where(d[:, None] == s[None, :], torch.tensor(inside), torch.tensor(across))
    return torch.where((d[:, None] < 0) | (s[None, :] < 0), torch.tensor(1.0), f)


def test_mlp_ratios_are_exact():
    model = build_model("mlp:12-20-20-5", 0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    a = clusterable_init(model, n_modules=4, inside=4.6, across=0.6, seed=3)
    assert a.layers == ("input", "fc1", "fc2", "out")
    # hidden-to-hidden weights: x4.6 within a module, x0.6 across, bit-exact
    lab1, lab2 = a.modules_of("fc1"), a.modules_of("fc2")
    w0, w1 = before["fc2.weight"], model.fc2.weight.detach()
    same = torch.tensor(lab2[:, None] == lab1[None, :])
    assert torch.equal(w1[same], w0[same] * 4.6) and torch.equal(w1[~same], w0[~same] * 0.6)
    assert same.any() and (~same).any()
    # inputs and outputs are unassigned by default: their weights are untouched, biases too
    assert (a.modules_of("input") == -1).all() and (a.modules_of("out") == -1).all()
    assert torch.equal(model.fc1.weight, before["fc1.weight"])
    assert torch.equal(model.out.weight, before["out.weight"])
    assert all(torch.equal(model.state_dict()[k], before[k]) for k in before if k.endswith("bias"))


def test_including_inputs_and_outputs():
    model = build_model("mlp:12-20-5", 0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    a = clusterable_init(model, n_modules=3, seed=0, include_inputs=True, include_outputs=True)
    assert (a.modules_of("input") >= 0).all() and (a.modules_of("out") >= 0).all()
    assert torch.equal(model.fc1.weight, before["fc1.weight"] * _factor(a, "input", "fc1", 4.6, 0.6))
    assert torch.equal(model.out.weight, before["out.weight"] * _factor(a, "fc1", "out", 4.6, 0.6))


def test_assignment_is_balanced_seeded_and_serializable():
    before = torch.get_rng_state()
    a = clusterable_init(build_model("mlp:4-23-23-2", 0), n_modules=5, seed=1)
    b = clusterable_init(build_model("mlp:4-23-23-2", 1), n_modules=5, seed=1)
    c = clusterable_init(build_model("mlp:4-23-23-2", 0), n_modules=5, seed=2)
    assert torch.equal(torch.get_rng_state(), before)
    assert a == b and a != c
    counts = np.bincount(a.modules_of("fc1"), minlength=5)
    assert counts.max() - counts.min() <= 1 and counts.sum() == 23
    assert not np.array_equal(a.modules_of("fc1"), a.modules_of("fc2"))  # each layer its own draw
    assert ModuleAssignment.from_dict(json.loads(json.dumps(a.to_dict()))) == a


def test_conv_channels_and_flatten():
    model = build_model("cnn:2x4x4:c6-M-c6-f8-f3", 0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    a = clusterable_init(model, n_modules=2, inside=2.0, across=0.5, seed=0, include_inputs=True)
    f = _factor(a, "conv1", "conv2", 2.0, 0.5)
    assert torch.equal(model.conv2.weight, before["conv2.weight"] * f[:, :, None, None])
    f = _factor(a, "input", "conv1", 2.0, 0.5)
    assert torch.equal(model.conv1.weight, before["conv1.weight"] * f[:, :, None, None])
    # fc1 after the flatten of 6 channels x 2x2: the 4 positions of channel c share c's module
    f = _factor(a, "conv2", "fc1", 2.0, 0.5).repeat_interleave(4, dim=1)
    assert torch.equal(model.fc1.weight, before["fc1.weight"] * f)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"n_modules": 0}, "n_modules must be a positive int, got 0"), ({"inside": -1.0}, "inside must be")],
)
def test_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        clusterable_init(build_model("mlp:4-8-2", 0), **kwargs)


class _DeclaredBackwards(torch.nn.Module):
    """The output layer is declared first: the chain is the order forward() calls the layers."""

    def __init__(self):
        super().__init__()
        self.out = torch.nn.Linear(6, 2)
        self.bn = torch.nn.BatchNorm1d(6)
        self.hidden = torch.nn.Linear(6, 6)
        self.first = torch.nn.Linear(3, 6)

    def forward(self, x):
        return self.out(torch.relu(self.bn(self.hidden(torch.relu(self.first(x))))))


def test_layers_follow_forward_not_declaration_order():
    model = _DeclaredBackwards()
    before = model.hidden.weight.detach().clone()
    a = clusterable_init(model, n_modules=2, inside=3.0, across=0.5, seed=0)
    assert a.layers == ("input", "first", "hidden", "out")
    assert torch.equal(model.hidden.weight, before * _factor(a, "first", "hidden", 3.0, 0.5))


def test_a_model_that_is_not_a_chain_is_named():
    from modscope.graph import GraphError

    with pytest.raises(GraphError, match=r"module 'lstm' \(LSTM\)"):
        clusterable_init(build_model("lstm:4-8-3", 0))
