"""The functional-lens reproductions of Csordás et al. (arXiv:2010.02066): CI-sized runs, and the analysis of
one network checked on planted networks whose answers are known by construction."""

import json
import math
import shutil
import time

import pytest
import torch

from modscope import data
from modscope.atomic import finite
from modscope.experiments import RunResult, arithmetic, experiment_config, reproduce
from modscope.experiments import addmul as addmul_module
from modscope.experiments import double_addition as da_module
from modscope.experiments.addmul import SPECIALIZED
from modscope.experiments.arithmetic import CHANCE, convergence, exact_match
from modscope.experiments.double_addition import IO_FROM_CONTROL, REUSED
from modscope.masks import Mask, MaskEvalTable, MaskSet, iomin, iou, p_specialize
from modscope.models import build_model, load_model

ADDMUL_CI = {
    "hidden": "16x2,24x2",
    "train_steps": 40,
    "mask_steps": 8,
    "mask_batch": 32,
    "lstm": True,
    "lstm_hidden": "8x1",
}
DA_CI = {"hidden": "16x2", "train_steps": 40, "mask_steps": 8, "mask_batch": 32}
MASK_KEYS = {"kind", "title", "layers", "sizes", "kept", "iou", "iomin", "pair", "accuracy"}
UNITS = ("fnn-16x2-0", "fnn-24x2-0", "lstm-8x1-0")
UNIT_LAYER = "fc2.weight"  # the second masked layer of a 42-24x2-20 FNN


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
    for kept in section["kept"].values():
        assert set(kept) == set(layers)
        assert all(isinstance(kept[n], int) and 0 <= kept[n] <= section["sizes"][n] for n in layers)
    for n in layers:
        if section["iou"][n] is not None:
            assert 0.0 <= section["iou"][n] <= section["iomin"][n] + 1e-12 <= 1.0 + 1e-12
    _check_table(section["accuracy"])


