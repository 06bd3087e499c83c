"""The functional-lens reproductions of Csordás et al. (arXiv:2010.02066), CI-sized."""

import json
import math
import time

import pytest
import torch

from modscope import data
from modscope.atomic import finite
from modscope.experiments import RunResult, experiment_config, reproduce
from modscope.experiments import addmul as addmul_module
from modscope.experiments.addmul import CHANCE, SPECIALIZED, exact_match
from modscope.experiments.double_addition import REUSED
from modscope.masks import MaskEvalTable, MaskSet, iomin, iou, p_specialize, relative_drop
from modscope.models import load_model

ADDMUL_CI = {
    "hidden": "16x2",
    "train_steps": 40,
    "mask_steps": 8,
    "mask_batch": 32,
    "lstm": True,
    "lstm_hidden": "8x1",
}
DA_CI = {"hidden": "16x2", "train_steps": 40, "mask_steps": 8, "mask_batch": 32}
MASK_KEYS = {"kind", "title", "layers", "sizes", "kept", "iou", "iomin", "pair", "accuracy"}


class Recorder:
    def __init__(self):
        self.calls = []

    def __call__(self, label, done, total, info):
        self.calls.append((label, done, total))

    def labels(self):
        return {c[0] for c in self.calls}


def _timed_run(name, overrides, tmp_path_factory):
    out = tmp_path_factory.mktemp(name)
    progress = Recorder()
    start = time.perf_counter()
    result = reproduce(name, out, overrides=overrides, progress=progress)
    return out, result, progress, time.perf_counter() - start


@pytest.fixture(scope="module")
def addmul_run(one_thread, tmp_path_factory):
    return _timed_run("addmul", ADDMUL_CI, tmp_path_factory)


@pytest.fixture(scope="module")
def da_run(one_thread, tmp_path_factory):
    return _timed_run("double-addition", DA_CI, tmp_path_factory)


def _json(result: RunResult) -> dict:
    return json.loads(json.dumps(finite(result.to_dict())))


def _check_table(section):
    assert section["kind"] == "table"
    assert all(len(r) == len(section["columns"]) for r in section["rows"])


def _check_masks_section(section, pair):
    assert set(section) == MASK_KEYS
    assert section["pair"] == list(pair)
    layers = section["layers"]
    assert set(section["sizes"]) == set(section["iou"]) == set(section["iomin"]) == set(layers)
    assert set(pair) <= set(section["kept"])
    for kept in section["kept"].values():
        assert set(kept) == set(layers)
        assert all(isinstance(kept[n], int) and 0 <= kept[n] <= section["sizes"][n] for n in layers)
    for n in layers:
        for v in (section["iou"][n], section["iomin"][n]):
            assert v is None or 0.0 <= v <= 1.0
        if section["iou"][n] is not None:
            assert section["iou"][n] <= section["iomin"][n] + 1e-12
    _check_table(section["accuracy"])


# ------------------------------------------------------------------------------------ helpers
def test_exact_match_scores_every_digit_and_skips_ignored_ones():
    targets = torch.tensor([[3, 7], [3, 7], [-100, -100], [1, -100]])
    logits = torch.full((4, 2, 10), -5.0)
    for row, (tens, ones) in enumerate([(3, 7), (3, 2), (0, 0), (1, 9)]):
        logits[row, 0, tens] = logits[row, 1, ones] = 5.0
    hits = exact_match(logits.reshape(4, 20), targets)
    assert hits.tolist() == [True, False, True, True]
    with pytest.raises(ValueError, match="digit-class targets"):
        exact_match(torch.zeros(2, 20), torch.zeros(2, 2))


