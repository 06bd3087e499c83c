"""`modscope reproduce NAME` end to end at CI size: results, the text summary, and a report whose every
figure renders in a headless browser."""

import contextlib
import io
import json
import re

import pytest

from modscope.cli import main
from modscope.experiments import RunResult

# Each experiment's settings shrunk to seconds; the quick and paper settings differ only in sizes.
CI_SIZE = {
    "clusterability": {"dataset": "digits", "hidden": "32x2", "epochs": 2, "networks": 1, "shuffles": 3,
                       "k": 4},
    "lesions": {"dataset": "digits", "hidden": "32x2", "epochs": 3, "networks": 1, "k": 6, "n_random": 3},
    "addmul": {"hidden": "16x2", "train_steps": 40, "mask_steps": 8, "mask_batch": 32, "lstm": False},
    "double-addition": {"hidden": "16x2", "train_steps": 40, "mask_steps": 8, "mask_batch": 32},
}


@pytest.fixture(scope="module", params=sorted(CI_SIZE))
def reproduced(request, tmp_path_factory, one_thread):
    name = request.param
    out = tmp_path_factory.mktemp(name)
    args = ["reproduce", name, "--out", str(out), "--no-progress"]
    args += [f"--set={k}={json.dumps(v)}" for k, v in CI_SIZE[name].items()]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(args) == 0
    return name, out, printed.getvalue()


@pytest.mark.slow
def test_reproduce_writes_results_and_a_report(reproduced):
    name, out, printed = reproduced
    result = RunResult.load(out / "results.json")
    assert result.experiment == name and result.setting == "custom"
    assert all(result.config[k] == v for k, v in CI_SIZE[name].items())
    page = (out / "report.html").read_text()
    for section in (result.summary, *result.sections):
        assert section["title"].replace("'", "&#x27;") in page
    # The terminal gets the summary table, the claims and where the files are.
    assert result.title in printed and str(result.summary["columns"][0]) in printed
    assert all(c["claim"] in printed for c in result.claims)
    assert f"report   {out / 'report.html'}" in printed


@pytest.mark.slow
def test_every_figure_of_the_report_renders(reproduced, headless):
    _, out, _ = reproduced
    page = (out / "report.html").read_text()
    n = len(re.findall(r"<img ", page))
    assert n >= 1
    dom = headless("--dump-dom", "--virtual-time-budget=5000", (out / "report.html").resolve().as_uri())
    assert f'data-images-ok="{n}/{n}"' in dom


def test_reproduce_prints_the_config_and_rejects_unknown_settings(capsys):
    assert main(["reproduce", "addmul", "--show-config", "--set", "seed=3"]) == 0
    assert json.loads(capsys.readouterr().out)["seed"] == 3
    assert main(["reproduce", "addmul", "--show-config", "--set", "sed=3"]) == 2
    assert "no setting 'sed'" in capsys.readouterr().err


def test_show_config_checks_the_whole_config(capsys):
    assert main(["reproduce", "clusterability", "--show-config", "--set", "k=1"]) == 2
    assert "k must be an int >= 2, got 1" in capsys.readouterr().err
    assert main(["reproduce", "addmul", "--show-config", "--set", "protocol=heldout"]) == 2
    assert "protocol 'heldout' needs the share of pairs" in capsys.readouterr().err


def test_a_bad_setting_writes_nothing_so_the_fixed_command_runs(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["reproduce", "lesions", "--out", str(out), "--no-progress", "--set", "min_units=0"]) == 2
    assert "min_units must be an int >= 1" in capsys.readouterr().err
    assert not out.exists()


def test_an_edited_unit_file_is_a_clear_error(tmp_path, capsys):
    from modscope.experiments import experiment_config
    from modscope.experiments.run import Run

    overrides = {"hidden": "8x2", "networks": 1}
    config = experiment_config("double-addition", overrides=overrides)
    Run(tmp_path, "double-addition", "custom", config).unit("fnn-0", lambda: {"seed": "zero"})
    args = ["reproduce", "double-addition", "--out", str(tmp_path), "--no-progress"]
    assert main(args + [f"--set={k}={json.dumps(v)}" for k, v in overrides.items()]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "units" / "fnn-0.json") in err and "delete it to recompute that unit" in err
    assert "Traceback" not in err
