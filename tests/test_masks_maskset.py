"""Mask / MaskSet: set algebra laws, save/load, masked application, model checks."""

import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from modscope.masks import Mask, MaskSet, masked, masked_call, model_fingerprint

SHAPES = {"a.weight": (3, 4), "b.weight": (5,)}


@st.composite
def masks(draw, n: int = 1):
    out = []
    for _ in range(n):
        out.append(
            Mask(
                {
                    name: torch.tensor(
                        draw(
                            st.lists(
                                st.booleans(),
                                min_size=int(torch.tensor(s).prod()),
                                max_size=int(torch.tensor(s).prod()),
                            )
                        ),
                        dtype=torch.bool,
                    ).reshape(s)
                    for name, s in SHAPES.items()
                }
            )
        )
    return out


@settings(max_examples=40, deadline=None)
@given(masks(3))
def test_set_algebra_laws(ms):
    a, b, c = ms
    assert (a & b) == (b & a) and (a | b) == (b | a)
    assert ((a & b) & c) == (a & (b & c))
    assert ~(a | b) == (~a & ~b)  # De Morgan
    assert ~~a == a
    assert (a - b) == (a & ~b)
    assert (a & (b | c)) == ((a & b) | (a & c))
    assert (a ^ b) == ((a - b) | (b - a))
    assert (a | ~a).total_kept == a.total_size and (a & ~a).total_kept == 0


@settings(max_examples=25, deadline=None)
@given(masks(2), st.booleans())
def test_save_load_round_trip(tmp_path_factory, ms, with_logits):
    path = tmp_path_factory.mktemp("m") / "masks.safetensors"
    if with_logits:
        logits = {
            t: {n: torch.where(m[n], 1.5, -0.5) for n in m} for t, m in zip(["x", "y"], ms, strict=True)
        }
        original = MaskSet.from_logits(logits, hparams={"beta": 1e-4, "steps": 3}, fingerprint="abc")
    else:
        original = MaskSet({"x": ms[0], "y": ms[1]}, hparams={"beta": 1e-4})
    original.save(path)
    loaded = MaskSet.load(path)
    assert loaded == original and loaded.tasks == ("x", "y") and loaded.hparams == original.hparams
    assert loaded.fingerprint == original.fingerprint and loaded.param_names == original.param_names
    if with_logits:
        assert all(
            torch.equal(loaded.logits[t][n], original.logits[t][n]) for t in ("x", "y") for n in SHAPES
        )


def test_incompatible_masks_and_unknown_names():
    a = Mask({"w": torch.ones(2, 2, dtype=torch.bool)})
    b = Mask({"w": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="different parameters or shapes"):
        _ = a & b
    with pytest.raises(ValueError, match="bool tensor"):
        Mask({"w": torch.ones(2)})
    ms = MaskSet({"left": a})
    with pytest.raises(KeyError, match="unknown task 'nope'; tasks are \\['left'\\]"):
        ms["nope"]
    with pytest.raises(ValueError, match="at least one task"):
        MaskSet({})


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


def test_all_ones_mask_reproduces_outputs_exactly():
    model = net()
    x = torch.randn(10, 3)
    ones = Mask.ones_like({n: p for n, p in model.named_parameters() if n.endswith("weight")})
    expected = model(x)
    assert torch.equal(masked_call(model, ones, x), expected)
    with masked(model, ones):
        assert torch.equal(model(x), expected)


def test_masked_context_keeps_only_kept_weights_and_restores_even_after_errors():
    model = net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    keep = torch.rand(4, 3) > 0.5
    mask = Mask({"0.weight": keep})
    x = torch.randn(5, 3)
    with pytest.raises(RuntimeError, match="inside"), masked(model, mask):
        assert torch.equal(model[0].weight, torch.where(keep, before["0.weight"], 0.0))
        assert torch.equal(model[0].bias, before["0.bias"]) and torch.equal(
            model[2].weight, before["2.weight"]
        )
        inside = model(x)
        raise RuntimeError("inside")
    assert torch.equal(masked_call(model, mask, x), inside)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    # inverted mask keeps the complement of the masked parameter only
    with masked(model, ~mask):
        assert torch.equal(model[0].weight, torch.where(~keep, before["0.weight"], 0.0))
        assert torch.equal(model[2].weight, before["2.weight"])


def test_mask_for_a_different_model_is_a_clear_error(tmp_path):
    model = net()
    ms = MaskSet({"t": Mask({"0.weight": torch.ones(4, 5, dtype=torch.bool)})})
    with pytest.raises(ValueError, match=r"'0.weight' has shape \(4, 3\) in the model but \(4, 5\)"):
        masked_call(model, ms["t"], torch.randn(1, 3))
    with pytest.raises(ValueError, match="not in the model"):
        masked_call(model, Mask({"zz.weight": torch.ones(1, dtype=torch.bool)}), torch.randn(1, 3))
    ms.save(tmp_path / "m.safetensors")
    with pytest.raises(ValueError, match="shape"):
        MaskSet.load(tmp_path / "m.safetensors", model=model)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        MaskSet.load(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(ValueError, match="not a safetensors"):
        MaskSet.load(tmp_path / "junk.safetensors")


def test_fingerprint_tracks_weights():
    a, b = net(), net()
    names = ("0.weight", "2.weight")
    assert model_fingerprint(a, names) == model_fingerprint(b, names)
    with torch.no_grad():
        b[0].weight[0, 0] += 1
    assert model_fingerprint(a, names) != model_fingerprint(b, names)


def test_maskset_frame_and_keyword_only_load(tmp_path, monkeypatch):
    a = Mask({"w": torch.tensor([[True, False], [True, True]]), "v": torch.zeros(3, dtype=torch.bool)})
    ms = MaskSet({"x": a, "y": ~a})
    ms.save(tmp_path / "m.safetensors")
    with pytest.raises(TypeError):
        MaskSet.load(tmp_path / "m.safetensors", net())  # the model is a keyword argument
    assert repr(ms) == "MaskSet(x: 3/7, y: 4/7)"
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match="pip install pandas"):
        ms.to_frame()
    monkeypatch.undo()
    pytest.importorskip("pandas")
    frame = ms.to_frame()
    assert frame.values.tolist() == [
        ["x", "w", 3, 4, 0.75],
        ["x", "v", 0, 3, 0.0],
        ["y", "w", 1, 4, 0.25],
        ["y", "v", 3, 3, 1.0],
    ]
