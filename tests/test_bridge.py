"""The lens bridge: clusters against task masks (modscope.bridge)."""

import copy
import itertools
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from modscope import WeightGraph, spectral_partition
from modscope.bridge import (
    BridgeResult,
    bridge,
    inside_share,
    kept_counts,
    null_stats,
    p_value,
    same_size_labels,
)
from modscope.cluster import Partition
from modscope.graph import shuffle_graph
from modscope.masks import Mask, MaskSet
from modscope.report.html import render_html
from modscope.results import RunResult, table, validate_section

SIZES = (8, 12, 12, 4)


def planted(sizes=SIZES, seed=0):
    """An MLP of two disconnected modules (block-diagonal weights: first halves / second halves of every
    layer) and the masks "a" and "b" keeping exactly one module's weights each (biases kept by both)."""
    gen = torch.Generator().manual_seed(seed)
    layers = [nn.Linear(i, o) for i, o in itertools.pairwise(sizes)]
    model = nn.Sequential(*[m for layer in layers for m in (layer, nn.ReLU())][:-1])
    masks = {"a": {}, "b": {}}
    with torch.no_grad():
        for idx, layer in zip(range(0, len(model), 2), layers):
            o, i = layer.weight.shape
            rows, cols = torch.arange(o) < o // 2, torch.arange(i) < i // 2
            a, b = rows[:, None] & cols[None, :], ~rows[:, None] & ~cols[None, :]
            layer.weight.copy_((0.5 + torch.rand(o, i, generator=gen)) * (a | b))
            masks["a"][f"{idx}.weight"], masks["b"][f"{idx}.weight"] = a, b
            masks["a"][f"{idx}.bias"] = masks["b"][f"{idx}.bias"] = torch.ones(o, dtype=torch.bool)
    return model, MaskSet({t: Mask(m) for t, m in masks.items()})


@pytest.fixture(scope="module")
def two_modules():
    model, masks = planted()
    graph = WeightGraph.from_module(model)
    return model, graph, spectral_partition(graph, k=2, seed=0), masks


def test_planted_modules_are_found_exactly(two_modules):
    _, graph, partition, masks = two_modules
    r = bridge(graph, partition, masks, n_null=99, seed=0)
    assert r.ari == 1.0 and r.nmi == pytest.approx(1.0)
    assert r.units == {"one task": graph.n_nodes, "none": 0, "shared": 0}
    for t, task in enumerate(r.tasks):
        assert sorted(r.weight_share[:, t]) == [0.0, 1.0] and r.across[t] == 0.0  # fully inside one cluster
        assert sorted(r.unit_share[:, t]) == [0.0, 1.0]
        for score in ("inside", "concentration", "entropy_concentration", "weight_concentration"):
            assert r.scores[f"{score}[{task}]"] == pytest.approx(1.0)
    assert r.weight_share[:, 0].argmax() != r.weight_share[:, 1].argmax()  # the two masks in two clusters
    assert r.p_value("ari") == r.p_value("nmi") == r.p_value("inside[a]") == pytest.approx(1 / 100)  # minimum
    assert np.all(r.null_partitions["ari"] < 1.0) and r.null_partitions["ari"].shape == (99,)


def test_unit_masks_plug_into_the_same_scores(two_modules):
    _, graph, partition, masks = two_modules
    r = bridge(graph, partition, masks, n_null=20, seed=0)
    units = {t: r_ for t, r_ in zip(("a", "b"), _used_units(graph, masks))}
    u = bridge(graph, partition, units, n_null=20, seed=0)
    assert u.granularity == "unit" and u.weight_share is None and u.across is None
    assert "inside[a]" not in u.scores
    for name, value in u.scores.items():  # the unit scores are those of the weight masks
        assert value == r.scores[name]
        np.testing.assert_array_equal(u.null_partitions[name], r.null_partitions[name])
    with pytest.raises(ValueError, match=r"unit mask 'a' must be a bool array of shape \(36,\)"):
        bridge(graph, partition, {"a": np.ones(5, bool)})


def _used_units(graph, masks):
    used = []
    for task in masks.tasks:
        u = np.zeros(graph.n_nodes, bool)
        off = graph.offsets
        for i, name in enumerate(["0.weight", "2.weight", "4.weight"]):
            m = masks[task][name].numpy()
            u[off[i] : off[i + 1]] |= m.any(axis=0)
            u[off[i + 1] : off[i + 2]] |= m.any(axis=1)
        used.append(u)
    return used


