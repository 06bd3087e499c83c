"""Sanity controls of the masks (modscope.masks.controls): a random-weight copy and shuffled labels."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from modscope.masks import (
    CONTROLS,
    MaskSet,
    control_masks,
    control_setups,
    evaluate_masks,
    iou,
    random_weight_copy,
    shuffled_labels,
    train_masks,
)
from modscope.seeding import derive


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 24), nn.ReLU(), nn.Linear(24, 2))


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_random_copy_has_the_shapes_new_values_and_leaves_the_original():
    model = _net()
    model.train()
    before = _state(model)
    copy = random_weight_copy(model, seed=3)
    assert copy is not model
    assert _state(model).keys() == before.keys()
    assert all(torch.equal(v, before[k]) for k, v in _state(model).items())  # untouched
    assert model.training
    for (n, p), (m, q) in zip(model.named_parameters(), copy.named_parameters(), strict=True):
        assert n == m and p.shape == q.shape and p.dtype == q.dtype
        assert not torch.equal(p, q)
        # the matched scale: same order of magnitude as the trained tensor
        assert 0.5 < float(q.detach().std()) / float(p.detach().std()) < 2.0
    assert copy.training  # mode copied


def test_random_copy_is_seeded_and_keeps_pruned_zeros():
    model = _net()
    with torch.no_grad():
        model[0].weight[:, :3] = 0.0
    a, b, c = (random_weight_copy(model, seed=s) for s in (1, 1, 2))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.equal(a[0].weight, c[0].weight)
    assert torch.equal(a[0].weight == 0, model[0].weight == 0)
    with pytest.raises(ValueError, match="seed"):
        random_weight_copy(model, seed=-1)


def test_shuffled_labels_is_a_seeded_permutation():
    x = torch.arange(50.0).reshape(25, 2)
    y = torch.stack([torch.arange(25), 100 + torch.arange(25)], 1)  # rows must move whole
    xs, ys = shuffled_labels((x, y), seed=4)
    assert xs is x
    assert sorted(ys[:, 0].tolist()) == list(range(25))
    assert torch.equal(ys[:, 1] - 100, ys[:, 0])
    assert not torch.equal(ys, y)
    assert torch.equal(shuffled_labels((x, y), seed=4)[1], ys)
    assert not torch.equal(shuffled_labels((x, y), seed=5)[1], ys)
    assert torch.equal(y[:, 0], torch.arange(25))  # input not modified
    # a list of batches: permuted across batches, split back into the same sizes
    batches = [(x[:10], y[:10, 0]), (x[10:], y[10:, 0])]
    out = shuffled_labels(batches, seed=4)
    assert [len(t) for _, t in out] == [10, 15]
    assert torch.equal(torch.cat([t for _, t in out]), ys[:, 0])
    with pytest.raises(ValueError, match="data must be"):
        shuffled_labels(torch.zeros(3), seed=0)
    with pytest.raises(ValueError, match="differ"):
        shuffled_labels((x[:3], y), seed=0)


def _task(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
    return x, y


def _trained(seed=0):
    model = _net(seed)
    x, y = _task()
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(150):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    return model


_SETTINGS = {"steps": 120, "beta": 1e-3, "lr": 0.05, "batch_size": 64, "samples": 2}


def test_setups_follow_the_seed_and_keep_the_inputs():
    model, data = _net(), _task()
    a = control_setups(model, {"t": data}, seed=1)
    b = control_setups(model, {"t": data}, seed=1)
    assert list(a) == list(CONTROLS)
    assert a["shuffled_labels"].model is model
    expected = shuffled_labels(data, seed=derive(1, "shuffled_labels", "t"))[1]
    assert torch.equal(a["shuffled_labels"].tasks["t"][1], expected)
    assert torch.equal(a["shuffled_labels"].tasks["t"][1], b["shuffled_labels"].tasks["t"][1])
    assert a["random_weights"].tasks["t"] is data
    assert torch.equal(a["random_weights"].model[0].weight, b["random_weights"].model[0].weight)
    with pytest.raises(ValueError, match="controls must be"):
        control_setups(model, {"t": data}, controls=("random",))


def test_control_masks_are_masksets_that_take_the_metrics_and_are_deterministic():
    model = _trained()
    tasks = {"a": _task(seed=1), "b": _task(seed=2)}
    runs = control_masks(model, tasks, F.cross_entropy, seed=0, **_SETTINGS)
    again = control_masks(model, tasks, F.cross_entropy, seed=0, **_SETTINGS)
    for name in CONTROLS:
        masks = runs[name].masks
        assert isinstance(masks, MaskSet) and masks.tasks == ("a", "b")
        assert masks.hparams["control"] == name and masks.hparams["steps"] == _SETTINGS["steps"]
        assert masks == again[name].masks
        table = evaluate_masks(runs[name].model, masks, {"a": [_task(seed=3)]})
        assert 0.0 <= table.score("mask", "a", "a") <= 1.0
        assert 0.0 <= iou(masks["a"], masks["b"]).total <= 1.0


def test_real_masks_beat_the_shuffled_label_control():
    """A known answer: on a task the network solves, the real mask keeps the task; masks trained on the
    same inputs with permuted labels do not."""
    model = _trained()
    train, test = _task(seed=1), _task(seed=9)
    real = train_masks(model, {"t": train}, F.cross_entropy, seed=0, **_SETTINGS)
    shuffled = control_masks(model, {"t": train}, F.cross_entropy, controls=("shuffled_labels",), seed=0,
                             **_SETTINGS)["shuffled_labels"]  # fmt: skip
    full = evaluate_masks(model, real, {"t": [test]}).score("full", None, "t")
    ours = evaluate_masks(model, real, {"t": [test]}).score("mask", "t", "t")
    control = evaluate_masks(model, shuffled.masks, {"t": [test]}).score("mask", "t", "t")
    assert full > 0.9
    assert ours > 0.85
    assert control < 0.7
    assert ours - control > 0.25


# ------------------------------------------------------------------------------------ in the reproductions
_TINY_DA = {"hidden": "16x2", "train_steps": 40, "mask_steps": 8, "mask_batch": 32}


def test_double_addition_reports_the_controls_next_to_the_real_masks(tmp_path, one_thread):
    from modscope.experiments import reproduce

    result = reproduce("double-addition", tmp_path / "on", overrides=_TINY_DA)
    (section,) = [s for s in result.sections if s["title"].startswith("Sanity controls")]
    assert [r[:2] for r in section["rows"]] == [
        ["FNN 0", m] for m in ("real network", "random weights", "shuffled labels")
    ]
    unit = result.units["fnn-0"]
    real, shuffled = section["rows"][0], section["rows"][2]
    assert real[2:4] == [sum(unit["kept"][t].values()) for t in ("pair 1", "pair 2")]
    assert shuffled[2:4] == [sum(unit["controls"]["shuffled_labels"]["kept"][t].values())
                             for t in ("pair 1", "pair 2")]  # fmt: skip
    # the controls' checkpoints are cleaned up with the unit's
    assert not any((tmp_path / "on" / "checkpoints").glob("*"))
    off = reproduce("double-addition", tmp_path / "off", overrides={**_TINY_DA, "controls": False})
    assert not [s for s in off.sections if s["title"].startswith("Sanity controls")]
    assert "controls" not in off.units["fnn-0"]
    # the real masks do not depend on whether the controls ran
    assert off.units["fnn-0"]["kept"] == unit["kept"]


@pytest.mark.parametrize(
    ("override", "message"),
    [({"controls": 1}, "'controls' of 'addmul' takes a bool"), ({"control_share": 1.5}, "control_share must"),
     ({"control_share": 0}, "control_share must")],
)
def test_controls_config_is_checked(override, message):
    from modscope.experiments import experiment_config
    from modscope.experiments.controls import check_controls_config

    with pytest.raises(ValueError, match=message):
        experiment_config("addmul", overrides=override)
    with pytest.raises(ValueError, match="controls must be true or false"):
        check_controls_config({"controls": "yes"})
    assert check_controls_config({}) is False  # a run made before the controls existed


def test_control_budget_keeps_lr_times_steps():
    from modscope.experiments.controls import control_budget

    assert control_budget({"mask_steps": 4000, "mask_lr": 0.05, "control_share": 0.25}) == (1000, 0.2)
    assert control_budget({"mask_steps": 8, "mask_lr": 0.05}) == (8, 0.05)
    steps, lr = control_budget({"mask_steps": 3, "mask_lr": 0.1, "control_share": 0.1})
    assert steps == 1 and lr == pytest.approx(0.3)
