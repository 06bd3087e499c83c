"""The reproduction framework: run folders that resume, configs with overrides, results.json, the demo."""

import json
import re

import pytest

from modscope.cli import main
from modscope.experiments import RunResult, experiment_config, reproduce
from modscope.experiments.run import Run
from modscope.results import table


def _fail():
    raise AssertionError("a finished unit must not be recomputed")


def test_unit_is_computed_once_and_read_back(tmp_path):
    run = Run(tmp_path, "x", "quick", {"a": 1})
    calls = []
    doc = run.unit("net-0", lambda: calls.append(1) or {"v": 1.5, "t": (1, 2)})
    assert doc == {"v": 1.5, "t": [1, 2]} and calls == [1]
    again = Run(tmp_path, "x", "quick", {"a": 1})
    assert again.unit("net-0", _fail) == doc
    assert json.loads((tmp_path / "run.json").read_text())["experiment"] == "x"


def test_interrupted_unit_leaves_finished_ones_and_no_partial_file(tmp_path):
    run = Run(tmp_path, "x", "quick", {"a": 1})
    run.unit("first", lambda: {"ok": True})
    (tmp_path / "checkpoints").mkdir(exist_ok=True)

    def interrupted():
        (tmp_path / "checkpoints" / "second.train.pt").write_bytes(b"ckpt")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run.unit("second", interrupted)
    assert run.done("first") and not run.done("second")
    assert (tmp_path / "checkpoints" / "second.train.pt").exists()  # kept for the resume
    resumed = Run(tmp_path, "x", "quick", {"a": 1})
    resumed.unit("second", lambda: {"ok": 2})
    assert not (tmp_path / "checkpoints" / "second.train.pt").exists()  # removed once the unit finished
    assert not list(tmp_path.rglob("*.tmp"))


def test_resume_with_another_config_is_refused(tmp_path):
    Run(tmp_path, "x", "quick", {"a": 1, "b": 2}).unit("u", dict)
    with pytest.raises(ValueError, match=r"config keys \['b'\]"):
        Run(tmp_path, "x", "quick", {"a": 1, "b": 3})
    with pytest.raises(ValueError, match="experiment or setting"):
        Run(tmp_path, "y", "quick", {"a": 1, "b": 2})
    fresh = Run(tmp_path, "x", "quick", {"a": 1, "b": 3}, fresh=True)
    assert not fresh.done("anything")


def test_fresh_never_deletes_a_folder_that_is_not_a_run(tmp_path):
    (tmp_path / "thesis.tex").write_text("precious")
    with pytest.raises(ValueError, match="not a modscope run folder"):
        Run(tmp_path, "x", "quick", {}, fresh=True)
    assert (tmp_path / "thesis.tex").read_text() == "precious"


def test_bad_keys_and_corrupt_files_are_clear_errors(tmp_path):
    run = Run(tmp_path, "x", "quick", {})
    for key in ("../escape", "a/b", "", ".hidden"):
        with pytest.raises(ValueError, match="unit key"):
            run.unit_path(key)
    run.unit_path("u").parent.mkdir(parents=True)
    run.unit_path("u").write_text("{not json")
    with pytest.raises(ValueError, match="corrupt"):
        run.unit("u", dict)
    (tmp_path / "run.json").write_text("{")
    with pytest.raises(ValueError, match="corrupt"):
        Run(tmp_path, "x", "quick", {})
    for bad in ("[1]", '{"experiment": "x", "setting": "quick", "config": {}, "seconds": null}'):
        (tmp_path / "run.json").write_text(bad)
        with pytest.raises(ValueError, match=r"run\.json is corrupt"):
            Run(tmp_path, "x", "quick", {})


