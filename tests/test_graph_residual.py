"""Weight graphs of residual and concatenating networks: known answers on planted modules (issue 12)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from modscope.cluster import clusterability, spectral_partition
from modscope.graph import GraphError, Layer, WeightGraph, shuffle_graph
from modscope.graph.trace import trace_chain

ACROSS = 0.02  # weight scale across the two planted modules (inside: 0.5 .. 1.5)


def _plant(module: nn.Module, gen: torch.Generator) -> None:
    """Block-diagonal weights over the two halves of the units: strong inside, weak across."""
    w = module.weight
    if isinstance(module, nn.ConvTranspose2d):
        ins, outs = w.shape[0], w.shape[1]
    else:
        outs, ins = w.shape[0], w.shape[1]
    same = (torch.arange(outs)[:, None] < outs // 2) == (torch.arange(ins)[None, :] < ins // 2)
    scale = torch.where(same, 1.0, ACROSS)
    if isinstance(module, nn.ConvTranspose2d):
        scale = scale.T
    sign = torch.where(torch.rand(w.shape, generator=gen) < 0.5, -1.0, 1.0)
    mag = 0.5 + torch.rand(w.shape, generator=gen)
    with torch.no_grad():
        w.copy_(sign * mag * scale.reshape(*scale.shape, *([1] * (w.ndim - 2))))


def _planted(model: nn.Module, seed: int = 0) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            _plant(m, gen)
        elif isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.copy_(0.5 + torch.rand(m.num_features, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=gen))
    return model.eval()


class ResidualMLP(nn.Module):
    """Linear stem -> two residual blocks (``h += fc2(relu(fc1(h)))``) -> head."""

    def __init__(self, d_in: int = 8, width: int = 10, hidden: int = 6, d_out: int = 4):
        super().__init__()
        self.stem = nn.Linear(d_in, width)
        self.b1 = nn.ModuleDict({"fc1": nn.Linear(width, hidden), "fc2": nn.Linear(hidden, width)})
        self.b2 = nn.ModuleDict({"fc1": nn.Linear(width, hidden), "fc2": nn.Linear(hidden, width)})
        self.head = nn.Linear(width, d_out)

    def forward(self, x):
        h = self.stem(x)
        h = h + self.b1["fc2"](torch.relu(self.b1["fc1"](h)))
        h += self.b2["fc2"](torch.relu(self.b2["fc1"](h)))
        return self.head(torch.relu(h))


class Basic(nn.Module):
    """A ResNet basic block with BatchNorm, and a 1x1 downsample when the width changes."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        stride = 1 if c_in == c_out else 2
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.down = (
            nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
            if stride == 2
            else None
        )

    def forward(self, x):
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        skip = x if self.down is None else self.down(x)
        return torch.relu(out + skip)


class ResNetLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(2, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.layer1 = Basic(8, 8)
        self.layer2 = Basic(8, 12)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(12, 4)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.layer2(self.layer1(self.stem(x)))), 1))


