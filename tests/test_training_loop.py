"""modscope.training.train: accuracy, determinism, checkpoint resume, penalties, targets, argument errors."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from modscope.models import build_model
from modscope.training import (
    PruneSchedule,
    TrainResult,
    cross_entropy,
    evaluate,
    load_checkpoint,
    train,
    weight_penalty,
)
from modscope.training.losses import correct

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def blobs() -> tuple[torch.Tensor, torch.Tensor]:
    """300 examples, 4 features, 3 well-separated Gaussian classes."""
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[3.0, 0, 0, 0], [0, 3.0, 0, 0], [0, 0, 3.0, 0]])
    y = torch.randint(0, 3, (300,), generator=g)
    return centers[y] + 0.5 * torch.randn(300, 4, generator=g), y


def _same(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_tiny_mlp_learns_a_separable_task(blobs):
    model = build_model("mlp:4-32-3", seed=0)
    result = train(model, blobs, epochs=10, batch_size=32, eval_set=blobs)
    assert result.eval_accuracy > 0.95
    assert result.steps == 100 and result.batches_per_epoch == 10 and result.epochs == 10
    assert len(result.history) == 10
    assert result.history[-1].train_loss < result.history[0].train_loss
    assert not model.training
    ev = evaluate(model, blobs)
    assert ev.accuracy == result.eval_accuracy and ev.n == 300


def test_same_seed_same_weights_and_global_rng_untouched(blobs):
    spec = "mlp:4-16-16-3:dropout=0.5"
    before = torch.get_rng_state()
    a, b, c = build_model(spec, 0), build_model(spec, 0), build_model(spec, 0)
    ra = train(a, blobs, steps=25, batch_size=16, seed=3)
    train(b, blobs, steps=25, batch_size=16, seed=3)
    train(c, blobs, steps=25, batch_size=16, seed=4)
    assert torch.equal(torch.get_rng_state(), before)
    assert _same(a, b)
    assert not _same(a, c)
    assert ra.epochs == pytest.approx(25 / 19)
    assert [r.batches for r in ra.history] == [19, 6]  # the last epoch is partial


def test_checkpoint_resume_is_bit_identical(blobs, tmp_path):
    spec = "mlp:4-16-16-3:dropout=0.3"
    kwargs = dict(epochs=3, batch_size=32, seed=1, l1=1e-4, clip_grad_norm=1.0, eval_set=blobs)
    ref = build_model(spec, 0)
    expected = train(ref, blobs, **kwargs)

    class Stop(Exception):
        pass

    def interrupt(label, step, total, info):
        if step == 13:
            raise Stop

    ckpt = tmp_path / "run.ckpt"
    with pytest.raises(Stop):
        train(build_model(spec, 0), blobs, checkpoint=ckpt, checkpoint_every=5, progress=interrupt, **kwargs)
    assert load_checkpoint(ckpt)["step"] == 10
    resumed = build_model(spec, 7)  # other weights: replaced by the checkpoint's
    result = train(resumed, blobs, checkpoint=ckpt, checkpoint_every=5, **kwargs)
    assert _same(resumed, ref)
    assert result.resumed_from == 10
    assert [r.train_loss for r in result.history] == [r.train_loss for r in expected.history]
    assert result.eval_accuracy == expected.eval_accuracy

    again = build_model(spec, 9)  # a finished checkpoint gives back the final weights and result
    assert train(again, blobs, checkpoint=ckpt, checkpoint_every=5, **kwargs) == result
    assert _same(again, ref)
    with pytest.raises(ValueError, match="lr"):
        train(build_model(spec, 0), blobs, checkpoint=ckpt, **{**kwargs, "lr": 0.01})


def test_checkpoint_resume_while_pruning_is_bit_identical(blobs, tmp_path):
    spec = "mlp:4-16-16-3"
    schedule = PruneSchedule(frequency=3)
    kwargs = dict(steps=24, batch_size=32, seed=2, prune=schedule)
    ref = build_model(spec, 0)
    train(ref, blobs, **kwargs)

    def interrupt(label, step, total, info):
        assert label == "prune"
        if step == 17:
            raise KeyboardInterrupt

    ckpt = tmp_path / "prune.ckpt"
    with pytest.raises(KeyboardInterrupt):
        train(build_model(spec, 0), blobs, checkpoint=ckpt, checkpoint_every=8, progress=interrupt, **kwargs)
    resumed = build_model(spec, 0)
    train(resumed, blobs, checkpoint=ckpt, checkpoint_every=8, **kwargs)
    assert _same(resumed, ref)


def test_l1_makes_weights_sparser(blobs):
    plain, sparse = build_model("mlp:4-32-3", 0), build_model("mlp:4-32-3", 0)
    train(plain, blobs, epochs=10, batch_size=32, lr=1e-2)
    result = train(sparse, blobs, epochs=10, batch_size=32, lr=1e-2, l1=3e-3, eval_set=blobs)
    assert result.eval_accuracy > 0.95

    def small(m):
        w = torch.cat([m.fc1.weight.flatten(), m.out.weight.flatten()]).detach().abs()
        return float((w < 1e-2).float().mean())

    assert small(sparse) > small(plain) + 0.2
    assert weight_penalty(sparse, l1=1.0).item() < weight_penalty(plain, l1=1.0).item()


def test_weight_penalty_excludes_biases():
    m = build_model("mlp:2-3-2", 0)
    with torch.no_grad():
        m.fc1.bias.fill_(100.0)
    expect_l1 = m.fc1.weight.abs().sum() + m.out.weight.abs().sum()
    expect_l2 = m.fc1.weight.square().sum() + m.out.weight.square().sum()
    assert torch.allclose(weight_penalty(m, l1=0.5, l2=2.0), 0.5 * expect_l1 + 2.0 * expect_l2)


def test_multi_digit_targets():
    """(N, D) targets: outputs (N, D*C) read as (N, D, C), loss = mean CE over examples and digits."""
    g = torch.Generator().manual_seed(0)
    out = torch.randn(5, 2 * 10, generator=g)
    y = torch.randint(0, 10, (5, 2), generator=g)
    per_digit = [nn.functional.cross_entropy(out[:, d * 10 : (d + 1) * 10], y[:, d]) for d in range(2)]
    assert torch.allclose(cross_entropy(out, y), sum(per_digit) / 2)
    y2 = out.reshape(5, 2, 10).argmax(-1).clone()
    y2[0, 1] = (y2[0, 1] + 1) % 10  # one wrong digit makes example 0 wrong
    assert correct(out, y2).tolist() == [False, True, True, True, True]
    padded = y2.clone()
    padded[0, 1] = -100  # padding: ignored by the loss and right in the accuracy
    assert correct(out, padded).all()
    assert torch.allclose(
        cross_entropy(out, padded), nn.functional.cross_entropy(out.reshape(10, 10), padded.flatten())
    )
    with pytest.raises(ValueError, match=r"\(N, 3 \* C\)"):
        cross_entropy(out, torch.zeros(5, 3, dtype=torch.long))

    # A tiny two-digit task: digits of (x mod 4, x // 4) for x in 0..15, one-hot input.
    x = torch.eye(16).repeat(8, 1)
    t = torch.arange(16).repeat(8)
    targets = torch.stack([t % 4, t // 4], 1)
    model = build_model("mlp:16-32-8", 0)
    result = train(model, (x, targets), epochs=30, batch_size=16, lr=1e-2, eval_set=(x, targets))
    assert result.eval_accuracy == 1.0


def test_mse_and_callable_losses():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]])
    model = build_model("mlp:3-8-1", 0)
    result = train(model, (x, y), epochs=20, batch_size=16, loss="mse", eval_set=(x, y), lr=1e-2)
    assert result.eval_accuracy is None and result.train_accuracy is None
    assert result.eval_loss < result.history[0].train_loss
    r2 = train(build_model("mlp:3-8-1", 0), (x, y), steps=3, loss=lambda o, t: (o - t).abs().mean())
    assert r2.config["loss"].endswith("<lambda>")


def test_progress_history_and_json(blobs):
    calls = []
    result = train(
        build_model("mlp:4-8-3", 0),
        blobs,
        epochs=2,
        batch_size=100,
        eval_set=blobs,
        progress=lambda label, s, t, i: calls.append((label, s, t, i)),
    )
    assert {c[0] for c in calls} == {"train"}
    assert [c[1] for c in calls] == [1, 2, 3, 4, 5, 6] and {c[2] for c in calls} == {6}
    ends = [c[3] for c in calls if c[3].get("epoch_end")]
    assert len(ends) == 2 and ends[-1]["eval_accuracy"] == result.eval_accuracy
    doc = json.loads(json.dumps(result.to_dict()))
    assert TrainResult.from_dict(doc) == result


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"epochs": 2, "steps": 10}, r"not both.*epochs=2, steps=10"),
        ({}, "epochs=... or steps="),
        ({"epochs": 1, "lr": -0.1}, r"lr must be a positive finite number, got -0\.1"),
        ({"epochs": 1, "optimizer": "rmsprop"}, "unknown optimizer 'rmsprop'"),
        ({"epochs": 0}, "epochs must be a positive int, got 0"),
        ({"epochs": 1, "batch_size": 0}, "batch_size must be a positive int, got 0"),
        ({"epochs": 1, "momentum": 0.9}, r"momentum=0\.9 is for optimizer='sgd'"),
        ({"epochs": 1, "l2": -1.0}, r"l2 must be a non-negative finite number, got -1\.0"),
        ({"epochs": 1, "loss": "hinge"}, "unknown loss 'hinge'"),
        ({"epochs": 1, "seed": -1}, "seed must be a non-negative int.*, got -1"),
        ({"epochs": 1, "regularizer": (1, 2)}, "regularizer must be a pair"),
        ({"epochs": 1, "lr": float("inf")}, "lr must be a positive finite number, got inf"),
        ({"epochs": 1, "lr": float("nan")}, "lr must be a positive finite number, got nan"),
        ({"epochs": 1, "lr": True}, "lr must be a positive finite number, got True"),
        ({"epochs": 1, "l1": float("nan")}, "l1 must be a non-negative finite number, got nan"),
        ({"epochs": 1, "optimizer": "sgd", "momentum": 1.0}, r"momentum must be in \[0, 1\), got 1\.0"),
        ({"epochs": 1, "optimizer": "sgd", "momentum": -0.5}, r"momentum must be a non-negative .*-0\.5"),
        ({"epochs": 1, "clip_grad_norm": -1.0}, r"clip_grad_norm must be a positive .* got -1\.0"),
        ({"epochs": 1, "clip_grad_norm": 0}, "clip_grad_norm must be a positive finite number, got 0"),
        ({"epochs": 1, "clip_grad_norm": float("inf")}, "clip_grad_norm must be a positive finite number"),
        ({"epochs": 1, "checkpoint_every": 0}, "checkpoint_every must be a positive int, got 0"),
        ({"epochs": 1, "checkpoint_every": 2.5}, r"checkpoint_every must be a positive int, got 2\.5"),
        ({"epochs": 1, "eval_batch_size": -1}, "eval_batch_size must be a positive int, got -1"),
        ({"steps": 1.5}, r"steps must be a positive int, got 1\.5"),
        ({"epochs": 1, "seed": None}, "seed must be a non-negative int, got None"),
        ({"epochs": 1, "seed": 1.0}, r"seed must be a non-negative int, got 1\.0"),
        ({"epochs": 1, "regularizer": (len, float("nan"))}, "regularizer weight must be .* got nan"),
    ],
)
def test_bad_arguments_name_the_value(blobs, kwargs, match, tmp_path):
    model = build_model("mlp:4-8-3", 0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ckpt = tmp_path / "never.ckpt"
    with pytest.raises(ValueError, match=match):
        train(model, blobs, checkpoint=ckpt, **kwargs)
    assert not ckpt.exists()  # checked before any work: nothing trained, nothing written
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_bad_data_and_divergence():
    m = build_model("mlp:4-8-3", 0)
    with pytest.raises(ValueError, match="3 inputs but 4 targets"):
        train(m, (torch.zeros(3, 4), torch.zeros(4, dtype=torch.long)), steps=1)
    with pytest.raises(TypeError, match="dataset must be"):
        train(m, 5, steps=1)
    with pytest.raises(ValueError, match=r"diverged.*step 1"):
        train(m, (torch.full((4, 4), float("nan")), torch.zeros(4, dtype=torch.long)), steps=1)


def test_sgd_with_momentum_trains(blobs):
    result = train(build_model("mlp:4-32-3", 0), blobs, epochs=10, batch_size=32, optimizer="sgd", lr=0.1,
                   momentum=0.9, eval_set=blobs)  # fmt: skip
    assert result.eval_accuracy > 0.95


def test_train_is_a_fold_of_train_step(blobs):
    """The driver adds nothing to the updates: train_step over the epoch's order reproduces train()."""
    from modscope.training import train_step
    from modscope.training.step import make_optimizer

    x, y = blobs
    expected = build_model("mlp:4-16-3", 0)
    train(expected, blobs, steps=12, batch_size=32, seed=6, l2=1e-3, clip_grad_norm=0.5)
    model = build_model("mlp:4-16-3", 0)
    params = list(model.parameters())
    opt = make_optimizer(params, "adam", 1e-3, 0.0)
    order = torch.Generator().manual_seed(6)  # train's order of the examples: a generator seeded by seed
    for i in range(12):  # 10 batches per epoch: the 11th starts a new epoch with a new order
        if i % 10 == 0:
            perm = torch.randperm(300, generator=order)
        idx = perm[(i % 10) * 32 : (i % 10 + 1) * 32]
        out = train_step(model, opt, cross_entropy, x[idx], y[idx], params=params, l2=1e-3,
                         clip_grad_norm=0.5, step=i)  # fmt: skip
        assert out.outputs.shape == (len(idx), 3) and out.penalty > 0
    assert _same(model, expected)


