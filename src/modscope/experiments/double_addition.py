"""Double addition: does a network reuse one adder for two pairs of numbers?

Csordás, van Steenkiste, Schmidhuber, "Are Neural Nets Modular? Inspecting Functional Modularity Through
Differentiable Weight Masks", ICLR 2021 (arXiv:2010.02066), §3 "P_reuse" (SPEC §2.2, §4).

The task (:func:`modscope.data.double_addition`): two pairs (a, b) and (c, d) of numbers in [0, 100), each
pair with its own input block (40 one-hot inputs) and output block (2 digits); the targets are
``(a + b) mod 100`` and ``(c + d) mod 100``. As in the authors' code, the FNN sees one pair at a time, the
other pair's inputs zeroed and its digits not scored. Both pairs compute the same function, so a network
that reused one adder would route both pairs through the same hidden weights. The protocol (``protocol``,
``heldout``, ``reference``, ``init``, ``clip``) is :mod:`modscope.experiments.arithmetic`'s; by default the
authors'.

Per network ``i < networks`` (seed ``seed + i``; one unit of the run folder each):

1. train the FNN ``80-{hidden}-40`` (recipe ``double-addition-fnn``: Adam 1e-3, batch 128,
   ``train_steps`` steps) on both per-pair views;
2. freeze it and train three masks, one after another: ``control`` on both pairs' views, ``pair 1`` on pair
   1's view alone and ``pair 2`` on pair 2's (``beta``, ``mask_lr``, ``samples``, ``mask_batch``,
   ``mask_steps``; weights masked, biases not);
3. evaluate on each pair's view: the full network, each mask, and each pair's mask removed in the authors'
   two ways: ``¬pair 1`` inverts the mask in every layer; ``¬pair 1 (io: control)`` inverts it in the hidden
   layers and takes the input and output layers from the control mask (their ``inv_mask_exclude_io =
   "fullmask"``: the inverted input/output layers would bring back weights no mask uses);
4. IoU and IoMin of the two pair masks per layer and over all layers (as the authors report), and P_reuse
   (:func:`modscope.masks.p_reuse`):

   * **structural** = IoU (and IoMin) of the masks over the hidden-to-hidden layers only. The input layer's
     columns and the output layer's rows belong to one pair each by construction, so their overlap says
     nothing about reuse;
   * **functional** = ``d_2(¬1)``: the chance-corrected relative drop of pair 2's accuracy from the
     reference when pair 1's weights are removed (and ``d_1(¬2)``), for both inverted variants. A reused
     adder would die with either mask's weights, giving 1; separate adders give 0. This is ``1 -``
     :attr:`modscope.masks.Reuse.functional`, which measures how much of pair 2 *survives*.

   Chance is :data:`~modscope.experiments.arithmetic.CHANCE` (both digits right by a uniform guess: 0.01).

With ``controls`` (on by default) the three masks are trained again on a random-weight copy of the network
and on the tasks with shuffled labels, analysed the same way and reported next to the real masks
(:mod:`modscope.experiments.controls`; ``control_share`` of the mask steps at the same ``lr x steps``: a
quarter in ``quick``).

The paper finds little reuse: both measures low. Each claim holds here when its mean (the functional one
over both directions) is below :data:`REUSED`.

**Settings.** ``paper``: the authors' double-addition FNN (4 hidden layers of 2000, their sweep
``tuple_feedforward_big``), beta 4e-4 as in that sweep, 10 seeds, 20k training steps, 20k mask steps, mask
lr 1e-2. ``quick`` (minutes on 2 CPU cores): one 256x4 network, 20k training steps, the masks for 4,000
steps at lr 0.05: the authors' budget ``lr x steps`` = 200 in a fifth of the steps (see the addmul
experiment).
"""

from __future__ import annotations

from collections.abc import Mapping
from statistics import fmean
from typing import Any

import torch
from torch import nn

from modscope import data
from modscope.atomic import finite
from modscope.experiments.arithmetic import (
    AUTHORS_PROTOCOL,
    CHANCE,
    PAPER,
    above_chance,
    check_masks_config,
    check_unit,
    curves_section,
    evaluate,
    fmt,
    mean,
    mean_masks_section,
    reference_label,
    reference_mask,
    task_data,
    train_and_mask,
)
from modscope.experiments.checks import NUMBER, check_sizes
from modscope.experiments.controls import (
    arithmetic_controls,
    budget_note,
    check_controls_config,
    check_controls_unit,
    controls_section,
)
from modscope.experiments.run import Run
from modscope.masks import Mask, MaskEvalTable, MaskSet, iomin, iou, p_reuse, relative_drop
from modscope.models import parse_spec
from modscope.results import RunResult, table
from modscope.versions import versions

