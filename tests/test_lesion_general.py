"""Lesions on general graphs (residual adds, concatenations; issue 12 item 3): a planted module of one class,
found in the residual stream (``residual="merge"``) or in the head's copy of it (``"filan"``), is important
for that class alone; a stream dimension is silenced wherever the stream is read; a copy only in its
reader; a concatenated group at its offset; controls come from the module's own group."""

import numpy as np
import pytest
import torch
from torch import nn

from modscope.cluster import spectral_partition
from modscope.graph import GraphError, WeightGraph
from modscope.graph.sites import unit_sites
from modscope.lesion import class_accuracy, lesion_modules, lesion_pairs, silenced
from modscope.lesion.silence import hidden_groups
from modscope.seeding import numpy_rng

HALF = 8  # stream units per class; each block's hidden layer has HALF // 2 per class


class Residual(nn.Module):
    """Linear stem -> two residual blocks ``h = h + fc2(relu(fc1(h)))`` -> head reading ``relu(h)``."""

    def __init__(self, d_in=2, width=2 * HALF, hidden=HALF, d_out=2, act=torch.relu):
        super().__init__()
        self.act = act
        self.stem = nn.Linear(d_in, width)
        block = lambda: nn.ModuleDict({"fc1": nn.Linear(width, hidden), "fc2": nn.Linear(hidden, width)})
        self.blocks = nn.ModuleList([block(), block()])
        self.head = nn.Linear(width, d_out)

    def forward(self, x):
        h = self.stem(x)
        for b in self.blocks:
            h = h + b["fc2"](self.act(b["fc1"](h)))
        return self.head(self.act(h))

    def reference(self, x, stream_units):
        """The forward pass with ``stream_units`` zeroed after the stem and after every add."""
        h = self.stem(x)
        h[:, stream_units] = 0.0
        for b in self.blocks:
            h = h + b["fc2"](self.act(b["fc1"](h)))
            h[:, stream_units] = 0.0
        return self.head(self.act(h))


