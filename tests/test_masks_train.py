"""train_masks: known answers, per-example alignment, vmap/loop agreement, model state, checkpoints."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from modscope.masks import (
    ExpectedKeptPenalty,
    GumbelSigmoid,
    HardConcrete,
    LogitPenalty,
    MaskSet,
    evaluate_masks,
    iou,
    p_specialize,
    train_masks,
)
from modscope.masks.forward import grouped_forward
from modscope.masks.frozen import frozen

# ---------------------------------------------------------------- small models and data (shared in this file)


def two_path_net() -> nn.Sequential:
    """4 -> 4 -> 4, both layers 3 * I, no bias: outputs 0-1 read inputs 0-1 only, outputs 2-3 inputs 2-3."""
    net = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4))
    with torch.no_grad():
        for layer in (net[0], net[2]):
            layer.weight.copy_(3 * torch.eye(4))
            layer.bias.zero_()
    return net


def side_data(side: int, n: int = 256, seed: int = 0):
    """Task "left" (side 0) / "right" (side 1): other side's inputs are zero; class = argmax of own side."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 4)
    x[:, 2 * side : 2 * side + 2] = torch.rand(n, 2, generator=g) + 0.05
    return x, x[:, 2 * side : 2 * side + 2].argmax(1) + 2 * side


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


class LSTMNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(3, 8, batch_first=True)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.fc(out[:, -1])


class TransformerNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(5, 8)
        layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.5, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.fc = nn.Linear(8, 3)

    def forward(self, tokens):
        return self.fc(self.enc(self.emb(tokens)).mean(1))


