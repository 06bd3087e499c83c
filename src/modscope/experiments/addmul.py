"""Addition and multiplication: does a network keep separate weights for each operation?

Csordás, van Steenkiste, Schmidhuber, "Are Neural Nets Modular? Inspecting Functional Modularity Through
Differentiable Weight Masks", ICLR 2021 (arXiv:2010.02066), §3 "addition/multiplication" (SPEC §4).

The task (:func:`modscope.data.addmul`): inputs a, b in [0, 100) and an operation, one-hot (4 digits x 10 +
2 = 42 inputs); target ``(a op b) mod 100`` as two digits, per-digit cross-entropy. Only 10,000 pairs exist,
so the pairs of :func:`modscope.data.heldout_pairs` (10%, drawn from the network's seed) are never trained
on and every accuracy below is measured on them, for both operations.

Per network ``i < networks`` (seed ``seed + i``; one unit of the run folder each):

1. train the FNN ``42-{hidden}-20`` (recipe ``addmul-fnn``: Adam 1e-3, batch 128, ``train_steps`` steps);
2. freeze it and train three weight masks at once (:func:`modscope.masks.train_masks`): ``control`` on both
   operations, ``+`` on additions only, ``*`` on multiplications only; ``beta`` (the paper's 1e-4),
   ``mask_lr``, ``samples`` mask samples per step, ``mask_batch`` examples per step, ``mask_steps`` steps.
   Weights are masked, biases are not (the default selection, as the paper's ``bias_no_mask``);
3. evaluate on the held-out pairs of each operation (:func:`modscope.masks.evaluate_masks`): the full
   network, each mask, each inverted mask (every weight except the mask's) and the half-masks;
4. ``P_specialize(+|×) = d_+(¬+) - d_×(¬+)`` and ``P_specialize(×|+) = d_×(¬×) - d_+(¬×)``
   (:func:`modscope.masks.p_specialize`), with the relative drop ``d`` corrected for chance
   :data:`CHANCE` = 0.01: an example counts as right only when both digits are, which a uniform guess
   achieves 1/10 x 1/10 of the time. Undefined (``None``) when the full network is not above chance;
5. IoU and IoMin of the ``+`` and ``*`` masks, per layer and over all layers;
6. beyond the paper, where the specialization lives: the same test with the weights only one mask keeps,
   ``+ only`` = ``+`` minus ``*`` and ``* only`` = ``*`` minus ``+``:
   ``P_specialize`` of ``+ only`` = ``d_+(¬(+ only)) - d_×(¬(+ only))`` and the mirror. Inverting a whole
   mask also removes the weights both masks keep (the shared core, mostly in the input and output layers,
   see the per-layer IoMin); a network can be specialized outside that core and still fail the paper's
   test when the core is large, which the exclusive test tells apart.

With ``lstm`` the same is done for the paper's LSTM (recipe ``addmul-lstm``: ``{lstm_hidden}`` = layers of
units, reading the input for 3 steps), unit ``lstm-i`` beside ``fnn-i``, same seed and held-out pairs.

Masks are kept as ``masks/KEY.safetensors`` (:meth:`modscope.masks.MaskSet.save`) and networks as
``models/KEY.safetensors`` in the run folder.

**Settings.** ``paper``: the authors' main FNN (4 hidden layers of 2000; their sweeps also ran 800x4, the
recipe's default, and 400-400-200), 10 seeds, 20k training steps, 20k steps per mask, beta 1e-4, mask lr
1e-2, the 2x256 LSTM. ``quick`` (minutes on 2 CPU cores) shrinks the network to 256x4 (6000 training steps:
about 99% on held-out additions, 95% on multiplications) and trains the masks for 3000 steps at mask lr
0.05 instead of 1e-2: Adam moves a logit by about ``lr`` per step, so at 1e-2 the masks still keep about
half of the weights after 3000 steps (measured), and a mask that has not shed what its task does not need
removes, when inverted, weights the other task needs. beta stays at the paper's 1e-4 (1e-3 made the
``*`` mask lose multiplication). At this size the whole-mask test finds little specialization (the
masks share a large core in the input and output layers, and removing either mask removes it) while the
exclusive test finds a lot; whether the paper's width (2000 units) shrinks that core is what the ``paper``
setting measures.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from statistics import fmean
from typing import Any

from torch import Tensor

from modscope import data
from modscope.atomic import finite
from modscope.experiments.results import RunResult, table
from modscope.experiments.run import Run
from modscope.masks import (
    MaskEvalTable,
    MaskSet,
    evaluate_masks,
    iomin,
    iou,
    p_specialize,
    relative_drop,
    train_masks,
)
from modscope.models import parse_spec
from modscope.training import cross_entropy, save_trained
from modscope.training.losses import correct
from modscope.training.recipes import run_recipe
from modscope.versions import versions

__all__ = [
    "CHANCE",
    "EXCLUSIVE",
    "PAPER",
    "SETTINGS",
    "SPECIALIZED",
    "TITLE",
    "above_chance",
    "check_int",
    "check_masks_config",
    "check_number",
    "check_sizes",
    "exact_match",
    "fmt",
    "masks_section",
    "mean",
    "reproduce",
    "train_and_mask",
]

TITLE = "Addition and multiplication: do weight masks specialize per operation? (Csordás et al. 2021)"
PAPER = "Csordás et al. 2021 (arXiv:2010.02066)"
#: Accuracy of a uniform guess of both digits of a 2-digit answer.
CHANCE = 0.01
#: P_specialize from which "removing X's weights hurts X far more than the other operation" holds: the
#: chance-corrected drop on X exceeds the drop on the other operation by at least half the possible drop.
SPECIALIZED = 0.5
#: The masks: name -> operations of the training examples.
TASKS: dict[str, tuple[str, ...]] = {"control": data.OPS, "+": ("+",), "*": ("*",)}
_SIGN = {"+": "+", "*": "×"}
_PAIRS = (("+", "*"), ("*", "+"))
#: The weights only one mask keeps: operation -> name of that mask set.
EXCLUSIVE = {"+": "+ only", "*": "* only"}
_KINDS = {"fnn": "addmul-fnn", "lstm": "addmul-lstm"}

SETTINGS: dict[str, dict[str, Any]] = {
    # Measured on 2 shared CPU cores (see the module docstring for why quick raises mask_lr).
    "quick": {
        "networks": 1,
        "seed": 0,
        "hidden": "256x4",
        "train_steps": 6000,
        "mask_steps": 3000,
        "beta": 1e-4,
        "mask_lr": 0.05,
        "samples": 4,
        "mask_batch": 128,
        "lstm": False,
        "lstm_hidden": "256x2",
    },
    "paper": {
        "networks": 10,
        "seed": 0,
        "hidden": "2000x4",
        "train_steps": 20000,
        "mask_steps": 20000,
        "beta": 1e-4,
        "mask_lr": 1e-2,
        "samples": 4,
        "mask_batch": 128,
        "lstm": True,
        "lstm_hidden": "256x2",
    },
}


# ------------------------------------------------------------------------------------ shared helpers
def check_int(config: Mapping[str, Any], key: str, low: int) -> int:
    """``config[key]`` as an int >= ``low``; ``ValueError`` naming the key and value otherwise."""
    v = config[key]
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise ValueError(f"{key} must be an int >= {low}, got {v!r}")
    return v


def check_number(config: Mapping[str, Any], key: str, *, positive: bool) -> float:
    """``config[key]`` as a finite float, > 0 (``positive``) or >= 0; ``ValueError`` otherwise."""
    v = config[key]
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    if not ok or v < 0 or (positive and v == 0):
        raise ValueError(f"{key} must be a finite number {'> 0' if positive else '>= 0'}, got {v!r}")
    return float(v)


def check_sizes(config: Mapping[str, Any], key: str, template: str, pattern: str, example: str) -> str:
    """The model spec ``template`` filled with ``config[key]`` (layer sizes like ``example``), validated."""
    v = config[key]
    if not isinstance(v, str) or not re.fullmatch(pattern, v):
        raise ValueError(f"{key} must be layer sizes like {example!r}, got {v!r}")
    spec = template.format(v)
    parse_spec(spec)  # zero sizes etc.: a SpecError (a ValueError) naming the spec
    return spec


def check_masks_config(config: Mapping[str, Any]) -> None:
    """Validate the keys the mask experiments share (networks, seeds, lengths, mask hyper-parameters)."""
    for key, low in (("networks", 1), ("seed", 0), ("train_steps", 1), ("mask_steps", 1), ("samples", 1)):
        check_int(config, key, low)
    if check_int(config, "mask_batch", 1) < config["samples"]:
        raise ValueError(
            f"mask_batch ({config['mask_batch']}) must be at least samples ({config['samples']}): each "
            "mask sample sees its own share of the batch"
        )
    check_number(config, "beta", positive=False)
    check_number(config, "mask_lr", positive=True)


def exact_match(outputs: Tensor, targets: Tensor) -> Tensor:
    """Per example ``(B,)``: every digit right (targets ``(B, D)`` digit classes, outputs ``(B, D * 10)``).

    Digits marked ``-100`` (the other pair of double addition) are not scored."""
    hit = correct(outputs, targets)
    if hit is None:
        raise ValueError(f"expected digit-class targets (B, D), got {tuple(targets.shape)} {targets.dtype}")
    return hit


def mean(values: Sequence[float | None]) -> float | None:
    """Mean of the defined values, ``None`` when there is none."""
    defined = [v for v in values if v is not None]
    return fmean(defined) if defined else None


def above_chance(tab: MaskEvalTable, eval_sets: Sequence[str]) -> bool:
    """Whether the full network beats :data:`CHANCE` on every set: relative drops are undefined otherwise."""
    return all(tab.score("full", None, s) > CHANCE for s in eval_sets)


def train_and_mask(
    run: Run,
    key: str,
    recipe: str,
    spec: str,
    seed: int,
    config: Mapping[str, Any],
    tasks: Mapping[str, tuple[Tensor, Tensor]],
    eval_sets: Mapping[str, tuple[Tensor, Tensor]],
):
    """Train network ``key`` (checkpointed, saved), train its masks (checkpointed, saved), evaluate them.

    Returns ``(model, masks, table, doc)``: the trained network, the :class:`MaskSet`, the
    :class:`MaskEvalTable` (metric :func:`exact_match`) and the unit's JSON fields shared by the mask
    experiments.
    """
    prefix = run.checkpoint_prefix(key)
    model, spec_dict, results, train_config = run_recipe(
        recipe, spec=spec, steps=config["train_steps"], seed=seed, checkpoint=prefix,
        progress=run.report,
    )  # fmt: skip
    model_path = save_trained(model, spec_dict, run.model_path(key), train_config, results[-1])
    masks = train_masks(
        model, tasks, cross_entropy, steps=config["mask_steps"], beta=config["beta"], lr=config["mask_lr"],
        samples=config["samples"], batch_size=config["mask_batch"], seed=seed,
        checkpoint=f"{prefix}.masks.pt",
        progress=lambda done, total, info: run.report("masks", done, total, info),
    )  # fmt: skip
    mask_path = run.out / "masks" / f"{key}.safetensors"
    masks.save(mask_path)
    tab = evaluate_masks(model, masks, {name: [xy] for name, xy in eval_sets.items()}, metric=exact_match)
    first = masks[masks.tasks[0]]
    doc = {
        "seed": seed,
        "spec": spec_dict,
        "model": run.relative(model_path),
        "masks": run.relative(mask_path),
        "test_accuracy": results[-1].eval_accuracy,
        # unit documents are stored with sorted keys: keep the model's layer and task order explicitly
        "layers": list(masks.param_names),
        "tasks": list(masks.tasks),
        "sizes": first.sizes(),
        "kept": {t: masks[t].kept() for t in masks.tasks},
        "table": tab.to_dict(),
    }
    return model, masks, tab, doc


def masks_section(
    title: str,
    units: Sequence[Mapping[str, Any]],
    pair: tuple[str, str],
    accuracy: Mapping[str, Any],
) -> dict[str, Any]:
    """A ``"masks"`` section (schema in :mod:`modscope.experiments.results`) averaged over ``units``.

    ``kept`` is the mean count over the networks, rounded; ``iou`` / ``iomin`` the per-layer means."""
    layers, tasks = units[0]["layers"], units[0]["tasks"]

    def per_layer(field: str) -> dict[str, float | None]:
        return {n: mean([u[field]["per_layer"][n] for u in units]) for n in layers}

    return {
        "kind": "masks",
        "title": title,
        "layers": layers,
        "sizes": {n: units[0]["sizes"][n] for n in layers},
        "kept": {t: {n: round(fmean(u["kept"][t][n] for u in units)) for n in layers} for t in tasks},
        "iou": per_layer("iou"),
        "iomin": per_layer("iomin"),
        "pair": list(pair),
        "accuracy": accuracy,
    }


def fmt(v: float | None) -> str:
    """``v`` with two decimals; ``None`` (a network at chance, empty masks) reads "undefined"."""
    return "undefined" if v is None else f"{v:.2f}"


# ------------------------------------------------------------------------------------ one network
def _unit(run: Run, config: Mapping[str, Any], kind: str, i: int) -> tuple[str, dict[str, Any]]:
    seed = config["seed"] + i
    key = f"{kind}-{i}"

    def compute() -> dict[str, Any]:
        spec = _spec(config, kind)
        tasks = {t: data.addmul("train", ops=ops, seed=seed).tensors for t, ops in TASKS.items()}
        evals = {op: data.addmul("test", ops=(op,), seed=seed).tensors for op in data.OPS}
        model, masks, tab, doc = train_and_mask(run, key, _KINDS[kind], spec, seed, config, tasks, evals)
        defined = above_chance(tab, data.OPS)
        only = MaskSet({EXCLUSIVE[op]: masks[op] - masks[other] for op, other in _PAIRS})
        tab_only = evaluate_masks(model, only, {op: [xy] for op, xy in evals.items()}, metric=exact_match)

        def exclusive(op: str, other: str) -> float | None:
            if not defined:
                return None
            drops = [relative_drop(tab_only, s, "inverted", EXCLUSIVE[op], CHANCE) for s in (op, other)]
            return drops[0] - drops[1]

        doc.update(
            kind=kind,
            network=i,
            p_specialize={
                "+|*": p_specialize(tab, "+", "*", CHANCE) if defined else None,
                "*|+": p_specialize(tab, "*", "+", CHANCE) if defined else None,
            },
            iou=iou(masks["+"], masks["*"]).to_dict(),
            iomin=iomin(masks["+"], masks["*"]).to_dict(),
            exclusive={
                "kept": {t: only[t].kept() for t in only.tasks},
                "table": tab_only.to_dict(),
                "p_specialize": {"+|*": exclusive("+", "*"), "*|+": exclusive("*", "+")},
            },
        )
        return finite(doc)

    return key, run.unit(key, compute)


def _spec(config: Mapping[str, Any], kind: str) -> str:
    if kind == "fnn":
        return check_sizes(config, "hidden", "mlp:42-{}-20", r"\d+(x\d+)?(-\d+(x\d+)?)*", "2000x4")
    return check_sizes(config, "lstm_hidden", "lstm:42-{}-20:steps=3", r"\d+(x\d+)?", "256x2")


def _check(config: Mapping[str, Any]) -> list[str]:
    """Validate ``config``; returns the network kinds to run."""
    check_masks_config(config)
    if not isinstance(config["lstm"], bool):
        raise ValueError(f"lstm must be true or false, got {config['lstm']!r}")
    kinds = ["fnn", "lstm"] if config["lstm"] else ["fnn"]
    for kind in kinds:
        _spec(config, kind)
    return kinds


# ------------------------------------------------------------------------------------ the run
def reproduce(run: Run, config: dict) -> RunResult:
    """Run (or resume) the experiment in ``run``'s folder; see the module docstring."""
    kinds = _check(config)
    jobs = [(kind, i) for kind in kinds for i in range(config["networks"])]
    units: dict[str, dict[str, Any]] = {}
    for done, (kind, i) in enumerate(jobs):
        run.report("networks", done, len(jobs), {"network": f"{kind}-{i}"})
        key, doc = _unit(run, config, kind, i)
        units[key] = doc
    run.report("networks", len(jobs), len(jobs), {})
    return _result(run, config, kinds, units)


