"""``modscope cluster`` end to end, through ``modscope.cli.main``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from modscope.cli import main
from modscope.cluster import ClusterabilityResult
from modscope.graph import WeightGraph
from modscope.models import build_model, parse_spec, save_model

SPEC = "mlp:20-16x2-4"
FAST = ["--k", "3", "--shuffles", "4", "--n-init", "2", "--no-progress"]


@pytest.fixture(scope="module")
def run_once(tmp_path_factory):
    """One CLI run shared by the tests that only read its outputs."""
    out = tmp_path_factory.mktemp("cluster")
    json_path, png_path = out / "deep" / "r.json", out / "plots" / "g.png"
    code = main(["cluster", SPEC, *FAST, "--json", str(json_path), "--plot", str(png_path)])
    return code, json_path, png_path


def test_exit_code_and_outputs(run_once):
    code, json_path, png_path = run_once
    assert code == 0
    assert json_path.is_file()  # the output folders were created
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png_path.stat().st_size > 1000


def test_json_has_the_documented_keys(run_once):
    doc = json.loads(run_once[1].read_text())
    assert set(doc) == {"format", "model", "graph", "settings", "result", "verdict", "versions", "elapsed_s"}
    assert doc["model"]["spec"] == parse_spec(SPEC)
    assert doc["model"]["random_init"] is True and doc["model"]["init_seed"] == 0
    assert [(layer["name"], layer["size"]) for layer in doc["graph"]["layers"]] == [
        ("input", 20),
        ("fc1", 16),
        ("fc2", 16),
        ("out", 4),
    ]
    assert doc["graph"]["n_nodes"] == 56
    assert doc["settings"]["k"] == 3 and doc["settings"]["n_shuffles"] == 4
    assert doc["settings"]["shuffle"] == "layer" and doc["settings"]["seed"] == 0
    assert set(doc["versions"]) >= {"modscope", "torch", "numpy", "scipy", "sklearn"}


def test_json_result_is_consistent(run_once):
    doc = json.loads(run_once[1].read_text())
    result = ClusterabilityResult.from_dict(doc["result"])
    assert result.k == 3 and result.n_shuffles == 4 and result.null_ncuts.shape == (4,)
    assert result.partition.labels.shape == (56,)
    assert result.null_mean == pytest.approx(result.null_ncuts.mean())
    assert result.p_value == pytest.approx((1 + np.sum(result.null_ncuts <= result.ncut)) / 5)
    assert result.below_all == bool(result.ncut < result.null_ncuts.min())
    # The same result written by the library's own writer reads back the same.
    result.save(run_once[1].with_name("lib.json"))
    again = ClusterabilityResult.load(run_once[1].with_name("lib.json"))
    assert again.ncut == result.ncut and np.array_equal(again.partition.labels, result.partition.labels)
    # ... and so does the CLI's document, which nests the result beside the model and the settings.
    assert ClusterabilityResult.load(run_once[1]).to_dict() == result.to_dict()


def test_summary_is_printed(tmp_path, capsys):
    assert main(["cluster", SPEC, *FAST]) == 0
    out = capsys.readouterr().out
    for label in ("model", "graph", "n-cut", "null", "z ", "p ", "below all", "verdict"):
        assert label in out
    assert "56 nodes" in out and "random init" in out


def test_jobs_do_not_change_the_numbers(tmp_path):
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    assert main(["cluster", SPEC, *FAST, "--seed", "3", "--json", str(one)]) == 0
    assert main(["cluster", SPEC, *FAST, "--seed", "3", "--jobs", "2", "--json", str(two)]) == 0
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert a["result"] == b["result"]
    assert a["settings"]["jobs"] == 1 and b["settings"]["jobs"] == 2


def test_saved_model_file_and_pt_with_arch(tmp_path):
    model = build_model(SPEC, seed=9)
    save_model(model, SPEC, tmp_path / "m.safetensors")
    torch.save(model.state_dict(), tmp_path / "w.pt")
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert main(["cluster", str(tmp_path / "m.safetensors"), *FAST, "--json", str(a)]) == 0
    assert main(["cluster", str(tmp_path / "w.pt"), "--arch", SPEC, *FAST, "--json", str(b)]) == 0
    da, db = json.loads(a.read_text()), json.loads(b.read_text())
    assert da["result"] == db["result"] and da["model"]["random_init"] is False
    # A random build with the same seed is the same network, so the same result.
    c = tmp_path / "c.json"
    assert main(["cluster", SPEC, "--init-seed", "9", *FAST, "--json", str(c)]) == 0
    assert json.loads(c.read_text())["result"] == da["result"]


def test_graph_options(tmp_path):
    path = tmp_path / "r.json"
    args = [
        "cluster",
        "cnn:1x8x8:c4-M-c6-f5-f3",
        *FAST,
        "--no-inputs",
        "--no-outputs",
        "--channel-norm",
        "l2",
    ]
    assert main([*args, "--input-shape", "1x8x8", "--shuffle", "layer_nonzero", "--json", str(path)]) == 0
    doc = json.loads(path.read_text())
    assert [layer["size"] for layer in doc["graph"]["layers"]] == [4, 6, 5]
    assert doc["settings"]["channel_norm"] == "l2" and doc["settings"]["include_inputs"] is False
    assert doc["settings"]["residual"] == "filan"  # "auto" without attention (no adds here: same graph)
    assert doc["result"]["shuffle"] == "layer_nonzero"
    expected = WeightGraph.from_module(
        build_model("cnn:1x8x8:c4-M-c6-f5-f3"), (1, 8, 8), channel_norm="l2", include_inputs=False,
        include_outputs=False,
    )  # fmt: skip
    assert doc["graph"]["n_edges"] == expected.n_edges


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["cluster", "mlp:20-16y2-4"], "16y2"),
        (["cluster", "missing_model.safetensors"], "missing_model.safetensors"),
        (["cluster", SPEC, "--k", "1"], "k"),
        (["cluster", SPEC, "--k", "500"], "500"),
        (["cluster", SPEC, "--shuffles", "1"], "n_shuffles"),
        (["cluster", SPEC, "--jobs", "0"], "n_jobs"),
        (["cluster", SPEC, "--jobs", "-2"], "n_jobs"),
        (["cluster", SPEC, "--patience", "-1"], "patience"),
        (["cluster", SPEC, "--seed", "-1"], "seed"),
        (["cluster", SPEC, "--arch", SPEC], "only for weight files"),
    ],
)
def test_bad_input_is_a_one_line_error(argv, named, capsys):
    assert main([*argv, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("modscope: error:") and "\n" not in err
    assert named in err


def test_bad_weight_file_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "w.pt").write_bytes(b"not a torch file at all")
    assert main(["cluster", str(tmp_path / "w.pt"), "--arch", SPEC, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("modscope: error:") and "\n" not in err and "w.pt" in err
    torch.save(build_model("mlp:20-16-4").state_dict(), tmp_path / "small.pt")
    assert main(["cluster", str(tmp_path / "small.pt"), "--arch", SPEC, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "fc2.weight" in err


def test_progress_bar_without_a_terminal(tmp_path, capsys):
    # Under pytest stderr is not a TTY: the bar disables itself and nothing crashes.
    assert main(["cluster", SPEC, "--k", "3", "--shuffles", "3", "--n-init", "2"]) == 0
    assert "shuffles" not in capsys.readouterr().err


def test_jobs_above_the_cpu_count_are_capped(tmp_path, capsys):
    from modscope.cluster.clusterability import available_cpus

    one, many = tmp_path / "one.json", tmp_path / "many.json"
    assert main(["cluster", SPEC, *FAST, "--json", str(one)]) == 0
    assert main(["cluster", SPEC, *FAST, "--jobs", "1000", "--json", str(many)]) == 0
    settings = json.loads(many.read_text())["settings"]
    assert settings["jobs"] == 1000 and settings["workers"] == min(available_cpus(), 4)  # 4 shuffles
    workers = settings["workers"]
    assert f"({workers} worker{'s' if workers != 1 else ''})" in capsys.readouterr().out
    assert json.loads(one.read_text())["result"] == json.loads(many.read_text())["result"]


def test_restart_settings_are_recorded_and_printed(tmp_path, capsys):
    path = tmp_path / "r.json"
    assert main(["cluster", SPEC, *FAST, "--patience", "3", "--json", str(path)]) == 0
    doc = json.loads(path.read_text())
    assert doc["settings"]["n_init"] == 2 and doc["settings"]["patience"] == 3
    result = ClusterabilityResult.from_dict(doc["result"])
    assert (result.n_init, result.patience) == (result.partition.n_init, result.partition.patience) == (2, 3)
    assert result.partition.n_restarts >= 4  # at least one restart, then 3 without a gain
    assert f"best of {result.partition.n_restarts} k-means restarts" in capsys.readouterr().out
