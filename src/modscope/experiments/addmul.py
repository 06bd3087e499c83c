"""Addition and multiplication: does a network keep separate weights for each operation?

Csordás, van Steenkiste, Schmidhuber, "Are Neural Nets Modular? Inspecting Functional Modularity Through
Differentiable Weight Masks", ICLR 2021 (arXiv:2010.02066), §3 "addition/multiplication" (SPEC §4).

The task (:func:`modscope.data.addmul`): inputs a, b in [0, 100) and an operation, one-hot (4 digits x 10 +
2 = 42 inputs); target ``(a op b) mod 100`` as two digits, per-digit cross-entropy; an example counts as
right when both digits are (chance :data:`CHANCE`). The protocol (``protocol``, ``heldout``, ``reference``,
``init``, ``clip``) is :mod:`modscope.experiments.arithmetic`'s; by default the authors'.

Per width in ``hidden`` (one or more, comma-separated: ``"256x4,512x4"``) and network ``i < networks``
(seed ``seed + i``; one unit ``fnn-WIDTH-i`` of the run folder each):

1. train the FNN ``42-{width}-20`` (recipe ``addmul-fnn``: Adam 1e-3, batch 128, ``train_steps`` steps);
2. freeze it and train three weight masks, one after another: ``control`` on both operations, ``+`` on
   additions only, ``*`` on multiplications only (``beta``, ``mask_lr``, ``samples`` mask samples per
   step, ``mask_batch`` examples, ``mask_steps`` steps; weights masked, biases not, as the authors'
   ``bias_no_mask``);
3. evaluate on every input of each operation (held-out pairs with ``protocol=heldout``): the full network,
   each mask, each inverted mask (every weight except the mask's, the authors' "invert"), and the **core
   analysis**: ``+ only`` = ``+`` minus ``*``, ``* only`` = ``*`` minus ``+``, ``core`` = ``+`` and ``*``,
   each alone and removed;
4. ``P_specialize(+|×) = d_+(¬+) - d_×(¬+)`` and ``P_specialize(×|+) = d_×(¬×) - d_+(¬×)``
   (:func:`modscope.masks.p_specialize`), the chance-corrected drops measured from the ``reference``; the
   same with only the exclusive weights removed (``¬(+ only)``). The authors report the accuracy table
   itself; P_specialize condenses it (1 = removing +'s weights kills + and spares ×);
5. IoU and IoMin of the ``+`` and ``*`` masks per layer and over all layers; the authors' sharing
   statistic, the share of the ``+`` mask's weights the ``*`` mask also keeps (per layer and pooled), and
   its trend over the widths (their "sharing vs. network size" figure); where the core sits, layer by layer.

With ``controls`` (on by default) every network's three masks are trained again on a random-weight copy of
the network and on its tasks with shuffled labels and analysed the same way, reported next to the real masks
(:mod:`modscope.experiments.controls`; ``control_share`` of the mask steps, the real masks' ``lr x steps``).

With ``lstm`` the same is done for the paper's LSTM (recipe ``addmul-lstm``: ``{lstm_hidden}`` = layers of
units, reading the input for 3 steps), unit ``lstm-SIZES-i``.

**Settings.** ``paper``: the authors' main FNN (4 hidden layers of 2000), 10 seeds, 20k training steps,
20k steps per mask at mask lr 1e-2, beta 1e-4, the 2x256 LSTM. ``quick`` (minutes on 2 CPU cores): one
256x4 network, 20k training steps, masks for 4,000 steps at lr 0.05. The kept-weight curves never flatten
within reach: with the linear penalty the kept count keeps falling slowly (a 256x4 + mask: 0.21 of the
weights after 3,100 steps at lr 0.03, 0.12 after 5,600; at lr 0.1 0.12 after 2,100 and 0.045 after 5,600),
and because Adam moves a logit by about ``lr`` per step, curves at different lr lie close to one curve over
``lr x steps``. So the masks get the authors' budget, ``lr x steps`` = 1e-2 x 20k = 200, in a fifth of the
steps; each run reports how much its masks were still moving. The quick controls take 1,000 steps at lr
0.2 (the same budget again), the paper's the real masks' 20k steps at 1e-2.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from statistics import fmean
from typing import Any

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
from modscope.experiments.checks import NUMBER, check_fields, check_sizes
from modscope.experiments.controls import (
    arithmetic_controls,
    budget_note,
    check_controls_config,
    check_controls_unit,
    controls_section,
)
from modscope.experiments.run import Run
from modscope.masks import MaskEvalTable, MaskSet, iomin, iou, p_specialize, sharing
from modscope.models import parse_spec
from modscope.results import RunResult, lines_section, table
from modscope.versions import versions

__all__ = ["CHANCE", "EXCLUSIVE", "SETTINGS", "SPECIALIZED", "TITLE", "analyze", "check_config", "reproduce"]

TITLE = "Addition and multiplication: do weight masks specialize per operation? (Csordás et al. 2021)"
#: P_specialize from which "removing X's weights hurts X far more than the other operation" holds: the
#: chance-corrected drop on X exceeds the drop on the other operation by at least half the possible drop.
SPECIALIZED = 0.5
#: The masks: name -> operations of the training examples.
TASKS: dict[str, tuple[str, ...]] = {"control": data.OPS, "+": ("+",), "*": ("*",)}
_SIGN = {"+": "+", "*": "×"}
_PAIRS = (("+", "*"), ("*", "+"))
#: The weights only one mask keeps: operation -> name of that mask.
EXCLUSIVE = {"+": "+ only", "*": "* only"}
_KINDS = {"fnn": "addmul-fnn", "lstm": "addmul-lstm"}
_SIZES = r"\d+(x\d+)?(-\d+(x\d+)?)*"

SETTINGS: dict[str, dict[str, Any]] = {
    "quick": {
        **AUTHORS_PROTOCOL,
        "networks": 1,
        "seed": 0,
        "hidden": "256x4",
        "train_steps": 20000,
        "mask_steps": 4000,
        "beta": 1e-4,
        "mask_lr": 0.05,
        "samples": 4,
        "mask_batch": 128,
        "lstm": False,
        "lstm_hidden": "256x2",
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
        "beta": 1e-4,
        "mask_lr": 1e-2,
        "samples": 4,
        "mask_batch": 128,
        "lstm": True,
        "lstm_hidden": "256x2",
        "controls": True,
        "control_share": 1.0,
    },
}


def _widths(config: Mapping[str, Any]) -> list[str]:
    v = config["hidden"]
    widths = v.split(",") if isinstance(v, str) else [v]
    if len(set(widths)) != len(widths):
        raise ValueError(f"hidden lists a width twice: {v!r}")
    return widths


def _spec(kind: str, sizes: str) -> str:
    if kind == "fnn":
        return check_sizes({"hidden": sizes}, "hidden", "mlp:42-{}-20", _SIZES, "2000x4")
    return check_sizes({"lstm_hidden": sizes}, "lstm_hidden", "lstm:42-{}-20:steps=3", r"\d+(x\d+)?", "256x2")


def _groups(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(kind, sizes)`` of each group of networks, validated."""
    check_masks_config(config)
    check_controls_config(config)
    if not isinstance(config["lstm"], bool):
        raise ValueError(f"lstm must be true or false, got {config['lstm']!r}")
    groups = [("fnn", w) for w in _widths(config)]
    if config["lstm"]:
        groups.append(("lstm", config["lstm_hidden"]))
    for kind, sizes in groups:
        _spec(kind, sizes)
    return groups