def _needs_v(doc):
    if not isinstance(doc["v"], float):
        raise ValueError(f"'v' must be a float, got {doc['v']!r}")


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ('{"w": 1.5}', "lacks the key 'v'"),
        ('{"v": "edited"}', "'v' must be a float, got 'edited'"),
        ("[1.5]", "holds a JSON list, not an object"),
        ("\udcff", "corrupt"),
    ],
)
def test_an_edited_unit_file_is_named_with_the_way_out(tmp_path, content, problem):
    run = Run(tmp_path, "x", "quick", {})
    run.unit("u", lambda: {"v": 1.5}, check=_needs_v)
    assert Run(tmp_path, "x", "quick", {}).unit("u", _fail, check=_needs_v) == {"v": 1.5}
    run.unit_path("u").write_text(content, errors="surrogateescape")
    with pytest.raises(ValueError) as info:
        Run(tmp_path, "x", "quick", {}).unit("u", _fail, check=_needs_v)
    message = str(info.value)
    assert str(run.unit_path("u")) in message and problem in message and "delete it to recompute" in message


def test_nothing_is_written_before_the_first_unit(tmp_path):
    out = tmp_path / "run"
    Run(out, "x", "quick", {"a": 1})
    assert not out.exists()
    # so a run that stopped before its first unit does not lock the folder against a corrected config
    run = Run(out, "x", "quick", {"a": 2})
    run.checkpoint_prefix("u")
    assert json.loads((out / "run.json").read_text())["config"] == {"a": 2}


def test_seconds_add_up_over_resumed_segments(tmp_path):
    run = Run(tmp_path, "x", "quick", {})
    run._started -= 10.0  # pretend the first segment took 10 s
    run.unit("a", dict)
    again = Run(tmp_path, "x", "quick", {})
    assert 10.0 <= again.seconds() < 20.0


def test_a_killed_run_keeps_its_wall_time_up_to_the_last_minute(tmp_path):
    run = Run(tmp_path, "x", "quick", {})
    run.checkpoint_prefix("a")  # claims the folder, as a unit in progress does
    run._started -= 30.0
    run.report("masks", 1, 10)  # under a minute since the last save: run.json is not rewritten
    assert json.loads((tmp_path / "run.json").read_text())["seconds"] < 1.0
    run._started -= 600.0
    run._saved_at -= 600.0  # a unit ten minutes in, then killed: its time is on disk
    run.report("masks", 2, 10)
    assert 630.0 <= json.loads((tmp_path / "run.json").read_text())["seconds"] < 640.0
    assert 630.0 <= Run(tmp_path, "x", "quick", {}).seconds() < 640.0


def test_progress_is_forwarded_and_optional(tmp_path):
    seen = []
    Run(tmp_path / "a", "x", "quick", {}, progress=lambda *a: seen.append(a)).report("networks", 1, 2)
    Run(tmp_path / "b", "x", "quick", {}).report("networks", 1, 2)
    assert seen == [("networks", 1, 2, {})]


def test_config_overrides_are_checked():
    base = experiment_config("demo")
    assert experiment_config("demo", overrides={"epochs": 3})["epochs"] == 3
    assert experiment_config("demo", overrides={"beta": 1})["beta"] == 1.0  # an int is a fine float
    assert base == experiment_config("demo")  # the settings table is not modified
    with pytest.raises(ValueError, match="no setting 'epoch'"):
        experiment_config("demo", overrides={"epoch": 3})
    with pytest.raises(ValueError, match="takes a int"):
        experiment_config("demo", overrides={"epochs": 2.5})
    with pytest.raises(ValueError, match="takes a str"):
        experiment_config("demo", overrides={"hidden": 64})
    with pytest.raises(ValueError, match="unknown experiment"):
        experiment_config("nope")
    with pytest.raises(ValueError, match="settings"):
        experiment_config("demo", "huge")


