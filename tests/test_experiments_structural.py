"""The structural-lens reproductions end to end on CI-sized settings (digits, a 64-64x2-10 MLP).

Checks that the tables are the units' numbers, that a pruned network is its unpruned row's network
trained further (bit for bit the same as training it with pruning from scratch), that the random-init
row holds the control networks' initial weights, that the sections follow the results schema, and that
a second call recomputes nothing.
"""

import json
import re
import shutil
from statistics import fmean

import numpy as np
import pytest
import torch

from modscope.cluster import clusterability
from modscope.experiments import RunResult, reproduce, structural
from modscope.experiments.clusterability import ROWS
from modscope.experiments.structural import network_seeds
from modscope.graph import SHUFFLES
from modscope.lesion import LABELS, UNTESTED
from modscope.models import build_model, load_model, parse_spec
from modscope.results import module_name
from modscope.seeding import derive
from modscope.training import evaluate
from modscope.training.recipes import load_task_data, run_recipe

EPOCHS = 15
SPEC = "mlp:64-64x2-10"
N_NODES = 64 + 64 + 64 + 10
CLUSTER = {"dataset": "digits", "hidden": "64x2", "epochs": EPOCHS, "networks": 2, "shuffles": 3, "k": 4}
LESIONS = {"dataset": "digits", "hidden": "64x2", "epochs": EPOCHS, "networks": 1, "k": 12, "n_random": 20}


class Recorder:
    def __init__(self):
        self.calls = []

    def __call__(self, label, done, total, info):
        self.calls.append((label, done, total))

    @property
    def labels(self):
        return {c[0] for c in self.calls}


def _run(name, out, overrides):
    rec = Recorder()
    return reproduce(name, out, overrides=overrides, progress=rec), rec