_CONDITIONS = (
    ("full", "full", None),
    ("control", "mask", "control"),
    ("+", "mask", "+"),
    ("¬+", "inverted", "+"),
    ("×", "mask", "*"),
    ("¬×", "inverted", "*"),
)
_EXCLUSIVE_CONDITIONS = (("¬(+ only)", "inverted", "+ only"), ("¬(× only)", "inverted", "* only"))


def _accuracy_rows(tables: Sequence[MaskEvalTable], conditions=_CONDITIONS) -> list[list[Any]]:
    return [
        [_SIGN[op], *(fmean(t.score(kind, task, op) for t in tables) for _, kind, task in conditions)]
        for op in data.OPS
    ]


def _p_mean(docs: Sequence[Mapping[str, Any]], which: str, exclusive: bool = False) -> float | None:
    return mean([(d["exclusive"] if exclusive else d)["p_specialize"][which] for d in docs])


def _result(run: Run, config: Mapping[str, Any], kinds: list[str], units: dict[str, dict]) -> RunResult:
    rows, claims, sections, details, where = [], [], [], [], []
    columns = ["evaluated on", *(label for label, _, _ in _CONDITIONS)]
    for kind in kinds:
        docs = [units[f"{kind}-{i}"] for i in range(config["networks"])]
        tables = [MaskEvalTable.from_dict(d["table"]) for d in docs]
        only = [MaskEvalTable.from_dict(d["exclusive"]["table"]) for d in docs]
        name = kind.upper()

        for d, t in zip(docs, tables, strict=True):
            ps, pe = d["p_specialize"], d["exclusive"]["p_specialize"]
            rows.append([
                f"{name} {d['network']}", d["seed"], t.score("full", None, "+"), t.score("full", None, "*"),
                ps["+|*"], ps["*|+"], d["iou"]["total"], d["iomin"]["total"], pe["+|*"], pe["*|+"],
            ])  # fmt: skip
            details += [[f"{name} {d['network']}", *r] for r in _accuracy_rows([t])]
        if len(docs) > 1:
            rows.append([
                f"{name} mean", None, fmean(t.score("full", None, "+") for t in tables),
                fmean(t.score("full", None, "*") for t in tables), _p_mean(docs, "+|*"),
                _p_mean(docs, "*|+"), mean([d["iou"]["total"] for d in docs]),
                mean([d["iomin"]["total"] for d in docs]), _p_mean(docs, "+|*", exclusive=True),
                _p_mean(docs, "*|+", exclusive=True),
            ])  # fmt: skip
        acc = _accuracy_rows(tables)
        acc_only = _accuracy_rows(only, _EXCLUSIVE_CONDITIONS)
        where += [[name, *r, *o[1:]] for r, o in zip(acc, acc_only, strict=True)]
        of = f"{len(docs)} network{'s' if len(docs) > 1 else ''}"
        cells = {r[0]: dict(zip(columns, r, strict=True)) for r in acc}
        for op, other in _PAIRS:
            a, b = _SIGN[op], _SIGN[other]
            p, pe = _p_mean(docs, f"{op}|{other}"), _p_mean(docs, f"{op}|{other}", exclusive=True)
            claims.append({
                "paper": PAPER,
                "claim": f"{name}: masks specialize: removing {a}'s weights hurts {a} far more than {b}",
                "ours": (
                    f"P_specialize({a}|{b}) = {fmt(p)} (mean of {of}; 1 = kills {a} and spares {b}); "
                    f"accuracy after removing {a}'s weights: {a} {cells[a]['¬' + a]:.2f}, {b} "
                    f"{cells[b]['¬' + a]:.2f} (full network {cells[a]['full']:.2f}, {cells[b]['full']:.2f}). "
                    f"Removing only the weights {a}'s mask keeps and {b}'s does not: P_specialize {fmt(pe)}"
                ),
                "agrees": None if p is None else bool(p >= SPECIALIZED),
            })  # fmt: skip
        spec = parse_spec(_spec(config, kind))
        shape = "-".join(str(v) for v in spec["sizes"]) if kind == "fnn" else _spec(config, kind)
        sections.append(masks_section(
            f"{name} {shape}: masks of + and × (mean of {of})", docs, ("+", "*"),
            table(
                f"{name}: accuracy on held-out pairs", columns, acc,
                note=f"Mean of {of}. An example counts when both digits are right (chance {CHANCE}). "
                "X: only the weights of mask X; ¬X: every weight except X's (biases are never masked); "
                "control: the mask trained on both operations.",
            ),
        ))  # fmt: skip
    summary = table(
        "Specialization per network",
        ["network", "seed", "accuracy +", "accuracy ×", "P_specialize(+|×)", "P_specialize(×|+)", "IoU(+, ×)",
         "IoMin(+, ×)", "P_specialize(+ only|×)", "P_specialize(× only|+)"],
        rows,
        note="Accuracy of the full network on held-out pairs. P_specialize(A|B) = d_A(¬A) - d_B(¬A), d the "
        f"relative drop corrected for chance ({CHANCE}); in [-1, 1], 1 = removing A's weights kills A and "
        "spares B. IoU / IoMin of the + and × masks over all masked weights. 'A only': the same test "
        "removing only the weights A's mask keeps and B's does not (beyond the paper).",
    )  # fmt: skip
    sections.append(table(
        "Where the masks specialize: whole masks against their exclusive weights",
        ["network", "evaluated on", "full", "¬+", "¬×", "¬(+ only)", "¬(× only)"],
        [[r[0], r[1], r[2], r[5], r[7], r[8], r[9]] for r in where],
        note="¬X: every weight except mask X's; ¬(+ only): every weight except those the + mask keeps and "
        "the × mask does not. A network whose masks share a core (high IoMin) but are specialized outside it "
        "loses both operations under ¬X and only one under ¬(X only).",
    ))  # fmt: skip
    sections.append(table(
        "Accuracy per network", ["network", *columns], details,
        note="Held-out pairs; X: only mask X's weights, ¬X: all weights but X's.",
    ))  # fmt: skip
    return RunResult(
        "addmul", TITLE, run.setting, summary, tuple(claims), tuple(sections), dict(config), versions(),
        run.seconds(), units,
    )  # fmt: skip
