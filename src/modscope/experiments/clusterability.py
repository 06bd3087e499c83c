"""Clusterability tables of MLPs (Filan et al., "Clusterability in Neural Networks", arXiv:2103.03386).

``networks`` MLPs ``in-{hidden}-out`` (ReLU; the paper's 784-256x4-10) per row, each clustered into
``k`` = 12 clusters and compared with ``shuffles`` ``layer`` and ``shuffles`` ``layer_nonzero`` shuffled
copies of itself (SPEC §1.3). The rows:

======================  ================================================================================
``control-unpruned``    Adam 1e-3, batch 128, ``epochs`` epochs
``control-pruned``      the control network trained further with magnitude pruning (50% -> 90% per layer)
``dropout-unpruned``    dropout ``dropout`` (0.5) after each hidden layer
``dropout-pruned``      the dropout network, pruned
``l1-pruned``           L1 penalty ``l1`` (5e-5) on the weights in both phases, pruned
``clusterable-pruned``  clusterable initialization (10 modules, within x4.6, across x0.6), pruned
``random-init``         untrained: the initial weights of the control networks
======================  ================================================================================

The paper reports L1 and clusterable-init networks after pruning (its regularized networks are pruned like
the others), so those two rows have no unpruned counterpart here.

**A pruned network is its unpruned row's network trained further.** The pruned unit of a network shares the
unpruned unit's training checkpoint: ``run_recipe(prune=True)`` finds the finished first phase there and
goes straight to pruning, so the first phase is trained once and the two rows hold the same network before
and after pruning. The pruning phase lasts as long as the first phase (the paper: 20 + 20 epochs).

**Seeds.** Network ``i`` of every row starts from the same initialization and data order (a paired design:
the rows differ only in the treatment); the random-init row holds exactly those initial weights. Training,
clustering and shuffle seeds all derive from the config's ``seed`` (:func:`network_seeds`).

An unpruned network has no zero weights, so its ``layer_nonzero`` shuffles are its ``layer`` shuffles:
they are clustered once.

Per row the table gives the mean n-cut, the mean of the networks' null means per shuffle kind, how many of
the ``networks`` networks are significant (one-sided p = (1 + #{null <= n-cut}) / (1 + shuffles) < 0.05,
so at least 20 shuffles are needed for any network to be significant) and the mean test accuracy.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from statistics import fmean
from typing import Any

import numpy as np

from modscope.atomic import finite
from modscope.cluster import clusterability, cohens_d
from modscope.experiments.results import RunResult, table
from modscope.experiments.run import Run
from modscope.graph import SHUFFLES, WeightGraph
from modscope.models import build_model, parse_spec
from modscope.training import evaluate, save_trained
from modscope.training.recipes import RECIPES, TaskData, load_task_data, run_recipe
from modscope.versions import versions

__all__ = ["ALPHA", "ROWS", "SETTINGS", "TITLE", "Row", "network_seeds", "reproduce"]

TITLE = "Clusterability of MLPs: n-cut against shuffled networks (Filan et al. 2021)"
PAPER = "Filan et al. 2021 (arXiv:2103.03386)"
RECIPE = "clusterability-mlp"
#: Significance level of one network's shuffle test.
ALPHA = 0.05

SETTINGS: dict[str, dict[str, Any]] = {
    # quick: 3.5 min on a shared 2-core CPU (one torch thread, 8 x (1 + 1) training epochs and 468
    # clusterings of 1818-node graphs); it already shows pruned networks below their shuffles.
    "quick": {
        "dataset": "fashion-mnist",
        "hidden": "256x4",
        "epochs": 1,
        "networks": 2,
        "shuffles": 20,
        "k": 12,
        "dropout": 0.5,
        "l1": 5e-5,
        "seed": 0,
        "n_jobs": 1,
    },
    "paper": {
        "dataset": "fashion-mnist",
        "hidden": "256x4",
        "epochs": 20,
        "networks": 5,
        "shuffles": 50,
        "k": 12,
        "dropout": 0.5,
        "l1": 5e-5,
        "seed": 0,
        "n_jobs": 1,
    },
}


@dataclass(frozen=True)
class Row:
    """One row of the table: how its networks are made."""

    key: str
    label: str
    dropout: bool = False
    prune: bool = False
    l1: bool = False
    clusterable: bool = False
    trained: bool = True
    #: the pruned row that continues this row's networks (they share the first phase's checkpoint)
    continued_by: str | None = None


ROWS: tuple[Row, ...] = (
    Row("control-unpruned", "control, unpruned", continued_by="control-pruned"),
    Row("control-pruned", "control, pruned", prune=True),
    Row("dropout-unpruned", "dropout, unpruned", dropout=True, continued_by="dropout-pruned"),
    Row("dropout-pruned", "dropout, pruned", dropout=True, prune=True),
    Row("l1-pruned", "L1, pruned", l1=True, prune=True),
    Row("clusterable-pruned", "clusterable init, pruned", clusterable=True, prune=True),
    Row("random-init", "random init (untrained)", trained=False),
)
_ROW = {r.key: r for r in ROWS}


def network_seeds(seed: int, network: int) -> tuple[int, int, int, int]:
    """``(training, clustering, lesion, pair lesion)`` seeds of network ``network``, from the master ``seed``.

    Independent across networks and master seeds (``numpy.random.SeedSequence``). The training seed sets
    the initialization, data order and dropout (and, for ``"digits"``, the train/test split); the
    clustering seed the partition and the shuffles; the lesion seeds the random control lesions of single
    modules and of pairs (:mod:`modscope.experiments.lesions`).
    """
    a, b, c, d = np.random.SeedSequence([seed, network]).generate_state(4)
    return int(a), int(b), int(c), int(d)


# ------------------------------------------------------------------------------------ config and data
def _int(config: Mapping[str, Any], key: str, low: int) -> int:
    v = config[key]
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise ValueError(f"{key} must be an int >= {low}, got {v!r}")
    return v


def _fraction(config: Mapping[str, Any], key: str, high_open: bool = True) -> float:
    v = config[key]
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
    if not ok or (high_open and v >= 1):
        want = "in (0, 1)" if high_open else "positive"
        raise ValueError(f"{key} must be a number {want}, got {v!r}")
    return float(v)


def check_mlp_config(config: Mapping[str, Any]) -> str:
    """Validate the keys shared by the MLP experiments; returns the model spec template."""
    datasets = RECIPES[RECIPE].datasets
    if config["dataset"] not in datasets:
        raise ValueError(f"dataset must be one of {list(datasets)}, got {config['dataset']!r}")
    hidden = config["hidden"]
    if not isinstance(hidden, str) or not re.fullmatch(r"\d+(x\d+)?(-\d+(x\d+)?)*", hidden):
        raise ValueError(f"hidden must be layer sizes like '256x4' or '400-400-200', got {hidden!r}")
    parse_spec(f"mlp:1-{hidden}-1")  # zero sizes etc.: SpecError (a ValueError) naming the spec
    for key, low in (("epochs", 1), ("networks", 1), ("k", 2), ("seed", 0)):
        _int(config, key, low)
    return f"mlp:{{in}}-{hidden}-{{out}}"


def task_data(dataset: str, seed: int) -> TaskData:
    """:func:`load_task_data`, with a pointer to ``make data`` when the files are missing."""
    try:
        return load_task_data(dataset, seed=seed)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{exc}\nIn a modscope checkout, `make data` gets them.") from None


def steps_per_epoch(task: TaskData) -> int:
    return math.ceil(len(task.train[0]) / RECIPES[RECIPE].batch_size)


def check_k_fits(template: str, task: TaskData, k: int) -> None:
    sizes = parse_spec(template.format(**task.fill))["sizes"]
    if k >= sum(sizes):
        raise ValueError(
            f"k={k} must be smaller than the number of graph nodes ({sum(sizes)}, sizes {sizes})"
        )


def forward(run: Run) -> Callable[[str, int, int, dict], None]:
    """``run_recipe``'s progress (labels ``"train"``/``"prune"``) forwarded to the run."""
    return lambda label, done, total, info: run.report(label, done, total, info)