@pytest.fixture(scope="module")
def clustered(tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("clusterability")
    result, rec = _run("clusterability", out, CLUSTER)
    return out, result, rec


@pytest.fixture(scope="module")
def lesioned(tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("lesions")
    result, rec = _run("lesions", out, LESIONS)
    return out, result, rec


def _plain(result):
    return json.loads(json.dumps(result.to_dict()))


def _model(path):
    return load_model(path)[0]


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same_weights(a, b):
    wa, wb = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


# ------------------------------------------------------------------------------------ clusterability
def test_clusterability_results_file_and_progress(clustered):
    out, result, rec = clustered
    loaded = RunResult.load(out / "results.json")
    assert _plain(loaded) == _plain(result)
    assert loaded.setting == "custom" and loaded.config["shuffles"] == 3
    assert {"networks", "train", "prune", "clustering"} <= rec.labels
    assert rec.calls[-1] == ("networks", 2 * len(ROWS), 2 * len(ROWS))
    assert not list((out / "checkpoints").iterdir())  # every unit finished: no checkpoints left
    assert set(result.units) == {f"{r.key}-{i}" for r in ROWS for i in range(2)}


def test_summary_is_the_units_numbers(clustered):
    _, result, _ = clustered
    s = result.summary
    assert [row[0] for row in s["rows"]] == [r.label for r in ROWS]
    col = {c: j for j, c in enumerate(s["columns"])}
    for r, row in zip(ROWS, s["rows"]):
        units = [result.units[f"{r.key}-{i}"] for i in range(2)]
        assert row[col["N"]] == 2
        assert row[col["n-cut (mean)"]] == pytest.approx(fmean(u["ncut"] for u in units))
        assert row[col["test accuracy (mean)"]] == pytest.approx(fmean(u["accuracy"] for u in units))
        for kind in SHUFFLES:
            nulls = [u["shuffles"][kind] for u in units]
            assert row[col[f"{kind} null (mean)"]] == pytest.approx(fmean(n["null_mean"] for n in nulls))
            sig = sum(n["p_value"] < 0.05 for n in nulls)
            assert row[col[f"p < 0.05 vs {kind}"]] == f"{sig}/2"
            for n in nulls:
                assert len(n["null_ncuts"]) == 3
                assert n["null_mean"] == pytest.approx(np.mean(n["null_ncuts"]))
    # With 3 shuffles the smallest p is 1/4: nothing can be significant, so claim 1 cannot be judged.
    assert all(row[col["p < 0.05 vs layer"]] == "0/2" for row in s["rows"])
    claims = {c["claim"]: c for c in result.claims}
    assert claims["trained networks are more clusterable than layer shuffles"]["agrees"] is None
    for c in result.claims:
        assert c["agrees"] in (True, False, None) and c["ours"]


def test_pruning_claim_follows_the_units(clustered):
    _, result, _ = clustered
    claim = next(c for c in result.claims if c["claim"] == "pruning increases clusterability")
    lower = [
        fmean(result.units[f"{b}-{i}"]["ncut"] for i in range(2))
        < fmean(result.units[f"{a}-{i}"]["ncut"] for i in range(2))
        for a, b in (("control-unpruned", "control-pruned"), ("dropout-unpruned", "dropout-pruned"))
    ]
    assert claim["agrees"] == (True if all(lower) else False if not any(lower) else None)


def test_pruned_network_is_the_unpruned_one_trained_further(clustered):
    out, result, _ = clustered
    for i in range(2):
        unpruned, pruned = result.units[f"control-unpruned-{i}"], result.units[f"control-pruned-{i}"]
        assert pruned["phase_accuracy"][0] == unpruned["accuracy"]
        assert unpruned["sparsity"] is None
        assert all(v == pytest.approx(0.9, abs=0.01) for v in pruned["sparsity"].values())
    # Sharing the first phase's checkpoint gives bit for bit the network trained with pruning from scratch.
    seed = result.units["dropout-pruned-0"]["seed"]
    steps = EPOCHS * 12  # ceil(1438 / 128) updates per epoch
    fresh, *_ = run_recipe("clusterability-mlp", dataset="digits", spec="mlp:{in}-64x2-{out}", dropout=0.5,
                           prune=True, seed=seed, steps=steps)  # fmt: skip
    assert _same_weights(fresh, _model(out / result.units["dropout-pruned-0"]["model"]))


def test_dense_networks_reuse_the_layer_shuffles_exactly(clustered):
    out, result, _ = clustered
    unit = result.units["control-unpruned-0"]
    assert unit["shuffles"]["layer_nonzero"] == unit["shuffles"]["layer"]
    model = _model(out / unit["model"])
    direct = clusterability(model, k=4, n_shuffles=3, shuffle="layer_nonzero", seed=unit["cluster_seed"])
    assert direct.null_ncuts.tolist() == unit["shuffles"]["layer_nonzero"]["null_ncuts"]
    assert direct.ncut == unit["ncut"]
    pruned = result.units["control-pruned-0"]["shuffles"]
    assert pruned["layer_nonzero"]["null_ncuts"] != pruned["layer"]["null_ncuts"]


def test_random_init_row_holds_the_control_networks_initial_weights(clustered):
    out, result, _ = clustered
    for i in range(2):
        unit = result.units[f"random-init-{i}"]
        assert unit["seed"] == result.units[f"control-unpruned-{i}"]["seed"] == network_seeds(0, i).train
        model = _model(out / unit["model"])
        assert _same_weights(model, build_model(parse_spec(SPEC), seed=unit["seed"]))
        test = load_task_data("digits", seed=unit["seed"]).test
        assert unit["accuracy"] == evaluate(model, test).accuracy


def test_clusterability_sections_follow_the_schema(clustered):
    out, result, _ = clustered
    rep, every = result.sections
    assert rep["kind"] == "clusterability" and rep["network"] == "control-pruned-0"
    unit = result.units["control-pruned-0"]
    assert rep["ncut"] == unit["ncut"] and rep["k"] == 4
    assert set(rep["nulls"]) == set(SHUFFLES) and all(len(v) == 3 for v in rep["nulls"].values())
    assert (out / rep["model"]).is_file()
    assert len(rep["labels"]) == N_NODES and set(rep["labels"]) <= {-1, 0, 1, 2, 3}
    assert every["kind"] == "table" and len(every["rows"]) == 2 * len(ROWS)
    assert all(len(row) == len(every["columns"]) for row in every["rows"])


def test_clusterability_resume_recomputes_nothing(clustered):
    out, result, _ = clustered
    stamps = {p: p.stat().st_mtime_ns for p in (out / "units").iterdir()}
    again, rec = _run("clusterability", out, CLUSTER)
    assert rec.labels == {"networks"}
    assert {p: p.stat().st_mtime_ns for p in (out / "units").iterdir()} == stamps
    a, b = _plain(again), _plain(result)
    a.pop("seconds"), b.pop("seconds")
    assert a == b


def test_clusterability_refuses_another_config_in_the_same_folder(clustered):
    out, *_ = clustered
    with pytest.raises(ValueError, match="shuffles"):
        reproduce("clusterability", out, overrides={**CLUSTER, "shuffles": 4})


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ({"hidden": "16xx2"}, "hidden"),
        ({"hidden": "0x2"}, "0"),
        ({"dataset": "imagenet"}, "dataset"),
        ({"k": 202}, "k=202"),
        ({"shuffles": 1}, "shuffles"),
        ({"n_jobs": 0}, "n_jobs"),
        ({"dropout": 1.0}, "dropout"),
        ({"l1": -1e-5}, "l1"),
        ({"networks": 0}, "networks"),
    ],
)
def test_clusterability_rejects_bad_config(tmp_path, override, match):
    with pytest.raises(ValueError, match=match):
        reproduce("clusterability", tmp_path / "run", overrides={**CLUSTER, **override})
    assert not (tmp_path / "run").exists()  # nothing written: the corrected command is not refused