class DenseLike(nn.Module):
    """DenseNet-style: each conv reads the concatenation of all earlier feature maps."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(2, 6, 1)
        self.c1 = nn.Conv2d(6, 4, 1)
        self.c2 = nn.Conv2d(10, 4, 1)
        self.fc = nn.Linear(14, 2)

    def forward(self, x):
        s = torch.relu(self.stem(x))
        a = torch.cat([s, torch.relu(self.c1(s))], dim=1)
        b = torch.cat([a, torch.relu(self.c2(a))], 1)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(b, 1), 1))


def _halves(graph: WeightGraph) -> np.ndarray:
    return np.concatenate([np.arange(layer.size) >= layer.size // 2 for layer in graph.layers]).astype(int)


def _same_partition(labels: np.ndarray, truth: np.ndarray) -> bool:
    return bool(np.all(labels == truth) or np.all(labels == 1 - truth))


# ---------------------------------------------------------------------- structure
def test_residual_mlp_merges_the_stream_into_one_group():
    model = ResidualMLP()
    g = WeightGraph.from_module(model, residual="merge")
    assert [(layer.name, layer.size, layer.kind) for layer in g.layers] == [
        ("input", 8, "input"),
        ("stem", 10, "stream"),
        ("b1.fc1", 6, "linear"),
        ("b2.fc1", 6, "linear"),
        ("head", 4, "linear"),
    ]
    assert [(e.src, e.dst) for e in g.edges] == [(0, 1), (1, 2), (2, 1), (1, 3), (3, 1), (1, 4)]
    assert g.sources == ("stem", "b1.fc1", "b1.fc2", "b2.fc1", "b2.fc2", "head")
    np.testing.assert_allclose(g.edges[2].block, np.abs(model.b1["fc2"].weight.detach().double().numpy()))
    assert not g.is_layered and g.n_nodes == 34
    inner = WeightGraph.from_module(model, include_inputs=False, include_outputs=False, residual="merge")
    assert [layer.name for layer in inner.layers] == ["stem", "b1.fc1", "b2.fc1"]
    assert [(e.src, e.dst) for e in inner.edges] == [(0, 1), (1, 0), (0, 2), (2, 0)]
    assert inner.sources == g.sources[1:5]
    with pytest.raises(GraphError, match=r"operation 'add' .*joins or branches"):
        trace_chain(model)


def test_resnet_like_folds_batchnorm_and_keeps_the_downsample_as_a_block():
    model = _planted(ResNetLike())
    g = WeightGraph.from_module(model, input_shape=(2, 6, 6), residual="merge")
    names = [layer.name for layer in g.layers]
    assert names == ["input", "stem.0", "layer1.conv1", "layer2.conv1", "layer2.conv2", "fc"]
    stream1, stream2 = names.index("stem.0"), names.index("layer2.conv2")
    pairs = {(g.sources[i], e.src, e.dst) for i, e in enumerate(g.edges)}
    assert ("layer2.down.0", stream1, stream2) in pairs and ("layer1.conv2", 2, stream1) in pairs
    down = model.layer2.down
    k = down[0].weight.detach().double().abs().sum(dim=(2, 3)).numpy()
    bn = down[1]
    s = (bn.weight.detach().double().abs() / torch.sqrt(bn.running_var.double() + bn.eps)).numpy()
    i = g.sources.index("layer2.down.0")
    np.testing.assert_allclose(g.edges[i].block, k * s[:, None])


def test_concatenation_splits_a_block_by_the_groups_it_reads():
    model = DenseLike()
    g = WeightGraph.from_module(model)
    assert [layer.name for layer in g.layers] == ["input", "stem", "c1", "c2", "fc"]
    assert [(g.sources[i], e.src, e.dst) for i, e in enumerate(g.edges)] == [
        ("stem", 0, 1), ("c1", 1, 2), ("c2", 1, 3), ("c2", 2, 3), ("fc", 1, 4), ("fc", 2, 4), ("fc", 3, 4),
    ]  # fmt: skip
    full = model.c2.weight.detach().double().abs().sum(dim=(2, 3)).numpy()
    np.testing.assert_allclose(np.hstack([g.edges[2].block, g.edges[3].block]), full)
    with pytest.raises(GraphError, match="concatenates along dim 0"):
        WeightGraph.from_module(_CatBatch())


class _CatBatch(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 3), nn.Linear(3, 2)

    def forward(self, x):
        h = self.a(x)
        return self.b(torch.cat([h, h], dim=0))


# ---------------------------------------------------------------------- known answers
@pytest.mark.parametrize(
    "net, shape, residual",
    [(ResidualMLP, None, "merge"), (ResNetLike, (2, 6, 6), "merge"), (DenseLike, None, "merge"),
     (ResNetLike, (2, 6, 6), "filan")],
)  # fmt: skip
def test_planted_modules_through_the_skip_path_are_recovered(net, shape, residual):
    g = WeightGraph.from_module(_planted(net()), input_shape=shape, residual=residual)
    p = spectral_partition(g, k=2, seed=0)
    assert _same_partition(p.labels, _halves(g))


def test_shuffles_preserve_each_weight_layers_multiset_and_the_structure():
    g = WeightGraph.from_module(_planted(DenseLike()))
    for kind in ("layer", "layer_nonzero"):
        s = shuffle_graph(g, kind, seed=3)
        assert [(e.src, e.dst) for e in s.edges] == [(e.src, e.dst) for e in g.edges]
        assert s.sources == g.sources
        for source in dict.fromkeys(g.sources):
            mine = [i for i, x in enumerate(g.sources) if x == source]
            before = np.sort(np.concatenate([g.blocks[i].ravel() for i in mine]))
            after = np.sort(np.concatenate([s.blocks[i].ravel() for i in mine]))
            np.testing.assert_array_equal(before, after)
        assert any(not np.array_equal(a, b) for a, b in zip(g.blocks, s.blocks))
    # The planted structure is gone after shuffling: the partition no longer finds the halves.
    s = shuffle_graph(WeightGraph.from_module(_planted(ResidualMLP())), "layer", seed=1)
    assert not _same_partition(spectral_partition(s, k=2).labels, _halves(s))


def test_clusterability_on_a_residual_graph_is_the_same_for_any_n_jobs():
    g = WeightGraph.from_module(_planted(ResidualMLP()))
    one = clusterability(g, k=2, n_shuffles=4, seed=5, n_jobs=1)
    two = clusterability(g, k=2, n_shuffles=4, seed=5, n_jobs=2)
    np.testing.assert_array_equal(one.null_ncuts, two.null_ncuts)
    assert one.ncut == two.ncut < one.null_ncuts.min()


# ---------------------------------------------------------------------- inputs and refusals
def test_example_inputs_as_a_tuple_or_a_dict():
    model = ResidualMLP()
    ref = WeightGraph.from_module(model, input_shape=(8,))
    for given in ((torch.zeros(3, 8),), {"x": torch.zeros(3, 8)}):
        g = WeightGraph.from_module(model, example_inputs=given)
        assert g.layers == ref.layers and all(np.array_equal(a, b) for a, b in zip(g.blocks, ref.blocks))
    with pytest.raises(GraphError, match=r"example_inputs names \['y'\]"):
        WeightGraph.from_module(model, example_inputs={"y": torch.zeros(3, 8)})
    with pytest.raises(GraphError, match="does not accept the example_inputs"):
        WeightGraph.from_module(model, example_inputs=(torch.zeros(3, 5),))
    with pytest.raises(GraphError, match="not both"):
        WeightGraph.from_module(model, (8,), example_inputs=(torch.zeros(3, 8),))


class _SelfAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.q, self.k = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x):
        return torch.matmul(self.q(x), self.k(x))  # the scores of attention: a product of activations


class _Recurrent(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(3, 4)
        self.rnn = nn.LSTM(4, 4)

    def forward(self, x):
        return self.rnn(torch.relu(self.enc(x)) + self.enc(x))


def test_what_cannot_be_represented_is_named():
    with pytest.raises(GraphError, match=r"operation 'matmul' \(call_function matmul\).*combines 2"):
        WeightGraph.from_module(_SelfAttention())
    with pytest.raises(GraphError, match=r"module 'rnn' \(LSTM\)"):
        WeightGraph.from_module(_Recurrent())
    with pytest.raises(GraphError, match=r"module '1' \(MultiheadAttention\)"):
        WeightGraph.from_module(nn.Sequential(nn.Linear(4, 4), nn.MultiheadAttention(4, 2)))


def test_require_layered_names_the_blocks_out_of_chain_order():
    g = WeightGraph.from_module(ResidualMLP(), residual="merge")
    with pytest.raises(GraphError, match=r"not a layered chain \(blocks b1\.fc1 -> stem.*: lesions are"):
        g.require_layered("lesions")


def test_filans_rule_copies_each_written_block_to_every_reader_of_the_sum():
    model = ResidualMLP()
    g = WeightGraph.from_module(model, residual="filan")
    assert [(layer.name, layer.size, layer.kind) for layer in g.layers] == [
        ("input", 8, "input"),
        ("stem", 10, "linear"),
        ("b1.fc1", 6, "linear"),
        ("b2.fc1:in", 10, "copy"),
        ("b2.fc1", 6, "linear"),
        ("head:in", 10, "copy"),
        ("head", 4, "linear"),
    ]
    assert [(s, e.src, e.dst) for s, e in zip(g.sources, g.edges)] == [
        ("stem", 0, 1), ("b1.fc1", 1, 2), ("b2.fc1", 3, 4), ("head", 5, 6),
        ("stem->b2.fc1", 0, 3), ("b1.fc2->b2.fc1", 2, 3),
        ("stem->head", 0, 5), ("b1.fc2->head", 2, 5), ("b2.fc2->head", 4, 5),
    ]  # fmt: skip
    stem = np.abs(model.stem.weight.detach().double().numpy())
    assert np.array_equal(g.edges[4].block, stem) and np.array_equal(g.edges[6].block, stem)
    chain = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    a, b = WeightGraph.from_module(chain), WeightGraph.from_module(chain, residual="filan")
    assert b.is_layered and a.layers == b.layers
    assert all(np.array_equal(x, y) for x, y in zip(a.blocks, b.blocks))
    planted = WeightGraph.from_module(_planted(ResidualMLP()), residual="filan")
    assert _same_partition(spectral_partition(planted, k=2).labels, _halves(planted))
    with pytest.raises(ValueError, match="residual must be one of"):
        WeightGraph.from_module(model, residual="sum")


def test_general_adjacency_sums_parallel_blocks_and_counts_a_self_loop_once():
    from modscope.cluster import ncut

    rng = np.random.default_rng(0)
    layers = [Layer("input", 3, "input"), Layer("s", 4, "stream"), Layer("h", 2, "linear")]
    b01, b11, b12, b21, b01b = (rng.random(s) for s in ((4, 3), (4, 4), (2, 4), (4, 2), (4, 3)))
    g = WeightGraph(layers, edges=[(0, 1, b01), (1, 1, b11), (1, 2, b12), (2, 1, b21), (0, 1, b01b)])
    dense = np.zeros((9, 9))
    dense[3:7, 0:3] += b01 + b01b
    dense[3:7, 3:7] += b11
    dense[7:9, 3:7] += b12
    dense[3:7, 7:9] += b21
    dense = dense + dense.T - np.diag(np.diag(dense))
    np.testing.assert_allclose(g.adjacency().toarray(), dense)
    np.testing.assert_allclose(g.degrees(), dense.sum(axis=1))
    labels = rng.integers(0, 3, 9)
    assert ncut(g, labels) == pytest.approx(ncut(dense, labels), rel=1e-12)
    with pytest.raises(GraphError, match=r"block 1 \(s -> s\) has shape \(4, 3\), expected \(4, 4\)"):
        WeightGraph(layers, edges=[(0, 1, b01), (1, 1, b01)])
    with pytest.raises(GraphError, match=r"edges\[0\] has dst=3"):
        WeightGraph(layers, edges=[(0, 3, b01)])


class _NormAfterTheLastAdd(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.norm(torch.relu(h + self.b(h)))


def test_a_norm_on_the_output_stream_scales_every_layer_writing_it():
    model = _NormAfterTheLastAdd()
    with torch.no_grad():
        model.norm.weight.copy_(torch.tensor([0.5, -2.0, 3.0, 1.0]))
    gamma = np.array([0.5, 2.0, 3.0, 1.0])
    a, b = (np.abs(m.weight.detach().double().numpy()) for m in (model.a, model.b))
    merged = WeightGraph.from_module(model, residual="merge")
    assert [(e.src, e.dst) for e in merged.edges] == [(0, 1), (1, 1)]
    np.testing.assert_allclose(merged.edges[0].block, a * gamma[:, None])
    np.testing.assert_allclose(merged.edges[1].block, b * gamma[:, None])
    filan = WeightGraph.from_module(model, residual="filan")
    assert [(s, e.src, e.dst) for s, e in zip(filan.sources, filan.edges)] == [
        ("a", 0, 1), ("a->output", 0, 2), ("b->output", 1, 2)
    ]
    np.testing.assert_allclose(filan.edges[2].block, b * gamma[:, None])