__all__ = [
    "IO_FROM_CONTROL",
    "PAIRS",
    "REUSED",
    "SETTINGS",
    "TITLE",
    "analyze",
    "check_config",
    "io_from_control",
    "reproduce",
]

TITLE = "Double addition: is one adder reused for both pairs? (Csordás et al. 2021)"
RECIPE = "double-addition-fnn"
#: Mask name -> the ``pair`` argument of :func:`modscope.data.double_addition` (``None``: both views).
PAIRS: dict[str, int] = {"pair 1": 0, "pair 2": 1}
#: Name of the second inverted variant of a pair's mask: inverted in the hidden layers, the control mask in
#: the input and output layers (the authors' ``inv_mask_exclude_io="fullmask"``).
IO_FROM_CONTROL = "¬{} (io: control)"
#: Below this, a P_reuse (structural or functional) counts as "little reuse".
REUSED = 0.5

SETTINGS: dict[str, dict[str, Any]] = {
    "quick": {
        **AUTHORS_PROTOCOL,
        "networks": 1,
        "seed": 0,
        "hidden": "256x4",
        "train_steps": 20000,
        "mask_steps": 4000,
        "beta": 4e-4,
        "mask_lr": 0.05,
        "samples": 4,
        "mask_batch": 128,
        "controls": True,
        "control_share": 0.25,
    },
    "paper": {
        **AUTHORS_PROTOCOL,
        "networks": 10,
        "seed": 0,
        "hidden": "2000x4",
        "train_steps": 20000,
        "mask_steps": 20000,
        "beta": 4e-4,
        "mask_lr": 1e-2,
        "samples": 4,
        "mask_batch": 128,
        "controls": True,
        "control_share": 1.0,
    },
}


def _spec(config: Mapping[str, Any]) -> str:
    spec = check_sizes(config, "hidden", "mlp:80-{}-40", r"\d+(x\d+)?(-\d+(x\d+)?)*", "2000x4")
    if len(parse_spec(spec)["sizes"]) < 4:
        raise ValueError(
            f"hidden must have at least 2 hidden layers, got {config['hidden']!r}: P_reuse compares the "
            "hidden-to-hidden layers, the only ones both pairs can share"
        )
    return spec


def check_config(config: Mapping[str, Any]) -> None:
    """Validate ``config`` (ValueError naming the key)."""
    check_masks_config(config)
    check_controls_config(config)
    _spec(config)


_DIRECTIONS = {"2|1": NUMBER, "1|2": NUMBER}
#: What the report reads from a unit file beyond the fields every mask experiment has.
_UNIT = {
    "shared_layers": list,
    "p_reuse": {
        "iou": NUMBER, "iomin": NUMBER, "functional": _DIRECTIONS, "functional_io_control": _DIRECTIONS,
    },
}  # fmt: skip


def _make(split, pairs, frac, seed):
    """One or both per-pair views of a split, concatenated."""
    views = [data.double_addition(split, frac, seed, pair=p).tensors for p in pairs]
    return tuple(torch.cat(t) for t in zip(*views, strict=True))


def io_from_control(masks: MaskSet, task: str) -> Mask:
    """``task``'s mask inverted in the hidden layers, the control mask in the first and last masked layers
    (the authors' ``inv_mask_exclude_io="fullmask"``)."""
    names = masks.param_names
    io = {names[0], names[-1]}
    return Mask({n: masks["control"][n] if n in io else ~masks[task][n] for n in names})