@pytest.mark.parametrize(
    ("name", "override", "match"),
    [
        ("demo", {"k": 1}, "k must be an int >= 2"),
        ("demo", {"hidden": "12xx"}, "hidden must be layer sizes"),
        ("demo", {"seed": -1}, "seed must be an int >= 0"),
        ("demo", {"beta": -1.0}, "beta must be a non-negative finite number"),
        ("clusterability", {"shuffles": 1}, "shuffles must be an int >= 2"),
        ("lesions", {"n_random": 0}, "n_random must be an int >= 1"),
        ("addmul", {"mask_batch": 2}, "mask_batch (2) must be at least samples"),
        ("double-addition", {"hidden": "16"}, "at least 2 hidden layers"),
    ],
)
def test_the_whole_config_is_checked_before_anything_is_written(tmp_path, name, override, match):
    with pytest.raises(ValueError, match=re.escape(match)):
        experiment_config(name, overrides=override)  # what --show-config prints
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=re.escape(match)):
        reproduce(name, out, overrides=override)
    assert not out.exists()
    # the corrected command is not refused
    assert experiment_config(name)


def _result(**kw):
    args = dict(
        experiment="x", title="t", setting="quick", summary=table("S", ["a"], [[1]]), claims=(),
        sections=(table("T", ["b", "c"], [[1, None]]),), config={"seed": 0}, versions={}, seconds=1.0,
    )  # fmt: skip
    args.update(kw)
    return RunResult(**args)


def test_results_round_trip_and_validation(tmp_path):
    r = _result()
    r.save(tmp_path / "results.json")
    assert RunResult.load(tmp_path / "results.json") == r
    with pytest.raises(ValueError, match="kind"):
        _result(sections=({"kind": "pie", "title": "p"},))
    with pytest.raises(ValueError, match="summary"):
        _result(summary={"kind": "masks", "title": "m"})
    with pytest.raises(ValueError, match="row"):
        table("T", ["a", "b"], [[1]])
    with pytest.raises(FileNotFoundError):
        RunResult.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("[1")
    with pytest.raises(ValueError, match="not valid JSON"):
        RunResult.load(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match="not a modscope results"):
        RunResult.load(tmp_path / "other.json")


TINY_DEMO = {"hidden": "24x2", "epochs": 15, "k": 3, "shuffles": 3, "n_random": 3, "mask_steps": 4}


@pytest.mark.slow
def test_demo_end_to_end_resumes_and_reports(tmp_path, one_thread, capsys):
    args = ["demo", "--out", str(tmp_path), "--no-progress"]
    args += [f"--set={k}={json.dumps(v)}" for k, v in TINY_DEMO.items()]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "P_specialize(0-4|5-9)" in out and "report" in out
    result = RunResult.load(tmp_path / "results.json")
    assert result.setting == "custom" and result.config["epochs"] == 15
    kinds = [s["kind"] for s in result.sections]
    assert kinds == ["clusterability", "lesions", "masks", "bridge", "table", "table"]
    controls = result.sections[-2]  # the real masks next to the sanity controls
    assert [r[1] for r in controls["rows"]] == ["real network", "random weights", "shuffled labels"]
    # the positive control: both lenses find the two planted modules (a known answer)
    planted = result.sections[-1]
    assert planted["rows"][0][2] == 1.0 and planted["rows"][1][2] >= 0.95
    assert result.claims[-1]["paper"] == "modscope (positive control)" and result.claims[-1]["agrees"]
    cl = result.sections[0]
    assert len(cl["labels"]) == 64 + 24 + 24 + 10 and len(cl["nulls"]["layer"]) == 3
    assert (tmp_path / cl["model"]).is_file() and (tmp_path / "report.html").is_file()
    # The summary's numbers are the units' numbers.
    units = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "units").glob("*.json")}
    assert set(units) == {"network", "clusters", "lesions", "masks", "planted"}
    assert result.summary["rows"][1][2] == units["clusters"]["layer"]["ncut"]
    # Run again: everything is read back, and the same numbers come out.
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "units").glob("*.json")}
    assert main(args) == 0
    again = RunResult.load(tmp_path / "results.json")
    assert again.summary == result.summary and again.sections == result.sections
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_reproduce_rejects_unknown_names(tmp_path):
    with pytest.raises(ValueError, match="unknown experiment"):
        reproduce("nope", tmp_path)