# ------------------------------------------------------------------------------------ planted networks
def _onehot(a: int, b: int) -> list[int]:
    """Input indices of a and b in the addmul / double-addition digit encoding (tens first)."""
    return [a // 10, 10 + a % 10, 20 + b // 10, 30 + b % 10]


PLUS = [(11, 11), (12, 21), (13, 31), (14, 41)]  # sums 22, 33, 44, 55: no digit 0
TIMES = [(11, 2), (3, 11), (2, 22), (5, 11)]  # products 22, 33, 44, 55


def _planted_addmul():
    """A 42-9-20 MLP that looks its 8 examples up: unit j < 4 answers PLUS[j], 4 <= j < 8 TIMES[j - 4], and
    unit 8 (S, on for every input) cancels a bias that would otherwise make every answer digit 0. Each
    example needs its own unit and S; nothing else."""
    model = build_model("mlp:42-9-20")
    fc1, out = model.fc1, model.out
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        examples = [(a, b, 40) for a, b in PLUS] + [(a, b, 41) for a, b in TIMES]
        for j, (a, b, op) in enumerate(examples):
            fc1.weight[j, [*_onehot(a, b), op]] = 1.0
            fc1.bias[j] = -4.5  # on (0.5) only when all 5 inputs match
            r = (a + b) % 100 if op == 40 else (a * b) % 100
            out.weight[[r // 10, 10 + r % 10], j] = 4.0
        fc1.weight[8, [40, 41]] = 1.0  # S = 1 for every input
        out.weight[[0, 10], 8] = -3.0
        out.bias[[0, 10]] = 3.0
    evals = {}
    for op, pairs in (("+", PLUS), ("*", TIMES)):
        x = torch.zeros(len(pairs), 42)
        for i, (a, b) in enumerate(pairs):
            x[i, [*_onehot(a, b), 40 if op == "+" else 41]] = 1.0
        r = torch.tensor([(a + b) % 100 if op == "+" else (a * b) % 100 for a, b in pairs])
        evals[op] = (x, torch.stack([r // 10, r % 10], 1))
    return model, evals


def _units_mask(model, units) -> Mask:
    """Keep every weight into and out of the given hidden units (the first and last layer of an MLP)."""
    names = [n for n, _ in model.named_parameters() if n.endswith("weight")]
    params = dict(model.named_parameters())
    out = {}
    for n in names:
        m = torch.zeros(params[n].shape, dtype=torch.bool)
        if n == names[0]:
            m[list(units)] = True
        elif n == names[-1]:
            m[:, list(units)] = True
        else:  # hidden-to-hidden: the diagonal of the kept units
            m[list(units), list(units)] = True
        out[n] = m
    return Mask(out)


def test_planted_addmul_full_and_control_reference():
    model, evals = _planted_addmul()
    p012, t, s = [0, 1, 2], [4, 5, 6, 7], [8]  # P3 (unit 3) is in no mask
    masks = MaskSet({
        "control": _units_mask(model, [*p012, *t, *s]),  # misses P3: control accuracy on + is 0.75
        "+": _units_mask(model, [*p012, *s]),  # misses P3 too
        "*": _units_mask(model, [*t, *s]),
    })  # fmt: skip
    found = addmul_module.analyze(model, masks, evals, reference="control")
    tab = MaskEvalTable.from_dict(found["table"])
    expect = {  # condition -> (accuracy on +, accuracy on ×), worked out from the construction
        ("full", None): (1.0, 1.0),
        ("mask", "control"): (0.75, 1.0),
        ("mask", "+"): (0.75, 0.0),
        ("inverted", "+"): (0.0, 0.0),  # keeps P3 and T, loses S
        ("mask", "*"): (0.0, 1.0),
        ("inverted", "*"): (0.0, 0.0),
        ("mask", "+ only"): (0.0, 0.0),  # P0-P2 without S
        ("mask", "* only"): (0.0, 0.0),
        ("mask", "core"): (0.0, 0.0),  # S alone
        ("inverted", "+ only"): (0.25, 1.0),  # P3, T and S
        ("inverted", "* only"): (1.0, 0.0),  # P and S
        ("inverted", "core"): (0.0, 0.0),
    }
    for (kind, task), (plus, times) in expect.items():
        assert (tab.score(kind, task, "+"), tab.score(kind, task, "*")) == (plus, times), (kind, task)
    # Whole masks: removing either kills both (the core S goes with it): no specialization.
    assert found["p_specialize"] == {"+|*": 0.0, "*|+": 0.0}
    # Exclusive weights, drops from the control mask's 0.75 on +: d_+ = (0.75 - 0.25) / (0.75 - 0.01).
    excl = found["p_specialize_exclusive"]
    assert excl["+|*"] == pytest.approx((0.75 - 0.25) / (0.75 - CHANCE))
    assert excl["*|+"] == pytest.approx(1.0)
    # Against the full network (1.0) the same removal is a larger drop.
    full = addmul_module.analyze(model, masks, evals, reference="full")
    assert full["p_specialize_exclusive"]["+|*"] == pytest.approx((1.0 - 0.25) / (1.0 - CHANCE))
    # The authors' sharing statistic: S's 42 + 20 weights out of the + mask's 4 * 42 + 4 * 20.
    assert found["shared"]["+"]["total"] == pytest.approx(62 / 248)
    assert found["shared"]["+"]["per_layer"] == {"fc1.weight": 0.25, "out.weight": 0.25}
    assert found["shared"]["*"]["total"] == pytest.approx(62 / 310)
    assert found["derived_kept"]["core"] == {"fc1.weight": 42, "out.weight": 20}
    assert found["derived_kept"]["+ only"] == {"fc1.weight": 3 * 42, "out.weight": 3 * 20}


def _planted_double_addition():
    """An 80-7-7-40 MLP: hidden units A0-A2 answer three pair-1 examples, B0-B2 the same sums in pair 2's
    position (fc2 the identity on them); unit 6 is unused."""
    model = build_model("mlp:80-7-7-40")
    pairs = [(11, 11), (12, 21), (13, 31)]
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for pair in (0, 1):
            for i, (a, b) in enumerate(pairs):
                j = 3 * pair + i
                model.fc1.weight[j, [40 * pair + k for k in _onehot(a, b)]] = 1.0
                model.fc1.bias[j] = -3.5
                model.fc2.weight[j, j] = 1.0
                r = (a + b) % 100
                model.out.weight[[20 * pair + r // 10, 20 * pair + 10 + r % 10], j] = 4.0
    evals = {}
    for name, pair in (("pair 1", 0), ("pair 2", 1)):
        x = torch.zeros(3, 80)
        y = torch.full((3, 4), -100)
        for i, (a, b) in enumerate(pairs):
            x[i, [40 * pair + k for k in _onehot(a, b)]] = 1.0
            r = (a + b) % 100
            y[i, 2 * pair : 2 * pair + 2] = torch.tensor([r // 10, r % 10])
        evals[name] = (x, y)
    return model, evals


def test_planted_double_addition_both_inverted_variants():
    model, evals = _planted_double_addition()
    one = _units_mask(model, [0, 1, 2])
    # pair 1's mask also (wastefully) keeps B0's input weights, which pair 2 needs
    one = Mask({n: m | _units_mask(model, [3])[n] if n == "fc1.weight" else m for n, m in one.items()})
    two = _units_mask(model, [3, 4, 5])
    masks = MaskSet({"control": one | two, "pair 1": one, "pair 2": two})
    found = da_module.analyze(model, masks, evals, reference="control")
    tab = MaskEvalTable.from_dict(found["table"])
    io1, io2 = IO_FROM_CONTROL.format("pair 1"), IO_FROM_CONTROL.format("pair 2")
    assert tab.score("mask", "control", "pair 2") == 1.0
    # Inverted everywhere, removing pair 1's weights takes B0's input row: pair 2 loses one of three.
    assert tab.score("inverted", "pair 1", "pair 2") == pytest.approx(2 / 3)
    assert tab.score("inverted", "pair 1", "pair 1") == 0.0
    # Input and output layers from the control mask: B0 keeps its inputs, pair 1 still loses its hidden path.
    assert tab.score("mask", io1, "pair 2") == 1.0
    assert tab.score("mask", io1, "pair 1") == 0.0
    assert tab.score("mask", io2, "pair 1") == 1.0 and tab.score("mask", io2, "pair 2") == 0.0
    reuse = found["p_reuse"]
    assert reuse["functional"]["2|1"] == pytest.approx((1 - 2 / 3) / (1 - CHANCE))
    assert reuse["functional"]["1|2"] == 0.0
    assert reuse["functional_io_control"] == {"2|1": 0.0, "1|2": 0.0}
    # Overlap: only B0's input row (80 weights) is in both masks; the hidden layer shares nothing.
    assert found["shared_layers"] == ["fc2.weight"] and reuse["iou"] == 0.0
    assert found["iou"]["per_layer"]["fc1.weight"] == pytest.approx(80 / (4 * 80 + 3 * 80 - 80))
    assert found["iou"]["total"] == pytest.approx(80 / ((4 * 80 + 3 + 3 * 40) + (3 * 80 + 3 + 3 * 40) - 80))
    # io_from_control: control in the first and last layers, the inversion in between.
    derived = da_module.io_from_control(masks, "pair 1")
    assert torch.equal(derived["fc1.weight"], masks["control"]["fc1.weight"])
    assert torch.equal(derived["out.weight"], masks["control"]["out.weight"])
    assert torch.equal(derived["fc2.weight"], ~masks["pair 1"]["fc2.weight"])


def test_convergence_reads_the_last_fifth():
    assert convergence([[100, 0.9], [800, 0.5], [1000, 0.5]]) == 0.0
    assert convergence([[200, 0.8], [400, 0.6], [600, 0.55], [800, 0.5], [1000, 0.4]]) == pytest.approx(0.25)
    assert convergence([[100, 0.5]]) is None and convergence([[1, 0.2], [2, 0.0]]) is None


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
def test_addmul_defaults_are_the_authors_protocol():
    for name in ("addmul", "double-addition"):
        for setting in ("quick", "paper"):
            cfg = experiment_config(name, setting)
            assert json.loads(json.dumps(cfg)) == cfg
            assert (cfg["protocol"], cfg["heldout"], cfg["reference"]) == ("authors", 0.0, "control")
            assert (cfg["init"], cfg["clip"], cfg["samples"], cfg["train_steps"]) == ("torch", 1.0, 4, 20000)
        # quick trains the masks with the authors' budget lr x steps (1e-2 x 20k) in fewer, larger steps
        quick, paper = (experiment_config(name, s) for s in ("quick", "paper"))
        assert (paper["mask_lr"], paper["mask_steps"]) == (1e-2, 20000)
        assert quick["mask_lr"] * quick["mask_steps"] == pytest.approx(paper["mask_lr"] * paper["mask_steps"])
    paper = experiment_config("addmul", "paper")
    assert (paper["hidden"], paper["beta"], paper["mask_batch"]) == ("2000x4", 1e-4, 128)
    assert paper["train_steps"] == paper["mask_steps"] == 20000 and paper["lstm"] is True
    assert experiment_config("double-addition", "paper")["beta"] == 4e-4


def test_addmul_results_and_schema(addmul_run):
    out, result, progress, _ = addmul_run
    assert _json(RunResult.load(out / "results.json")) == _json(result)
    assert result.experiment == "addmul" and result.setting == "custom"
    assert tuple(result.units) == UNITS
    assert len(result.summary["rows"]) == 3
    _check_table(result.summary)
    masks = [s for s in result.sections if s["kind"] == "masks"]
    assert len(masks) == 3  # one per width and the LSTM
    for s in masks:
        _check_masks_section(s, ["+", "*"])
        assert list(s["kept"]) == ["control", "+", "*"]
        assert [r[0] for r in s["accuracy"]["rows"]] == ["+", "×"]
    # layers in the model's order (input to output), not the alphabetical order of stored documents
    assert masks[0]["layers"] == ["fc1.weight", "fc2.weight", "out.weight"]
    assert masks[2]["layers"] == ["lstm.weight_ih_l0", "lstm.weight_hh_l0", "out.weight"]
    tables = {s["title"]: s for s in result.sections if s["kind"] == "table"}
    core = next(s for t, s in tables.items() if t.startswith("Core analysis"))
    assert [r[:2] for r in core["rows"]] == [
        [n, op] for n in ("FNN 42-16-16-20", "FNN 42-24-24-20", "LSTM 8x1") for op in ("+", "×")
    ]
    lines = [s for s in result.sections if s["kind"] == "lines"]
    sharing, curves = lines
    assert [x for x, _ in sharing["series"]["all layers"]] == [16, 24] or not sharing["series"]["all layers"]
    assert set(curves["series"]) == {f"{u}: {t}" for u in UNITS for t in ("control", "+", "*")}
    # per width and kind: + then ×, and the sharing trend last
    assert len(result.claims) == 7
    order = [(k, w) for k in UNITS for w in ("+|*", "*|+")]
    for claim, (key, which) in zip(result.claims, order, strict=False):
        p = result.units[key]["p_specialize"][which]
        assert claim["agrees"] == (None if p is None else p >= SPECIALIZED)
    assert {"networks", "train", "masks"} <= progress.labels()
    assert ("networks", 3, 3) in progress.calls


def test_addmul_unit_matches_its_files(addmul_run):
    out, result, _, _ = addmul_run
    doc = result.units["fnn-16x2-0"]
    model, _ = load_model(out / doc["model"])
    masks = MaskSet.load(out / doc["masks"], model=model)
    assert masks.tasks == ("control", "+", "*")
    assert doc["kept"] == {t: masks[t].kept() for t in masks.tasks}
    assert all(not n.endswith("bias") for n in masks.param_names)  # biases are not masked
    assert doc["iou"] == finite(iou(masks["+"], masks["*"]).to_dict())
    assert doc["iomin"] == finite(iomin(masks["+"], masks["*"]).to_dict())
    assert set(doc["curves"]) == {"control", "+", "*"} and doc["curves"]["+"][-1][0] == 8
    tab = MaskEvalTable.from_dict(doc["table"])
    # The authors' protocol: every input of the op is evaluated, under the full network and the masks.
    for op in data.OPS:
        x, y = data.addmul("train", ops=(op,), test_fraction=0.0).tensors
        with torch.no_grad():
            expected = exact_match(model(x), y).double().mean().item()
        assert tab.score("full", None, op) == pytest.approx(expected)
        assert tab.get("full", None, op).n == len(y) == 10000
    defined = all(tab.score("mask", "control", op) > CHANCE for op in data.OPS)
    expected = p_specialize(tab, "+", "*", chance=CHANCE, reference="control") if defined else None
    assert doc["p_specialize"]["+|*"] == pytest.approx(expected)
    assert result.summary["rows"][0][:4] == [
        "FNN 42-16-16-20 #0",
        0,
        tab.score("mask", "control", "+"),
        tab.score("mask", "control", "*"),
    ]


def test_addmul_heldout_protocol_evaluates_unseen_pairs(tmp_path, one_thread):
    cfg = {**ADDMUL_CI, "hidden": "16x2", "lstm": False, "protocol": "heldout", "heldout": 0.1}
    result = reproduce("addmul", tmp_path, overrides=cfg)
    tab = MaskEvalTable.from_dict(result.units["fnn-16x2-0"]["table"])
    assert tab.get("full", None, "+").n == 1000  # the held-out pairs
    assert "held-out pairs" in next(s for s in result.sections if s["kind"] == "masks")["accuracy"]["title"]


def test_addmul_resume_recomputes_nothing(addmul_run, monkeypatch):
    out, result, _, first_seconds = addmul_run

    def forbidden(*args, **kwargs):
        raise AssertionError("a finished unit was recomputed")

    monkeypatch.setattr(arithmetic, "run_recipe", forbidden)
    monkeypatch.setattr(arithmetic, "train_masks", forbidden)
    start = time.perf_counter()
    again = reproduce("addmul", out, overrides=ADDMUL_CI)
    assert time.perf_counter() - start < first_seconds
    a, b = _json(result), _json(again)
    a.pop("seconds"), b.pop("seconds")
    assert a == b


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (lambda u: u.pop("p_specialize"), "lacks the key 'p_specialize'"),
        (lambda u: u["kept"]["+"].pop(u["layers"][1]), f"lacks the key 'kept.+.{UNIT_LAYER}'"),
        (lambda u: u["iou"].update(total="high"), "'iou.total' must be int or float or null, got 'high'"),
        (lambda u: u["derived_kept"]["core"].clear(), "lacks the key 'derived_kept.core."),
        (lambda u: u["table"].pop("rows", None) or u.update(table=[]), "'table' must be dict"),
    ],
)
def test_addmul_edited_unit_is_named(addmul_run, tmp_path, edit, problem):
    out = addmul_run[0]
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    unit = copy / "units" / f"{UNITS[1]}.json"
    doc = json.loads(unit.read_text())
    edit(doc)
    unit.write_text(json.dumps(doc))
    with pytest.raises(ValueError) as info:
        reproduce("addmul", copy, overrides=ADDMUL_CI)
    message = str(info.value)
    assert str(unit) in message and problem in message and "delete it to recompute that unit" in message


def test_addmul_refuses_another_config_in_the_same_folder(addmul_run):
    out = addmul_run[0]
    with pytest.raises(ValueError, match="mask_steps"):
        reproduce("addmul", out, overrides={**ADDMUL_CI, "mask_steps": 9})


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"hidden": "16 x2"}, "hidden must be layer sizes"),
        ({"hidden": "0x2"}, "bad layer size|must be"),
        ({"hidden": "16x2,16x2"}, "lists a width twice"),
        ({"lstm_hidden": "8-8"}, "lstm_hidden must be layer sizes"),
        ({"networks": 0}, "networks must be an int >= 1"),
        ({"beta": -1e-4}, "beta must be a non-negative finite number"),
        ({"mask_lr": 0.0}, "mask_lr must be a positive finite number"),
        ({"mask_batch": 2}, r"mask_batch \(2\) must be at least samples \(4\)"),
        ({"protocol": "mine"}, "protocol must be one of"),
        ({"heldout": 0.1}, "protocol 'authors' trains and evaluates on every input"),
        ({"protocol": "heldout"}, "needs the share of pairs to hold out"),
        ({"protocol": "heldout", "heldout": 1.0}, r"heldout must be a share of the pairs in \[0, 1\)"),
        ({"reference": "none"}, "reference must be one of"),
        ({"init": "he"}, "init must be one of"),
        ({"clip": -1.0}, "clip must be a non-negative finite number"),
    ],
)
def test_addmul_rejects_bad_config(tmp_path, override, message):
    with pytest.raises(ValueError, match=message):
        reproduce("addmul", tmp_path / "run", overrides={**ADDMUL_CI, **override})
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------ double addition
def test_double_addition_results_and_schema(da_run):
    out, result, progress, _ = da_run
    assert _json(RunResult.load(out / "results.json")) == _json(result)
    (masks,) = [s for s in result.sections if s["kind"] == "masks"]
    _check_masks_section(masks, ["pair 1", "pair 2"])
    assert masks["layers"] == ["fc1.weight", "fc2.weight", "out.weight"]
    columns = masks["accuracy"]["columns"]
    assert IO_FROM_CONTROL.format("pair 1") in columns and "¬pair 1" in columns and "control" in columns
    structural, functional, functional_io = result.claims
    reuse = result.units["fnn-0"]["p_reuse"]
    assert structural["agrees"] == (None if reuse["iou"] is None else reuse["iou"] < REUSED)
    for claim, field in ((functional, "functional"), (functional_io, "functional_io_control")):
        drops = [v for v in reuse[field].values() if v is not None]
        assert claim["agrees"] == (sum(drops) / len(drops) < REUSED if drops else None)
    assert {"networks", "train", "masks"} <= progress.labels()


def test_double_addition_unit_matches_its_files(da_run):
    out, result, _, _ = da_run
    doc = result.units["fnn-0"]
    assert doc["shared_layers"] == ["fc2.weight"]  # input and output layers are pair-specific
    masks = MaskSet.load(out / doc["masks"])
    assert masks.tasks == ("control", "pair 1", "pair 2")
    assert doc["p_reuse"]["iou"] == finite(iou(masks["pair 1"], masks["pair 2"], layers=["fc2.weight"]).total)
    assert doc["iou"] == finite(iou(masks["pair 1"], masks["pair 2"]).to_dict())
    tab = MaskEvalTable.from_dict(doc["table"])
    ref = [tab.score("mask", "control", p) for p in ("pair 1", "pair 2")]
    if min(ref) > CHANCE:
        drop = (ref[1] - tab.score("inverted", "pair 1", "pair 2")) / (ref[1] - CHANCE)
        assert doc["p_reuse"]["functional"]["2|1"] == pytest.approx(min(max(drop, 0.0), 1.0))
    else:
        assert doc["p_reuse"]["functional"] == {"2|1": None, "1|2": None}
    # Each pair is scored on its own digits, on every input (authors' protocol).
    model, _ = load_model(out / doc["model"])
    x, y = data.double_addition("train", 0.0, pair=1).tensors
    with torch.no_grad():
        hits = exact_match(model(x), y)
    assert tab.score("full", None, "pair 2") == pytest.approx(hits.double().mean().item())


def test_double_addition_is_deterministic_and_resumable(da_run, tmp_path, monkeypatch):
    out, result, _, _ = da_run
    again = reproduce("double-addition", tmp_path, overrides=DA_CI)
    a, b = _json(result), _json(again)
    a.pop("seconds"), b.pop("seconds")
    assert a == b  # same seed, fresh folder: the same numbers

    def forbidden(*args, **kwargs):
        raise AssertionError("a finished unit was recomputed")

    monkeypatch.setattr(arithmetic, "run_recipe", forbidden)
    monkeypatch.setattr(arithmetic, "train_masks", forbidden)
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