def train_mlp(
    run: Run,
    key: str,
    template: str,
    config: Mapping[str, Any],
    steps: int,
    seed: int,
    *,
    dropout: float = 0.0,
    prune: bool = False,
    l1: float = 0.0,
    clusterable: bool = False,
    checkpoint_key: str | None = None,
):
    """Train (and prune) one MLP with checkpoints, save it to ``run.model_path(key)``.

    Both phases last ``steps`` updates (``epochs`` epochs). Returns ``(model, results, path)``.
    """
    model, spec, results, train_config = run_recipe(
        RECIPE, dataset=config["dataset"], spec=template, dropout=dropout or None, prune=prune, l1=l1,
        clusterable=clusterable, seed=seed, steps=steps, progress=forward(run),
        checkpoint=run.checkpoint_prefix(checkpoint_key or key),
    )  # fmt: skip
    train_config = {**train_config, "epochs": config["epochs"]}
    path = save_trained(model, spec, run.model_path(key), train_config, results[-1])
    return model, results, path


# ------------------------------------------------------------------------------------ one network
def _clusterability_unit(run: Run, config: Mapping[str, Any], template: str, steps: int, row: Row, i: int):
    train_seed, cluster_seed, *_ = network_seeds(config["seed"], i)
    key = f"{row.key}-{i}"

    def compute() -> dict[str, Any]:
        doc: dict[str, Any] = {"row": row.key, "network": i, "seed": train_seed, "cluster_seed": cluster_seed}
        if row.trained:
            model, results, path = train_mlp(
                run, key, template, config, steps, train_seed,
                dropout=config["dropout"] if row.dropout else 0.0, prune=row.prune,
                l1=config["l1"] if row.l1 else 0.0, clusterable=row.clusterable,
                checkpoint_key=f"{row.continued_by}-{i}" if row.continued_by else None,
            )  # fmt: skip
            doc["accuracy"] = results[-1].eval_accuracy
            doc["phase_accuracy"] = [r.eval_accuracy for r in results]
            doc["sparsity"] = results[-1].sparsity
        else:
            task = task_data(config["dataset"], train_seed)
            spec = parse_spec(template.format(**task.fill))
            model = build_model(spec, seed=train_seed)  # what run_recipe starts the control network from
            path = save_trained(model, spec, run.model_path(key), {"untrained": True, "seed": train_seed})
            doc["accuracy"] = evaluate(model, task.test).accuracy
        graph = WeightGraph.from_module(model)
        per_kind = config["shuffles"]  # progress units per test: its shuffles
        nulls = {}
        for j, kind in enumerate(SHUFFLES):
            if kind == "layer_nonzero" and graph.n_edges == sum(b.size for b in graph.blocks):
                # Without zero weights the two shuffles are the same null (and, drawn from the same seeds,
                # the same permutations): reuse the layer shuffles.
                nulls[kind] = nulls["layer"]
                run.report("clustering", len(SHUFFLES) * per_kind, len(SHUFFLES) * per_kind)
                continue

            def report(
                label: str, done: int, total: int, info: dict, before: int = j * per_kind, kind: str = kind
            ) -> None:
                run.report("clustering", before + done, len(SHUFFLES) * per_kind, {"shuffle": kind})

            result = clusterability(
                graph, k=config["k"], n_shuffles=config["shuffles"], shuffle=kind, seed=cluster_seed,
                n_jobs=config["n_jobs"], progress=report,
            )  # fmt: skip
            # The network's own partition depends on the seed only, so both tests share it.
            d = result.to_dict()
            doc.update(ncut=d["ncut"], k=d["k"], labels=d["partition"]["labels"])
            nulls[kind] = {
                n: d[n] for n in ("null_ncuts", "null_mean", "null_std", "z", "p_value", "below_all")
            }
        doc["shuffles"] = nulls
        doc["model"] = run.relative(path)
        return finite(doc)

    return key, run.unit(key, compute)