def test_random_masks_score_like_their_null(two_modules):
    """Masks unrelated to the modules: the unit scores' p-values are spread over (0, 1], not small; the
    share of kept weights inside clusters is that of every weight the network has (all are inside here)."""
    model, graph, partition, _ = two_modules
    ps = {"ari": [], "nmi": [], "concentration[a]": [], "entropy_concentration[b]": []}
    for seed in range(8):
        gen = torch.Generator().manual_seed(seed)
        units = [torch.rand(n, generator=gen) < 0.5 for n in SIZES]  # each task: a random half of every layer
        masks = {}
        for task, pick in (("a", lambda u: u), ("b", lambda u: ~u)):
            masks[task] = Mask({f"{2 * i}.weight": pick(units[i + 1])[:, None] & pick(units[i])[None, :]
                                for i in range(3)})  # fmt: skip
        r = bridge(graph, partition, MaskSet(masks), n_null=60, seed=seed)
        everything = Mask({n: p.detach() != 0 for n, p in model.named_parameters() if p.ndim == 2})
        assert r.scores["inside[a]"] == inside_share(graph, partition, everything) == 1.0
        for name in ps:
            ps[name].append(r.p_value(name))
    for name, values in ps.items():
        assert np.mean(values) > 0.2, (name, values)


def test_a_shuffled_network_scores_like_its_null(two_modules):
    """The planted masks against the clusters of layer-shuffled copies of the network: no agreement left."""
    _, graph, _, masks = two_modules
    ps, gaps = [], []
    for seed in range(8):
        shuffled = shuffle_graph(graph, seed=seed)
        r = bridge(shuffled, spectral_partition(shuffled, k=2, seed=seed), masks, n_null=60, seed=seed)
        ps.append(r.p_value("ari"))
        gaps.append((r.ari - r.null("ari")["mean"]) / r.null("ari")["std"])
    assert np.mean(ps) > 0.2, ps
    assert abs(np.mean(gaps)) < 1.5, gaps


def test_shuffled_networks_masks_are_the_second_null(two_modules):
    _, graph, partition, masks = two_modules
    others = [(s, spectral_partition(s, k=2, seed=i), masks) for i, s in
              enumerate(shuffle_graph(graph, seed=i) for i in range(4))]  # fmt: skip
    r = bridge(graph, partition, masks, n_null=10, seed=0, shuffled_masks=others)
    assert r.n_shuffled == 4 and r.null_shuffled["ari"].shape == (4,)
    assert r.p_value("ari", "shuffled") == pytest.approx(1 / 5)  # the planted network beats every shuffle
    alone = bridge(graph, partition, masks, n_null=10, seed=0, shuffled_masks=masks)  # read on this graph
    assert alone.null_shuffled["ari"].tolist() == [1.0] and alone.p_value("ari", "shuffled") == 1.0
    one = bridge(graph, partition, masks, n_null=0, shuffled_masks=others[0])  # a single triple
    assert one.n_shuffled == 1 and math.isnan(one.p_value("ari"))  # no random partitions: no p
    with pytest.raises(ValueError, match=r"shuffled_masks\[0\] has tasks \['a'\]"):
        bridge(graph, partition, masks, n_null=0, shuffled_masks=[MaskSet({"a": masks["a"]})])


def test_same_seed_same_result_other_seed_other_null(two_modules):
    _, graph, partition, masks = two_modules
    calls = []
    a = bridge(graph, partition, masks, n_null=30, seed=3, progress=lambda *c: calls.append(c[:3]))
    assert calls == [("bridge", i, 30) for i in range(1, 31)]
    b = bridge(graph, partition, masks, n_null=30, seed=3)
    c = bridge(graph, partition, masks, n_null=30, seed=4)
    assert a.to_dict() == b.to_dict()
    assert a.to_dict()["null_partitions"] != c.to_dict()["null_partitions"] and a.scores == c.scores


def test_bad_inputs_name_the_thing(two_modules):
    _, graph, partition, masks = two_modules
    extra = MaskSet({t: Mask({**masks[t], "other.weight": torch.ones(3, 3, dtype=torch.bool)})
                     for t in masks.tasks})  # fmt: skip
    with pytest.raises(ValueError, match=r"parameters the graph does not have: \['other.weight'\]"):
        bridge(graph, partition, extra)
    smaller = WeightGraph.from_module(planted((8, 12, 4))[0])
    with pytest.raises(ValueError, match="a partition of another graph"):
        bridge(smaller, partition, masks)
    moved = Partition.from_dict({**partition.to_dict(), "labels": [-1] * graph.n_nodes, "sizes": [0, 0]})
    with pytest.raises(ValueError, match=r"outside every cluster.*another graph"):
        bridge(graph, moved, masks)
    wrong = MaskSet({t: Mask({"2.weight": torch.ones(12, 8, dtype=torch.bool)}) for t in "ab"})
    with pytest.raises(ValueError, match=r"'2.weight' has shape \(12, 8\)"):
        bridge(graph, partition, wrong)
    for bad, match in ((-1, "n_null must be an int >= 0"), (1.5, "n_null must be an int >= 0")):
        with pytest.raises(ValueError, match=match):
            bridge(graph, partition, masks, n_null=bad)
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        bridge(graph, partition, masks, seed=-2)


