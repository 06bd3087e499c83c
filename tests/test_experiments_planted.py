"""The planted-module benchmark: the planted structure, the tasks, the confidence intervals, and a tiny
run end to end (sections, report, determinism, the known answer at c = 0)."""

import json
import math
import re

import numpy as np
import pytest
import torch
from scipy import stats

from modscope.experiments import experiment_config, reproduce
from modscope.experiments.planted import SETTINGS, check_config, mean_ci, unit_key
from modscope.experiments.planted_nets import (
    FAMILIES,
    CrossTalk,
    build,
    cross_scales,
    input_shape,
    module_weights,
    node_modules,
)
from modscope.experiments.planted_tasks import make_data, task_accuracy, task_loss, task_sets
from modscope.report import write_report
from modscope.results import RunResult, lines_section, validate_section

SIZE = {"features": 2, "hidden": 4, "classes": 3}
TINY = {"networks": ["mlp", "lstm"], "crosstalk": [0.0, 1.0], "replicates": 2, "hidden": 4, "n_train": 256,
        "n_test": 128, "steps": 30, "mask_steps": 30}  # fmt: skip


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("networks", ["mlp", "rnn"], "networks must be"),
        ("networks", [], "networks must be"),
        ("networks", ["mlp", "mlp"], "networks must be"),
        ("crosstalk", [0.0, 1.5], "crosstalk must be"),
        ("crosstalk", [0.5, 0.5], "crosstalk must be"),
        ("replicates", 0, "replicates must be"),
        ("classes", 1, "classes must be"),
        ("mask_lr", 0.0, "mask_lr must be"),
        ("beta", -1.0, "beta must be"),
    ],
)
def test_config_check_names_the_bad_key(key, value, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        check_config({**SETTINGS["quick"], key: value})
    with pytest.raises(ValueError, match="no setting 'width'"):
        experiment_config("planted", "quick", {"width": 3})
    for setting in SETTINGS:
        check_config(SETTINGS[setting])


@pytest.mark.parametrize("family", FAMILIES)
def test_cross_talk_scales_exactly_the_weights_joining_the_modules(family, one_thread):
    torch.manual_seed(0)
    net = build(family, **SIZE)
    theta = {n: p.detach().clone() for n, p in net.named_parameters()}
    scales = cross_scales(net, 0.5)
    modules = module_weights(net, list(scales))
    for name, s in scales.items():
        a, b = modules["A"][name], modules["B"][name]
        assert not (a & b).any()
        assert torch.equal(s == 1.0, a | b)  # inside a module: 1; the rest (cross weights): c
        assert torch.all((s == 1.0) | (s == 0.5))
    baked = CrossTalk(net, 0.5).bake()
    for name, p in baked.named_parameters():
        want = theta[name] * scales[name] if name in scales else theta[name]
        assert torch.equal(p.detach(), want)


@pytest.mark.parametrize("family", FAMILIES)
def test_at_zero_cross_talk_a_task_ignores_the_other_modules_inputs(family, one_thread):
    """At c = 0 the network's A outputs do not move when B's inputs change (the transformer excepted: its
    LayerNorm couples the modules); its B outputs do."""
    data = make_data(family, **SIZE, length=3, n_train=64, n_test=16, seed=1)
    x, y = data.train
    assert x.shape == (64, *input_shape(family, features=2, length=3)) and y.shape == (64, 2)
    assert set(y.unique().tolist()) <= {0, 1, 2}
    torch.manual_seed(1)
    net = CrossTalk(build(family, **SIZE), 0.0).bake().eval()
    x2 = x.clone()
    feature_dim = 1 if family in ("mlp", "cnn") else 2
    x2.narrow(feature_dim, 2, 2).normal_(generator=torch.Generator().manual_seed(5))  # B's features
    with torch.no_grad():
        a, a2 = net(x)[:, :3], net(x2)[:, :3]
        b, b2 = net(x)[:, 3:], net(x2)[:, 3:]
    assert not torch.allclose(b, b2)
    if family != "transformer":
        torch.testing.assert_close(a, a2)


def test_task_loss_and_accuracy_read_each_tasks_own_outputs():
    outputs = torch.tensor([[5.0, 0.0, 0.0, 9.0], [0.0, 9.0, 5.0, 0.0]])  # 2 classes per task
    targets = torch.tensor([0, 2])  # example 0 is task A class 0; example 1 task B class 0 (id 2)
    assert task_accuracy(outputs, targets).tolist() == [1.0, 1.0]
    want = torch.nn.functional.cross_entropy(torch.tensor([[5.0, 0.0], [5.0, 0.0]]), torch.tensor([0, 0]))
    torch.testing.assert_close(task_loss(outputs, targets), want)
    sets = task_sets((torch.zeros(2, 1), torch.tensor([[1, 0], [0, 1]])), 2)
    assert sets["A"][1].tolist() == [1, 0] and sets["B"][1].tolist() == [2, 3]


def test_node_modules_and_mean_ci():
    assert node_modules([2, 4]).tolist() == [0, 1, 0, 0, 1, 1]
    with pytest.raises(ValueError, match="even size"):
        node_modules([3])
    xs = [0.2, 0.5, 0.4, None, math.nan]
    mean, lo, hi, n = mean_ci(xs)
    want = stats.t.interval(0.95, 2, loc=np.mean(xs[:3]), scale=stats.sem(xs[:3]))
    assert n == 3 and mean == pytest.approx(np.mean(xs[:3]))
    assert (lo, hi) == pytest.approx(want)
    assert mean_ci([0.3]) == (0.3, None, None, 1) and mean_ci([None]) == (None, None, None, 0)


def test_lines_bands_are_checked():
    ok = lines_section("S", xlabel="x", ylabel="y", series={"a": [[0, 1.0]]}, bands={"a": [[0, 0.5, 1.5]]})
    validate_section(ok)
    bad = (({"b": [[0, 0.5, 1.5]]}, "names no series"), ({"a": [[0, 2.0, 1.0]]}, "low <= high"),
           ({"a": [[0, 1.0]]}, "[x, low, high]"))  # fmt: skip
    for bands, message in bad:
        with pytest.raises(ValueError, match=re.escape(message)):
            lines_section("S", xlabel="x", ylabel="y", series={"a": [[0, 1.0]]}, bands=bands)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("planted")
    result = reproduce("planted", out / "a", overrides=TINY)
    return out, result


def test_tiny_run_has_the_curves_and_the_known_answer(tiny, one_thread):
    out, _ = tiny
    loaded = RunResult.load(out / "a" / "results.json")
    assert loaded.experiment == "planted" and loaded.setting == "custom"
    lines = [s for s in loaded.sections if s["kind"] == "lines"]
    assert [s["title"] for s in lines] == [f"{n}: {lens} lens" for n in ("MLP", "LSTM")
                                           for lens in ("structural", "functional", "connected")]  # fmt: skip
    assert all(s["bands"] for s in lines if s["title"].endswith("structural lens"))
    assert len(loaded.summary["rows"]) == 2 * 7 and loaded.summary["columns"][-2:] == ["c = 0", "c = 1"]
    assert len(loaded.units) == 2 * 2 * 2
    for family in TINY["networks"]:
        for r in range(2):
            unit = loaded.units[unit_key(family, 0.0, r)]
            assert unit["structural"]["ari"] == 1.0  # two components: the modules, found exactly
    assert loaded.claims[0]["agrees"] is True
    html = write_report(out / "a" / "results.json").read_text()
    drawn = [s for s in lines if any(s["series"].values())]  # the bridge's ARI is undefined here
    assert len(drawn) >= 4 and html.count("<img") == len(drawn)


def test_tiny_run_is_deterministic_and_resumes(tiny, one_thread):
    out, result = tiny
    again = reproduce("planted", out / "b", overrides=TINY)
    assert json.dumps(again.units, sort_keys=True) == json.dumps(result.units, sort_keys=True)
    resumed = reproduce("planted", out / "a", overrides=TINY)  # every unit read back, none recomputed
    assert resumed.units == result.units and resumed.summary == result.summary
