"""The model zoo: named CNNs, the add/mul LSTM classifier, the SCAN sequence-to-sequence models."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from modscope.graph import WeightGraph
from modscope.models import (
    SpecError,
    build_model,
    is_spec_string,
    load_model,
    normalize_spec,
    parse_spec,
    save_model,
    spec_input_shape,
    spec_to_string,
)

TRANSFORMER = "seq2seq-transformer:src_vocab=12:tgt_vocab=9:d_model=16:layers=2:heads=4:dropout=0.1"
LSTM_S2S = "seq2seq-lstm:src_vocab=12:tgt_vocab=9:d_model=16:layers=2:dropout=0.1"
SEQ2SEQ = [
    TRANSFORMER,
    TRANSFORMER + ":pos=learned:max_len=20",
    LSTM_S2S,
    LSTM_S2S + ":bidirectional=false",
]
PAD, BOS, EOS = 0, 1, 2


def _tokens(gen: torch.Generator, lengths: list[int], vocab: int) -> torch.Tensor:
    """A batch of random non-special tokens, padded at the end to the longest length."""
    out = torch.full((len(lengths), max(lengths)), PAD, dtype=torch.long)
    for i, n in enumerate(lengths):
        out[i, :n] = torch.randint(3, vocab, (n,), generator=gen)
    return out


# ---------------------------------------------------------------------------------------------- specs


@pytest.mark.parametrize(
    "text",
    [
        "cnn-small",
        "cifar-cnn",
        "cifar-cnn:3x32x32:100",
        "cnn:3x16x16:c8-M-c8-G-f12-f4",
        "lstm-addmul",
        "lstm:10-8x3-4:steps=5",
        "seq2seq-lstm",
        "seq2seq-transformer",
        *SEQ2SEQ,
    ],
)
def test_spec_round_trip(text):
    assert is_spec_string(text)
    spec = parse_spec(text)
    assert parse_spec(spec_to_string(spec)) == spec
    assert normalize_spec(json.loads(json.dumps(spec))) == spec
    assert spec_to_string(spec_to_string(spec)) == spec_to_string(spec)


def test_named_specs_expand_to_documented_dicts():
    assert parse_spec("cnn-small") == {
        "arch": "cnn",
        "input_shape": [1, 28, 28],
        "layers": ["c16", "M", "c32", "M", "c64", "M", "f128", "f10"],
    }
    assert spec_to_string("cifar-cnn") == "cnn:3x32x32:c32-M-c64-M-c128-M-c256-G-f10"
    assert parse_spec("lstm-addmul") == parse_spec("lstm-addmul:42-256x2-20:steps=3")
    assert parse_spec("lstm-addmul") == {
        "arch": "lstm",
        "input_size": 42,
        "hidden": 256,
        "layers": 2,
        "num_outputs": 20,
        "steps": 3,
    }
    spec = parse_spec("seq2seq-transformer:src_vocab=16:tgt_vocab=10:d_model=128:layers=3:heads=8")
    assert spec == parse_spec("seq2seq-transformer")
    assert (spec["ff"], spec["pos"], spec["pad"], spec["bos"], spec["eos"]) == (512, "sin", 0, 1, 2)
    assert parse_spec("seq2seq-lstm")["bidirectional"] is True
    assert spec_input_shape("lstm-addmul") == (42,)
    assert spec_input_shape("cnn-small") == (1, 28, 28)
    with pytest.raises(SpecError, match="token sequences"):
        spec_input_shape("seq2seq-lstm")


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("cnn:3x8x8:c4-G-c4-f2", "'c4'"),
        ("cnn:3x8x8:c4-G-M-f2", "'M'"),
        ("cnn:3x8x8:c4-f4-G-f2", "'G'"),
        ("cifar-cnn:3x32x32:ten", "'ten'"),
        ("lstm:42-256-128-20", "one hidden width"),
        ("lstm:42-256x2-20:depth=2", "'depth=2'"),
        ("seq2seq-transformer:d_model=100:heads=8", "divisible"),
        ("seq2seq-transformer:pos=rotary", "'rotary'"),
        ("seq2seq-transformer:width=3", "'width=3'"),
        ("seq2seq-lstm:d_model=15", "even"),
        ("seq2seq-lstm:bidirectional=maybe", "'bidirectional=maybe'"),
        ("seq2seq-lstm:eos=0", "different"),
        ("seq2seq-lstm:tgt_vocab=2", "outside the vocabulary"),
        ("seq2seq-lstm:layers=x", "'layers=x'"),
    ],
)
def test_bad_zoo_specs_name_the_bad_part(text, named):
    with pytest.raises(SpecError) as info:
        parse_spec(text)
    assert named in str(info.value)


# ---------------------------------------------------------------------------------------------- MLP


def test_mlp_any_widths_activation_and_dropout_after_hidden_activations_only():
    model = build_model("mlp:30-20-10-5-3:tanh:dropout=0.5")
    names = [n for n, _ in model.named_children()]
    assert names == ["flatten", "fc1", "act1", "drop1", "fc2", "act2", "drop2", "fc3", "act3", "drop3", "out"]
    assert isinstance(model.act2, nn.Tanh) and model.drop1.p == 0.5
    x = torch.ones(4, 30)
    assert model(x).shape == (4, 3)


# ---------------------------------------------------------------------------------------------- CNNs


@pytest.mark.parametrize(
    ("text", "shape", "sizes"),
    [
        ("cnn-small", (1, 28, 28), (1, 16, 32, 64, 128, 10)),
        ("cifar-cnn", (3, 32, 32), (3, 32, 64, 128, 256, 10)),
    ],
)
def test_named_cnns_shapes_and_weight_graph(text, shape, sizes):
    model = build_model(text, seed=1)
    assert model(torch.zeros(2, *shape)).shape == (2, 10)
    assert spec_input_shape(text) == shape
    graph = WeightGraph.from_module(model, shape)
    assert graph.layer_sizes == sizes
    assert WeightGraph.from_module(model).layer_sizes == sizes


def test_cifar_cnn_global_pool_feeds_one_linear():
    model = build_model("cifar-cnn")
    assert isinstance(model.gap, nn.AdaptiveAvgPool2d) and model.out.in_features == 256
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 4
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 10)  # global pooling takes any image size


# ---------------------------------------------------------------------------------------------- LSTM


def test_lstm_classifier_shapes_and_repeated_input():
    model = build_model("lstm:6-8x2-4:steps=3", seed=2)
    assert [n for n, _ in model.named_children()] == ["lstm", "out"]
    assert (model.lstm.num_layers, model.lstm.hidden_size, model.out.out_features) == (2, 8, 4)
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(0))
    y = model(x)
    assert y.shape == (5, 4)
    with torch.no_grad():
        h, _ = nn.LSTM.forward(model.lstm, x[:, None].expand(-1, 3, -1))
        assert torch.allclose(y, model.out(h[:, -1]), atol=1e-6)


def test_lstm_weight_graph_has_a_group_per_lstm_layer():
    model = build_model("lstm-addmul")
    for shape in (None, (42,)):  # the pre-hook repeating the input is invisible to the graph
        g = WeightGraph.from_module(model, shape)
        assert [(x.name, x.size) for x in g.layers] == [
            ("input", 42), ("lstm.l0", 256), ("lstm.l1", 256), ("out", 20)
        ]
        assert g.sources[:2] == ("lstm.weight_ih_l0", "lstm.weight_hh_l0") and g.sources[-1] == "out"


def test_glorot_per_gate_and_zero_biases():
    model = build_model("lstm:10-30-4:steps=2")
    bound = (6.0 / (10 + 30)) ** 0.5
    w = model.lstm.weight_ih_l0
    assert w.shape == (120, 10)
    for gate in w.chunk(4):
        assert gate.abs().max() <= bound and gate.abs().max() > 0.8 * bound
    assert all(torch.count_nonzero(getattr(model.lstm, n)) == 0 for n in ("bias_ih_l0", "bias_hh_l0"))
    t = build_model(TRANSFORMER)
    attn = t.transformer.encoder.layers[0].self_attn
    bound = (6.0 / 32) ** 0.5
    assert attn.in_proj_weight.abs().max() <= bound and torch.count_nonzero(attn.in_proj_bias) == 0
    assert torch.count_nonzero(t.src_embed.weight[PAD]) == 0
    assert 0.7 < t.src_embed.weight[3:].std() < 1.3  # embeddings normal(0, 1)
    assert torch.equal(t.transformer.encoder.norm.weight, torch.ones(16))


@pytest.mark.parametrize("text", ["lstm:6-8x2-4:steps=3", "cifar-cnn", *SEQ2SEQ])
def test_same_seed_same_weights_and_global_rng_untouched(text):
    torch.manual_seed(5)
    state = torch.get_rng_state()
    a = build_model(text, seed=11)
    assert torch.equal(state, torch.get_rng_state())
    torch.rand(10)
    b = build_model(text, seed=11)
    c = build_model(text, seed=12)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert list(sa) == list(sb)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa if sa[k].is_floating_point())
    assert not a.training
    assert all(torch.isfinite(v).all() for v in sa.values() if v.is_floating_point())


# ---------------------------------------------------------------------------------------------- seq2seq


def test_seq2seq_module_names():
    t = build_model(TRANSFORMER + ":pos=learned")
    assert [n for n, _ in t.named_children()] == ["src_embed", "tgt_embed", "pos", "transformer", "out"]
    assert len(t.transformer.encoder.layers) == 2 and len(t.transformer.decoder.layers) == 2
    s = build_model(LSTM_S2S)
    assert [n for n, _ in s.named_children()] == [
        "src_embed",
        "encoder",
        "tgt_embed",
        "decoder",
        "drop",
        "out",
    ]
    assert s.encoder.bidirectional and s.encoder.hidden_size == 8 and s.decoder.hidden_size == 16


@pytest.mark.parametrize("text", SEQ2SEQ)
def test_seq2seq_shapes(text):
    model = build_model(text, seed=3)
    gen = torch.Generator().manual_seed(0)
    src, tgt = _tokens(gen, [5, 3, 7], 12), _tokens(gen, [4, 6, 2], 9)
    assert model(src, tgt).shape == (3, 6, 9)
    out = model.generate(src, max_len=8)
    assert out.dtype == torch.long and out.shape[0] == 3 and 1 <= out.shape[1] <= 8


@pytest.mark.parametrize("text", SEQ2SEQ)
def test_padding_invariance(text):
    model = build_model(text, seed=4)
    gen = torch.Generator().manual_seed(1)
    src_len, tgt_len = [6, 2, 4], [3, 7, 1]
    src, tgt = _tokens(gen, src_len, 12), _tokens(gen, tgt_len, 9)
    tgt[:, 0] = BOS
    with torch.no_grad():
        batch = model(src, tgt)
        for i in range(3):
            alone = model(src[i : i + 1, : src_len[i]], tgt[i : i + 1, : tgt_len[i]])
            torch.testing.assert_close(batch[i, : tgt_len[i]], alone[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("text", SEQ2SEQ)
def test_generate_equals_teacher_forced_argmax_of_own_outputs(text):
    model = build_model(text, seed=5)
    gen = torch.Generator().manual_seed(2)
    src = _tokens(gen, [5, 3, 6, 1], 12)
    max_len = 9
    out = model.generate(src, max_len)
    assert out.shape[1] <= max_len
    tgt_in = torch.cat([torch.full((4, 1), BOS), out[:, :-1]], dim=1)
    with torch.no_grad():
        argmax = model(src, tgt_in).argmax(-1)
    for i in range(4):
        row = out[i].tolist()
        n = row.index(EOS) + 1 if EOS in row else len(row)
        assert n == len(row) or all(t == PAD for t in row[n:])  # nothing but padding after EOS
        assert argmax[i, :n].tolist() == row[:n]


@pytest.mark.parametrize("text", SEQ2SEQ)
def test_generate_stops_at_eos(text):
    model = build_model(text, seed=6)
    with torch.no_grad():  # make EOS the argmax after any prefix: decoding ends after one token
        model.out.bias[EOS] = 1e4
    src = _tokens(torch.Generator().manual_seed(3), [4, 2], 12)
    out = model.generate(src, max_len=10)
    assert out.tolist() == [[EOS], [EOS]]
    with torch.no_grad():  # EOS never wins: rows run to max_len
        model.out.bias[EOS] = -1e4
    out = model.generate(src, max_len=5)
    assert out.shape == (2, 5) and not (out == EOS).any()
    with pytest.raises(ValueError, match="max_len"):
        model.generate(src, 0)


@pytest.mark.parametrize("text", [*SEQ2SEQ, "lstm:6-8x2-4:steps=3"])
def test_save_load_round_trip_bit_identical(tmp_path, text):
    model = build_model(text, seed=7)
    with torch.no_grad():  # trained-looking weights, not the seeded ones a rebuild would give anyway
        for p in model.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    path = save_model(model, text, tmp_path / "m.safetensors", extra_metadata={"acc": 0.5})
    loaded, spec = load_model(path)
    assert spec == parse_spec(text) and type(loaded) is type(model) and not loaded.training
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        if spec["arch"] == "lstm":
            x = torch.randn(3, 6, generator=gen)
            assert torch.equal(model(x), loaded(x))
        else:
            src, tgt = _tokens(gen, [5, 3], 12), _tokens(gen, [4, 6], 9)
            assert torch.equal(model(src, tgt), loaded(src, tgt))
            assert torch.equal(model.generate(src, 6), loaded.generate(src, 6))


def test_save_refuses_mismatched_seq2seq_spec(tmp_path):
    model = build_model(TRANSFORMER)
    with pytest.raises(ValueError, match="do not fit"):
        save_model(model, TRANSFORMER.replace("d_model=16", "d_model=32"), tmp_path / "m.safetensors")