def check_config(config: Mapping[str, Any]) -> None:
    """Validate ``config`` (ValueError naming the key)."""
    _groups(config)


_DIRECTIONS = {"+|*": NUMBER, "*|+": NUMBER}
#: What the report reads from a unit file beyond the fields every mask experiment has.
_UNIT = {
    "p_specialize": _DIRECTIONS, "p_specialize_exclusive": _DIRECTIONS, "derived_kept": {"core": dict},
    "shared": {"+": {"total": NUMBER, "per_layer": dict}},
}  # fmt: skip


def _make(split, ops, frac, seed):
    return data.addmul(split, ops=ops, test_fraction=frac, seed=seed).tensors


# ------------------------------------------------------------------------------------ one network
def analyze(
    model: nn.Module, masks: MaskSet, evals: Mapping[str, tuple], *, reference: str = "control"
) -> dict[str, Any]:
    """Everything measured on one network's ``control``, ``+`` and ``*`` masks (steps 3-5 of the module
    docstring): the evaluation table with the core analysis, P_specialize of whole and exclusive masks
    (drops from the ``reference``: ``"control"`` or ``"full"``), IoU / IoMin, the sharing statistic and
    the kept counts of ``+ only``, ``* only`` and ``core``. ``evals``: ``op -> (inputs, targets)``."""
    plus, times = masks["+"], masks["*"]
    derived = {"+ only": plus - times, "* only": times - plus, "core": plus & times}
    tab = evaluate(model, MaskSet({**masks, **derived}), evals)
    ref = reference_mask(reference)
    defined = above_chance(tab, data.OPS, ref)

    def spec_(op: str, other: str, mask: str) -> float | None:
        return p_specialize(tab, op, other, chance=CHANCE, mask=mask, reference=ref) if defined else None

    shared = sharing(MaskSet({"+": plus, "*": times}))
    return {
        "table": tab.to_dict(),
        "p_specialize": {f"{op}|{other}": spec_(op, other, op) for op, other in _PAIRS},
        "p_specialize_exclusive": {f"{op}|{other}": spec_(op, other, EXCLUSIVE[op]) for op, other in _PAIRS},
        "iou": iou(plus, times).to_dict(),
        "iomin": iomin(plus, times).to_dict(),
        "shared": {t: o.to_dict() for t, o in shared.items()},
        "derived_kept": {name: m.kept() for name, m in derived.items()},
    }


