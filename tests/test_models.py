"""Built-in model specs, seeded initialization, and safe model files."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from modscope.graph import WeightGraph
from modscope.models import (
    FORMAT,
    FORMAT_KEY,
    SPEC_KEY,
    SpecError,
    build_model,
    load_model,
    normalize_spec,
    parse_spec,
    read_metadata,
    resolve_model,
    save_model,
    spec_input_shape,
    spec_to_string,
)

# ---------------------------------------------------------------------------------------------- parsing


def test_parse_mlp_expands_repeats():
    assert parse_spec("mlp:784-256x4-10") == {
        "arch": "mlp",
        "sizes": [784, 256, 256, 256, 256, 10],
        "activation": "relu",
        "dropout": 0.0,
    }
    assert parse_spec("mlp:784-256-256-256-256-10") == parse_spec("mlp:784-256x4-10")
    assert parse_spec("mlp:4-3x2-2x3")["sizes"] == [4, 3, 3, 2, 2, 2]


def test_parse_mlp_options():
    spec = parse_spec("mlp:784-256x4-10:tanh")
    assert spec["activation"] == "tanh"
    spec = parse_spec("mlp:20-16x2-4:dropout=0.25:gelu")
    assert (spec["activation"], spec["dropout"]) == ("gelu", 0.25)


def test_parse_cnn_and_vgg():
    spec = parse_spec("cnn:1x28x28:c16-M-c32-M-f64-f10")
    assert spec == {
        "arch": "cnn",
        "input_shape": [1, 28, 28],
        "layers": ["c16", "M", "c32", "M", "f64", "f10"],
    }
    vgg = parse_spec("vgg16")
    assert vgg["depth"] == 16 and not vgg["batch_norm"] and vgg["input_shape"] == [3, 32, 32]
    assert vgg["num_classes"] == 10
    vgg = parse_spec("vgg11bn:3x64x64:100:hidden=64")
    assert (vgg["depth"], vgg["batch_norm"], vgg["input_shape"], vgg["num_classes"], vgg["hidden"]) == (
        11,
        True,
        [3, 64, 64],
        100,
        64,
    )


@pytest.mark.parametrize(
    "text",
    [
        "mlp:784-256x4-10",
        "mlp:20-16x2-4:tanh:dropout=0.5",
        "cnn:3x32x32:bc8-M-c16-M-f32-f10",
        "vgg19bn:3x32x32:10",
        "vgg13:3x64x64:5:hidden=32",
    ],
)
def test_spec_string_round_trip(text):
    spec = parse_spec(text)
    assert parse_spec(spec_to_string(spec)) == spec
    assert normalize_spec(json.loads(json.dumps(spec))) == spec


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("mlp:784-25a-10", "'25a'"),
        ("mlp:784-256x0-10", "'256x0'"),
        ("mlp:784", "sizes"),
        ("mlp:", "no layer sizes"),
        ("mlp:784-0-10", "0"),
        ("mlp:784-10:swish", "'swish'"),
        ("mlp:784-10:dropout=1.5", "1.5"),
        ("mlp:784-10:depth=3", "'depth=3'"),
        ("cnn:1x28x28:c16-Q-f10", "'Q'"),
        ("cnn:1x28:c16-f10", "'1x28'"),
        ("cnn:1x28x28:c16-M", "'M'"),
        ("cnn:1x28x28:f10-c16-f10", "'c16'"),
        ("cnn:1x2x2:M-M-f10", "'M'"),
        ("cnn:1x28x28", "input shape and layers"),
        ("vgg17", "'vgg17'"),
        ("vgg16:3x16x16", "16x16"),
        ("vgg16:3x32x32:ten", "'ten'"),
        ("resnet18", "'resnet18'"),
    ],
)
def test_bad_specs_name_the_bad_part(text, named):
    with pytest.raises(SpecError) as info:
        parse_spec(text)
    assert named in str(info.value)
    assert isinstance(info.value, ValueError)  # the CLI reports ValueErrors as one-line errors


def test_bad_spec_dicts():
    with pytest.raises(SpecError, match="'arch'"):
        normalize_spec({"sizes": [3, 2]})
    with pytest.raises(SpecError, match="unknown key"):
        normalize_spec({"arch": "mlp", "sizes": [3, 2], "width": 4})
    with pytest.raises(SpecError, match="-3"):
        normalize_spec({"arch": "mlp", "sizes": [3, -3, 2]})


# ---------------------------------------------------------------------------------------------- building


def test_mlp_shapes_and_graph():
    model = build_model("mlp:784-256x4-10")
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (784, 256),
        (256, 256),
        (256, 256),
        (256, 256),
        (256, 10),
    ]
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)  # the leading flatten takes images too
    graph = WeightGraph.from_module(model)
    assert graph.layer_sizes == (784, 256, 256, 256, 256, 10)
    assert graph.n_nodes == 1818
    assert [layer.name for layer in graph.layers] == ["input", "fc1", "fc2", "fc3", "fc4", "out"]


def test_glorot_init_and_zero_biases():
    model = build_model("mlp:100-50-10")
    w = model.fc1.weight
    bound = (6.0 / (100 + 50)) ** 0.5
    assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
    assert torch.count_nonzero(model.fc1.bias) == 0 and torch.count_nonzero(model.out.bias) == 0


def test_seed_determinism_independent_of_global_rng():
    torch.manual_seed(1)
    a = build_model("cnn:3x8x8:bc4-M-f6-f3", seed=7)
    torch.manual_seed(2)
    torch.rand(100)
    state = torch.get_rng_state()
    b = build_model("cnn:3x8x8:bc4-M-f6-f3", seed=7)
    assert torch.equal(state, torch.get_rng_state())  # building leaves the global stream alone
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    c = build_model("cnn:3x8x8:bc4-M-f6-f3", seed=8)
    assert not torch.equal(a.conv1.weight, c.conv1.weight)


def test_models_are_finite_and_in_eval_mode():
    model = build_model("cnn:3x8x8:bc4-M-f6-f3")
    assert not model.training
    assert all(torch.isfinite(t).all() for t in model.state_dict().values() if t.is_floating_point())
    assert torch.equal(model.bn1.running_var, torch.ones(4))


def test_cnn_shapes_and_graph():
    spec = "cnn:1x28x28:c16-M-c32-M-f64-f10"
    model = build_model(spec)
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert model.fc1.in_features == 32 * 7 * 7
    graph = WeightGraph.from_module(model, spec_input_shape(spec))
    assert graph.layer_sizes == (1, 16, 32, 64, 10)
    assert [layer.kind for layer in graph.layers] == ["input", "conv", "conv", "linear", "linear"]


def test_vgg16_traces_with_13_convs():
    model = build_model("vgg16")
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 13
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
    graph = WeightGraph.from_module(model, spec_input_shape("vgg16"))
    convs = 2 * 64 + 2 * 128 + 3 * 256 + 6 * 512
    assert graph.n_nodes == 3 + convs + 512 + 512 + 10
    assert sum(layer.kind == "conv" for layer in graph.layers) == 13
    inner = WeightGraph.from_module(model, (3, 32, 32), include_inputs=False, include_outputs=False)
    assert inner.n_nodes == convs + 512 + 512


def test_vgg_batchnorm_variant():
    model = build_model("vgg11bn:3x32x32:10:hidden=16")
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 8
    assert set(k for k in model.state_dict() if k.startswith("classifier")) == {
        f"classifier.{i}.{p}" for i in (0, 3, 6) for p in ("weight", "bias")
    }


# ---------------------------------------------------------------------------------------------- files

SMALL = "mlp:6-5x2-3"


def test_save_load_round_trip_is_bit_identical(tmp_path):
    model = build_model(SMALL, seed=3)
    with torch.no_grad():  # weights a fresh build could not reproduce
        model.fc1.weight.add_(0.123)
    path = save_model(model, SMALL, tmp_path / "sub" / "m.safetensors", extra_metadata={"acc": 0.5})
    loaded, spec = load_model(path)
    assert spec == parse_spec(SMALL)
    x = torch.randn(4, 6)
    assert torch.equal(model(x), loaded(x))
    assert read_metadata(path) == {"acc": 0.5}
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta[FORMAT_KEY] == FORMAT and json.loads(meta[SPEC_KEY]) == spec


def test_save_load_cnn_with_batchnorm(tmp_path):
    spec = "cnn:2x4x4:bc3-M-f4-f2"
    model = build_model(spec, seed=1)
    model.train()
    model(torch.randn(8, 2, 4, 4))  # move the running statistics away from their init
    model.eval()
    loaded, _ = load_model(save_model(model, spec, tmp_path / "cnn.safetensors"))
    x = torch.randn(3, 2, 4, 4)
    assert torch.equal(model(x), loaded(x))


def test_save_refuses_a_spec_that_does_not_fit(tmp_path):
    with pytest.raises(ValueError, match=r"fc1.weight has shape \(5, 6\).*\(5, 7\)"):
        save_model(build_model(SMALL), "mlp:7-5x2-3", tmp_path / "m.safetensors")


def test_load_pt_state_dict_with_arch(tmp_path):
    model = build_model(SMALL, seed=5)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    loaded, spec = load_model(tmp_path / "w.pt", arch=SMALL)
    x = torch.randn(2, 6)
    assert torch.equal(model(x), loaded(x)) and spec["sizes"] == [6, 5, 5, 3]
    torch.save({"epoch": 3, "state_dict": model.state_dict()}, tmp_path / "ckpt.pth")
    assert torch.equal(load_model(tmp_path / "ckpt.pth", arch=SMALL)[0](x), model(x))


def test_load_bare_safetensors_with_arch(tmp_path):
    from safetensors.torch import save_file

    model = build_model(SMALL, seed=2)
    save_file(dict(model.state_dict()), str(tmp_path / "bare.safetensors"))
    with pytest.raises(ValueError, match="weights only"):
        load_model(tmp_path / "bare.safetensors")
    loaded, _ = load_model(tmp_path / "bare.safetensors", arch=SMALL)
    x = torch.randn(2, 6)
    assert torch.equal(model(x), loaded(x))


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.safetensors"):
        load_model(tmp_path / "nope.safetensors")


def test_truncated_safetensors(tmp_path):
    path = save_model(build_model(SMALL), SMALL, tmp_path / "m.safetensors")
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut.safetensors.*corrupt or truncated"):
        load_model(tmp_path / "cut.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00\x01garbage")
    with pytest.raises(ValueError, match=r"junk\.safetensors"):
        load_model(tmp_path / "junk.safetensors")


def test_truncated_pt(tmp_path):
    torch.save(build_model(SMALL).state_dict(), tmp_path / "w.pt")
    data = (tmp_path / "w.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut.pt"):
        load_model(tmp_path / "cut.pt", arch=SMALL)


class _Payload:
    """Unpickling this would run arbitrary code in a real attack; modscope must refuse it."""

    def __reduce__(self):
        return (print, ("unpickled!",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pt_with_arbitrary_objects_is_refused(tmp_path, capsys):
    torch.save({"fc1.weight": torch.zeros(5, 6), "evil": _Payload()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="not a plain state dict"):
        load_model(tmp_path / "evil.pt", arch=SMALL)
    with open(tmp_path / "plain.pkl", "wb") as f:
        pickle.dump(_Payload(), f)
    with pytest.raises(ValueError, match=r"plain\.pkl"):
        load_model(tmp_path / "plain.pkl", arch=SMALL)
    assert "unpickled!" not in capsys.readouterr().out


@pytest.mark.parametrize(
    ("obj", "named"),
    [([1, 2, 3], "list"), ({"fc1.weight": torch.zeros(5, 6), "note": "hi"}, "'note'"), ({}, "dict")],
)
def test_pt_holding_something_else(tmp_path, obj, named):
    torch.save(obj, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="not a state dict") as info:
        load_model(tmp_path / "x.pt", arch=SMALL)
    assert named in str(info.value) and "x.pt" in str(info.value)


def test_no_spec_and_no_arch(tmp_path):
    torch.save(build_model(SMALL).state_dict(), tmp_path / "w.pt")
    with pytest.raises(ValueError, match=r"w.pt.*--arch"):
        load_model(tmp_path / "w.pt")


def test_shape_mismatch_names_parameter_and_shapes(tmp_path):
    state = build_model(SMALL).state_dict()
    state["fc2.weight"] = torch.zeros(5, 4)
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(ValueError) as info:
        load_model(tmp_path / "w.pt", arch=SMALL)
    msg = str(info.value)
    assert "fc2.weight" in msg and "(5, 4)" in msg and "(5, 5)" in msg
    del state["fc2.weight"]
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "w2.pt")
    with pytest.raises(ValueError, match=r"missing fc2.weight.*unexpected extra.weight"):
        load_model(tmp_path / "w2.pt", arch=SMALL)


def test_stored_spec_disagreeing_with_arch(tmp_path):
    path = save_model(build_model(SMALL), SMALL, tmp_path / "m.safetensors")
    with pytest.raises(ValueError, match="saved as"):
        load_model(path, arch="mlp:6-5x2-3:tanh")
    assert load_model(path, arch=SMALL)[1] == parse_spec(SMALL)


def test_resolve_model(tmp_path):
    model, spec = resolve_model("mlp:6-5-3", seed=4)
    assert spec["sizes"] == [6, 5, 3]
    assert torch.equal(model.fc1.weight, build_model("mlp:6-5-3", seed=4).fc1.weight)
    path = save_model(model, spec, tmp_path / "m.safetensors")
    again, spec2 = resolve_model(str(path))
    assert spec2 == spec and torch.equal(again.fc1.weight, model.fc1.weight)
    with pytest.raises(FileNotFoundError, match=r"nothing\.pt"):
        resolve_model(str(tmp_path / "nothing.pt"))
    with pytest.raises(ValueError, match="only for weight files"):
        resolve_model("mlp:6-5-3", arch="mlp:6-5-3")
    with pytest.raises(ValueError, match="'5q'"):
        resolve_model("mlp:6-5q-3")


def test_spec_input_shape():
    assert spec_input_shape("mlp:784-10") == (784,)
    assert spec_input_shape("cnn:1x28x28:f10") == (1, 28, 28)
    assert spec_input_shape("vgg11") == (3, 32, 32)
    assert np.prod(spec_input_shape("vgg11:3x64x64")) == 3 * 64 * 64