# ------------------------------------------------------------------ the mapping from mask entries to edges
class _Convs(nn.Module):
    """A grouped conv, a square ConvTranspose, a conv, a residual add, then a flatten into a Linear."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(4, 6, 3, padding=1, groups=2)
        self.t = nn.ConvTranspose2d(6, 6, 3, padding=1)
        self.c2 = nn.Conv2d(6, 6, 3, padding=1)
        self.fc = nn.Linear(6 * 4 * 4, 5)

    def forward(self, x):
        h = torch.relu(self.t(torch.relu(self.c1(x))))
        return self.fc(torch.flatten(torch.relu(h + self.c2(h)), 1))


class _Recurrent(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(3, 5)
        self.lstm = nn.LSTM(5, 6, 2, batch_first=True)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        out, _ = self.lstm(torch.tanh(self.embed(x)))
        return self.head(out[:, -1])


class _Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(7, 8)
        layer = nn.TransformerEncoderLayer(8, 2, 12, dropout=0.0, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.head = nn.Linear(8, 3)

    def forward(self, ids):
        return self.head(self.enc(self.emb(ids)).mean(dim=1))


class _Concat(nn.Module):
    """Two layers read the input, a third reads their concatenation (its block is cut by columns)."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 5), nn.Linear(4, 3), nn.Linear(8, 2)

    def forward(self, x):
        return self.c(torch.cat([torch.relu(self.a(x)), torch.tanh(self.b(x))], dim=1))


CASES = {
    "concat": (_Concat, {"input_shape": (4,)}),
    "convs": (_Convs, {"input_shape": (4, 4, 4)}),
    "lstm": (_Recurrent, {"example_inputs": (torch.zeros(2, 5, 3),)}),
    "encoder": (_Encoder, {"example_inputs": (torch.randint(0, 7, (2, 5)),)}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_kept_counts_follow_the_graphs_own_rule(case, one_thread):
    """Oracle: the graph of a copy of the network whose masked weights are the 0/1 mask has, with the L1
    channel norm, the number of kept entries on every edge -- the graph package's own reduction."""
    make, kw = CASES[case]
    torch.manual_seed(0)
    model = make().eval()
    gen = torch.Generator().manual_seed(1)
    weights = {n: p for n, p in model.named_parameters() if p.ndim >= 2}
    mask = Mask({n: torch.rand(p.shape, generator=gen) < 0.4 for n, p in weights.items()})
    as_weights = copy.deepcopy(model)
    with torch.no_grad():
        for n, p in as_weights.named_parameters():
            if n in mask:
                p.copy_(mask[n].float())
    graph = WeightGraph.from_module(model, **kw)
    oracle = WeightGraph.from_module(as_weights, **kw)
    counts = kept_counts(graph, mask, model=model)
    assert len(weights) >= 3 and all(c is not None for c in counts)
    for c, expected, b in zip(counts, oracle.blocks, graph.blocks):
        np.testing.assert_array_equal(c, np.where(b > 0, expected, 0))
    if case == "convs":  # a square ConvTranspose is read as a Conv without the model (documented)
        t = graph.sources.index("t")
        assert not np.array_equal(kept_counts(graph, mask)[t], counts[t])


def test_inside_share_is_the_demos_former_share():
    """For an MLP the share of kept weights inside clusters is the count of same-cluster mask entries."""
    gen = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 3))
    with torch.no_grad():
        for layer in model[::2]:
            layer.weight.mul_(torch.rand(layer.weight.shape, generator=gen) < 0.5)  # pruned: some 0 weights
    graph = WeightGraph.from_module(model)
    partition = spectral_partition(graph, k=3, seed=0)
    labels, off = partition.labels, graph.offsets
    layers = list(model[::2])
    mask = Mask({f"{2 * i}.weight": torch.rand(x.weight.shape, generator=gen) < 0.5
                 for i, x in enumerate(layers)})  # fmt: skip
    inside = total = 0
    for i, layer in enumerate(layers):
        same = labels[off[i + 1] : off[i + 2], None] == labels[None, off[i] : off[i + 1]]
        keep = mask[f"{2 * i}.weight"].numpy() & (layer.weight.detach().numpy() != 0)
        inside, total = inside + int((keep & same).sum()), total + int(keep.sum())
    assert inside_share(graph, partition, mask) == pytest.approx(inside / total)