def make(kind: str, seed: int = 0):
    """(model, inputs x of 16 examples, targets y)."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    if kind == "mlp":
        model, x = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 3)), torch.randn(16, 5, generator=g)
    elif kind == "cnn":
        model, x = CNN(), torch.randn(16, 1, 4, 4, generator=g)
        model.bn.running_mean.uniform_(-0.5, 0.5)  # non-trivial running statistics
    elif kind == "lstm":
        model, x = LSTMNet(), torch.randn(16, 4, 3, generator=g)
    else:
        model, x = TransformerNet(), torch.randint(5, (16, 6), generator=g)
    return model, x, torch.randint(3, (16,), generator=g)


def snapshot(model: nn.Module):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        [p.requires_grad for p in model.parameters()],
        [m.training for m in model.modules()],
    )


def assert_same_state(model: nn.Module, snap) -> None:
    state, flags, modes = snap
    now = model.state_dict()
    assert list(now) == list(state)
    for k, v in state.items():
        assert torch.equal(now[k], v) and now[k].dtype == v.dtype, k
    assert [p.requires_grad for p in model.parameters()] == flags
    assert [m.training for m in model.modules()] == modes
    assert all(p.grad is None for p in model.parameters())


# ---------------------------------------------------------------- known answers


@pytest.fixture(scope="module")
def left_right():
    net = two_path_net()
    tasks = {"left": side_data(0), "right": side_data(1)}
    masks = train_masks(net, tasks, F.cross_entropy, steps=150, beta=1e-2, lr=0.05, batch_size=64, seed=0)
    return net, masks


def test_known_answer_keeps_exactly_the_task_path(left_right):
    _, masks = left_right
    diag = torch.zeros(4, 4, dtype=torch.bool)
    left, right = diag.clone(), diag.clone()
    left[[0, 1], [0, 1]] = True
    right[[2, 3], [2, 3]] = True
    for layer in ("0.weight", "2.weight"):
        # Off-diagonal weights are 0 and the other side's inputs are 0: no effect, so the sparsity term
        # drops them.
        assert torch.equal(masks["left"][layer], left), masks["left"][layer]
        assert torch.equal(masks["right"][layer], right), masks["right"][layer]
    assert iou(masks["left"], masks["right"]).total == 0.0
    assert masks.param_names == ("0.weight", "2.weight")  # biases are not masked by default


def test_known_answer_inverted_mask_destroys_own_task_and_spares_the_other(left_right):
    net, masks = left_right
    evals = {"left": [side_data(0, seed=1)], "right": [side_data(1, seed=1)]}
    table = evaluate_masks(net, masks, evals)
    assert table.score("full", None, "left") == 1.0 and table.score("full", None, "right") == 1.0
    assert table.score("mask", "left", "left") == 1.0
    assert table.score("inverted", "left", "left") <= 0.6  # outputs all 0: argmax picks class 0 (chance 0.5)
    assert table.score("inverted", "left", "right") == 1.0
    assert p_specialize(table, "left", "right", chance=0.5) > 0.9
    assert p_specialize(table, "right", "left", chance=0.5) > 0.9


@pytest.mark.parametrize(
    ("gate", "penalty"),
    [(HardConcrete(), LogitPenalty(1e-2)), (GumbelSigmoid(), ExpectedKeptPenalty(0.1))],
    ids=["hard_concrete+logit", "gumbel+expected_kept"],
)
def test_known_answer_with_other_gates_and_penalties(gate, penalty):
    net = two_path_net()
    tasks = {"left": side_data(0), "right": side_data(1)}
    masks = train_masks(net, tasks, F.cross_entropy, steps=150, lr=0.05, batch_size=64, seed=0, gate=gate,
                        penalty=penalty)  # fmt: skip
    for layer in ("0.weight", "2.weight"):
        assert masks["left"][layer].nonzero().tolist() == [[0, 0], [1, 1]]
        assert masks["right"][layer].nonzero().tolist() == [[2, 2], [3, 3]]
    assert {k: masks.hparams[k] for k in gate.config() if k != "noise"} == {
        k: v for k, v in gate.config().items() if k != "noise"
    }
    assert {k: masks.hparams[k] for k in penalty.config()} == penalty.config()


def test_explicit_default_gate_and_penalty_equal_beta():
    model, x, y = make("mlp")
    common = dict(steps=3, lr=0.1, batch_size=8, seed=5)
    a = train_masks(model, {"a": (x, y)}, F.cross_entropy, beta=1e-3, **common)
    b = train_masks(model, {"a": (x, y)}, F.cross_entropy, gate=GumbelSigmoid(), penalty=LogitPenalty(1e-3),
                    **common)  # fmt: skip
    assert a == b and a.hparams == b.hparams
    assert all(torch.equal(a.logits["a"][n], b.logits["a"][n]) for n in a.param_names)


# ---------------------------------------------------------------- alignment of samples across layers and
# examples


@pytest.mark.parametrize("method", ["vmap", "loop"])
@pytest.mark.parametrize("batch", [8, 7])
def test_each_group_sees_its_own_sample_in_every_layer(method, batch):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 5, bias=False), nn.Tanh(), nn.Linear(5, 2, bias=False))
    n_tasks, samples = 2, 4
    g = torch.Generator().manual_seed(1)
    w1 = net[0].weight.detach() * (torch.rand(n_tasks, samples, 5, 3, generator=g) > 0.5)
    w2 = net[2].weight.detach() * (torch.rand(n_tasks, samples, 2, 5, generator=g) > 0.5)
    inputs = [(torch.randn(batch, 3, generator=g),) for _ in range(n_tasks)]
    outs = grouped_forward(net, {"0.weight": w1, "2.weight": w2}, inputs, samples, method)
    for t in range(n_tasks):
        for s, idx in enumerate(torch.tensor_split(torch.arange(batch), samples)):
            x = inputs[t][0][idx]
            expected = torch.tanh(x @ w1[t, s].T) @ w2[t, s].T
            assert torch.allclose(outs[t][idx], expected, atol=1e-6), (t, s)


@pytest.mark.parametrize("kind", ["cnn", "transformer"])
def test_vmap_and_loop_agree_for_the_same_weights(kind):
    model, x, _ = make(kind)
    model.eval()
    names = [n for n, p in model.named_parameters() if n.endswith("weight") and p.ndim >= 2]
    params = dict(model.named_parameters())
    g = torch.Generator().manual_seed(0)
    weights = {n: params[n].detach() * (torch.rand(2, 4, *params[n].shape, generator=g) > 0.3) for n in names}
    inputs = [(x,), (x.flip(0),)]
    with torch.no_grad(), frozen(model):
        fast = grouped_forward(model, weights, inputs, 4, "vmap")
        slow = grouped_forward(model, weights, inputs, 4, "loop")
    for a, b in zip(fast, slow, strict=True):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("kind", ["mlp", "cnn", "transformer"])
def test_training_vmap_and_loop_give_the_same_masks(kind):
    model, x, y = make(kind)
    common = dict(steps=4, beta=1e-3, lr=0.5, init=0.3, seed=2)
    a = train_masks(model, {"t": [(x, y)]}, F.cross_entropy, method="vmap", **common)
    b = train_masks(model, {"t": [(x, y)]}, F.cross_entropy, method="loop", **common)
    for n in a.param_names:
        assert torch.allclose(a.logits["t"][n], b.logits["t"][n], atol=1e-4), n
    assert a == b


# ---------------------------------------------------------------- any nn.Module, model left untouched


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("mlp", {"0.weight", "2.weight"}),
        ("cnn", {"conv.weight", "fc.weight"}),
        ("lstm", {"lstm.weight_ih_l0", "lstm.weight_hh_l0", "fc.weight"}),
        (
            "transformer",
            {
                "enc.layers.0.self_attn.in_proj_weight",
                "enc.layers.0.self_attn.out_proj.weight",
                "enc.layers.0.linear1.weight",
                "enc.layers.0.linear2.weight",
                "fc.weight",
            },
        ),
    ],
)
def test_trains_on_common_architectures_and_leaves_the_model_bit_identical(kind, expected):
    model, x, y = make(kind)
    model.train()
    first = next(model.parameters())
    first.requires_grad_(False)  # a mixed pattern of flags must come back as it was
    snap = snapshot(model)
    seen = []
    masks = train_masks(
        model,
        {"a": [(x, y)], "b": [(x[:8], y[:8]), (x[8:], y[8:])]},
        F.cross_entropy,
        steps=3,
        beta=1e-3,
        progress=lambda label, step, total, info: seen.append((label, step, total, info)),
    )
    assert set(masks.param_names) == expected
    assert masks.tasks == ("a", "b")
    assert {label for label, _, _, _ in seen} == {"masks"}
    assert [s for _, s, _, _ in seen] == [1, 2, 3] and all(t == 3 for _, _, t, _ in seen)
    assert set(seen[-1][3]["loss"]) == {"a", "b"} and 0 <= seen[-1][3]["kept"]["a"] <= 1
    assert masks.hparams["method"] == ("loop" if kind == "lstm" else "vmap")
    assert_same_state(model, snap)


def test_model_restored_after_an_exception_during_training():
    model, x, y = make("cnn")
    model.train()
    snap = snapshot(model)

    def boom(label, step, total, info):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_masks(model, {"a": [(x, y)]}, F.cross_entropy, steps=3, beta=1e-3, progress=boom)
    assert_same_state(model, snap)


def test_concurrent_tasks_equal_separate_runs():
    model, x, y = make("mlp")
    tasks = {"a": (x, y), "b": (x * 2, y.flip(0)), "c": (-x, y)}
    common = dict(steps=5, beta=1e-3, lr=0.1, batch_size=8, seed=4)
    together = train_masks(model, tasks, F.cross_entropy, **common)
    for name, data in tasks.items():
        alone = train_masks(model, {name: data}, F.cross_entropy, **common)
        for n in alone.param_names:
            assert torch.allclose(alone.logits[name][n], together.logits[name][n], atol=1e-5)


def test_each_task_may_have_its_own_loss():
    model, x, y = make("mlp")
    tasks = {"a": (x, y), "b": (x * 2, y.flip(0))}
    losses = {"a": F.cross_entropy, "b": lambda out, t: F.mse_loss(out, F.one_hot(t, out.shape[1]).float())}
    common = dict(steps=5, beta=1e-3, lr=0.1, batch_size=8, seed=4)
    together = train_masks(model, tasks, losses, **common)
    for name, data in tasks.items():
        alone = train_masks(model, {name: data}, losses[name], **common)
        for n in alone.param_names:
            assert torch.allclose(alone.logits[name][n], together.logits[name][n], atol=1e-5)
    with pytest.raises(ValueError, match=r"one loss function per task \['a', 'b'\], got \['a'\]"):
        train_masks(model, tasks, {"a": F.cross_entropy}, **common)
    with pytest.raises(TypeError, match=r"loss_fn\['b'\] must be callable, got int"):
        train_masks(model, tasks, {"a": F.cross_entropy, "b": 3}, **common)


def test_same_seed_same_masks_other_seed_other_noise():
    model, x, y = make("mlp")

    def run(seed):
        return train_masks(
            model, {"a": (x, y)}, F.cross_entropy, steps=3, beta=1e-3, lr=0.1, batch_size=8, seed=seed
        )

    a, b, c = run(0), run(0), run(1)
    assert all(torch.equal(a.logits["a"][n], b.logits["a"][n]) for n in a.param_names)
    assert any(not torch.equal(a.logits["a"][n], c.logits["a"][n]) for n in a.param_names)


# ---------------------------------------------------------------- checkpoints


class Stop(Exception):
    pass


@pytest.mark.parametrize("mode", ["batch_size", "iterable"])
def test_interrupted_run_resumes_to_the_same_result(tmp_path, mode):
    model, x, y = make("mlp")
    if mode == "batch_size":
        tasks, extra = {"a": (x, y), "b": (x.flip(0), y)}, {"batch_size": 8}
    else:
        tasks, extra = {"a": [(x[:8], y[:8]), (x[8:], y[8:])], "b": [(x, y)]}, {}
    common = dict(steps=7, beta=1e-3, lr=0.1, seed=1, **extra)
    reference = train_masks(model, tasks, F.cross_entropy, **common)

    path = tmp_path / "run.ckpt"

    def interrupt(label, step, total, info):
        if step == 5:
            raise Stop

    with pytest.raises(Stop):
        train_masks(
            model, tasks, F.cross_entropy, checkpoint=path, checkpoint_every=2, progress=interrupt, **common
        )
    assert path.exists() and not list(tmp_path.glob(".*tmp"))  # atomic write left no temp file
    steps_seen = []
    resumed = train_masks(
        model,
        tasks,
        F.cross_entropy,
        checkpoint=path,
        checkpoint_every=2,
        progress=lambda label, s, t, i: steps_seen.append(s),
        **common,
    )
    assert steps_seen == [5, 6, 7]  # lost at most one interval (step 5), resumed from the step-4 checkpoint
    for t in tasks:
        for n in reference.param_names:
            assert torch.equal(reference.logits[t][n], resumed.logits[t][n])


def test_checkpoint_of_another_run_is_rejected(tmp_path):
    model, x, y = make("mlp")
    path = tmp_path / "c.ckpt"
    train_masks(model, {"a": (x, y)}, F.cross_entropy, steps=2, beta=1e-3, batch_size=4, checkpoint=path)
    with pytest.raises(ValueError, match="beta"):
        train_masks(model, {"a": (x, y)}, F.cross_entropy, steps=2, beta=0.5, batch_size=4, checkpoint=path)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("steps", [0, -3, 2.5])
def test_bad_steps_named(steps):
    model, x, y = make("mlp")
    with pytest.raises(ValueError, match=f"steps must be a positive int, got {steps}"):
        train_masks(model, {"a": [(x, y)]}, F.cross_entropy, steps=steps, beta=1e-3)


def test_empty_task_mapping():
    model, _, _ = make("mlp")
    with pytest.raises(ValueError, match=r"non-empty mapping.*got \{\}"):
        train_masks(model, {}, F.cross_entropy, steps=1, beta=1e-3)


def test_nan_loss_is_an_error_naming_task_and_value():
    model, x, y = make("mlp")
    with pytest.raises(ValueError, match=r"loss of task 'a' is nan at step 0"):
        train_masks(model, {"a": [(x, y)]}, lambda out, t: out.sum() * math.nan, steps=2, beta=1e-3)


def test_include_selecting_nothing():
    model, x, y = make("mlp")
    with pytest.raises(ValueError, match="no parameter"):
        train_masks(model, {"a": [(x, y)]}, F.cross_entropy, steps=1, beta=1e-3, include=lambda n, p: False)


def test_include_can_pick_biases():
    model, x, y = make("mlp")
    masks = train_masks(
        model, {"a": [(x, y)]}, F.cross_entropy, steps=1, beta=1e-3, include=lambda n, p: n.endswith("bias")
    )
    assert masks.param_names == ("0.bias", "2.bias")


def test_one_shot_iterator_and_bad_batches_are_rejected():
    model, x, y = make("mlp")
    with pytest.raises(ValueError, match="one-shot iterator"):
        train_masks(model, {"a": iter([(x, y)])}, F.cross_entropy, steps=1, beta=1e-3)
    with pytest.raises(ValueError, match="yields no batches"):
        train_masks(model, {"a": []}, F.cross_entropy, steps=1, beta=1e-3)
    with pytest.raises(ValueError, match="beta must be"):
        train_masks(model, {"a": [(x, y)]}, F.cross_entropy, steps=1, beta=-1.0)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"max_grad_norm": -1.0}, ValueError, r"max_grad_norm must be a positive finite number, got -1\.0"),
        ({"max_grad_norm": 0}, ValueError, "max_grad_norm must be a positive finite number, got 0"),
        ({"max_grad_norm": math.inf}, ValueError, "max_grad_norm must be a positive finite number, got inf"),
        ({"init": math.nan}, ValueError, "init must be a finite number, got nan"),
        ({"init": -math.inf}, ValueError, "init must be a finite number, got -inf"),
        ({"init": "2"}, ValueError, "init must be a finite number, got '2'"),
        ({"lr": math.inf}, ValueError, "lr must be a positive finite number, got inf"),
        ({"lr": math.nan}, ValueError, "lr must be a positive finite number, got nan"),
        ({"lr": 0.0}, ValueError, r"lr must be a positive finite number, got 0\.0"),
        ({"lr": True}, ValueError, "lr must be a positive finite number, got True"),
        ({"checkpoint_every": 0}, ValueError, "checkpoint_every must be a positive int, got 0"),
        ({"checkpoint_every": 1.5}, ValueError, r"checkpoint_every must be a positive int, got 1\.5"),
        ({"samples": 0}, ValueError, "samples must be a positive int, got 0"),
        ({"batch_size": 0}, ValueError, "batch_size must be None or a positive int, got 0"),
        ({"batch_size": True}, ValueError, "batch_size must be None or a positive int, got True"),
        ({"seed": -1}, ValueError, "seed must be a non-negative int.*got -1"),
        ({"seed": None}, ValueError, "seed must be a non-negative int, got None"),
        ({"beta": math.nan}, ValueError, "beta must be a non-negative finite number, got nan"),
        ({"beta": math.inf}, ValueError, "beta must be a non-negative finite number, got inf"),
        ({"beta": None}, ValueError, r"give the sparsity penalty: beta=\.\.\."),
        ({"penalty": LogitPenalty(1.0)}, ValueError, "give beta or penalty, not both"),
        ({"beta": None, "penalty": 0.1}, TypeError, "penalty must be a modscope.masks.Penalty"),
        ({"gate": "gumbel"}, TypeError, "gate must be a modscope.masks.Gate"),
        ({"method": "fast"}, ValueError, "method must be 'auto', 'vmap' or 'loop', got 'fast'"),
        ({"loss_fn": None}, TypeError, "loss_fn must be callable"),
    ],
)
def test_bad_numbers_are_refused_before_any_work(tmp_path, kwargs, error, match):
    model, x, y = make("mlp")
    snap = snapshot(model)
    calls = []
    path = tmp_path / "never.ckpt"
    args = {"loss_fn": F.cross_entropy, "steps": 2, "beta": 1e-3, "checkpoint": path, **kwargs}
    with pytest.raises(error, match=match):
        train_masks(model, {"a": [(x, y)]}, progress=lambda *a: calls.append(a), **args)
    assert not calls and not path.exists()
    assert_same_state(model, snap)


def test_checkpoint_of_another_penalty_or_gate_is_rejected(tmp_path):
    model, x, y = make("mlp")
    path = tmp_path / "c.ckpt"
    common = dict(steps=2, batch_size=4, checkpoint=path)
    train_masks(model, {"a": (x, y)}, F.cross_entropy, beta=1e-3, **common)
    with pytest.raises(ValueError, match="penalty: checkpoint None, now 'expected_kept'"):
        train_masks(model, {"a": (x, y)}, F.cross_entropy, penalty=ExpectedKeptPenalty(1e-3), **common)
    with pytest.raises(ValueError, match="gate: checkpoint None, now 'hard_concrete'"):
        train_masks(model, {"a": (x, y)}, F.cross_entropy, beta=1e-3, gate=HardConcrete(), **common)


def test_result_is_a_maskset_with_hparams_and_fingerprint():
    model, x, y = make("mlp")
    masks = train_masks(model, {"a": [(x, y)]}, F.cross_entropy, steps=1, beta=1e-3, init=2.0)
    assert isinstance(masks, MaskSet)
    assert masks.hparams["beta"] == 1e-3 and masks.hparams["samples"] == 4 and masks.hparams["steps"] == 1
    assert len(masks.fingerprint) == 64
    assert masks["a"].total_kept == masks["a"].total_size  # one step from logit 2.0 cannot cross 0