def _unit(run: Run, config: Mapping[str, Any], kind: str, sizes: str, i: int) -> tuple[str, dict[str, Any]]:
    seed = config["seed"] + i
    key = f"{kind}-{sizes}-{i}"

    def compute() -> dict[str, Any]:
        tasks = task_data(config, _make, TASKS, seed, evaluation=False)
        evals = task_data(config, _make, {op: (op,) for op in data.OPS}, seed, evaluation=True)
        model, masks, doc = train_and_mask(run, key, _KINDS[kind], _spec(kind, sizes), seed, config, tasks)
        found = analyze(model, masks, evals, reference=config["reference"])
        doc.update(kind=kind, width=sizes, network=i, **found)
        if check_controls_config(config):
            doc["controls"] = arithmetic_controls(
                run, run.checkpoint_prefix(key), model, tasks, seed, config,
                lambda net, m: analyze(net, m, evals, reference=config["reference"]),
            )
        return finite(doc)

    return key, run.unit(key, compute, check=_check_unit)


def _check_unit(doc: Mapping[str, Any]) -> None:
    check_unit(doc, _UNIT)
    check_fields(doc["derived_kept"]["core"], dict.fromkeys(doc["layers"], int), "derived_kept.core")
    check_fields(doc["shared"]["+"]["per_layer"], dict.fromkeys(doc["layers"], NUMBER), "shared.+.per_layer")
    check_controls_unit(doc, ("+", "*"), {"p_specialize": _DIRECTIONS, "iou": {"total": NUMBER}})


def reproduce(run: Run, config: dict) -> RunResult:
    """Run (or resume) the experiment in ``run``'s folder; see the module docstring."""
    groups = _groups(config)  # checks the config
    jobs = [(kind, sizes, i) for kind, sizes in groups for i in range(config["networks"])]
    units: dict[str, dict[str, Any]] = {}
    for done, (kind, sizes, i) in enumerate(jobs):
        run.report("networks", done, len(jobs), {"network": f"{kind}-{sizes}-{i}"})
        key, doc = _unit(run, config, kind, sizes, i)
        units[key] = doc
    run.report("networks", len(jobs), len(jobs), {})
    return _result(run, config, groups, units)


# ------------------------------------------------------------------------------------ the report
_CONDITIONS = (
    ("full", "full", None),
    ("control", "mask", "control"),
    ("+", "mask", "+"),
    ("¬+", "inverted", "+"),
    ("×", "mask", "*"),
    ("¬×", "inverted", "*"),
)
_CORE = (
    ("+ only", "mask", "+ only"),
    ("× only", "mask", "* only"),
    ("core", "mask", "core"),
    ("¬(+ only)", "inverted", "+ only"),
    ("¬(× only)", "inverted", "* only"),
    ("¬core", "inverted", "core"),
)


def _rows(tables: Sequence[MaskEvalTable], conditions) -> list[list[Any]]:
    return [
        [_SIGN[op], *(fmean(t.score(kind, task, op) for t in tables) for _, kind, task in conditions)]
        for op in data.OPS
    ]


def _name(kind: str, sizes: str) -> str:
    if kind == "fnn":
        return "FNN " + "-".join(str(v) for v in parse_spec(_spec(kind, sizes))["sizes"])
    return f"LSTM {sizes}"