def test_loop_state_round_trip_and_epoch_accounting():
    from modscope.training import LoopState

    state = LoopState()
    state.start_epoch(torch.arange(5))
    assert state.batch_indices(2).tolist() == [0, 1]
    out = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    state.count(0.5, out, torch.tensor([0, 0]))  # one right, one wrong
    state.count(1.0, out[:1], torch.tensor([0]))
    assert (state.step, state.batch, state.seen, state.hits, state.scored) == (2, 2, 3, 2, 3)
    record = state.end_epoch(per_epoch=2, ev=None, sparsity=None, seconds=1.0)
    assert record.train_loss == pytest.approx((0.5 * 2 + 1.0) / 3)
    assert record.train_accuracy == pytest.approx(2 / 3)
    assert (state.epoch, state.batch) == (1, 0)
    again = LoopState.from_dict(state.to_dict())
    assert again.to_dict().keys() == state.to_dict().keys() and again.history == state.history
    assert (again.step, again.epoch, again.batch) == (2, 1, 0) and torch.equal(again.perm, state.perm)


def test_checkpointer_names_every_difference(tmp_path):
    from modscope.checkpoint import Checkpointer

    off = Checkpointer(None, 5, {"lr": 1.0}, format="f")
    assert off.load() is None and not off.due(5)
    off.save({"step": 1})  # no path: nothing written
    on = Checkpointer(tmp_path / "c.pt", 5, {"lr": 1.0, "seed": 0}, format="f")
    assert [s for s in range(1, 12) if on.due(s)] == [5, 10]
    on.save({"step": 5})
    assert on.load()["step"] == 5 and on.load()["config"] == {"lr": 1.0, "seed": 0}
    other = Checkpointer(tmp_path / "c.pt", 5, {"lr": 2.0, "seed": 0, "new": 1}, format="f")
    with pytest.raises(ValueError, match=r"settings \(lr: checkpoint 1\.0, now 2\.0; new: checkpoint None"):
        other.load()
    with pytest.raises(ValueError, match="not a modscope checkpoint of format 'g'"):
        Checkpointer(tmp_path / "c.pt", 5, {}, format="g").load()