# ------------------------------------------------------------------ the null and the p-values
@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(1, 7), min_size=1, max_size=5).flatmap(
        lambda s: st.tuples(st.just(s), st.lists(st.integers(-1, 3), min_size=sum(s), max_size=sum(s)))
    ),
    st.integers(0, 2**32),
)
def test_same_size_null_keeps_every_clusters_size_per_layer(sizes_labels, seed):
    sizes, labels = sizes_labels
    labels, groups = np.array(labels), np.repeat(np.arange(len(sizes)), sizes)
    out = same_size_labels(labels, groups, np.random.default_rng(seed))
    assert out.shape == labels.shape and np.array_equal(out < 0, labels < 0)  # unclustered nodes stay
    for g in range(len(sizes)):
        assert np.array_equal(np.bincount(out[groups == g] + 1, minlength=5),
                              np.bincount(labels[groups == g] + 1, minlength=5))  # fmt: skip


def test_same_size_null_draws_every_arrangement_equally_often():
    """One layer of 4 nodes, clusters 0, 0, 1, 1: the 6 arrangements each about 1/6 of the draws."""
    rng = np.random.default_rng(0)
    labels, groups = np.array([0, 0, 1, 1]), np.zeros(4, int)
    seen = [tuple(same_size_labels(labels, groups, rng)) for _ in range(6000)]
    counts = np.array([seen.count(a) for a in set(seen)])
    assert len(counts) == 6 and np.all(np.abs(counts / 6000 - 1 / 6) < 0.025)


@settings(max_examples=80, deadline=None)
@given(st.floats(-3, 3), st.lists(st.one_of(st.floats(-3, 3), st.just(math.nan)), max_size=30))
def test_p_values_lie_in_zero_one(observed, null):
    p = p_value(observed, null)
    finite = [v for v in null if math.isfinite(v)]
    if not finite:
        assert math.isnan(p)
        return
    assert 0 < p <= 1
    reached = sum(v >= observed - 1e-12 * max(1.0, abs(observed)) for v in finite)  # ties up to rounding
    assert p == pytest.approx((1 + reached) / (1 + len(finite)))
    assert null_stats(observed, null)["p"] == p


def test_p_value_is_uniform_under_the_null():
    """A score drawn from its own null: P(p <= a) <= a (valid), and close to a."""
    rng = np.random.default_rng(0)
    ps = np.array([p_value(rng.normal(), rng.normal(size=19)) for _ in range(4000)])
    for a in (0.05, 0.1, 0.5):
        assert abs(np.mean(ps <= a) - a) < 0.02


# ------------------------------------------------------------------ the result, results.json and the report
def test_result_round_trips_and_reads(two_modules, tmp_path):
    _, graph, partition, masks = two_modules
    r = bridge(graph, partition, masks, n_null=15, seed=1)
    r.save(tmp_path / "bridge.json")
    back = BridgeResult.load(tmp_path / "bridge.json")
    assert back.to_dict() == json.loads(json.dumps(r.to_dict())) and repr(back) == repr(r)
    assert "\n" not in repr(r) and repr(r).startswith("BridgeResult(tasks=2, k=2, ARI=1.000")
    frame = r.to_frame()
    assert len(frame) == (2 + 1) * 2 and set(frame["cluster"]) == {"0", "1", "across"}
    assert frame.groupby("mask")["weight_share"].sum().tolist() == [1.0, 1.0]
    assert r.rules["layout"] == "parameter shapes" and r.seed == 1 and r.n_null == 15
    (tmp_path / "bad.json").write_text(json.dumps({**r.to_dict(), "k": 0}))
    with pytest.raises(ValueError, match="'k' must be a positive int"):
        BridgeResult.load(tmp_path / "bad.json")


def test_bridge_section_is_validated_and_drawn(two_modules, tmp_path):
    _, graph, partition, masks = two_modules
    section = bridge(graph, partition, masks, n_null=10, seed=0).section("The lenses connected")
    validate_section(json.loads(json.dumps(section)))
    broken = {**section, "unit_share": [[1.0, 0.0]]}
    with pytest.raises(ValueError, match="'unit_share' must be 2 rows"):
        validate_section(broken)
    doc = RunResult("demo", "t", "quick", table("Summary", ["a"], [[1]]), (), (section,), {}, {}, 1.0)
    html = render_html(RunResult.from_dict(json.loads(json.dumps(doc.to_dict()))), tmp_path)
    assert "clusters x masks heat map" in html and "inside[a]" in html and html.count("<img") == 1
