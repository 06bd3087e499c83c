"""modscope.training pruning: the polynomial schedule, per-layer targets reached, masks made permanent."""

from __future__ import annotations

import math

import pytest
import torch

from modscope.models import build_model, load_model
from modscope.training import PruneSchedule, layer_sparsity, train

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(200, 6, generator=g)
    return x, (x[:, 0] > x[:, 1]).long()


def test_schedule_formula_and_update_steps():
    s = PruneSchedule(initial=0.5, final=0.9, begin_step=10, end_step=110, frequency=10, power=3)
    assert s.sparsity(0) == 0.0 and s.sparsity(9) == 0.0
    assert s.sparsity(10) == pytest.approx(0.5)
    assert s.sparsity(60) == pytest.approx(0.9 + (0.5 - 0.9) * 0.5**3)
    assert s.sparsity(110) == pytest.approx(0.9) and s.sparsity(1000) == pytest.approx(0.9)
    assert [t for t in range(200) if s.is_update(t)] == list(range(10, 111, 10))
    odd = PruneSchedule(frequency=4, end_step=10)
    assert [t for t in range(20) if odd.is_update(t)] == [0, 4, 8, 10]  # end_step is always an update
    assert PruneSchedule().resolved(50).end_step == 49
    assert PruneSchedule.from_dict(s.to_dict()) == s


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"initial": 1.0}, r"initial must be a sparsity in \[0, 1\), got 1\.0"),
        ({"initial": 0.9, "final": 0.5}, r"final \(0\.5\) must be >= initial"),
        ({"frequency": 0}, "frequency must be an int >= 1, got 0"),
        ({"begin_step": 5, "end_step": 2}, r"end_step \(2\) < begin_step \(5\)"),
        ({"power": -1}, "power must be positive"),
    ],
)
def test_schedule_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PruneSchedule(**kwargs)


def test_pruning_follows_schedule_and_reaches_targets(data, tmp_path):
    model = build_model("mlp:6-20-20-2", 0)
    train(model, data, epochs=3, batch_size=32)
    schedule = PruneSchedule(initial=0.5, final=0.9, frequency=5)
    seen = []
    result = train(model, data, epochs=4, batch_size=32, prune=schedule,
                   progress=lambda _, s, t, i: seen.append((s, i["sparsity"])))  # fmt: skip
    total = result.steps
    resolved = schedule.resolved(total)
    sizes = {"fc1": 120, "fc2": 400, "out": 40}
    for step, sparsity in seen:  # progress after update `step` reports masks set at update steps < step
        last = max(t for t in range(step) if resolved.is_update(t))
        target = resolved.sparsity(last)
        for name, n in sizes.items():
            assert sparsity[name] == math.floor(target * n + 0.5) / n, (step, name)
    # the end: every layer at 90%, masks made permanent (plain weights, no pruning hooks)
    assert result.sparsity == {"fc1": 108 / 120, "fc2": 360 / 400, "out": 36 / 40}
    assert layer_sparsity(model) == result.sparsity
    assert all(not k.endswith(("_orig", "_mask")) for k in model.state_dict())
    assert all(not m._forward_pre_hooks for m in model.modules())
    assert [r.sparsity["fc2"] for r in result.history][-1] == 0.9
    # a pruned model saves and loads as a plain modscope model
    from modscope.training import save_trained

    path = save_trained(model, "mlp:6-20-20-2", tmp_path / "pruned.safetensors", result=result)
    loaded, _ = load_model(path)
    assert layer_sparsity(loaded) == result.sparsity


def test_pruning_only_selected_layers_and_smallest_weights_go(data):
    model = build_model("mlp:6-20-20-2", 0)
    before = model.fc2.weight.detach().abs().clone()
    result = train(model, data, steps=1, batch_size=32, lr=1e-6,
                   prune=PruneSchedule(initial=0.5, final=0.5, layers=("fc2",)))  # fmt: skip
    assert set(result.sparsity) == {"fc2"} and result.sparsity["fc2"] == 0.5
    assert layer_sparsity(model)["fc1"] == 0.0
    zero = model.fc2.weight.detach() == 0
    assert before[zero].max() <= before[~zero].min()  # magnitude pruning (lr ~ 0: order unchanged)
    with pytest.raises(ValueError, match="no Linear/Conv layer named 'fc9'"):
        train(build_model("mlp:6-20-20-2", 0), data, steps=1, prune=PruneSchedule(layers=("fc9",)))