def analyze(
    model: nn.Module, masks: MaskSet, evals: Mapping[str, tuple], *, reference: str = "control"
) -> dict[str, Any]:
    """Everything measured on one network's ``control``, ``pair 1`` and ``pair 2`` masks (steps 3-4 of the
    module docstring): the evaluation table with both inverted variants, IoU / IoMin over all layers, and
    P_reuse (drops from the ``reference``: ``"control"`` or ``"full"``). ``evals``: ``pair -> (inputs,
    targets)``."""
    derived = {IO_FROM_CONTROL.format(t): io_from_control(masks, t) for t in PAIRS}
    tab = evaluate(model, MaskSet({**masks, **derived}), evals)
    one, two = PAIRS
    shared = masks.param_names[1:-1]  # the input and output layers are pair-specific
    ref = reference_mask(reference)
    defined = above_chance(tab, list(PAIRS), ref)
    table = tab if defined else None
    forward = p_reuse(masks, one, two, shared_layers=shared, table=table, chance=CHANCE, reference=ref)
    backward = p_reuse(masks, two, one, shared_layers=shared, table=table, chance=CHANCE, reference=ref)

    def io_drop(removed: str, on: str) -> float | None:
        if not defined:
            return None
        return relative_drop(tab, on, "mask", IO_FROM_CONTROL.format(removed), chance=CHANCE, reference=ref)

    return {
        "table": tab.to_dict(),
        "shared_layers": list(shared),
        "iou": iou(masks[one], masks[two]).to_dict(),
        "iomin": iomin(masks[one], masks[two]).to_dict(),
        "p_reuse": {
            "iou": forward.iou,
            "iomin": forward.iomin,
            # drops, 1 = reused (see the module docstring); Reuse.functional is the survival 1 - d
            "functional": {
                "2|1": 1.0 - forward.functional if defined else None,
                "1|2": 1.0 - backward.functional if defined else None,
            },
            "functional_io_control": {"2|1": io_drop(one, two), "1|2": io_drop(two, one)},
        },
    }


def _unit(run: Run, config: Mapping[str, Any], i: int) -> tuple[str, dict[str, Any]]:
    seed = config["seed"] + i
    key = f"fnn-{i}"

    def compute() -> dict[str, Any]:
        views = {"control": tuple(PAIRS.values()), **{name: (p,) for name, p in PAIRS.items()}}
        tasks = task_data(config, _make, views, seed, evaluation=False)
        evals = task_data(config, _make, {name: (p,) for name, p in PAIRS.items()}, seed, evaluation=True)
        model, masks, doc = train_and_mask(run, key, RECIPE, _spec(config), seed, config, tasks)
        doc.update(network=i, **analyze(model, masks, evals, reference=config["reference"]))
        if check_controls_config(config):
            doc["controls"] = arithmetic_controls(
                run, run.checkpoint_prefix(key), model, tasks, seed, config,
                lambda net, m: analyze(net, m, evals, reference=config["reference"]),
            )
        return finite(doc)

    return key, run.unit(key, compute, check=_check_unit)


def _check_unit(doc: Mapping[str, Any]) -> None:
    check_unit(doc, _UNIT)
    check_controls_unit(doc, tuple(PAIRS), {"p_reuse": _UNIT["p_reuse"]})


def reproduce(run: Run, config: dict) -> RunResult:
    """Run (or resume) the experiment in ``run``'s folder; see the module docstring."""
    check_config(config)
    n = config["networks"]
    units: dict[str, dict[str, Any]] = {}
    for i in range(n):
        run.report("networks", i, n, {"network": f"fnn-{i}"})
        key, doc = _unit(run, config, i)
        units[key] = doc
    run.report("networks", n, n, {})
    return _result(run, config, units)


_CONDITIONS = (
    ("full", "full", None),
    ("control", "mask", "control"),
    ("pair 1", "mask", "pair 1"),
    ("¬pair 1", "inverted", "pair 1"),
    (IO_FROM_CONTROL.format("pair 1"), "mask", IO_FROM_CONTROL.format("pair 1")),
    ("pair 2", "mask", "pair 2"),
    ("¬pair 2", "inverted", "pair 2"),
    (IO_FROM_CONTROL.format("pair 2"), "mask", IO_FROM_CONTROL.format("pair 2")),
)


def _functional_claim(docs, field: str, how: str, survives: str, of: str) -> dict[str, Any]:
    value = mean([v for d in docs for v in d["p_reuse"][field].values()])
    return {
        "paper": PAPER,
        "claim": f"little reuse, functionally: removing one pair's weights ({how}) leaves the other working",
        "ours": f"P_reuse functional {fmt(value)} (mean of {of}, both directions; 1 = removing one pair's "
        f"weights kills the other); {survives}",
        "agrees": None if value is None else bool(value < REUSED),
    }


