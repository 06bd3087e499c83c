"""Double addition: does a network reuse one adder for two pairs of numbers?

Csordás, van Steenkiste, Schmidhuber, "Are Neural Nets Modular? Inspecting Functional Modularity Through
Differentiable Weight Masks", ICLR 2021 (arXiv:2010.02066), §3 "P_reuse" (SPEC §2.2, §4).

The task (:func:`modscope.data.double_addition`): two pairs (a, b) and (c, d) of numbers in [0, 100), each
pair with its own input block (40 one-hot inputs) and output block (2 digits); the targets are
``(a + b) mod 100`` and ``(c + d) mod 100``. As in the paper, the FNN sees one pair at a time, the other
pair's inputs zeroed and its digits not scored. Both pairs compute the same function, so a network that
reused one adder would route both pairs through the same hidden weights. Held-out (a, b) pairs
(:func:`modscope.data.heldout_pairs`, drawn from the network's seed) are never trained on, in either position.

Per network ``i < networks`` (seed ``seed + i``; one unit of the run folder each):

1. train the FNN ``80-{hidden}-40`` (recipe ``double-addition-fnn``: Adam 1e-3, batch 128,
   ``train_steps`` steps) on both per-pair views;
2. freeze it and train one mask per pair at once, ``"pair 1"`` on pair 1's view alone and ``"pair 2"`` on
   pair 2's (``beta``, ``mask_lr``, ``samples``, ``mask_batch``, ``mask_steps``; weights masked, biases not);
3. evaluate on each pair's held-out view: the full network, each mask, each inverted mask, the half-masks;
4. per-layer IoU and IoMin of the two masks, and P_reuse (:func:`modscope.masks.p_reuse`):

   * **structural** = IoU (and IoMin) of the masks over the hidden-to-hidden layers only. The input layer's
     columns and the output layer's rows belong to one pair each by construction (a pair's mask has no use
     for the other pair's inputs or outputs), so their overlap says nothing about reuse;
   * **functional** = ``d_2(¬1)``: the chance-corrected relative drop of pair 2's accuracy when every
     weight of pair 1's mask is removed (and ``d_1(¬2)`` the other way). A reused adder would die with
     either mask's weights, giving 1; separate adders give 0. This is ``1 -``
     :attr:`modscope.masks.Reuse.functional`, which measures how much of pair 2 *survives*.

   Chance is :data:`~modscope.experiments.addmul.CHANCE` (both digits right by a uniform guess: 0.01).

The paper finds little reuse: both measures low. Each claim holds here when its mean (the functional one
over both directions) is below :data:`REUSED`.

**Settings.** ``paper``: the authors' double-addition FNN (4 hidden layers of 2000, their sweep
``tuple_feedforward_big``), beta 4e-4 as in that sweep, 10 seeds, 20k training steps, 20k mask steps, mask
lr 1e-2. ``quick`` (minutes on 2 CPU cores) shrinks the network to 256x4 (4000 training steps reach 100% on
held-out pairs) and trains the masks for 3000 steps at mask lr 0.05 instead of 1e-2, so that they shed the
weights their pair does not need within those few steps (see the addmul experiment); beta stays 4e-4.
"""

from __future__ import annotations

from collections.abc import Mapping
from statistics import fmean
from typing import Any

from modscope import data
from modscope.atomic import finite
from modscope.experiments.addmul import (
    CHANCE,
    PAPER,
    above_chance,
    check_masks_config,
    check_sizes,
    fmt,
    masks_section,
    mean,
    train_and_mask,
)
from modscope.experiments.results import RunResult, table
from modscope.experiments.run import Run
from modscope.masks import MaskEvalTable, iomin, iou, p_reuse
from modscope.models import parse_spec
from modscope.versions import versions

__all__ = ["PAIRS", "REUSED", "SETTINGS", "TITLE", "reproduce"]

TITLE = "Double addition: is one adder reused for both pairs? (Csordás et al. 2021)"
RECIPE = "double-addition-fnn"
#: Mask name -> the ``pair`` argument of :func:`modscope.data.double_addition`.
PAIRS: dict[str, int] = {"pair 1": 0, "pair 2": 1}
#: Below this, a P_reuse (structural or functional) counts as "little reuse".
REUSED = 0.5

