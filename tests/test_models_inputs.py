"""Untrusted model files and specs: refused from what they declare, before any memory is taken."""

from __future__ import annotations

import json

import pytest
import safetensors.torch
import torch
from safetensors.torch import save_file

import modscope.models.io as io
from modscope.models import (
    FORMAT,
    FORMAT_KEY,
    SPEC_KEY,
    SpecError,
    build_model,
    load_model,
    parse_spec,
    save_model,
)
from modscope.models.build import state_shapes
from modscope.models.spec import MAX_LAYERS


def _tiny_file_declaring(path, spec: str):
    """A few hundred bytes: one 1x1 tensor, and metadata that declares ``spec``."""
    meta = {FORMAT_KEY: FORMAT, SPEC_KEY: json.dumps(parse_spec(spec))}
    save_file({"fc1.weight": torch.zeros(1, 1)}, str(path), metadata=meta)
    return path


def test_tiny_file_declaring_a_huge_mlp_is_refused_before_building(tmp_path, monkeypatch):
    path = _tiny_file_declaring(tmp_path / "big.safetensors", "mlp:20000-20000-10")
    assert path.stat().st_size < 300
    built, read = [], []
    monkeypatch.setattr(io, "build_model", lambda *a, **k: built.append(a))
    monkeypatch.setattr(safetensors.torch, "load_file", lambda *a, **k: read.append(a))
    with pytest.raises(ValueError) as info:
        load_model(path)
    message = str(info.value)
    assert "fc1.weight has shape (1, 1) but the model needs (20000, 20000)" in message
    assert "missing fc1.bias, out.weight, out.bias" in message and "\n" not in message
    assert built == [] and read == []  # 1.6 GB of fc1.weight never allocated, the data never read


def test_the_shape_check_costs_no_memory(tmp_path):
    """Today's peak resident memory stays far below the 1.6 GB the declared weights would take."""
    import resource

    path = _tiny_file_declaring(tmp_path / "big.safetensors", "mlp:20000-20000-10")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    with pytest.raises(ValueError, match="needs"):
        load_model(path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000


def test_state_shapes_are_those_of_the_built_model():
    specs = ("mlp:6-5x2-3", "cnn:1x8x8:bc4-M-f3", "lstm:5-4x2-3", "seq2seq-transformer:d_model=8:heads=2")
    for spec in specs:
        built = {k: tuple(v.shape) for k, v in build_model(spec).state_dict().items()}
        assert state_shapes(spec) == built
    assert state_shapes("mlp:20000-20000-10")["fc1.weight"] == (20000, 20000)  # meta: instantaneous


def test_a_model_larger_than_memory_is_refused_by_its_size():
    with pytest.raises(ValueError, match=r"^mlp:100000x101-10 has 1,000,011,000,010 parameters \(3725.3 GiB"):
        build_model("mlp:100000-100000x100-10")


@pytest.mark.parametrize(
    "spec",
    [
        f"mlp:4-3x{MAX_LAYERS}-2",
        "mlp:4-3x100000000000-2",  # the repeat is refused before a list of that length is made
        f"lstm:4-3x{MAX_LAYERS + 1}-2",
        {"arch": "cnn", "input_shape": [1, 4, 4], "layers": ["c1"] * MAX_LAYERS + ["f2"]},
        {"arch": "seq2seq-lstm", "layers": MAX_LAYERS + 1},
    ],
)
def test_too_many_layers_is_a_spec_error(spec):
    with pytest.raises(SpecError, match=f"layers; at most {MAX_LAYERS} are supported"):
        build_model(spec)


@pytest.mark.parametrize("seed", [-1, None, 1.5, True, 2**63])
def test_bad_seed_names_the_parameter(seed):
    with pytest.raises(ValueError, match=r"^seed must be a non-negative int"):
        build_model("mlp:4-3-2", seed=seed)


def test_saving_a_meta_device_model_is_named(tmp_path):
    with torch.device("meta"):
        model = torch.nn.Sequential()
        model.add_module("fc1", torch.nn.Linear(4, 3))
        model.add_module("act1", torch.nn.ReLU())
        model.add_module("out", torch.nn.Linear(3, 2))
    with pytest.raises(ValueError, match=r"^fc1.weight, fc1.bias, out.weight, out.bias are on the meta dev"):
        save_model(model, "mlp:4-3-2", tmp_path / "m.safetensors")
    assert list(tmp_path.iterdir()) == []