def test_missing_data_says_make_data(tmp_path, monkeypatch):
    def missing(*args, **kwargs):
        raise FileNotFoundError("fashion-mnist (train split): files not found")

    monkeypatch.setattr(structural, "load_task_data", missing)
    with pytest.raises(FileNotFoundError, match="make data"):
        reproduce("lesions", tmp_path, overrides={"networks": 1})


# ------------------------------------------------------------------------------------ lesions
def test_lesions_results_and_sections(lesioned):
    out, result, rec = lesioned
    loaded = RunResult.load(out / "results.json")
    assert _plain(loaded) == _plain(result)
    assert {"networks", "train", "prune", "clustering", "modules"} <= rec.labels
    (section,) = result.sections
    unit = result.units["pruned-0"]
    study = unit["study"]
    assert section["kind"] == "lesions" and section["classes"] == [str(c) for c in range(10)]
    assert len(section["modules"]) == len(study["modules"]) > 0
    for m, raw in zip(section["modules"], study["modules"]):
        assert m["name"] == module_name(raw["layer_name"], raw["cluster"])
        assert re.fullmatch(r"fc[12]/c([0-9]|1[01])", m["name"])
        assert m["label"] in LABELS and len(m["class_damage"]) == 10 and m["damage"] == raw["damage"]
        assert m["p_important"] is None if m["label"] == "whole layer" else m["p_important"] >= 1 / 21
    important = {m["name"] for m in section["modules"] if m["label"] == "important"}
    assert len(important) >= 2  # (6 here) so that the pairs are exercised
    assert len(section["pairs"]) == len(important) * (len(important) - 1) // 2
    for p in section["pairs"]:
        assert {p["a"], p["b"]} <= important and 0 < p["p"] <= 1
    # the summary is the unit's numbers
    col = {c: j for j, c in enumerate(result.summary["columns"])}
    (row,) = result.summary["rows"]
    assert row[col["modules"]] == len(study["modules"])
    assert row[col["important"]] == len(important)
    assert row[col["prunable"]] == sum(m["label"] == "prunable" for m in study["modules"])
    assert row[col["untestable"]] == sum(m["label"] in UNTESTED for m in study["modules"])
    assert row[col["combined p"]] == study["combined_p"]
    assert (
        row[col["interacting pairs"]]
        == f"{sum(p['p'] <= 0.05 for p in section['pairs'])}/{len(section['pairs'])}"
    )
    (claim,) = result.claims
    assert claim["agrees"] is (len(important) > 0 and study["combined_p"] <= 0.05)