def _result(run: Run, config: Mapping[str, Any], units: dict[str, dict]) -> RunResult:
    docs = [units[f"fnn-{i}"] for i in range(config["networks"])]
    tables = [MaskEvalTable.from_dict(d["table"]) for d in docs]
    one, two = PAIRS
    ref = reference_label(config)
    rows = []
    for d, t in zip(docs, tables, strict=True):
        pr = d["p_reuse"]
        rows.append([
            f"FNN {d['network']}", d["seed"], *(t.score("mask", "control", p) for p in PAIRS),
            d["iou"]["total"], pr["iou"], pr["iomin"], pr["functional"]["2|1"], pr["functional"]["1|2"],
            pr["functional_io_control"]["2|1"], pr["functional_io_control"]["1|2"],
        ])  # fmt: skip
    structural = mean([d["p_reuse"]["iou"] for d in docs])
    shared = ", ".join(docs[0]["shared_layers"])
    summary = table(
        "Reuse of the adder per network",
        ["network", "seed", "control acc. pair 1", "control acc. pair 2", "IoU all layers",
         "P_reuse IoU (hidden)", "P_reuse IoMin (hidden)", "d_2(¬1)", "d_1(¬2)", "d_2(¬1, io: control)",
         "d_1(¬2, io: control)"],
        rows,
        note=f"Protocol '{config['protocol']}'; accuracy under the control mask (chance {CHANCE}). IoU / "
        f"IoMin of the two pair masks over all layers and over the hidden-to-hidden layers ({shared}). "
        f"d_2(¬1): chance-corrected relative drop of pair 2's accuracy from the {ref} when pair 1's weights "
        "are removed (1 = the same weights serve both pairs, 0 = none do); 'io: control' takes the input "
        "and output layers from the control mask instead of inverting them.",
    )  # fmt: skip
    of = f"{len(docs)} network{'s' if len(docs) > 1 else ''}"
    acc = [
        [name, *(fmean(t.score(kind, task, name) for t in tables) for _, kind, task in _CONDITIONS)]
        for name in PAIRS
    ]
    columns = ["evaluated on", *(label for label, _, _ in _CONDITIONS)]
    cells = {r[0]: dict(zip(columns, r, strict=True)) for r in acc}
    base = cells[two]["control" if config["reference"] == "control" else "full"]
    io_label = IO_FROM_CONTROL.format(one)
    claims = (
        {
            "paper": PAPER,
            "claim": "little reuse, structurally: the two pairs' masks share few hidden weights",
            "ours": f"P_reuse IoU {fmt(structural)} over the hidden layers (mean of {of}; 1 = same weights); "
            f"over all layers {fmt(mean([d['iou']['total'] for d in docs]))}",
            "agrees": None if structural is None else bool(structural < REUSED),
        },
        _functional_claim(
            docs, "functional", "inverted in every layer",
            f"pair 2 after removing pair 1's weights {cells[two]['¬pair 1']:.2f} ({ref} {base:.2f})", of,
        ),
        _functional_claim(
            docs, "functional_io_control", "input and output layers from the control mask",
            f"pair 2 under {io_label} {cells[two][io_label]:.2f} ({ref} {base:.2f})", of,
        ),
    )  # fmt: skip
    shape = "-".join(str(s) for s in parse_spec(_spec(config))["sizes"])
    data_note = "every input" if not config["heldout"] else f"held-out pairs ({config['heldout']:.0%})"
    accuracy = table(
        f"Accuracy on {data_note}", columns, acc,
        note=f"Mean of {of}; only the digits of the evaluated pair are scored. X: only mask X's weights; "
        "¬X: every weight except X's (biases are never masked); 'io: control': inverted in the hidden "
        "layers, the control mask in the input and output layers. The first and last layers are "
        "pair-specific by construction, so their IoU is low whatever the network does.",
    )  # fmt: skip
    title = f"FNN {shape}: masks of pair 1 and pair 2 (mean of {of})"
    sections = (
        mean_masks_section(title, docs, (one, two), accuracy),
        curves_section("Mask training: kept weights over the steps", units),
    )
    if check_controls_config(config):
        sections += (controls_section(
            "Sanity controls: the pair masks where there is nothing to find",
            [(f"FNN {d['network']}", d) for d in docs], tuple(PAIRS),
            ["P_reuse IoU (hidden)", "d_2(¬1)", "d_1(¬2)"],
            lambda d: [d["p_reuse"]["iou"], *(d["p_reuse"]["functional"][k] for k in ("2|1", "1|2"))],
            note=f"{budget_note(config)} Drops from the {ref} of the same set of masks; 'undefined' where "
            "that reference is at chance.",
        ),)  # fmt: skip
    return RunResult(
        "double-addition", TITLE, run.setting, summary, claims, sections, dict(config), versions(),
        run.seconds(), units,
    )  # fmt: skip
