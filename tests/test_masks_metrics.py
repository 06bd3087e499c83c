"""IoU / IoMin / sharing / stability, the evaluation table, P_specialize, P_reuse and the masks CLI."""

import argparse
import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from modscope.atomic import finite
from modscope.cli import masks as masks_cli
from modscope.masks import (
    Condition,
    EvalResult,
    Mask,
    MaskEvalTable,
    MaskSet,
    Overlap,
    Reuse,
    Stability,
    evaluate_masks,
    iomin,
    iou,
    mask_stability,
    p_reuse,
    p_specialize,
    reference_score,
    relative_drop,
    sharing,
)

N = 12


def mask_of(bits: list[bool]) -> Mask:
    return Mask({"l1": torch.tensor(bits[:8]).reshape(2, 4), "l2": torch.tensor(bits[8:])})


pair = st.tuples(
    st.lists(st.booleans(), min_size=N, max_size=N), st.lists(st.booleans(), min_size=N, max_size=N)
)


@settings(max_examples=60, deadline=None)
@given(pair)
def test_iou_iomin_properties(bits):
    a, b = mask_of(bits[0]), mask_of(bits[1])
    x, y, m = iou(a, b), iou(b, a), iomin(a, b)
    for v, w in [(x.total, y.total), *[(x.per_layer[k], y.per_layer[k]) for k in a]]:
        assert (math.isnan(v) and math.isnan(w)) or v == w  # symmetric
    for o in (x, m):
        for v in [o.total, *o.per_layer.values()]:
            assert math.isnan(v) or 0.0 <= v <= 1.0
    for k in [*a, None]:
        u, mi = (x.total, m.total) if k is None else (x.per_layer[k], m.per_layer[k])
        if not math.isnan(mi):
            assert mi >= u
    if a.total_kept:
        assert iou(a, a).total == 1.0 and iomin(a, a | b).total == 1.0
    assert iou(a, ~a).total == 0.0 or a.total_kept in (0, a.total_size)


def test_known_values_and_sharing():
    a = mask_of([True] * 4 + [False] * 4 + [True, True, False, False])
    b = mask_of([True] * 2 + [False] * 6 + [True, False, True, False])
    assert iou(a, b).per_layer == {"l1": 0.5, "l2": 1 / 3}
    assert iou(a, b).total == 3 / 7
    assert iomin(a, b).total == 3 / 4 and iomin(a, b).per_layer == {"l1": 1.0, "l2": 0.5}
    assert iou(a, b, layers=["l2"]).total == 1 / 3
    s = sharing(MaskSet({"a": a, "b": b}))
    assert s["a"].total == 3 / 6 and s["b"].total == 3 / 4
    with pytest.raises(ValueError, match="not masked"):
        iou(a, b, layers=["nope"])
    stab = mask_stability([MaskSet({"t": a}), MaskSet({"t": a}), MaskSet({"t": b})], "t")
    assert stab.pairwise[0][1] == 1.0 and stab.pairwise[0][2] == 3 / 7
    assert math.isclose(stab.mean, (1 + 3 / 7 + 3 / 7) / 3)


# ---------------------------------------------------------------- evaluation table on a hand-made model