# ------------------------------------------------------------------------------------ addmul
def test_addmul_results_and_schema(addmul_run):
    out, result, progress, _ = addmul_run
    assert _json(RunResult.load(out / "results.json")) == _json(result)
    assert result.experiment == "addmul" and result.setting == "custom"
    assert set(result.units) == {"fnn-0", "lstm-0"}
    assert result.summary["kind"] == "table" and len(result.summary["rows"]) == 2
    _check_table(result.summary)
    masks = [s for s in result.sections if s["kind"] == "masks"]
    assert len(masks) == 2  # one per network kind
    tables = {s["title"]: s for s in result.sections if s["kind"] == "table"}
    for s in tables.values():
        _check_table(s)
    where = next(s for t, s in tables.items() if t.startswith("Where the masks specialize"))
    assert [r[:2] for r in where["rows"]] == [["FNN", "+"], ["FNN", "×"], ["LSTM", "+"], ["LSTM", "×"]]
    for s in masks:
        _check_masks_section(s, ["+", "*"])
        assert list(s["kept"]) == ["control", "+", "*"]
        assert [r[0] for r in s["accuracy"]["rows"]] == ["+", "×"]
    # layers in the model's order (input to output), not the alphabetical order of stored documents
    assert masks[0]["layers"] == ["fc1.weight", "fc2.weight", "out.weight"]
    assert masks[1]["layers"] == ["lstm.weight_ih_l0", "lstm.weight_hh_l0", "out.weight"]
    assert len(result.claims) == 4  # per network kind: + then ×
    order = [(k, w) for k in ("fnn-0", "lstm-0") for w in ("+|*", "*|+")]
    for claim, (key, which) in zip(result.claims, order, strict=True):
        p = result.units[key]["p_specialize"][which]
        assert claim["agrees"] == (None if p is None else p >= SPECIALIZED)
    assert {"networks", "train", "masks"} <= progress.labels()
    assert ("networks", 2, 2) in progress.calls


def test_addmul_unit_matches_its_files(addmul_run):
    out, result, _, _ = addmul_run
    doc = result.units["fnn-0"]
    model, _ = load_model(out / doc["model"])
    masks = MaskSet.load(out / doc["masks"], model)
    assert masks.tasks == ("control", "+", "*")
    assert doc["kept"] == {t: masks[t].kept() for t in masks.tasks}
    assert all(not n.endswith("bias") for n in masks.param_names)  # biases are not masked
    assert doc["iou"] == finite(iou(masks["+"], masks["*"]).to_dict())
    assert doc["iomin"] == finite(iomin(masks["+"], masks["*"]).to_dict())
    tab = MaskEvalTable.from_dict(doc["table"])
    # The full-network score is the saved model's exact-match accuracy on the held-out pairs of that op.
    for op in data.OPS:
        x, y = data.addmul("test", ops=(op,), seed=doc["seed"]).tensors
        with torch.no_grad():
            expected = exact_match(model(x), y).double().mean().item()
        assert tab.score("full", None, op) == pytest.approx(expected)
        assert tab.get("full", None, op).n == len(y) == 1000
    defined = all(tab.score("full", None, op) > CHANCE for op in data.OPS)
    expected = p_specialize(tab, "+", "*", CHANCE) if defined else None
    assert doc["p_specialize"]["+|*"] == pytest.approx(expected)
    row = result.summary["rows"][0]
    assert row[:4] == ["FNN 0", 0, tab.score("full", None, "+"), tab.score("full", None, "*")]
    # The exclusive weights: what one mask keeps and the other does not.
    only = doc["exclusive"]
    plus, times = masks["+"], masks["*"]
    assert only["kept"] == {"+ only": (plus - times).kept(), "* only": (times - plus).kept()}
    tab_only = MaskEvalTable.from_dict(only["table"])
    assert tab_only.score("full", None, "+") == tab.score("full", None, "+")
    if defined:
        drops = [relative_drop(tab_only, s, "inverted", "+ only", CHANCE) for s in ("+", "*")]
        assert only["p_specialize"]["+|*"] == pytest.approx(drops[0] - drops[1])
    else:
        assert only["p_specialize"] == {"+|*": None, "*|+": None}


def test_addmul_resume_recomputes_nothing(addmul_run, monkeypatch):
    out, result, _, first_seconds = addmul_run

    def forbidden(*args, **kwargs):
        raise AssertionError("a finished unit was recomputed")

    monkeypatch.setattr(addmul_module, "run_recipe", forbidden)
    monkeypatch.setattr(addmul_module, "train_masks", forbidden)
    start = time.perf_counter()
    again = reproduce("addmul", out, overrides=ADDMUL_CI)
    assert time.perf_counter() - start < first_seconds
    a, b = _json(result), _json(again)
    a.pop("seconds"), b.pop("seconds")
    assert a == b


def test_addmul_refuses_another_config_in_the_same_folder(addmul_run):
    out = addmul_run[0]
    with pytest.raises(ValueError, match="mask_steps"):
        reproduce("addmul", out, overrides={**ADDMUL_CI, "mask_steps": 9})


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"hidden": "16 x2"}, "hidden must be layer sizes"),
        ({"hidden": "0x2"}, "bad layer size|must be"),
        ({"lstm_hidden": "8-8"}, "lstm_hidden must be layer sizes"),
        ({"networks": 0}, "networks must be an int >= 1"),
        ({"beta": -1e-4}, "beta must be a finite number >= 0"),
        ({"mask_lr": 0.0}, "mask_lr must be a finite number > 0"),
        ({"mask_batch": 2}, r"mask_batch \(2\) must be at least samples \(4\)"),
    ],
)
def test_addmul_rejects_bad_config(tmp_path, override, message):
    with pytest.raises(ValueError, match=message):
        reproduce("addmul", tmp_path, overrides={**ADDMUL_CI, **override})