SETTINGS: dict[str, dict[str, Any]] = {
    # Measured on 2 shared CPU cores; quick raises mask_lr so that masks shed unused weights within its
    # few steps, as in the addmul experiment.
    "quick": {
        "networks": 1,
        "seed": 0,
        "hidden": "256x4",
        "train_steps": 4000,
        "mask_steps": 3000,
        "beta": 4e-4,
        "mask_lr": 0.05,
        "samples": 4,
        "mask_batch": 128,
    },
    "paper": {
        "networks": 10,
        "seed": 0,
        "hidden": "2000x4",
        "train_steps": 20000,
        "mask_steps": 20000,
        "beta": 4e-4,
        "mask_lr": 1e-2,
        "samples": 4,
        "mask_batch": 128,
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


def _unit(run: Run, config: Mapping[str, Any], i: int) -> tuple[str, dict[str, Any]]:
    seed = config["seed"] + i
    key = f"fnn-{i}"

    def compute() -> dict[str, Any]:
        tasks = {name: data.double_addition("train", seed=seed, pair=p).tensors for name, p in PAIRS.items()}
        evals = {name: data.double_addition("test", seed=seed, pair=p).tensors for name, p in PAIRS.items()}
        _, masks, tab, doc = train_and_mask(run, key, RECIPE, _spec(config), seed, config, tasks, evals)
        one, two = PAIRS
        shared = masks.param_names[1:-1]  # the input and output layers are pair-specific
        defined = above_chance(tab, list(PAIRS))
        forward = p_reuse(masks, one, two, shared, tab if defined else None, chance=CHANCE)
        backward = p_reuse(masks, two, one, shared, tab if defined else None, chance=CHANCE)
        doc.update(
            network=i,
            shared_layers=list(shared),
            iou=iou(masks[one], masks[two]).to_dict(),
            iomin=iomin(masks[one], masks[two]).to_dict(),
            p_reuse={
                "iou": forward.iou,
                "iomin": forward.iomin,
                # drops, 1 = reused (see the module docstring); Reuse.functional is the survival 1 - d
                "functional": {
                    "2|1": 1.0 - forward.functional if defined else None,
                    "1|2": 1.0 - backward.functional if defined else None,
                },
            },
        )
        return finite(doc)

    return key, run.unit(key, compute)


def reproduce(run: Run, config: dict) -> RunResult:
    """Run (or resume) the experiment in ``run``'s folder; see the module docstring."""
    check_masks_config(config)
    _spec(config)
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
    ("pair 1", "mask", "pair 1"),
    ("¬pair 1", "inverted", "pair 1"),
    ("pair 2", "mask", "pair 2"),
    ("¬pair 2", "inverted", "pair 2"),
)


def _result(run: Run, config: Mapping[str, Any], units: dict[str, dict]) -> RunResult:
    docs = [units[f"fnn-{i}"] for i in range(config["networks"])]
    tables = [MaskEvalTable.from_dict(d["table"]) for d in docs]
    one, two = PAIRS
    rows = []
    for d, t in zip(docs, tables, strict=True):
        pr = d["p_reuse"]
        rows.append([
            f"FNN {d['network']}", d["seed"], t.score("full", None, one), t.score("full", None, two),
            pr["iou"], pr["iomin"], pr["functional"]["2|1"], pr["functional"]["1|2"],
        ])  # fmt: skip
    structural = mean([d["p_reuse"]["iou"] for d in docs])
    functional = mean([v for d in docs for v in d["p_reuse"]["functional"].values()])
    if len(docs) > 1:
        rows.append([
            "mean", None, fmean(t.score("full", None, one) for t in tables),
            fmean(t.score("full", None, two) for t in tables), structural,
            mean([d["p_reuse"]["iomin"] for d in docs]),
            mean([d["p_reuse"]["functional"]["2|1"] for d in docs]),
            mean([d["p_reuse"]["functional"]["1|2"] for d in docs]),
        ])  # fmt: skip
    shared = ", ".join(docs[0]["shared_layers"])
    summary = table(
        "Reuse of the adder per network",
        ["network", "seed", "accuracy pair 1", "accuracy pair 2", "P_reuse IoU", "P_reuse IoMin",
         "P_reuse functional d_2(¬1)", "P_reuse functional d_1(¬2)"],
        rows,
        note=f"Accuracy of the full network on held-out pairs (chance {CHANCE}). IoU / IoMin of the two "
        f"masks over the hidden-to-hidden layers ({shared}). d_2(¬1): chance-corrected relative drop of "
        "pair 2's accuracy when pair 1's weights are removed; 1 = the same weights serve both pairs, "
        "0 = none do.",
    )  # fmt: skip
    of = f"{len(docs)} network{'s' if len(docs) > 1 else ''}"
    acc = [
        [name, *(fmean(t.score(kind, task, name) for t in tables) for _, kind, task in _CONDITIONS)]
        for name in PAIRS
    ]
    columns = ["evaluated on", *(label for label, _, _ in _CONDITIONS)]
    removed = {r[0]: dict(zip(columns, r, strict=True)) for r in acc}
    survives = f"pair 2 accuracy after removing pair 1's weights {removed[two]['¬pair 1']:.2f}"
    claims = (
        {
            "paper": PAPER,
            "claim": "little reuse, structurally: the two pairs' masks share few hidden weights",
            "ours": f"P_reuse IoU {fmt(structural)} over the hidden layers (mean of {of}; 1 = same weights)",
            "agrees": None if structural is None else bool(structural < REUSED),
        },
        {
            "paper": PAPER,
            "claim": "little reuse, functionally: removing one pair's weights leaves the other pair working",
            "ours": (
                f"P_reuse functional {fmt(functional)} (mean of {of}, both directions; 1 = removing one "
                f"pair's weights kills the other); {survives} (full network {removed[two]['full']:.2f})"
            ),
            "agrees": None if functional is None else bool(functional < REUSED),
        },
    )
    spec = parse_spec(_spec(config))
    shape = "-".join(str(s) for s in spec["sizes"])
    accuracy = table(
        "Accuracy on held-out pairs", columns, acc,
        note=f"Mean of {of}; only the digits of the evaluated pair are scored. X: only mask X's weights; ¬X: "
        "every weight except X's (biases are never masked). The first and last layers are pair-specific by "
        "construction, so their IoU is low whatever the network does.",
    )  # fmt: skip
    title = f"FNN {shape}: masks of pair 1 and pair 2 (mean of {of})"
    sections = (masks_section(title, docs, (one, two), accuracy),)
    return RunResult(
        "double-addition", TITLE, run.setting, summary, claims, sections, dict(config), versions(),
        run.seconds(), units,
    )  # fmt: skip
