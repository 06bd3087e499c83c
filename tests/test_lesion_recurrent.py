"""Lesions of recurrent networks (issue 12 item 3): a hidden unit of an LSTM / GRU / RNN layer silenced at
its source is 0 at every step (compared with a step-by-step reference built from the module's own
weights), the units a recurrent module reads are zeroed in its input, the weights come back exactly, and a
lesion study of an LSTM classifier runs, deterministically."""

import numpy as np
import pytest
import torch
from torch import nn

from modscope.cluster import spectral_partition
from modscope.graph import WeightGraph
from modscope.graph.sites import unit_sites
from modscope.lesion import lesion_modules, silenced
from modscope.lesion.recurrent import at_source

KINDS = {
    "LSTM": lambda *a, **k: nn.LSTM(*a, **k),
    "GRU": lambda *a, **k: nn.GRU(*a, **k),
    "RNN_TANH": lambda *a, **k: nn.RNN(*a, nonlinearity="tanh", **k),
    "RNN_RELU": lambda *a, **k: nn.RNN(*a, nonlinearity="relu", **k),
}
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")),
]


def reference(rnn: nn.RNNBase, x: torch.Tensor, silence: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """``(output, h_n)`` of ``rnn`` on ``x``, step by step from its weights, with hidden units
    ``silence[(k, suffix)]`` of layer ``k`` forced to 0 after every step."""
    seq = x.transpose(0, 1) if rnn.batch_first else x  # (time, batch, features)
    steps, batch = seq.shape[:2]
    last = []
    for k in range(rnn.num_layers):
        outs = []
        for suffix in ("", "_reverse")[: 2 if rnn.bidirectional else 1]:
            names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
            w_ih, w_hh, b_ih, b_hh = (getattr(rnn, f"{p}_l{k}{suffix}", 0.0) for p in names)
            h = c = torch.zeros(batch, rnn.hidden_size, dtype=x.dtype, device=x.device)
            found = [None] * steps
            for t in range(steps) if not suffix else reversed(range(steps)):
                gi, gh = seq[t] @ w_ih.T + b_ih, h @ w_hh.T + b_hh
                if rnn.mode == "LSTM":
                    i, f, g, o = (gi + gh).chunk(4, -1)
                    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                    h = torch.sigmoid(o) * torch.tanh(c)
                elif rnn.mode == "GRU":
                    (ri, zi, ni), (rh, zh, nh) = gi.chunk(3, -1), gh.chunk(3, -1)
                    r, z = torch.sigmoid(ri + rh), torch.sigmoid(zi + zh)
                    h = (1 - z) * torch.tanh(ni + r * nh) + z * h
                else:
                    h = torch.tanh(gi + gh) if rnn.mode == "RNN_TANH" else torch.relu(gi + gh)
                h = h.clone()
                h[:, list(silence.get((k, suffix), []))] = 0.0
                found[t] = h
            outs.append(torch.stack(found))
            last.append(h)
        seq = torch.cat(outs, -1)
    return (seq.transpose(0, 1) if rnn.batch_first else seq), torch.stack(last)


class Net(nn.Module):
    """Linear -> a 2-layer recurrent module -> a Linear head reading its last step."""

    def __init__(self, kind: str, bidirectional: bool, batch_first: bool):
        super().__init__()
        self.batch_first = batch_first
        self.emb = nn.Linear(3, 4)
        self.rnn = KINDS[kind](4, 5, 2, bidirectional=bidirectional, batch_first=batch_first)
        self.head = nn.Linear(10 if bidirectional else 5, 2)

    def forward(self, x):
        out, _ = self.rnn(self.emb(x))
        return self.head(out[:, -1] if self.batch_first else out[-1])


def _recorded(model: nn.Module, module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, object]:
    """The model's output and ``module``'s ``(output, state)`` on ``x``."""
    seen = []
    handle = module.register_forward_hook(lambda _m, _a, out: seen.append(out))
    try:
        with torch.no_grad():
            y = model(x)
    finally:
        handle.remove()
    return y, seen[0]


def _group(graph: WeightGraph, name: str) -> int:
    return [layer.name for layer in graph.layers].index(name)


def _params(model: nn.Module) -> dict[str, tuple[nn.Parameter, torch.Tensor]]:
    return {n: (p, p.detach().clone()) for n, p in model.named_parameters()}


def _assert_restored(model: nn.Module, before: dict) -> None:
    for name, p in model.named_parameters():
        assert p is before[name][0], name  # the same Parameter object
        assert torch.equal(p, before[name][1]), name  # bit for bit


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("kind", list(KINDS))
def test_hidden_units_are_zero_at_every_step(kind, bidirectional, batch_first, device):
    torch.manual_seed(0)
    model = Net(kind, bidirectional, batch_first).double().eval()
    x = torch.randn(3, 6, 3, dtype=torch.float64)
    x = x if batch_first else x.transpose(0, 1)
    graph = WeightGraph.from_module(model, example_inputs=(x,))
    model, x = model.to(device), x.to(device)
    with torch.no_grad():
        e = model.emb(x)
        out, h_n = reference(model.rnn, e, {})
        y0, (got, state) = _recorded(model, model.rnn, x)
    h0 = state[0] if kind == "LSTM" else state
    torch.testing.assert_close(got, out, atol=1e-10, rtol=0)  # the reference is the module
    torch.testing.assert_close(h0, h_n, atol=1e-10, rtol=0)
    silence = {(0, ""): [1, 3], (1, ""): [0, 4]}
    if bidirectional:
        silence.update({(0, "_reverse"): [2], (1, "_reverse"): [0, 1, 2, 3, 4]})
    units = {_group(graph, f"rnn.l{k}{s}"): u for (k, s), u in silence.items()}
    with torch.no_grad():
        out, h_n = reference(model.rnn, e, silence)  # from the original weights
        want = model.head(out[:, -1] if batch_first else out[-1])
    before = _params(model)
    with silenced(model, graph, units), torch.no_grad():
        assert all(torch.isfinite(p).all() for p in model.parameters())
        y, (got, state) = _recorded(model, model.rnn, x)
    _assert_restored(model, before)
    h = state[0] if kind == "LSTM" else state
    torch.testing.assert_close(got, out, atol=1e-6, rtol=0)
    torch.testing.assert_close(h, h_n, atol=1e-6, rtol=0)
    torch.testing.assert_close(y, want, atol=1e-6, rtol=0)
    d = 2 if bidirectional else 1
    for (k, s), u in silence.items():
        feature = [j + (5 if s else 0) for j in u]
        if k == 1:
            assert torch.all(got[..., feature] == 0)  # exactly zero at every step
        assert torch.all(h[k * d + (1 if s else 0)][..., u] == 0)
        if kind == "LSTM":  # the cell is part of the unit: it stays 0 as well
            assert torch.all(state[1][k * d + (1 if s else 0)][..., u] == 0)
    assert not torch.allclose(y, y0)
    with torch.no_grad():
        torch.testing.assert_close(model(x), y0, atol=0, rtol=0)  # everything undone


@pytest.mark.parametrize("kind", list(KINDS))
def test_units_read_by_a_recurrent_module_are_zeroed_in_its_input(kind):
    torch.manual_seed(1)
    model = Net(kind, True, True).double().eval()
    x = torch.randn(4, 5, 3, dtype=torch.float64)
    graph = WeightGraph.from_module(model, example_inputs=(x,))
    before = _params(model)
    with silenced(model, graph, {_group(graph, "emb"): [0, 2]}), torch.no_grad():
        y = model(x)
    _assert_restored(model, before)
    with torch.no_grad():
        e = model.emb(x)
        e[..., [0, 2]] = 0.0
        out, _ = model.rnn(e)
        torch.testing.assert_close(y, model.head(out[:, -1]), atol=1e-12, rtol=0)


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_module_without_biases(kind):
    torch.manual_seed(6)
    model = Net(kind, False, True).double().eval()
    model.rnn = KINDS[kind](4, 5, 2, batch_first=True, bias=False).double()
    x = torch.randn(3, 6, 3, dtype=torch.float64)
    graph = WeightGraph.from_module(model, example_inputs=(x,))
    with torch.no_grad():
        out, _ = reference(model.rnn, model.emb(x), {(0, ""): [0, 2]})
    with silenced(model, graph, {_group(graph, "rnn.l0"): [0, 2]}), torch.no_grad():
        y = model(x)
    torch.testing.assert_close(y, model.head(out[:, -1]), atol=1e-10, rtol=0)


class Stacked(nn.Module):
    """Two Linears concatenated -> a bidirectional 2-layer LSTM -> a GRU reading its output -> a head
    reading the GRU's last state: groups read through a concatenation, by a second recurrent module, and
    inside the first."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 2), nn.Linear(3, 4)
        self.lstm = nn.LSTM(6, 5, 2, bidirectional=True)
        self.gru = nn.GRU(10, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        out, _ = self.lstm(torch.cat([self.a(x), torch.relu(self.b(x))], -1))
        _, h = self.gru(out)
        return self.head(torch.sigmoid(h[-1]))


@pytest.mark.parametrize("residual", ["filan", "merge"])
def test_stacked_modules_and_a_concatenation(residual):
    torch.manual_seed(2)
    model = Stacked().double().eval()
    x = torch.randn(7, 3, 3, dtype=torch.float64)
    graph = WeightGraph.from_module(model, example_inputs=(x,), residual=residual)
    units = {"b": [1, 3], "lstm.l0_reverse": [0, 4], "lstm.l1_reverse": [2], "gru.l0": [1]}
    with silenced(model, graph, {_group(graph, n): u for n, u in units.items()}), torch.no_grad():
        y = model(x)
    with torch.no_grad():
        b = torch.relu(model.b(x))
        b[..., [1, 3]] = 0.0  # read by the LSTM at offset 2
        out, _ = reference(
            model.lstm, torch.cat([model.a(x), b], -1), {(0, "_reverse"): [0, 4], (1, "_reverse"): [2]}
        )
        _, h = reference(model.gru, out, {(0, ""): [1]})
        h = torch.sigmoid(h[-1])
        h[..., 1] = 0.0  # zeroed where the head reads it, after the sigmoid
        torch.testing.assert_close(y, model.head(h), atol=1e-6, rtol=0)


class Skip(nn.Module):
    """An LSTM whose output is added to its input: with ``residual="merge"`` the last layer's hidden units
    and the embedding are one stream, read by the LSTM's input, inside its last layer and by the head."""

    def __init__(self):
        super().__init__()
        self.emb, self.lstm, self.head = nn.Linear(3, 5), nn.LSTM(5, 5, 2, batch_first=True), nn.Linear(5, 2)

    def forward(self, x):
        e = self.emb(x)
        out, _ = self.lstm(e)
        return self.head(torch.relu(out + e)[:, -1])


def test_a_stream_through_a_recurrent_layer_is_zero_wherever_it_is_read():
    torch.manual_seed(5)
    model = Skip().double().eval()
    x = torch.randn(4, 6, 3, dtype=torch.float64)
    graph = WeightGraph.from_module(model, example_inputs=(x,), residual="merge")
    stream = _group(graph, "emb")
    assert graph.layers[stream].kind == "stream" and "lstm.l1" not in [layer.name for layer in graph.layers]
    with silenced(model, graph, {stream: [1, 3]}), torch.no_grad():
        y = model(x)
    with torch.no_grad():
        e = model.emb(x)
        e[..., [1, 3]] = 0.0
        out, _ = reference(model.lstm, e, {(1, ""): [1, 3]})
        h = torch.relu(out + e)[:, -1]
        h[:, [1, 3]] = 0.0
        torch.testing.assert_close(y, model.head(h), atol=1e-10, rtol=0)


def test_sites_of_a_recurrent_group_are_edited_once_and_restored_after_an_error():
    torch.manual_seed(3)
    model = Stacked().eval()
    x = torch.randn(5, 2, 3)
    graph = WeightGraph.from_module(model, example_inputs=(x,))
    g = _group(graph, "lstm.l0")
    sites = unit_sites(model, graph)
    assert {s.module for s in sites.sites[g]} == {
        "lstm.weight_hh_l0",
        "lstm.weight_ih_l1",
        "lstm.weight_ih_l1_reverse",
    }
    before = _params(model)
    with pytest.raises(RuntimeError, match="inside"):
        with silenced(model, graph, {g: [0, 1, 1]}, sites=sites):
            rows = 2 * 5 + torch.tensor([0, 1])  # the g gate of units 0 and 1
            assert torch.all(model.lstm.weight_hh_l0[rows] == 0)
            assert torch.all(model.lstm.bias_ih_l0[rows] == 0)
            assert torch.equal(model.lstm.weight_hh_l0[:10], before["lstm.weight_hh_l0"][1][:10])
            assert torch.equal(model.lstm.weight_hh_l1, before["lstm.weight_hh_l1"][1])
            raise RuntimeError("inside")
    _assert_restored(model, before)
    with pytest.raises(ValueError, match=r"hidden units of 'lstm' must be in 0..4"):
        with at_source(dict(model.named_modules()), {("lstm", "l0"): {1}, ("lstm", "l1"): {5}}):
            pass
    _assert_restored(model, before)  # the edits made before the error are undone


class LSTMClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb, self.out = nn.Linear(5, 8), nn.Linear(12, 3)
        self.lstm = nn.LSTM(8, 12, 2, batch_first=True)

    def forward(self, x):
        h, _ = self.lstm(torch.tanh(self.emb(x)))
        return self.out(h[:, -1])


def test_a_lesion_study_of_an_lstm_classifier_is_finite_and_deterministic():
    torch.manual_seed(4)
    model = LSTMClassifier()
    x = torch.randn(90, 4, 5)
    y = x[..., :3].sum(1).argmax(-1)  # the class whose feature sums highest over time
    opt = torch.optim.Adam(model.parameters(), lr=0.03)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    graph = WeightGraph.from_module(model, example_inputs=(x,))
    partition = spectral_partition(graph, k=6, seed=0)
    before = _params(model)
    runs = [lesion_modules(model, graph, partition, (x, y), n_random=3, seed=5) for _ in range(2)]
    _assert_restored(model, before)
    assert repr(runs[0]) == repr(runs[1])  # p-values of a whole layer are NaN
    assert runs[0].accuracy > 0.9
    modules = runs[0].modules
    assert {m.layer_name for m in modules if m.random_damage} >= {"lstm.l0"}  # with controls
    assert "lstm.l1" in {m.layer_name for m in modules}
    damages = [m.damage for m in modules] + [d for m in modules for d in m.random_damage]
    assert np.all(np.isfinite(damages)) and min(m.damage for m in modules) > 0