def test_settings_are_json_scalars_and_paper_follows_the_paper():
    for name in ("addmul", "double-addition"):
        for setting in ("quick", "paper"):
            cfg = experiment_config(name, setting)
            assert json.loads(json.dumps(cfg)) == cfg
    paper = experiment_config("addmul", "paper")
    assert (paper["hidden"], paper["beta"], paper["mask_batch"], paper["samples"]) == ("2000x4", 1e-4, 128, 4)
    assert paper["train_steps"] == paper["mask_steps"] == 20000 and paper["lstm"] is True


# ------------------------------------------------------------------------------------ double addition
def test_double_addition_results_and_schema(da_run):
    out, result, progress, _ = da_run
    assert _json(RunResult.load(out / "results.json")) == _json(result)
    (masks,) = [s for s in result.sections if s["kind"] == "masks"]
    _check_masks_section(masks, ["pair 1", "pair 2"])
    assert masks["layers"] == ["fc1.weight", "fc2.weight", "out.weight"]
    structural, functional = result.claims
    reuse = result.units["fnn-0"]["p_reuse"]
    assert structural["agrees"] == (None if reuse["iou"] is None else reuse["iou"] < REUSED)
    drops = [v for v in reuse["functional"].values() if v is not None]
    assert functional["agrees"] == (sum(drops) / len(drops) < REUSED if drops else None)
    assert {"networks", "train", "masks"} <= progress.labels()


def test_double_addition_p_reuse_uses_the_hidden_layers(da_run):
    out, result, _, _ = da_run
    doc = result.units["fnn-0"]
    assert doc["shared_layers"] == ["fc2.weight"]  # input and output layers are pair-specific
    masks = MaskSet.load(out / doc["masks"])
    one, two = masks["pair 1"], masks["pair 2"]
    structural = iou(one, two, ["fc2.weight"]).total
    assert doc["p_reuse"]["iou"] == finite(structural)
    tab = MaskEvalTable.from_dict(doc["table"])
    full = [tab.score("full", None, p) for p in ("pair 1", "pair 2")]
    if min(full) > CHANCE:
        drop = (full[1] - tab.score("inverted", "pair 1", "pair 2")) / (full[1] - CHANCE)
        assert doc["p_reuse"]["functional"]["2|1"] == pytest.approx(min(max(drop, 0.0), 1.0))
    else:
        assert doc["p_reuse"]["functional"] == {"2|1": None, "1|2": None}
    # Each pair is scored on its own digits: the full network's score equals that pair's exact match.
    model, _ = load_model(out / doc["model"])
    x, y = data.double_addition("test", seed=doc["seed"], pair=1).tensors
    with torch.no_grad():
        hits = exact_match(model(x), y)
    assert full[1] == pytest.approx(hits.double().mean().item())


def test_double_addition_is_deterministic_and_resumable(da_run, tmp_path, monkeypatch):
    out, result, _, _ = da_run
    again = reproduce("double-addition", tmp_path, overrides=DA_CI)
    a, b = _json(result), _json(again)
    a.pop("seconds"), b.pop("seconds")
    assert a == b  # same seed, fresh folder: the same numbers

    def forbidden(*args, **kwargs):
        raise AssertionError("a finished unit was recomputed")

    monkeypatch.setattr(addmul_module, "run_recipe", forbidden)
    monkeypatch.setattr(addmul_module, "train_masks", forbidden)
    resumed = _json(reproduce("double-addition", out, overrides=DA_CI))
    resumed.pop("seconds")
    assert resumed == a
    with pytest.raises(ValueError, match="hidden"):
        reproduce("double-addition", out, overrides={**DA_CI, "hidden": "16x3"})


def test_double_addition_needs_two_hidden_layers(tmp_path):
    with pytest.raises(ValueError, match="at least 2 hidden layers"):
        reproduce("double-addition", tmp_path, overrides={**DA_CI, "hidden": "16"})


def test_p_values_are_finite_or_none(addmul_run, da_run):
    for result in (addmul_run[1], da_run[1]):
        for row in result.summary["rows"]:
            assert all(v is None or not isinstance(v, float) or math.isfinite(v) for v in row)