def _group_result(config, kind, sizes, docs) -> tuple[list, list, list, list]:
    """Summary rows, claims, sections and core-analysis rows of one group of networks (one width)."""
    tables = [MaskEvalTable.from_dict(d["table"]) for d in docs]
    name, of = _name(kind, sizes), f"{len(docs)} network{'s' if len(docs) > 1 else ''}"
    ref = reference_label(config)
    rows = []
    for d, t in zip(docs, tables, strict=True):
        ps, pe = d["p_specialize"], d["p_specialize_exclusive"]
        rows.append([
            f"{name} #{d['network']}", d["seed"], *(t.score("mask", "control", op) for op in data.OPS),
            ps["+|*"], ps["*|+"], d["iou"]["total"], d["iomin"]["total"], d["shared"]["+"]["total"],
            pe["+|*"], pe["*|+"], max((v for v in d["still_moving"].values() if v is not None), default=None),
        ])  # fmt: skip
    acc, core = _rows(tables, _CONDITIONS), _rows(tables, _CORE)
    cells = {r[0]: dict(zip([c for c, _, _ in _CONDITIONS], r[1:], strict=True)) for r in acc}
    ref_column = "control" if config["reference"] == "control" else "full"
    claims = []
    for op, other in _PAIRS:
        a, b = _SIGN[op], _SIGN[other]
        p = mean([d["p_specialize"][f"{op}|{other}"] for d in docs])
        pe = mean([d["p_specialize_exclusive"][f"{op}|{other}"] for d in docs])
        claims.append({
            "paper": PAPER,
            "claim": f"{name}: masks specialize: removing {a}'s weights hurts {a} far more than {b}",
            "ours": (
                f"P_specialize({a}|{b}) = {fmt(p)} (mean of {of}, drops from the {ref}; 1 = kills {a} and "
                f"spares {b}): after removing {a}'s weights {a} {cells[a]['¬' + a]:.2f}, {b} "
                f"{cells[b]['¬' + a]:.2f} ({ref} {cells[a][ref_column]:.2f}, {cells[b][ref_column]:.2f}). "
                f"Removing only the weights {a}'s mask keeps and {b}'s does not: P_specialize {fmt(pe)}"
            ),
            "agrees": None if p is None else bool(p >= SPECIALIZED),
        })  # fmt: skip
    columns = ["evaluated on", *(c for c, _, _ in _CONDITIONS)]
    data_note = "every input" if not config["heldout"] else f"held-out pairs ({config['heldout']:.0%})"
    sections = [
        mean_masks_section(f"{name}: masks of + and × (mean of {of})", docs, ("+", "*"), table(
            f"{name}: accuracy on {data_note}", columns, acc,
            note=f"Mean of {of}. Both digits must be right (chance {CHANCE}). X: only mask X's weights; ¬X: "
            f"every weight except X's (biases are never masked); control: the mask trained on both "
            f"operations, the reference of the drops ({ref}).",
        )),
    ]  # fmt: skip
    layers = docs[0]["layers"]
    location = []
    for n in layers:
        size = docs[0]["sizes"][n]
        kp, kt = (fmean(d["kept"][t][n] for d in docs) for t in ("+", "*"))
        c = fmean(d["derived_kept"]["core"][n] for d in docs)
        shares = [c / k if k else None for k in (kp, kt)]
        location.append([n, size, round(kp), round(kt), round(c), *shares])
    sections.append(table(
        f"{name}: the shared core (+ and ×), layer by layer", ["layer", "size", "kept +", "kept ×", "core",
        "core / kept + (shared)", "core / kept ×"], location,
        note=f"Mean of {of}. 'core / kept +' per layer is the authors' sharing statistic: the share of the + "
        "mask's weights that the × mask also keeps.",
    ))  # fmt: skip
    return rows, claims, sections, [[name, *r] for r in core]


def _sharing_lines(groups, units, config) -> dict[str, Any]:
    """The authors' sharing-vs-size figure: the share of the + mask's weights also kept by ×, per width."""
    series: dict[str, list[list[float]]] = {}
    for kind, sizes in groups:
        if kind != "fnn":
            continue
        docs = [units[f"{kind}-{sizes}-{i}"] for i in range(config["networks"])]
        x = parse_spec(_spec(kind, sizes))["sizes"][1]
        series.setdefault("all layers", []).append([x, mean([d["shared"]["+"]["total"] for d in docs])])
        for n in docs[0]["layers"]:
            series.setdefault(n, []).append([x, mean([d["shared"]["+"]["per_layer"][n] for d in docs])])
    return lines_section(
        "Sharing vs. network size: share of the + mask's weights that the × mask also keeps",
        xlabel="units in the first hidden layer", ylabel="shared / kept by +",
        series={k: [p for p in v if p[1] is not None] for k, v in series.items()}, xscale="log",
        note="Σ|+ ∧ ×| / Σ|+| over all masked layers (the authors' 'total shared'), and the same per "
        f"layer; mean over {config['networks']} network(s) per width.",
    )  # fmt: skip


