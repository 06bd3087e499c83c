"""Arithmetic tasks of Csordás et al.: encodings, targets, held-out pairs, seeding."""

from __future__ import annotations

import pytest
import torch

from modscope.data import (
    ADDMUL_INPUT_DIM,
    DOUBLE_ADDITION_INPUT_DIM,
    IGNORE_INDEX,
    addmul,
    decode_addmul,
    double_addition,
    heldout_pairs,
)


def _pairs(x: torch.Tensor) -> set[tuple[int, int]]:
    a, b, _ = decode_addmul(x)
    return set(zip(a.tolist(), b.tolist()))


def _decode_pair(block: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    d = [block[:, 10 * i : 10 * (i + 1)].argmax(dim=1) for i in range(4)]
    return 10 * d[0] + d[1], 10 * d[2] + d[3]


@pytest.mark.parametrize("split", ["train", "test"])
def test_addmul_targets_match_arithmetic_on_decoded_inputs(split):
    x, y = addmul(split).tensors
    assert x.dtype == torch.float32 and y.dtype == torch.long
    assert x.shape[1] == ADDMUL_INPUT_DIM and y.shape == (len(x), 2)
    # exactly one hot per digit block and in the op block
    for lo, hi in [(0, 10), (10, 20), (20, 30), (30, 40), (40, 42)]:
        assert torch.all(x[:, lo:hi].sum(dim=1) == 1)
    assert set(x.unique().tolist()) == {0.0, 1.0}
    a, b, ops = decode_addmul(x)
    is_add = torch.tensor([op == "+" for op in ops])
    expected = torch.where(is_add, (a + b) % 100, (a * b) % 100)
    assert torch.equal(10 * y[:, 0] + y[:, 1], expected)
    assert y.min() >= 0 and y.max() <= 9


def test_addmul_sizes_and_per_op_views():
    train, test = addmul("train"), addmul("test")
    assert len(train) == 2 * 9000 and len(test) == 2 * 1000
    plus, times = addmul("train", ops=("+",)), addmul("train", ops=("*",))
    assert len(plus) == len(times) == 9000
    assert torch.all(plus.tensors[0][:, 40] == 1) and torch.all(plus.tensors[0][:, 41] == 0)
    assert torch.all(times.tensors[0][:, 41] == 1)
    # the per-op views are exactly the halves of the joint set
    assert torch.equal(torch.cat([plus.tensors[0], times.tensors[0]]), train.tensors[0])
    # same input digits in both views
    assert torch.equal(plus.tensors[0][:, :40], times.tensors[0][:, :40])


def test_addmul_heldout_pairs_never_in_train_and_same_for_both_ops():
    train_pairs = _pairs(addmul("train").tensors[0])
    test_pairs = _pairs(addmul("test").tensors[0])
    assert not train_pairs & test_pairs
    assert len(train_pairs | test_pairs) == 10_000
    held = heldout_pairs(0.1, 0)
    assert test_pairs == {(int(a), int(b)) for a, b in zip(*held.nonzero())}
    for op in ("+", "*"):
        assert _pairs(addmul("test", ops=(op,)).tensors[0]) == test_pairs


def test_addmul_seeding():
    a1, a2, b = addmul("test", seed=3), addmul("test", seed=3), addmul("test", seed=4)
    assert torch.equal(a1.tensors[0], a2.tensors[0]) and torch.equal(a1.tensors[1], a2.tensors[1])
    assert not torch.equal(a1.tensors[0], b.tensors[0])
    assert len(addmul("test", test_fraction=0.25)) == 2 * 2500


@pytest.mark.parametrize("kwargs", [{"ops": ("-",)}, {"ops": ()}, {"split": "val"}, {"test_fraction": 1.0}])
def test_addmul_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        addmul(**kwargs)


@pytest.mark.parametrize("split", ["train", "test"])
def test_double_addition_both_pairs(split):
    x, y = double_addition(split).tensors
    assert x.shape == (9000 if split == "train" else 1000, DOUBLE_ADDITION_INPUT_DIM) and y.shape == (
        len(x),
        4,
    )
    a, b = _decode_pair(x[:, :40])
    c, d = _decode_pair(x[:, 40:])
    assert torch.equal(10 * y[:, 0] + y[:, 1], (a + b) % 100)
    assert torch.equal(10 * y[:, 2] + y[:, 3], (c + d) % 100)
    held = heldout_pairs(0.1, 0)
    in_test = split == "test"
    for p, q in ((a, b), (c, d)):
        assert bool(torch.all(torch.from_numpy(held[p.numpy(), q.numpy()]) == in_test))


@pytest.mark.parametrize("pair", [0, 1])
def test_double_addition_per_pair_views(pair):
    x, y = double_addition("train", pair=pair).tensors
    active, zeroed = (slice(0, 40), slice(40, 80)) if pair == 0 else (slice(40, 80), slice(0, 40))
    tgt, ign = (slice(0, 2), slice(2, 4)) if pair == 0 else (slice(2, 4), slice(0, 2))
    assert torch.all(x[:, zeroed] == 0)
    assert torch.all(y[:, ign] == IGNORE_INDEX)
    a, b = _decode_pair(x[:, active])
    assert torch.equal(10 * y[:, tgt][:, 0] + y[:, tgt][:, 1], (a + b) % 100)
    # held-out pairs (same as addmul's) never in training, in either position
    test_pairs = _pairs(addmul("test").tensors[0])
    assert not set(zip(a.tolist(), b.tolist())) & test_pairs
    # ignored targets are skipped by cross-entropy's default ignore_index
    logits = torch.zeros(len(y), 10, 4)
    assert torch.isfinite(torch.nn.functional.cross_entropy(logits, y))


def test_double_addition_seeding_and_bad_pair():
    assert torch.equal(double_addition(seed=5).tensors[0], double_addition(seed=5).tensors[0])
    assert not torch.equal(double_addition(seed=5).tensors[0], double_addition(seed=6).tensors[0])
    with pytest.raises(ValueError):
        double_addition(pair=2)