def planted():
    """Class c's input feature feeds stream units c*HALF..: only they (and their half of each block's
    hidden units) feed output c. No weight joins the two halves. The other class's feature is at most 0.1,
    so that a class survives the loss of any of its blocks (through the skips) or of most of its units."""
    model = Residual()
    blocks = [(model.stem, 1.0)] + [(b[k], w) for b in model.blocks for k, w in (("fc1", 0.25), ("fc2", 0.5))]
    with torch.no_grad():
        for layer, weight in [*blocks, (model.head, 1.0)]:
            out, inp = layer.weight.shape
            same = (torch.arange(out)[:, None] < out // 2) == (torch.arange(inp)[None, :] < inp // 2)
            layer.weight.copy_(weight * same.float())
            layer.bias.zero_()
    g = torch.Generator().manual_seed(0)
    y = torch.arange(200) % 2
    x = 2.0 * nn.functional.one_hot(y, 2).float() + 0.1 * torch.rand(200, 2, generator=g)
    return model.eval(), (x, y)


def _class_of_units(graph):
    return np.concatenate([np.arange(layer.size) >= layer.size // 2 for layer in graph.layers]).astype(int)


@pytest.fixture(scope="module", params=["merge", "filan"])
def planted_study(request):
    model, data = planted()
    graph = WeightGraph.from_module(model, residual=request.param)
    partition = spectral_partition(graph, k=2, seed=0)
    truth = _class_of_units(graph)
    if partition.labels[0] != truth[0]:
        truth = 1 - truth
    assert np.array_equal(partition.labels, truth)  # the two planted modules, exactly
    study = lesion_modules(model, graph, partition, data, n_random=20, seed=0)
    return request.param, model, graph, data, study


def test_the_planted_module_read_by_the_head_is_important_for_its_class_only(planted_study):
    rule, _, graph, _, study = planted_study
    assert study.accuracy == 1.0
    # The head reads the stream (merge) or its own copy of it (filan).
    read_by_head, kind = ("stem", "stream") if rule == "merge" else ("head:in", "copy")
    assert kind in [layer.kind for layer in graph.layers if layer.name == read_by_head]
    found = [m for m in study.modules if m.layer_name == read_by_head]
    assert len(found) == 2
    for m in found:
        cls = m.units[0] // HALF
        assert list(m.units) == list(range(cls * HALF, (cls + 1) * HALF))
        expected = np.zeros(2)
        expected[cls] = 1.0
        np.testing.assert_array_equal(m.class_damage, expected)  # class A lost, class B untouched
        assert m.damage == 0.5 and max(m.random_damage) == 0.0
        assert m.p_important == pytest.approx(1 / 21) and m.label == "important"
    # No other module of either rule takes a class away: the skip path carries it past any block.
    assert all(m.damage == 0.0 for m in study.modules if m.layer_name != read_by_head)
    assert study.count("important") == 2


def test_pairs_on_a_general_graph(planted_study):
    """Two modules covering a group of 16: every disjoint control pair covers it too, so the pair's
    interaction (-1/2: both lost, half the examples still right) is that of every control."""
    _, model, graph, data, study = planted_study
    pairs = lesion_pairs(model, graph, study, data, n_random=4, seed=0)
    assert len(pairs) == 1
    (p,) = pairs
    assert p.damage == 0.5 and p.interaction == -0.5
    assert p.random_interaction == (0.5,) * 4 and p.p_value == 1.0


def test_a_merged_stream_unit_is_zeroed_wherever_the_stream_is_read():
    torch.manual_seed(0)
    model = Residual().eval()
    graph = WeightGraph.from_module(model, residual="merge")
    stream = [g for g, layer in enumerate(graph.layers) if layer.kind == "stream"]
    assert stream == [1] and hidden_groups(graph, unit_sites(model, graph)) == [1, 2, 3]
    seen = {}
    readers = {name: model.get_submodule(name) for name in ("blocks.0.fc1", "blocks.1.fc1", "head")}
    x = torch.randn(6, 2)
    units = [1, 4, 11]
    with silenced(model, graph, {1: units}):
        hooks = [
            m.register_forward_hook(lambda _m, args, _out, name=name: seen.__setitem__(name, args[0]))
            for name, m in readers.items()
        ]
        out = model(x)
        for h in hooks:
            h.remove()
    assert sorted(seen) == sorted(readers)
    for name, inputs in seen.items():
        assert torch.all(inputs[:, units] == 0), name
    # Known answer: the same as removing the units from the stream after the stem and after every add.
    torch.testing.assert_close(out, model.reference(x, units))
    assert all(not m._forward_pre_hooks for m in model.modules())
    # A graph trimmed of its inputs and outputs numbers the groups differently; the same lesion.
    inner = WeightGraph.from_module(model, residual="merge", include_inputs=False, include_outputs=False)
    assert inner.layers[0].kind == "stream" and hidden_groups(inner, unit_sites(model, inner)) == [0, 1, 2]
    with silenced(model, inner, {0: units}):
        torch.testing.assert_close(model(x), out)


def test_a_filan_copy_is_silenced_in_its_reader_only():
    torch.manual_seed(1)
    model = Residual(act=torch.sigmoid).eval()  # sigmoid(0) = 0.5: zeroing the stream would not do it
    graph = WeightGraph.from_module(model, residual="filan")
    names = [layer.name for layer in graph.layers]
    assert names == ["input", "stem", "blocks.0.fc1", "blocks.1.fc1:in", "blocks.1.fc1", "head:in", "head"]
    x = torch.randn(5, 2)
    units = [0, 9]
    with silenced(model, graph, {names.index("head:in"): units}):
        out = model(x)
    h = model.stem(x)
    for b in model.blocks:
        h = h + b["fc2"](torch.sigmoid(b["fc1"](h)))
    read = torch.sigmoid(h)
    read[:, units] = 0.0
    torch.testing.assert_close(out, model.head(read))
    # The copy read by the second block's fc1: only that block sees the units silenced.
    with silenced(model, graph, {names.index("blocks.1.fc1:in"): units}):
        out = model(x)
    h = model.stem(x)
    h = h + model.blocks[0]["fc2"](torch.sigmoid(model.blocks[0]["fc1"](h)))
    seen = h.clone()
    seen[:, units] = 0.0
    h = h + model.blocks[1]["fc2"](torch.sigmoid(model.blocks[1]["fc1"](seen)))
    torch.testing.assert_close(out, model.head(torch.sigmoid(h)))


class Dense(nn.Module):
    """A concatenation of two conv groups read by a Linear through a flatten of 3x3 maps."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(2, 3, 1)
        self.c1 = nn.Conv2d(3, 2, 1)
        self.fc = nn.Linear(5 * 9, 2)

    def forward(self, x):
        s = torch.relu(self.stem(x))
        return self.fc(torch.flatten(torch.cat([s, torch.sigmoid(self.c1(s))], dim=1), 1))


def test_a_concatenated_group_is_silenced_at_its_offset():
    torch.manual_seed(2)
    model = Dense().eval()
    graph = WeightGraph.from_module(model, input_shape=(2, 3, 3))
    assert [layer.name for layer in graph.layers] == ["input", "stem", "c1", "fc"] and not graph.is_layered
    sites = unit_sites(model, graph)
    assert [(s.module, s.offset, s.spatial) for s in sites.sites[2]] == [("fc", 3, 9)]
    x = torch.randn(4, 2, 3, 3)
    with silenced(model, graph, {2: [1]}, sites=sites):
        out = model(x)
    s = torch.relu(model.stem(x))
    feats = torch.flatten(torch.cat([s, torch.sigmoid(model.c1(s))], dim=1), 1)
    feats[:, 4 * 9 : 5 * 9] = 0.0  # channel 3 + 1 of the concatenation owns features 36..44
    torch.testing.assert_close(out, model.fc(feats))
    # The stem's channel 0 is read by c1 and, in the concatenation, by fc.
    assert [(s.module, s.offset) for s in sites.sites[1]] == [("c1", 0), ("fc", 0)]
    with silenced(model, graph, {1: [0]}, sites=sites):
        out = model(x)
    s = torch.relu(model.stem(x))
    s[:, 0] = 0.0
    torch.testing.assert_close(out, model.fc(torch.flatten(torch.cat([s, torch.sigmoid(model.c1(s))], 1), 1)))


def test_controls_are_drawn_within_the_modules_group():
    torch.manual_seed(3)
    model = Residual(d_in=6, width=12, hidden=10, d_out=4).eval()
    x = torch.randn(200, 6)
    data = (x, model(x).argmax(1))
    graph = WeightGraph.from_module(model, residual="filan")
    study = lesion_modules(model, graph, spectral_partition(graph, k=4, seed=0), data, n_random=5, seed=7)
    assert {m.layer_name for m in study.modules} <= {layer.name for layer in graph.layers[1:-1]}
    m = max(study.modules, key=lambda m: max(m.random_damage, default=0.0))
    assert max(m.random_damage) > 0
    rng = numpy_rng(7, "lesion", m.layer, m.cluster)
    base = class_accuracy(model, data)
    expected = []
    for _ in range(5):
        drawn = rng.choice(graph.layers[m.layer].size, len(m.units), replace=False)
        with silenced(model, graph, {m.layer: drawn}):
            expected.append(float(base.mean() - class_accuracy(model, data, n_classes=4).mean()))
    assert list(m.random_damage) == expected


def test_resnet_stream_channels_are_zeroed_in_every_reader():
    from test_graph_residual import ResNetLike

    torch.manual_seed(4)
    model = ResNetLike().eval()
    graph = WeightGraph.from_module(model, input_shape=(2, 8, 8), residual="merge")
    stem = [layer.name for layer in graph.layers].index("stem.0")
    sites = unit_sites(model, graph)
    readers = [s.module for s in sites.sites[stem]]
    assert readers == ["layer1.conv1", "layer2.conv1", "layer2.down.0"]
    seen = {}
    with silenced(model, graph, {stem: [2, 5]}, sites=sites):
        hooks = [
            model.get_submodule(r).register_forward_hook(
                lambda _m, args, _o, r=r: seen.__setitem__(r, args[0])
            )
            for r in readers
        ]
        model(torch.randn(3, 2, 8, 8))
        for h in hooks:
            h.remove()
    for r in readers:
        assert torch.all(seen[r][:, [2, 5]] == 0)
        assert torch.all(seen[r][:, [0, 1, 3, 4, 6, 7]].abs().sum((0, 2, 3)) > 0)


class SharedBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(3, 6)
        self.shared = nn.Linear(6, 6)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        h = self.stem(x)
        h = h + self.shared(torch.relu(self.shared(h)))
        return self.head(h)


def test_what_cannot_be_silenced_is_refused_by_name():
    model = Residual().eval()
    graph = WeightGraph.from_module(model, residual="merge")
    for group in (0, len(graph.layers) - 1, 99):
        with pytest.raises(ValueError, match=f"layer {group} .*not a hidden layer"):
            with silenced(model, graph, {group: [0]}):
                pass
    with pytest.raises(ValueError, match=r"units of layer 1 must be in 0\.\.15"):
        with silenced(model, graph, {1: [16]}):
            pass
    with pytest.raises(GraphError, match="not those of Dense"):
        unit_sites(Dense(), graph)
    shared = SharedBlock()
    g = WeightGraph.from_module(shared, residual="merge")
    with pytest.raises(GraphError, match=r"module 'shared' reads layer 1 .* calls it 2 times"):
        with silenced(shared, g, {1: [0]}):
            pass
    chain = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    chain[4] = chain[2]  # the same module twice: a chain whose hook could not tell the calls apart
    with pytest.raises(GraphError, match=r"module '2' reads layer 1 .* calls it 2 times"):
        with silenced(chain, WeightGraph.from_module(chain), {1: [0]}):
            pass
