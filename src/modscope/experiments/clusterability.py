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
clustering and shuffle seeds all derive from the config's ``seed``
(:func:`modscope.experiments.structural.network_seeds`).

An unpruned network has no zero weights, so its ``layer_nonzero`` shuffles are its ``layer`` shuffles:
they are clustered once.

Per row the table gives the mean n-cut, the mean of the networks' null means per shuffle kind, how many of
the ``networks`` networks are significant (one-sided p = (1 + #{null <= n-cut}) / (1 + shuffles) < 0.05,
so at least 20 shuffles are needed for any network to be significant) and the mean test accuracy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import fmean
from typing import Any

from modscope.atomic import finite
from modscope.cluster import clusterability, cohens_d
from modscope.experiments.checks import NUMBER, check_fields, check_fraction, check_int, check_n_jobs
from modscope.experiments.run import Run
from modscope.experiments.structural import (
    check_k_fits,
    check_mlp_config,
    load_task,
    network_seeds,
    steps_per_epoch,
    train_mlp,
)
from modscope.graph import SHUFFLES, WeightGraph
from modscope.models import build_model, parse_spec
from modscope.results import RunResult, clusterability_section, table
from modscope.training import evaluate, save_trained
from modscope.versions import versions

__all__ = ["ALPHA", "ROWS", "SETTINGS", "TITLE", "Row", "check_config", "reproduce"]

TITLE = "Clusterability of MLPs: n-cut against shuffled networks (Filan et al. 2021)"
PAPER = "Filan et al. 2021 (arXiv:2103.03386)"
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


# ------------------------------------------------------------------------------------ one network
def _clusterability_unit(run: Run, config: Mapping[str, Any], template: str, steps: int, row: Row, i: int):
    seeds = network_seeds(config["seed"], i)
    train_seed, cluster_seed = seeds.train, seeds.cluster
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
            task = load_task(config["dataset"], train_seed)
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
            p = d["partition"]
            doc.update(ncut=d["ncut"], k=d["k"], labels=p["labels"], restarts=p["ncut_restarts"])
            nulls[kind] = {
                n: d[n] for n in ("null_ncuts", "null_mean", "null_std", "z", "p_value", "below_all")
            }
        doc["shuffles"] = nulls
        doc["model"] = run.relative(path)
        return finite(doc)

    return key, run.unit(key, compute, check=_check_unit)


_NULL = {"null_ncuts": list, "null_mean": NUMBER, "null_std": NUMBER, "z": NUMBER, "p_value": NUMBER}
#: What the tables read from a unit file.
_UNIT = {
    "row": str, "seed": int, "ncut": NUMBER, "k": int, "labels": list, "accuracy": NUMBER, "model": str,
    "shuffles": {kind: _NULL for kind in SHUFFLES},
}  # fmt: skip


def _check_unit(doc: Mapping[str, Any]) -> None:
    check_fields(doc, _UNIT)
    if doc["row"] not in _ROW:
        raise ValueError(f"'row' must be one of {list(_ROW)}, got {doc['row']!r}")


def check_config(config: Mapping[str, Any]) -> str:
    """Validate ``config`` (ValueError naming the key); returns the model spec template."""
    template = check_mlp_config(config)
    check_int(config, "shuffles", 2)
    check_n_jobs(config)
    check_fraction(config, "dropout")
    check_fraction(config, "l1", high="none")
    return template


# ------------------------------------------------------------------------------------ the run
def reproduce(run: Run, config: Mapping[str, Any]) -> RunResult:
    """Train, prune and cluster every network of the table (resuming finished ones); see the module doc."""
    template = check_config(config)
    task = load_task(config["dataset"], network_seeds(config["seed"], 0).train)
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
    return clusterability_section(
        f"One pruned control network ({key}) against its shuffles", network=key, k=u["k"], ncut=u["ncut"],
        nulls={kind: u["shuffles"][kind]["null_ncuts"] for kind in SHUFFLES}, model=u["model"],
        labels=u["labels"], restarts=u.get("restarts") or None,
    )  # fmt: skip


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