def _check(config: Mapping[str, Any]) -> str:
    template = check_mlp_config(config)
    _int(config, "shuffles", 2)
    n_jobs = config["n_jobs"]
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, int) or not (n_jobs >= 1 or n_jobs == -1):
        raise ValueError(f"n_jobs must be a positive int or -1 (one worker per CPU), got {n_jobs!r}")
    _fraction(config, "dropout")
    _fraction(config, "l1", high_open=False)
    return template


# ------------------------------------------------------------------------------------ the run
def reproduce(run: Run, config: Mapping[str, Any]) -> RunResult:
    """Train, prune and cluster every network of the table (resuming finished ones); see the module doc."""
    template = _check(config)
    task = task_data(config["dataset"], network_seeds(config["seed"], 0)[0])
    check_k_fits(template, task, config["k"])
    steps = config["epochs"] * steps_per_epoch(task)
    n = config["networks"]
    units: dict[str, dict[str, Any]] = {}
    by_row: dict[str, list[dict[str, Any]]] = {r.key: [] for r in ROWS}
    done = 0
    run.report("networks", 0, n * len(ROWS))
    for i in range(n):
        for row in ROWS:
            key, unit = _clusterability_unit(run, config, template, steps, row, i)
            units[key] = unit
            by_row[row.key].append(unit)
            done += 1
            run.report("networks", done, n * len(ROWS), {"unit": key})
    return RunResult(
        experiment="clusterability",
        title=TITLE,
        setting=run.setting,
        summary=_summary(by_row, config),
        claims=_claims(by_row, config),
        sections=(_representative(units), _network_table(units)),
        config=dict(config),
        versions=versions(),
        seconds=run.seconds(),
        units=units,
    )