def _trend_claim(lines: Mapping[str, Any]) -> dict[str, Any]:
    points = sorted(lines["series"].get("all layers", []))
    values = [v for _, v in points]
    agrees = None if len(values) < 2 else all(b < a for a, b in itertools.pairwise(values))
    text = ", ".join(f"{int(x)}: {v:.2f}" for x, v in points) or "no width with both masks non-empty"
    return {
        "paper": PAPER,
        "claim": "the share of weights the + and × masks have in common falls as the network grows",
        "ours": f"share of the + mask's weights also kept by × per width ({text})"
        + ("; one width cannot show a trend" if len(values) < 2 else ""),
        "agrees": agrees,
    }


def _controls(config: Mapping[str, Any], groups, units: Mapping[str, dict]) -> dict[str, Any]:
    """The real masks of every network next to its sanity controls (:mod:`modscope.experiments.controls`)."""
    named = [(f"{_name(kind, sizes)} #{i}", units[f"{kind}-{sizes}-{i}"])
             for kind, sizes in groups for i in range(config["networks"])]  # fmt: skip
    return controls_section(
        "Sanity controls: the + and × masks where there is nothing to find", named, ("+", "*"),
        ["P_specialize(+|×)", "P_specialize(×|+)", "IoU(+, ×)"],
        lambda d: [d["p_specialize"]["+|*"], d["p_specialize"]["*|+"], d["iou"]["total"]],
        note=f"{budget_note(config)} P_specialize as in the summary, drops from the "
        f"{reference_label(config)} of the same set of masks; 'undefined' where that reference is at chance.",
        names=_SIGN,
    )  # fmt: skip


def _result(run: Run, config: Mapping[str, Any], groups, units: dict[str, dict]) -> RunResult:
    rows, claims, sections, where = [], [], [], []
    for kind, sizes in groups:
        docs = [units[f"{kind}-{sizes}-{i}"] for i in range(config["networks"])]
        r, c, s, w = _group_result(config, kind, sizes, docs)
        rows += r
        claims += c
        sections += s
        where += w
    lines = _sharing_lines(groups, units, config)
    claims.append(_trend_claim(lines))
    ref = reference_label(config)
    summary = table(
        "Specialization per network",
        ["network", "seed", "control acc. +", "control acc. ×", "P_specialize(+|×)", "P_specialize(×|+)",
         "IoU(+, ×)", "IoMin(+, ×)", "shared (+ in ×)", "P_specialize(+ only|×)", "P_specialize(× only|+)",
         "masks still moving"],
        rows,
        note=f"Protocol '{config['protocol']}'; accuracy under the control mask. P_specialize(A|B) = "
        f"d_A(¬A) - d_B(¬A), d the relative drop from the {ref} corrected for chance ({CHANCE}); 1 = "
        "removing A's weights kills A and spares B. IoU / IoMin of the + and × masks over all masked "
        "weights; 'shared': share of the + mask's weights the × mask also keeps. 'A only': removing "
        "only the weights A's mask keeps and B's does not. 'Still moving': the largest change of a mask's "
        "kept count over its last fifth of training, relative to the final count.",
    )  # fmt: skip
    sections.append(lines)
    sections.append(table(
        "Core analysis: the exclusive weights and the shared core, alone and removed",
        ["network", "evaluated on", *(c for c, _, _ in _CORE)], where,
        note="'+ only' = + minus ×, '× only' = × minus +, core = + and × (all on a frozen network, biases "
        "kept). ¬X: every weight but X's. A network whose masks share a core but specialize outside it "
        "keeps both operations under ¬(X only) save X, and loses both under ¬core.",
    ))  # fmt: skip
    sections.append(curves_section("Mask training: kept weights over the steps", units))
    if check_controls_config(config):
        sections.append(_controls(config, groups, units))
    return RunResult(
        "addmul", TITLE, run.setting, summary, tuple(claims), tuple(sections), dict(config), versions(),
        run.seconds(), units,
    )  # fmt: skip
