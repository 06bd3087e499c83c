"""Weight graphs: entry-by-entry checks on tiny networks, errors, shuffles."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from torch import nn

from modscope.graph import GraphError, WeightGraph, shuffle_blocks, shuffle_graph


def _w(t):
    return t.detach().double().numpy()


def test_from_weights_known_answer():
    w1 = np.array([[1.0, -2.0], [0.0, 3.0], [-4.0, 5.0]])  # 2 -> 3
    w2 = np.array([[-1.0, 0.5, 0.0]])  # 3 -> 1
    g = WeightGraph.from_weights([w1, w2])
    assert g.layer_sizes == (2, 3, 1)
    assert g.n_nodes == 6 and g.n_edges == 7
    a = g.adjacency().toarray()
    # node order: inputs 0-1, hidden 2-4, output 5
    assert a[2, 0] == 1.0 and a[2, 1] == 2.0 and a[3, 0] == 0.0 and a[4, 1] == 5.0
    assert a[5, 2] == 1.0 and a[5, 3] == 0.5 and a[5, 4] == 0.0
    np.testing.assert_array_equal(a, a.T)
    np.testing.assert_allclose(g.degrees(), a.sum(axis=1))
    np.testing.assert_allclose(g.degrees(), [5, 10, 4, 3.5, 9, 1.5])


def test_from_weights_errors():
    with pytest.raises(GraphError, match="weights\\[1\\] has 4 inputs"):
        WeightGraph.from_weights([np.ones((3, 2)), np.ones((2, 4))])
    with pytest.raises(GraphError, match="non-finite"):
        WeightGraph.from_weights([np.array([[1.0, np.nan]])])
    with pytest.raises(GraphError, match="non-finite"):
        WeightGraph.from_weights([torch.tensor([[1.0, float("inf")]])])
    with pytest.raises(GraphError, match="at least one"):
        WeightGraph.from_weights([])


def test_mlp_sequential_entry_by_entry():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Dropout(0.5), nn.Linear(3, 2))
    g = WeightGraph.from_module(model)
    assert g.layer_sizes == (4, 3, 2)
    assert [layer.name for layer in g.layers] == ["input", "1", "4"]
    np.testing.assert_array_equal(g.blocks[0], np.abs(_w(model[1].weight)))
    np.testing.assert_array_equal(g.blocks[1], np.abs(_w(model[4].weight)))


class PlainMLP(nn.Module):
    """Layers declared in the wrong order: the graph must follow forward(), not registration."""

    def __init__(self):
        super().__init__()
        self.out = nn.Linear(5, 2)
        self.hidden = nn.Linear(3, 5)

    def forward(self, x):
        return self.out(torch.relu(self.hidden(x)))


def test_plain_forward_is_traced_in_call_order():
    model = PlainMLP()
    g = WeightGraph.from_module(model)
    assert g.layer_sizes == (3, 5, 2)
    assert [layer.name for layer in g.layers] == ["input", "hidden", "out"]
    np.testing.assert_array_equal(g.blocks[0], np.abs(_w(model.hidden.weight)))


def test_include_inputs_outputs():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2))
    assert WeightGraph.from_module(model, include_inputs=False).layer_sizes == (3, 3, 2)
    assert WeightGraph.from_module(model, include_outputs=False).layer_sizes == (4, 3, 3)
    g = WeightGraph.from_module(model, include_inputs=False, include_outputs=False)
    assert g.layer_sizes == (3, 3)
    np.testing.assert_array_equal(g.blocks[0], np.abs(_w(model[2].weight)))
    with pytest.raises(GraphError, match="leaves 1 layer"):
        WeightGraph.from_module(
            nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 2)),
            include_inputs=False,
            include_outputs=False,
        ).trimmed(include_inputs=False)


class TinyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, kernel_size=2)
        self.bn = nn.BatchNorm2d(3)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(3 * 2 * 2, 4)

    def forward(self, x):
        x = self.pool(torch.relu(self.bn(self.conv(x))))
        return self.fc(x.view(x.size(0), -1))


def _randomize_bn(bn, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        bn.weight.copy_(torch.randn(bn.num_features, generator=g))
        bn.running_var.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
        bn.running_mean.copy_(torch.randn(bn.num_features, generator=g))


def test_cnn_with_batchnorm_and_flatten_entry_by_entry():
    torch.manual_seed(1)
    model = TinyCNN().eval()
    _randomize_bn(model.bn)
    # input 2x5x5 -> conv 3x4x4 -> pool 3x2x2 -> flatten 12 -> fc 4
    g = WeightGraph.from_module(model, input_shape=(2, 5, 5))
    assert g.layer_sizes == (2, 3, 4)
    assert [layer.kind for layer in g.layers] == ["input", "conv", "linear"]
    k = _w(model.conv.weight)  # (3, 2, 2, 2)
    bn = model.bn
    scale = np.abs(_w(bn.weight)) / np.sqrt(_w(bn.running_var) + bn.eps)
    for j in range(3):
        for i in range(2):
            assert g.blocks[0][j, i] == pytest.approx(np.abs(k[j, i]).sum() * scale[j], rel=1e-12)
    w = _w(model.fc.weight)  # (4, 12): feature c * 4 + s belongs to channel c
    for j in range(4):
        for c in range(3):
            assert g.blocks[1][j, c] == pytest.approx(np.abs(w[j, c * 4 : (c + 1) * 4]).sum(), rel=1e-12)
    # without input_shape the flatten is assumed channel-major too: same graph
    g2 = WeightGraph.from_module(model)
    for a, b in zip(g.blocks, g2.blocks):
        np.testing.assert_array_equal(a, b)


def test_channel_norm_l2():
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4, 2))
    g = WeightGraph.from_module(model, channel_norm="l2")
    k = _w(model[0].weight)
    np.testing.assert_allclose(g.blocks[0], np.sqrt((k**2).sum(axis=(2, 3))))
    w = _w(model[3].weight).reshape(2, 3, 4)
    np.testing.assert_allclose(g.blocks[1], np.sqrt((w**2).sum(axis=2)))
    with pytest.raises(ValueError, match="channel_norm"):
        WeightGraph.from_module(model, channel_norm="max")


def test_batchnorm_after_activation_scales_outgoing_edges():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.BatchNorm1d(4), nn.Linear(4, 2)).eval()
    _randomize_bn(model[2], seed=3)
    g = WeightGraph.from_module(model)
    bn = model[2]
    scale = np.abs(_w(bn.weight)) / np.sqrt(_w(bn.running_var) + bn.eps)
    np.testing.assert_allclose(g.blocks[0], np.abs(_w(model[0].weight)))
    np.testing.assert_allclose(g.blocks[1], np.abs(_w(model[3].weight)) * scale[None, :])


def test_batchnorm_directly_after_linear_scales_rows():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2)).eval()
    _randomize_bn(model[1], seed=4)
    g = WeightGraph.from_module(model)
    bn = model[1]
    scale = np.abs(_w(bn.weight)) / np.sqrt(_w(bn.running_var) + bn.eps)
    np.testing.assert_allclose(g.blocks[0], np.abs(_w(model[0].weight)) * scale[:, None])
    np.testing.assert_allclose(g.blocks[1], np.abs(_w(model[3].weight)))


def test_grouped_conv_is_block_diagonal():
    model = nn.Sequential(nn.Conv2d(4, 6, 1, groups=2), nn.ReLU(), nn.Conv2d(6, 2, 1))
    g = WeightGraph.from_module(model)
    b = g.blocks[0]
    assert b.shape == (6, 4)
    assert np.all(b[:3, 2:] == 0) and np.all(b[3:, :2] == 0)
    np.testing.assert_allclose(b[:3, :2], np.abs(_w(model[0].weight))[:3, :, 0, 0])


def test_layernorm_groupnorm_rmsnorm_fold_their_gamma():
    gen = torch.Generator().manual_seed(0)
    for norm in (nn.LayerNorm(4), nn.GroupNorm(2, 4), nn.RMSNorm(4)):
        model = nn.Sequential(nn.Linear(3, 4), norm, nn.ReLU(), nn.Linear(4, 2), nn.ReLU(), type(norm)(
            *((1, 2) if isinstance(norm, nn.GroupNorm) else (2,))
        ))
        for m in (model[1], model[5]):
            with torch.no_grad():
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen))
        g = WeightGraph.from_module(model)
        gamma1, gamma5 = np.abs(_w(model[1].weight)), np.abs(_w(model[5].weight))
        np.testing.assert_allclose(g.blocks[0], np.abs(_w(model[0].weight)) * gamma1[:, None])
        np.testing.assert_allclose(g.blocks[1], np.abs(_w(model[3].weight)) * gamma5[:, None])
    with pytest.raises(GraphError, match=r"module '1' \(LayerNorm\) normalizes over \(2, 3, 3\)"):
        WeightGraph.from_module(nn.Sequential(nn.Conv2d(1, 2, 1), nn.LayerNorm([2, 3, 3])))


def test_conv_transpose_reads_its_in_out_kernel_and_groups():
    model = nn.Sequential(nn.ConvTranspose2d(4, 6, 3, groups=2), nn.ReLU(), nn.ConvTranspose2d(6, 3, 2))
    g = WeightGraph.from_module(model, input_shape=(4, 5, 5))
    k = np.abs(_w(model[0].weight)).sum(axis=(2, 3))  # (in 4, out / groups 3)
    want = np.zeros((6, 4))
    want[:3, :2], want[3:, 2:] = k[:2].T, k[2:].T
    np.testing.assert_allclose(g.blocks[0], want)
    np.testing.assert_allclose(g.blocks[1], np.abs(_w(model[2].weight)).sum(axis=(2, 3)).T)


def test_depthwise_conv_is_diagonal():
    model = nn.Sequential(nn.Conv2d(3, 3, 3, groups=3), nn.ReLU(), nn.Conv2d(3, 2, 1))
    b = WeightGraph.from_module(model).blocks[0]
    np.testing.assert_allclose(b, np.diag(np.abs(_w(model[0].weight)).sum(axis=(1, 2, 3))))


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)

    def forward(self, x):
        h = self.a(x)
        return self.b(h) + h


class WithLSTM(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(3, 4))
        self.rnn = nn.LSTM(4, 4)

    def forward(self, x):
        return self.rnn(self.enc(x))


class Gated(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)

    def forward(self, x):
        return self.a(x) * self.b(x)


def test_a_residual_add_merges_the_stream_into_a_self_block():
    model = Residual()
    g = WeightGraph.from_module(model, residual="merge")
    assert not g.is_layered and [(e.src, e.dst) for e in g.edges] == [(0, 1), (1, 1)]
    assert [layer.kind for layer in g.layers] == ["input", "stream"] and g.sources == ("a", "b")
    np.testing.assert_allclose(g.edges[1].block, np.abs(_w(model.b.weight)))
    w = np.abs(_w(model.b.weight))
    dense = g.adjacency().toarray()
    np.testing.assert_allclose(dense[4:, 4:], w + w.T - np.diag(np.diag(w)))


def test_unsupported_modules_are_named():
    with pytest.raises(GraphError, match=r"'mul' \(call_function mul\).*combines 2 activations"):
        WeightGraph.from_module(Gated())
    with pytest.raises(GraphError, match=r"returns the \(output, state\) tuple of module 'rnn' \(LSTM\)"):
        WeightGraph.from_module(WithLSTM())
    attn = nn.Sequential(nn.Linear(4, 4), nn.MultiheadAttention(4, 2))
    with pytest.raises(GraphError, match=r"'1' \(MultiheadAttention\)"):
        WeightGraph.from_module(attn)
    with pytest.raises(GraphError, match=r"'1' \(Flatten\) flattens a sequence"):  # positions into features
        WeightGraph.from_module(nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(12, 2)),
                                example_inputs=(torch.zeros(2, 3, dtype=torch.long),))  # fmt: skip
    with pytest.raises(GraphError, match="no weight layers"):
        WeightGraph.from_module(nn.Sequential(nn.ReLU()))
    with pytest.raises(GraphError, match=r"torch\.nn\.Module"):
        WeightGraph.from_module(np.ones((2, 2)))


def test_nonfinite_weights_raise():
    model = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 2))
    with torch.no_grad():
        model[2].weight[0, 1] = float("nan")
    with pytest.raises(GraphError, match=r"'2\.weight' has non-finite"):
        WeightGraph.from_module(model)


def test_bad_flatten_and_shape_errors():
    class BadView(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3, padding=1)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(self.conv(x).view(-1, 4))  # not a (batch, features) flatten

    with pytest.raises(GraphError, match="only a flatten to"):
        WeightGraph.from_module(BadView(), input_shape=(1, 2, 2))
    with pytest.raises(GraphError, match="does not accept inputs"):
        WeightGraph.from_module(nn.Sequential(nn.Linear(3, 2)), input_shape=(5,))
    mismatch = nn.Sequential(nn.Conv2d(1, 3, 3), nn.Flatten(), nn.Linear(10, 2))
    with pytest.raises(GraphError, match="not a multiple of the 3 channels"):
        WeightGraph.from_module(mismatch)


# ---------------------------------------------------------------------- shuffles
blocks_strategy = st.lists(
    arrays(
        np.float64,
        st.tuples(st.integers(1, 6), st.integers(1, 6)),
        elements=st.one_of(st.just(0.0), st.floats(0.01, 10.0)),
    ),
    min_size=1,
    max_size=3,
)


@settings(max_examples=60, deadline=None)
@given(blocks_strategy, st.integers(0, 2**32 - 1))
def test_shuffles_preserve_per_layer_multiset(blocks, seed):
    for kind in ("layer", "layer_nonzero"):
        out = shuffle_blocks(blocks, kind, np.random.default_rng(seed))
        for before, after in zip(blocks, out):
            assert after.shape == before.shape
            np.testing.assert_array_equal(np.sort(after, axis=None), np.sort(before, axis=None))
            if kind == "layer_nonzero":
                np.testing.assert_array_equal(after != 0, before != 0)


def test_shuffle_is_seeded_and_changes_the_graph():
    rng = np.random.default_rng(0)
    g = WeightGraph.from_weights([rng.normal(size=(8, 6)), rng.normal(size=(4, 8))])
    a, b, c = shuffle_graph(g, "layer", 1), shuffle_graph(g, "layer", 1), shuffle_graph(g, "layer", 2)
    for x, y in zip(a.blocks, b.blocks):
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, y) for x, y in zip(a.blocks, c.blocks))
    assert any(not np.array_equal(x, y) for x, y in zip(a.blocks, g.blocks))
    with pytest.raises(ValueError, match="shuffle must be one of"):
        shuffle_graph(g, "global")


# ---------------------------------------------------------------------- the layer-to-block rule
def _conv_bn_net():
    """conv (2 -> 2, 1x2 kernel) -> BN -> ReLU -> BN -> conv (2 -> 1, 1x1), with hand-picked numbers."""
    model = nn.Sequential(
        nn.Conv2d(2, 2, (1, 2), bias=False),
        nn.BatchNorm2d(2, eps=1.0),
        nn.ReLU(),
        nn.BatchNorm2d(2, eps=1.0),
        nn.Conv2d(2, 1, 1, bias=False),
    ).eval()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[[[1.0, -2.0]], [[0.5, 0.5]]], [[[-3.0, 0.0]], [[2.0, -2.0]]]]))
        model[1].weight.copy_(torch.tensor([4.0, -0.5]))  # s = |gamma| / sqrt(var + 1) = (2, 0.5)
        model[1].running_var.copy_(torch.tensor([3.0, 0.0]))
        model[3].weight.copy_(torch.tensor([1.0, 3.0]))  # s = (0.5, 1)
        model[3].running_var.copy_(torch.tensor([3.0, 8.0]))
        model[4].weight.copy_(torch.tensor([[[[-1.0]], [[3.0]]]]))
    return model


# Kernel-slice l1 norms [[3, 1], [3, 4]], rows x (2, 0.5); the second conv's |W| = [1, 3], columns x (0.5, 1).
CONV_BN_BLOCKS = [np.array([[6.0, 2.0], [1.5, 2.0]]), np.array([[0.5, 3.0]])]


def test_conv_batchnorm_folding_known_answer():
    g = WeightGraph.from_module(_conv_bn_net())
    assert g.layer_sizes == (2, 2, 1)
    for got, want in zip(g.blocks, CONV_BN_BLOCKS):
        np.testing.assert_array_equal(got, want)


def test_trace_chain_records_how_each_block_is_read():
    from modscope.graph.blocks import expand_factor, layer_block
    from modscope.graph.trace import trace_chain

    model = _conv_bn_net()
    chain = trace_chain(model)
    assert [(w.name, w.kind, w.in_units, w.out_units) for w in chain] == [
        ("0", "conv", 2, 2),
        ("4", "conv", 2, 1),
    ]
    assert chain[0].row_norms == (model[1],) and chain[0].col_norms == ()
    assert chain[1].row_norms == () and chain[1].col_norms == (model[3],)
    for w, want in zip(chain, CONV_BN_BLOCKS):
        np.testing.assert_array_equal(layer_block(w).detach().double().numpy(), want)
    cnn = TinyCNN()
    fc = trace_chain(cnn)[1]
    assert (fc.in_units, fc.spatial) == (3, 4)  # 3 channels of 2x2 positions after the flatten
    factor = torch.arange(12.0).reshape(4, 3)
    np.testing.assert_array_equal(expand_factor(fc, factor)[:, 4:8], factor[:, 1:2].expand(4, 4))
    grouped = trace_chain(nn.Sequential(nn.Conv2d(4, 6, 1, groups=2)))[0]
    full = expand_factor(grouped, torch.arange(24.0).reshape(6, 4))
    assert full.shape == (6, 2, 1, 1) and full[4, :, 0, 0].tolist() == [18.0, 19.0]  # row 4: inputs 2, 3


def test_expand_factor_is_the_inverse_layout_of_a_conv_transpose_block():
    from modscope.graph.blocks import expand_factor, layer_block
    from modscope.graph.trace import trace_chain

    model = nn.Sequential(nn.ConvTranspose2d(4, 6, 3, groups=2), nn.ReLU(), nn.Conv2d(6, 2, 1))
    layer = trace_chain(model)[0]
    factor = torch.arange(24.0).reshape(6, 4) + 1
    expanded = expand_factor(layer, factor)
    assert expanded.shape == model[0].weight.shape
    with torch.no_grad():
        model[0].weight.copy_(expanded)
    block = layer_block(layer).detach()  # l1 over a 3x3 kernel of constant entries: 9 times the factor
    np.testing.assert_allclose(block.numpy(), (9 * factor * (layer_block(layer) > 0)).numpy())
    assert torch.equal(layer_block(layer) > 0, torch.block_diag(torch.ones(3, 2), torch.ones(3, 2)) > 0)