def _mean(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return fmean(vals) if vals else None


def _significant(units: Sequence[Mapping[str, Any]], kind: str) -> int:
    return sum(u["shuffles"][kind]["p_value"] < ALPHA for u in units)


def _summary(by_row: Mapping[str, list], config: Mapping[str, Any]) -> dict:
    rows = []
    for r in ROWS:
        us = by_row[r.key]
        cells: list[Any] = [r.label, len(us), _mean([u["ncut"] for u in us])]
        for kind in SHUFFLES:
            cells += [
                _mean([u["shuffles"][kind]["null_mean"] for u in us]),
                f"{_significant(us, kind)}/{len(us)}",
            ]
        cells.append(_mean([u["accuracy"] for u in us]))
        rows.append(cells)
    columns = ["network", "N", "n-cut (mean)"]
    for kind in SHUFFLES:
        columns += [f"{kind} null (mean)", f"p < {ALPHA} vs {kind}"]
    columns.append("test accuracy (mean)")
    floor = 1 / (config["shuffles"] + 1)
    note = (
        f"k = {config['k']}, {config['shuffles']} shuffles of each kind per network, {config['epochs']} "
        f"epochs (+{config['epochs']} pruning epochs for pruned rows) on {config['dataset']}, hidden "
        f"{config['hidden']}. Lower n-cut = more clusterable. The smallest possible p is 1/(shuffles+1) = "
        f"{floor:.3g}" + (" >= 0.05: no network can be significant." if floor >= ALPHA else ".")
    )
    return table("Clusterability per setting", columns, rows, note)


def _claims(by_row: Mapping[str, list], config: Mapping[str, Any]) -> tuple[dict, ...]:
    ncuts = {k: [u["ncut"] for u in us] for k, us in by_row.items()}
    trained = [u for r in ROWS if r.trained for u in by_row[r.key]]
    sig = _significant(trained, "layer")
    possible = 1 / (config["shuffles"] + 1) < ALPHA
    claims = [
        {
            "paper": PAPER,
            "claim": "trained networks are more clusterable than layer shuffles",
            "ours": (
                f"{sig}/{len(trained)} trained networks have p < {ALPHA} against {config['shuffles']} layer "
                f"shuffles (random init: {_significant(by_row['random-init'], 'layer')}/"
                f"{len(by_row['random-init'])}); mean n-cut trained {fmean(u['ncut'] for u in trained):.3f}, "
                f"random init {fmean(ncuts['random-init']):.3f}"
            ),
            "agrees": (sig > len(trained) / 2) if possible else None,
        }
    ]
    for claim, pairs in (
        ("pruning increases clusterability", (("control-unpruned", "control-pruned"),
                                              ("dropout-unpruned", "dropout-pruned"))),
        ("dropout increases clusterability", (("control-unpruned", "dropout-unpruned"),
                                              ("control-pruned", "dropout-pruned"))),
    ):  # fmt: skip
        parts, lower = [], []
        for before, after in pairs:
            a, b = ncuts[before], ncuts[after]
            lower.append(fmean(b) < fmean(a))
            d = f", Cohen's d {cohens_d(b, a):.2f}" if len(a) > 1 and len(b) > 1 else ""
            parts.append(f"{_ROW[before].label} {fmean(a):.3f} -> {_ROW[after].label} {fmean(b):.3f}{d}")
        agrees = True if all(lower) else False if not any(lower) else None
        claims.append(
            {"paper": PAPER, "claim": claim, "ours": "mean n-cut: " + "; ".join(parts), "agrees": agrees}
        )
    return tuple(claims)


def _representative(units: Mapping[str, Mapping[str, Any]]) -> dict:
    key = "control-pruned-0"
    u = units[key]
    return {
        "kind": "clusterability",
        "title": f"One pruned control network ({key}) against its shuffles",
        "network": key,
        "k": u["k"],
        "ncut": u["ncut"],
        "nulls": {kind: u["shuffles"][kind]["null_ncuts"] for kind in SHUFFLES},
        "model": u["model"],
        "labels": u["labels"],
    }


def _network_table(units: Mapping[str, Mapping[str, Any]]) -> dict:
    columns = ["unit", "network", "seed", "n-cut"]
    for kind in SHUFFLES:
        columns += [f"{kind} null mean", f"{kind} null sd", f"{kind} z", f"{kind} p"]
    columns.append("test accuracy")
    rows = []
    for key, u in units.items():
        cells = [key, _ROW[u["row"]].label, u["seed"], u["ncut"]]
        for kind in SHUFFLES:
            s = u["shuffles"][kind]
            cells += [s["null_mean"], s["null_std"], s["z"], s["p_value"]]
        cells.append(u["accuracy"])
        rows.append(cells)
    return table("Every network", columns, rows, "z = (n-cut - null mean) / null sd; p one-sided.")