def test_lesion_summary_counts_whole_layer_modules_apart(lesioned, tmp_path):
    """A unit whose study has a whole-layer module (edited into a copy of the run, which then resumes):
    counted as untestable in the table and the claim, shown with its damage and no p in the section."""
    out, _, _ = lesioned
    shutil.copytree(out, tmp_path / "run")
    path = tmp_path / "run" / "units" / "pruned-0.json"
    unit = json.loads(path.read_text())
    whole = unit["study"]["modules"][0]
    whole.update(label="whole layer", p_important=None, p_prunable=None, random_damage=[])
    path.write_text(json.dumps(unit))
    result, rec = _run("lesions", tmp_path / "run", LESIONS)
    assert rec.labels == {"networks"}  # read back, not recomputed
    modules = unit["study"]["modules"]
    row = dict(zip(result.summary["columns"], result.summary["rows"][0]))
    assert row["untestable"] == 1 and row["modules"] == len(modules)
    assert row["important"] == sum(m["label"] == "important" for m in modules)
    important = row["important"]
    assert f"{important}/{len(modules)} modules important (1 untestable)" in result.claims[0]["ours"]
    shown = result.sections[0]["modules"][0]
    assert (shown["label"], shown["p_important"], shown["damage"]) == ("whole layer", None, whole["damage"])


def test_lesioned_network_is_the_clusterability_pruned_control(lesioned, clustered):
    lesion_out, lesion_result, _ = lesioned
    cluster_out, cluster_result, _ = clustered
    a = _model(lesion_out / lesion_result.units["pruned-0"]["model"])
    b = _model(cluster_out / cluster_result.units["control-pruned-0"]["model"])
    assert _same_weights(a, b)


def test_lesions_resume_recomputes_nothing(lesioned):
    out, result, _ = lesioned
    again, rec = _run("lesions", out, LESIONS)
    assert rec.labels == {"networks"}
    assert again.units == json.loads(json.dumps(result.units))


@pytest.mark.parametrize(
    ("override", "match"), [({"n_random": 0}, "n_random"), ({"min_units": 0}, "min_units")]
)
def test_lesions_reject_bad_config(tmp_path, override, match):
    with pytest.raises(ValueError, match=match):
        reproduce("lesions", tmp_path / "run", overrides={**LESIONS, **override})
    assert not (tmp_path / "run").exists()


def test_network_seeds_derive_one_stream_per_purpose():
    seeds = network_seeds(0, 1)
    assert seeds.train == derive(0, "network", 1, "train") and seeds.pairs == derive(0, "network", 1, "pairs")
    assert len({*seeds, *network_seeds(0, 0), *network_seeds(1, 1)}) == 15  # all distinct
    assert network_seeds(0, 1) == seeds


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (lambda u: u.pop("ncut"), "lacks the key 'ncut'"),
        (lambda u: u["shuffles"]["layer"].update(p_value="0.01"), "'shuffles.layer.p_value' must be"),
        (lambda u: u.update(row="mystery"), "'row' must be one of"),
    ],
)
def test_an_edited_unit_stops_the_run_naming_the_file(clustered, tmp_path, edit, problem):
    out, *_ = clustered
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    unit = copy / "units" / "control-pruned-1.json"
    doc = json.loads(unit.read_text())
    edit(doc)
    unit.write_text(json.dumps(doc))
    with pytest.raises(ValueError) as info:
        reproduce("clusterability", copy, overrides=CLUSTER)
    message = str(info.value)
    assert str(unit) in message and problem in message and "delete it to recompute that unit" in message
