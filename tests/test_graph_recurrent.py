"""Weight graphs of recurrent networks (LSTM, GRU, RNN): known answers on planted modules (issue 12)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from modscope.cluster import clusterability, spectral_partition
from modscope.graph import GraphError, WeightGraph, shuffle_graph
from modscope.graph.blocks import WeightLayer, expand_factor, layer_block
from modscope.graph.trace import trace_chain


def _halves_mask(outs: int, ins: int) -> torch.Tensor:
    return (torch.arange(outs)[:, None] < outs // 2) == (torch.arange(ins)[None, :] < ins // 2)


def _plant(model: nn.Module, across: float, seed: int = 0) -> nn.Module:
    """Every weight block-diagonal over the two halves of the units (each gate of a recurrent weight too)."""
    gen = torch.Generator().manual_seed(seed)
    for name, w in model.named_parameters():
        if "bias" in name:
            continue
        outs, ins = w.shape
        module = model.get_submodule(name.rsplit(".", 1)[0])
        if isinstance(module, (nn.LSTM, nn.GRU, nn.RNN)):  # rows: the gates, each over all hidden units
            same = _halves_mask(module.hidden_size, ins).repeat(outs // module.hidden_size, 1)
        else:
            same = _halves_mask(outs, ins)
        sign = torch.where(torch.rand(w.shape, generator=gen) < 0.5, -1.0, 1.0)
        mag = 0.5 + torch.rand(w.shape, generator=gen)
        with torch.no_grad():
            w.copy_(sign * mag * torch.where(same, 1.0, across))
    return model.eval()


class LSTMClassifier(nn.Module):
    """Linear embedding -> a 2-layer LSTM -> its last step -> a Linear head."""

    def __init__(self, d_in: int = 6, embed: int = 8, hidden: int = 10, d_out: int = 4):
        super().__init__()
        self.embed = nn.Linear(d_in, embed)
        self.lstm = nn.LSTM(embed, hidden, 2, batch_first=True)
        self.head = nn.Linear(hidden, d_out)

    def forward(self, x):
        out, _ = self.lstm(torch.tanh(self.embed(x)))
        return self.head(out[:, -1])


class TimeFirst(nn.Module):
    """A time-first ``rnn`` module, two of them stacked with dropout between, read at various places."""

    def __init__(self, rnn: type, read: str, bidirectional: bool = False):
        super().__init__()
        self.read = read
        self.a = nn.Linear(3, 4)
        self.rnn = rnn(4, 5, 2, bidirectional=bidirectional)
        self.drop = nn.Dropout(0.1)
        d = 2 if bidirectional else 1
        self.rnn2 = rnn(5 * d, 6, 1)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        out, _ = self.rnn(self.a(x))
        seq, state = self.rnn2(self.drop(out))
        h = state[0] if isinstance(self.rnn2, nn.LSTM) else state  # an LSTM's is (h_n, c_n)
        pick = {"last": lambda: seq[-1], "mean": lambda: seq.mean(0), "h": lambda: h[-1],
                "select": lambda: seq.select(0, 2), "slice": lambda: seq[1:][-1, :, :]}  # fmt: skip
        return self.head(torch.relu(pick[self.read]()))


def _halves(graph: WeightGraph) -> np.ndarray:
    return np.concatenate([np.arange(layer.size) >= layer.size // 2 for layer in graph.layers]).astype(int)


def _same_partition(labels: np.ndarray, truth: np.ndarray) -> bool:
    return bool(np.all(labels == truth) or np.all(labels == 1 - truth))


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


# ---------------------------------------------------------------------- structure and the rule
@pytest.mark.parametrize("channel_norm", ["l1", "l2"])
def test_lstm_units_are_nodes_and_weights_are_reduced_over_the_gates(channel_norm):
    model = LSTMClassifier()
    g = WeightGraph.from_module(model, (7, 6), channel_norm=channel_norm)
    assert [(x.name, x.size, x.kind) for x in g.layers] == [
        ("input", 6, "input"), ("embed", 8, "linear"), ("lstm.l0", 10, "recurrent"),
        ("lstm.l1", 10, "recurrent"), ("head", 4, "linear"),
    ]  # fmt: skip
    assert [(s, e.src, e.dst) for s, e in zip(g.sources, g.edges)] == [
        ("embed", 0, 1), ("lstm.weight_ih_l0", 1, 2), ("lstm.weight_hh_l0", 2, 2),
        ("lstm.weight_ih_l1", 2, 3), ("lstm.weight_hh_l1", 3, 3), ("head", 3, 4),
    ]  # fmt: skip
    assert not g.is_layered
    for i, param in ((1, "weight_ih_l0"), (2, "weight_hh_l0"), (3, "weight_ih_l1"), (4, "weight_hh_l1")):
        gates = _np(getattr(model.lstm, param)).reshape(4, 10, -1)  # rows: gates i, f, g, o of 10 units
        want = np.abs(gates).sum(0) if channel_norm == "l1" else np.sqrt((gates**2).sum(0))
        np.testing.assert_allclose(g.edges[i].block, want, rtol=1e-12)
    # the recurrent self-block: unit i -> unit j at the next step, a self-loop on the diagonal counted once
    dense = g.adjacency().toarray()
    hh = g.edges[2].block
    np.testing.assert_allclose(dense[14:24, 14:24], hh + hh.T - np.diag(np.diag(hh)))
    assert WeightGraph.from_module(model, channel_norm=channel_norm).layers == g.layers  # without shapes


@pytest.mark.parametrize("rnn, gates", [(nn.LSTM, 4), (nn.GRU, 3), (nn.RNN, 1)])
@pytest.mark.parametrize("read", ["last", "mean", "h", "select", "slice"])
def test_gru_and_rnn_graphs_have_the_expected_blocks(rnn, gates, read):
    model = TimeFirst(rnn, read)
    g = WeightGraph.from_module(model, example_inputs=(torch.zeros(9, 2, 3),) if read != "h" else None)
    assert [(x.name, x.size) for x in g.layers] == [
        ("input", 3), ("a", 4), ("rnn.l0", 5), ("rnn.l1", 5), ("rnn2.l0", 6), ("head", 2),
    ]  # fmt: skip
    shapes = [(s, e.src, e.dst, e.block.shape) for s, e in zip(g.sources, g.edges)]
    assert shapes == [
        ("a", 0, 1, (4, 3)), ("rnn.weight_ih_l0", 1, 2, (5, 4)), ("rnn.weight_hh_l0", 2, 2, (5, 5)),
        ("rnn.weight_ih_l1", 2, 3, (5, 5)), ("rnn.weight_hh_l1", 3, 3, (5, 5)),
        ("rnn2.weight_ih_l0", 3, 4, (6, 5)), ("rnn2.weight_hh_l0", 4, 4, (6, 6)), ("head", 4, 5, (2, 6)),
    ]  # fmt: skip
    w = _np(model.rnn.weight_hh_l1)
    assert w.shape == (gates * 5, 5)
    np.testing.assert_allclose(g.edges[4].block, np.abs(w.reshape(gates, 5, 5)).sum(0))


def test_bidirectional_directions_are_separate_groups_read_together():
    model = TimeFirst(nn.GRU, "last", bidirectional=True)
    g = WeightGraph.from_module(model, (9, 3))
    assert [x.name for x in g.layers] == [
        "input", "a", "rnn.l0", "rnn.l0_reverse", "rnn.l1", "rnn.l1_reverse", "rnn2.l0", "head",
    ]  # fmt: skip
    pairs = [(s, e.src, e.dst) for s, e in zip(g.sources, g.edges)]
    assert ("rnn.weight_ih_l1_reverse", 2, 5) in pairs and ("rnn.weight_ih_l1_reverse", 3, 5) in pairs
    assert ("rnn2.weight_ih_l0", 4, 6) in pairs and ("rnn2.weight_ih_l0", 5, 6) in pairs
    full = np.abs(_np(model.rnn2.weight_ih_l0).reshape(3, 6, 10)).sum(0)  # reads [forward | reverse]
    parts = [e.block for s, e in zip(g.sources, g.edges) if s == "rnn2.weight_ih_l0"]
    np.testing.assert_allclose(np.hstack(parts), full)


class _LastStates(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(3, 4, 2, bidirectional=True, batch_first=True)
        self.head = nn.Linear(12, 2)

    def forward(self, x):
        _, (h, c) = self.lstm(x)
        return self.head(torch.cat([h[-2], h[-1], c[-1]], dim=-1))


def test_h_n_and_c_n_pick_a_layer_and_direction():
    g = WeightGraph.from_module(_LastStates(), example_inputs=(torch.zeros(2, 5, 3),))
    heads = [(g.layers[e.src].name, e.block.shape) for s, e in zip(g.sources, g.edges) if s == "head"]
    assert heads == [("lstm.l1", (2, 4)), ("lstm.l1_reverse", (2, 4)), ("lstm.l1_reverse", (2, 4))]


class _NormedSequence(nn.Module):
    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(3, 4, batch_first=True)
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        out, _ = self.gru(x)
        return self.head(self.norm(torch.relu(out)).amax(1))


def test_a_norm_on_the_sequence_scales_the_next_layers_columns():
    model = _NormedSequence()
    with torch.no_grad():
        model.norm.weight.copy_(torch.tensor([0.5, -2.0, 3.0, 1.0]))
    g = WeightGraph.from_module(model, (5, 3))
    head = g.edges[g.sources.index("head")].block
    np.testing.assert_allclose(head, np.abs(_np(model.head.weight)) * np.array([0.5, 2.0, 3.0, 1.0]))


def test_expand_factor_repeats_over_the_gates():
    lstm = nn.LSTM(3, 4)
    layer = WeightLayer("lstm.weight_ih_l0", lstm, "recurrent", 3, 4, param="weight_ih_l0")
    factor = torch.rand(4, 3)
    big = expand_factor(layer, factor)
    assert big.shape == lstm.weight_ih_l0.shape
    assert torch.equal(big[8:12], factor)
    assert torch.allclose(layer_block(layer), lstm.weight_ih_l0.abs().reshape(4, 4, 3).sum(0))


# ---------------------------------------------------------------------- known answers
@pytest.mark.parametrize("across", [0.0, 0.02])
@pytest.mark.parametrize("shape", [None, (7, 6)])
def test_planted_modules_through_the_recurrent_path_are_recovered(across, shape):
    model = _plant(LSTMClassifier(), across)
    g = WeightGraph.from_module(model, shape)
    # the planted structure really is in the recurrent blocks: no weight across the halves there
    hh = g.edges[g.sources.index("lstm.weight_hh_l1")].block
    assert hh.min() > 0 if across else np.all(hh[:5, 5:] == 0)
    p = spectral_partition(g, k=2, seed=0)
    assert _same_partition(p.labels, _halves(g))


def test_shuffles_preserve_each_blocks_multiset_and_destroy_the_modules():
    g = WeightGraph.from_module(_plant(LSTMClassifier(), 0.0))
    assert len(set(g.sources)) == len(g.sources)  # input and recurrent blocks are each their own source
    for kind in ("layer", "layer_nonzero"):
        s = shuffle_graph(g, kind, seed=3)
        assert [(e.src, e.dst) for e in s.edges] == [(e.src, e.dst) for e in g.edges]
        for a, b in zip(g.blocks, s.blocks):
            np.testing.assert_array_equal(np.sort(a.ravel()), np.sort(b.ravel()))
            assert not np.array_equal(a, b)
        if kind == "layer_nonzero":
            assert all(np.array_equal(a > 0, b > 0) for a, b in zip(g.blocks, s.blocks))
    s = shuffle_graph(g, "layer", seed=1)
    assert not _same_partition(spectral_partition(s, k=2, seed=0).labels, _halves(s))


def test_clusterability_on_a_recurrent_graph_is_the_same_for_any_n_jobs():
    g = WeightGraph.from_module(_plant(LSTMClassifier(), 0.02))
    one = clusterability(g, k=2, n_shuffles=4, seed=5, n_jobs=1)
    two = clusterability(g, k=2, n_shuffles=4, seed=5, n_jobs=2)
    np.testing.assert_array_equal(one.null_ncuts, two.null_ncuts)
    assert one.ncut == two.ncut < one.null_ncuts.min()


def test_the_sparse_path_matches_scikit_learn_on_a_random_lstm_graph():
    from sklearn.cluster import SpectralClustering

    from modscope.cluster import ncut

    torch.manual_seed(0)
    g = WeightGraph.from_module(LSTMClassifier(16, 32, 48, 10))
    assert not g.is_layered and g.n_nodes == 16 + 32 + 48 + 48 + 10
    ours = [spectral_partition(g, k=6, seed=s).ncut for s in range(3)]
    ref = [
        ncut(g, SpectralClustering(6, affinity="precomputed", eigen_solver="arpack", n_init=25,
                                   random_state=s).fit(g.adjacency()).labels_)
        for s in range(3)
    ]  # fmt: skip
    assert np.mean(ours) <= np.mean(ref) + 0.01


# ---------------------------------------------------------------------- refusals
class _Reads(nn.Module):
    def __init__(self, how: str, **kw):
        super().__init__()
        self.how = how
        self.lstm = nn.LSTM(3, 4, batch_first=True, **kw)
        self.head = nn.Linear(4, 2)
        self.init = nn.Linear(3, 4)

    def forward(self, x):
        if self.how == "state":
            h0 = self.init(x)
            out, _ = self.lstm(x, (h0, h0))
        else:
            out, (h, _) = self.lstm(x)
        if self.how == "tuple":
            return self.lstm(x)
        read = {"features": lambda: out[:, -1, :2], "flatten": lambda: out.flatten(1),
                "ellipsis": lambda: out[..., 0], "h_slice": lambda: h[-2:].sum(0),
                "batch_mean": lambda: out.mean(-1), "state": lambda: out[:, -1]}[self.how]  # fmt: skip
        return self.head(read())


@pytest.mark.parametrize(
    "how, match",
    [("features", r"'getitem_\d+' .*indexes the feature dimension"),
     ("flatten", r"'flatten' \(call_method flatten\) on a recurrent sequence"),
     ("ellipsis", "indexes with Ellipsis"),
     ("h_slice", r"on the result of module 'lstm' \(LSTM\)"),
     ("batch_mean", "reduces a recurrent sequence other than over its time"),
     ("tuple", r"returns the \(output, state\) tuple of module 'lstm' \(LSTM\)"),
     ("state", r"module 'lstm' \(LSTM\) is given an initial state")],
)  # fmt: skip
def test_what_cannot_be_read_from_a_recurrent_layer_is_named(how, match):
    with pytest.raises(GraphError, match=match):
        WeightGraph.from_module(_Reads(how))


def test_unsupported_recurrent_modules_are_named():
    with pytest.raises(GraphError, match=r"module 'lstm' \(LSTM\) has proj_size=2"):
        WeightGraph.from_module(_Reads("features", proj_size=2))
    cell = nn.Sequential(nn.Linear(3, 4), nn.LSTMCell(4, 4))
    with pytest.raises(GraphError, match=r"module '1' \(LSTMCell\)"):
        WeightGraph.from_module(cell)
    with pytest.raises(GraphError, match=r"module '1' \(MultiheadAttention\)"):
        WeightGraph.from_module(nn.Sequential(nn.Linear(4, 4), nn.MultiheadAttention(4, 2)))
    with pytest.raises(GraphError, match=r"module 'lstm' \(LSTM\) is recurrent: .*feed-forward chains"):
        trace_chain(LSTMClassifier())