def routed_net():
    """Outputs 0-1 copy inputs 0-1 (task "a"), outputs 2-3 copy inputs 2-3 (task "b"); one diagonal layer."""
    net = nn.Sequential(nn.Linear(4, 4, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.eye(4))
    return net


def task_batches(side, n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 4)
    x[:, 2 * side : 2 * side + 2] = torch.rand(n, 2, generator=g) + 0.1
    return [(x, x.argmax(1))]


@pytest.fixture
def table_and_masks():
    net = routed_net()
    keep_a, keep_b = torch.zeros(4, 4, dtype=torch.bool), torch.zeros(4, 4, dtype=torch.bool)
    keep_a[[0, 1], [0, 1]] = True
    keep_b[[2, 3], [2, 3]] = True
    ms = MaskSet({"a": Mask({"0.weight": keep_a}), "b": Mask({"0.weight": keep_b})})
    table = evaluate_masks(net, ms, {"a": task_batches(0), "b": task_batches(1)})
    return net, ms, table


def test_evaluation_table(table_and_masks):
    _, _, table = table_and_masks
    assert table.score("full", None, "a") == 1.0 and table.score("mask", "a", "a") == 1.0
    assert table.score("mask", "a", "b") < 1.0 and table.score("inverted", "a", "b") == 1.0
    full = table.get("full", None, "a")
    assert full.n == 40 and full.per_class[0] == 1.0 and math.isnan(full.per_class[2])
    assert sum(map(sum, full.confusion)) == 40
    inv = table.get("inverted", "a", "a")
    delta = table.confusion_delta("inverted", "a", "a")
    assert (
        sum(map(sum, delta)) == 0 and inv.per_class[1] == 0.0
    )  # class 1 is never predicted without its weight
    assert table.early_layers == ("0.weight",) and table.late_layers == ()
    assert table.score("late", "a", "b") == 1.0  # an empty half leaves the model full
    assert p_specialize(table, "a", "b", chance=0.5) == 1.0
    with pytest.raises(ValueError, match="unknown task 'c'"):
        p_specialize(table, "c", "b", chance=0.5)
    with pytest.raises(ValueError, match="unknown evaluation set 'zz'"):
        p_specialize(table, "a", "zz", chance=0.5)
    with pytest.raises(ValueError, match="not above chance"):
        p_specialize(table, "a", "b", chance=1.0)


def test_p_reuse(table_and_masks):
    _, ms, table = table_and_masks
    r = p_reuse(ms, "a", "b", shared_layers=["0.weight"], table=table, chance=0.5)
    assert r.iou == 0.0 and r.iomin == 0.0 and r.functional == 1.0  # disjoint modules: no reuse
    r2 = p_reuse(ms, "a", "a")
    assert r2.iou == 1.0 and math.isnan(r2.functional)
    with pytest.raises(ValueError, match="unknown task 'x'"):
        p_reuse(ms, "x", "a", table=table)


def test_custom_metric_and_errors(table_and_masks):
    net, ms, _ = table_and_masks
    def neg_mse(out, y):
        return -(out**2).sum(1)

    mse = evaluate_masks(net, ms, {"a": task_batches(0)}, metric=neg_mse, tasks=["a"])
    assert mse.get("full", None, "a").per_class is None and mse.tasks == ("a",)
    assert mse.metric == "test_custom_metric_and_errors.<locals>.neg_mse"
    with pytest.raises(TypeError):
        evaluate_masks(net, ms, {"a": task_batches(0)}, neg_mse)  # settings are keyword-only
    with pytest.raises(ValueError, match="unknown tasks"):
        evaluate_masks(net, ms, {"a": task_batches(0)}, tasks=["q"])
    with pytest.raises(ValueError, match="non-empty"):
        evaluate_masks(net, ms, {})


def test_table_saves_loads_and_reads_as_a_frame(table_and_masks, tmp_path):
    _, _, table = table_and_masks
    assert table.metric == "accuracy"
    table.save(tmp_path / "table.json")
    back = MaskEvalTable.load(tmp_path / "table.json")
    # NaN (the per-class accuracy of an absent class) is saved as null and read back as NaN
    assert math.isnan(back.get("full", None, "a").per_class[2])
    assert finite(back.to_dict()) == finite(table.to_dict()) and back.metric == "accuracy"
    old = table.to_dict()
    del old["metric"]  # a table saved before the metric was recorded
    assert MaskEvalTable.from_dict(old).metric is None
    (tmp_path / "other.json").write_text('{"ncut": 1}')
    with pytest.raises(ValueError, match="not a saved MaskEvalTable"):
        MaskEvalTable.load(tmp_path / "other.json")
    lines = repr(table).splitlines()
    assert lines[0] == "MaskEvalTable(metric='accuracy', tasks=['a', 'b'], early_layers=1, late_layers=0)"
    assert lines[1].split() == ["a", "b"]
    conditions = ["full", "a", "~a", "a[early]", "a[late]", "b", "~b", "b[early]", "b[late]"]
    assert [line.split()[0] for line in lines[2:]] == conditions
    assert lines[2].split()[1:] == ["1.0000", "1.0000"]


def test_table_frame(table_and_masks):
    pytest.importorskip("pandas")
    _, _, table = table_and_masks
    frame = table.to_frame()
    assert list(frame.columns) == ["condition", "kind", "task", "eval_set", "score", "n"]
    assert len(frame) == 2 * 9 and set(frame["n"]) == {40}
    for row in frame.itertuples():
        assert row.score == table.score(row.kind, row.task, row.eval_set)
    assert frame.loc[(frame.condition == "~a") & (frame.eval_set == "b"), "score"].item() == 1.0
    overlap = iou(table_and_masks[1]["a"], table_and_masks[1]["b"]).to_frame()
    assert overlap.values.tolist() == [["0.weight", 0.0]]


def test_evaluation_reports_progress(table_and_masks):
    net, ms, _ = table_and_masks
    calls = []
    evaluate_masks(net, ms, {"a": task_batches(0)}, tasks=["a"], progress=lambda *a: calls.append(a))
    assert calls == [("conditions", d, 5, {}) for d in range(6)]


def test_overlap_stability_reuse_round_trip(table_and_masks, tmp_path):
    _, ms, table = table_and_masks
    results = [
        iou(ms["a"], ms["b"]),
        iomin(ms["a"], ms["a"]),
        mask_stability([ms, ms, ~ms], "a"),
        p_reuse(ms, "a", "b", table=table, chance=0.5),
        p_reuse(ms, "a", "b"),  # functional part undefined: NaN, saved as null
    ]
    for i, r in enumerate(results):
        r.save(tmp_path / f"{i}.json")
        back = type(r).load(tmp_path / f"{i}.json")
        assert finite(back.to_dict()) == finite(r.to_dict())
    assert math.isnan(Reuse.load(tmp_path / "4.json").functional)
    assert repr(results[0]) == "Overlap(total=0.0000 (0/4), per_layer={'0.weight': 0.000})"
    assert repr(results[2]).startswith("Stability(task='a', runs=3, mean=0.3333")
    assert repr(results[3]) == "Reuse(iou=0.0000, iomin=0.0000, functional=1.0000, layers=1)"
    assert isinstance(Overlap.from_dict(results[1].to_dict()), Overlap)
    assert Stability.from_dict(results[2].to_dict()) == results[2]
    with pytest.raises(TypeError):
        iou(ms["a"], ms["b"], ["0.weight"])  # settings are keyword-only


# ---------------------------------------------------------------- CLI


def run_cli(argv):
    parser = argparse.ArgumentParser()
    masks_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_compare_and_plot(tmp_path, capsys, table_and_masks):
    _, ms, _ = table_and_masks
    ms.save(tmp_path / "a.safetensors")
    ms.save(tmp_path / "b.safetensors")
    assert run_cli(["masks", "compare", str(tmp_path / "a.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "IoU a vs b" in out and "sharing a" in out and "0.weight" in out
    assert (
        run_cli(
            ["masks", "compare", "--json", str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors")]
        )
        == 0
    )
    table = json.loads(capsys.readouterr().out)
    assert table["pairs"]["a:a vs b:a"]["iou"]["total"] == 1.0 and table["kept"]["a:a"]["total"] == 2
    assert (
        run_cli(["masks", "plot", str(tmp_path / "a.safetensors"), "--out", str(tmp_path / "fig.png")]) == 0
    )
    assert (tmp_path / "fig.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(FileNotFoundError, match=r"missing\.safetensors"):
        run_cli(["masks", "compare", str(tmp_path / "missing.safetensors")])


def _table(scores):
    """A MaskEvalTable from ``{(kind, task, eval_set): score}``."""
    results = tuple(EvalResult(Condition(kind, task), s, v, 10) for (kind, task, s), v in scores.items())
    return MaskEvalTable(results, ("control", "a"), ("a", "b"), (), ())


def test_drops_from_the_control_mask_or_the_full_network():
    tab = _table({
        ("full", None, "a"): 1.0, ("full", None, "b"): 1.0,
        ("mask", "control", "a"): 0.8, ("mask", "control", "b"): 0.9,
        ("inverted", "a", "a"): 0.2, ("inverted", "a", "b"): 0.9,
        ("mask", "a", "a"): 0.85, ("mask", "a", "b"): 0.0,
    })  # fmt: skip
    assert reference_score(tab, "a") == 1.0 and reference_score(tab, "a", reference="control") == 0.8
    assert relative_drop(tab, "a", "inverted", "a", chance=0.0) == pytest.approx(0.8)
    assert relative_drop(tab, "a", "inverted", "a", chance=0.0, reference="control") == pytest.approx(0.75)
    assert relative_drop(tab, "b", "inverted", "a", chance=0.0, reference="control") == 0.0
    # a mask scoring above its reference is no drop (clipped at 0), not a negative one
    assert relative_drop(tab, "a", "mask", "a", chance=0.0, reference="control") == 0.0
    assert p_specialize(tab, "a", "b", chance=0.0) == pytest.approx(0.8 - 0.1)
    assert p_specialize(tab, "a", "b", chance=0.0, reference="control") == pytest.approx(0.75)
    # mask=: remove another mask's weights and read both sets (here a's mask read from b's side)
    assert p_specialize(tab, "b", "a", chance=0.0, mask="a", reference="control") == pytest.approx(-0.75)
    with pytest.raises(ValueError, match=r"'control'-mask score on 'a' is 0\.8, not above chance 0\.9"):
        relative_drop(tab, "a", "inverted", "a", chance=0.9, reference="control")
    with pytest.raises(ValueError, match="unknown task 'zz'"):
        relative_drop(tab, "a", "inverted", "a", chance=0.0, reference="zz")
