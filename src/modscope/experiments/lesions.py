"""Lesion study of pruned MLPs (Filan et al., "Clusterability in Neural Networks", arXiv:2103.03386, §6).

Each of ``networks`` MLPs is trained and pruned exactly like network ``i`` of the clusterability table's
``control-pruned`` row (same settings and seeds give the same network), clustered into ``k`` = 12
clusters, and every module -- the units of one hidden layer in one cluster, at least ``min_units`` of
them -- is silenced in turn (SPEC §1.4, :mod:`modscope.lesion`). Its damage (drop in test accuracy) is
compared with ``n_random`` random same-size sets of units of the same layer: ``p_important`` =
(1 + #{random damage >= module damage}) / (1 + n_random) is never below 1/(n_random + 1), so at least 19
random sets are needed for a module to be labelled important (p <= 0.05). A module that is its whole
hidden layer, or whose layer holds fewer than 20 sets of its size, cannot be tested that way: it is
counted as untestable (:mod:`modscope.lesion.controls`). The p-values of the tested modules are combined
with Fisher's method. Pairs of important modules are then lesioned together, and their
interaction (joint damage minus the two single damages) is tested against random pairs of sets of the same
sizes. Damage is measured on the first ``test_examples`` examples of the test split: a study makes
(1 + n_random) * (modules + 3 * pairs) passes over it (about 4,000 for a pruned 784-256x4-10 MLP), so the
quick setting uses 1,000 of Fashion-MNIST's 10,000 test images.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from modscope.atomic import finite
from modscope.cluster import spectral_partition
from modscope.experiments.checks import NUMBER, check_fields, check_int
from modscope.experiments.run import Run
from modscope.experiments.structural import (
    check_k_fits,
    check_mlp_config,
    lesion_section,
    load_task,
    network_seeds,
    steps_per_epoch,
    train_mlp,
)
from modscope.graph import WeightGraph
from modscope.lesion import UNTESTED, LesionStudy, lesion_modules, lesion_pairs
from modscope.results import RunResult, table
from modscope.versions import versions

__all__ = ["ALPHA", "FASHION_MNIST_CLASSES", "SETTINGS", "TITLE", "check_config", "reproduce"]

TITLE = "Lesions of the modules of pruned MLPs: importance and dependencies (Filan et al. 2021)"
PAPER = "Filan et al. 2021 (arXiv:2103.03386)"
#: Level of the importance labels and of the pair interaction tests.
ALPHA = 0.05
#: Class names of Fashion-MNIST (Xiao et al. 2017, arXiv:1708.07747), in label order.
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip

SETTINGS: dict[str, dict[str, Any]] = {
    # quick: about 2 min on a shared 2-core CPU (one torch thread), 70% of it the pair lesions.
    "quick": {
        "dataset": "fashion-mnist",
        "hidden": "256x4",
        "epochs": 1,
        "networks": 1,
        "k": 12,
        "n_random": 20,
        "min_units": 2,
        "test_examples": 1000,
        "seed": 0,
    },
    "paper": {
        "dataset": "fashion-mnist",
        "hidden": "256x4",
        "epochs": 20,
        "networks": 5,
        "k": 12,
        "n_random": 20,
        "min_units": 2,
        "test_examples": 10000,
        "seed": 0,
    },
}


def check_config(config: Mapping[str, Any]) -> str:
    """Validate ``config`` (ValueError naming the key); returns the model spec template."""
    template = check_mlp_config(config)
    for key in ("n_random", "min_units", "test_examples"):
        check_int(config, key, 1)
    return template


#: What the tables read from a unit file (the study is read back with LesionStudy.from_dict).
_UNIT = {
    "accuracy": (int, float), "ncut": NUMBER, "study": {"modules": list, "combined_p": NUMBER}, "pairs": list,
}  # fmt: skip


def _check_unit(doc: Mapping[str, Any]) -> None:
    check_fields(doc, _UNIT)
    study = LesionStudy.from_dict(doc["study"])
    for p in doc["pairs"]:
        check_fields(p, {"a": int, "b": int, "interaction": NUMBER, "p_value": NUMBER}, "pairs[]")
        if not (0 <= p["a"] < len(study.modules) and 0 <= p["b"] < len(study.modules)):
            raise ValueError(f"pair {p['a']}, {p['b']} names a module the study does not have")


def _lesion_unit(run: Run, config: Mapping[str, Any], template: str, steps: int, i: int) -> tuple[str, dict]:
    seeds = network_seeds(config["seed"], i)
    train_seed, cluster_seed, lesion_seed, pair_seed = seeds.train, seeds.cluster, seeds.lesion, seeds.pairs
    key = f"pruned-{i}"

    def compute() -> dict[str, Any]:
        model, results, path = train_mlp(run, key, template, config, steps, train_seed, prune=True)
        # The test split the network was evaluated on (its first ``test_examples``): each lesion is one
        # pass over it, and a study makes (1 + n_random) * (modules + 3 * pairs) of them.
        x, y = load_task(config["dataset"], train_seed).test
        test = (x[: config["test_examples"]], y[: config["test_examples"]])
        graph = WeightGraph.from_module(model)
        run.report("clustering", 0, 1)
        partition = spectral_partition(graph, k=config["k"], seed=cluster_seed)
        run.report("clustering", 1, 1)
        study = lesion_modules(
            model, graph, partition, test, n_random=config["n_random"], min_units=config["min_units"],
            alpha=ALPHA, seed=lesion_seed, progress=run.report,
        )  # fmt: skip
        pairs = lesion_pairs(
            model, graph, study, test, n_random=config["n_random"], seed=pair_seed,
            progress=run.report,
        )  # fmt: skip
        return finite(
            {
                "network": i,
                "seed": train_seed,
                "cluster_seed": cluster_seed,
                "lesion_seed": lesion_seed,
                "pair_seed": pair_seed,
                "model": run.relative(path),
                "accuracy": results[-1].eval_accuracy,
                "sparsity": results[-1].sparsity,
                "ncut": partition.ncut,
                "labels": partition.labels.tolist(),
                "study": study.to_dict(),
                "pairs": [asdict(p) for p in pairs],
            }
        )

    return key, run.unit(key, compute, check=_check_unit)


def reproduce(run: Run, config: Mapping[str, Any]) -> RunResult:
    """Train, prune, cluster and lesion every network (resuming finished ones); see the module doc."""
    template = check_config(config)
    task = load_task(config["dataset"], network_seeds(config["seed"], 0).train)
    check_k_fits(template, task, config["k"])
    n_classes = int(task.fill["out"])
    classes = (
        list(FASHION_MNIST_CLASSES)
        if config["dataset"] == "fashion-mnist"
        else [str(c) for c in range(n_classes)]
    )
    steps = config["epochs"] * steps_per_epoch(task)
    n = config["networks"]
    units: dict[str, dict[str, Any]] = {}
    run.report("networks", 0, n)
    for i in range(n):
        key, unit = _lesion_unit(run, config, template, steps, i)
        units[key] = unit
        run.report("networks", i + 1, n, {"unit": key})
    return RunResult(
        experiment="lesions",
        title=TITLE,
        setting=run.setting,
        summary=_summary(units, config),
        claims=(_claim(units, config),),
        sections=tuple(_section(key, u, classes) for key, u in units.items()),
        config=dict(config),
        versions=versions(),
        seconds=run.seconds(),
        units=units,
    )


def _counts(u: Mapping[str, Any]) -> dict[str, Any]:
    modules = u["study"]["modules"]
    return {
        "modules": len(modules),
        "important": sum(m["label"] == "important" for m in modules),
        "prunable": sum(m["label"] == "prunable" for m in modules),
        "untestable": sum(m["label"] in UNTESTED for m in modules),
        "combined_p": u["study"]["combined_p"],
        "pairs": len(u["pairs"]),
        "interacting": sum(p["p_value"] <= ALPHA for p in u["pairs"]),
    }


def _summary(units: Mapping[str, Mapping[str, Any]], config: Mapping[str, Any]) -> dict:
    columns = ["network", "test accuracy", "n-cut", "modules", "important", "prunable", "untestable",
               "combined p", "interacting pairs"]  # fmt: skip
    rows = []
    for key, u in units.items():
        c = _counts(u)
        pairs = f"{c['interacting']}/{c['pairs']}"
        counts = [c[name] for name in ("modules", "important", "prunable", "untestable", "combined_p")]
        rows.append([key, u["accuracy"], u["ncut"], *counts, pairs])
    note = (
        f"k = {config['k']}; modules of at least {config['min_units']} units; damage on the first "
        f"{config['test_examples']} test examples; {config['n_random']} random "
        f"same-size lesions per module (smallest p = 1/{config['n_random'] + 1}); labels at p <= {ALPHA}; "
        f"untestable: modules that are their whole layer, or whose layer holds too few sets of their size "
        f"for that level (not tested, damage still measured); combined p: Fisher's method over the tested "
        f"modules' p_important; interacting pairs: pairs of important modules whose interaction has "
        f"p <= {ALPHA}, out of all pairs tested."
    )
    return table("Lesions per network", columns, rows, note)


def _claim(units: Mapping[str, Mapping[str, Any]], config: Mapping[str, Any]) -> dict:
    counts = [_counts(u) for u in units.values()]
    ok = [c["important"] > 0 and c["combined_p"] <= ALPHA for c in counts]
    possible = 1 / (config["n_random"] + 1) <= ALPHA
    ours = "; ".join(
        f"{key}: {c['important']}/{c['modules']} modules important ({c['untestable']} untestable), "
        f"combined p {c['combined_p']:.3g}"
        for key, c in zip(units, counts)
    )
    return {
        "paper": PAPER,
        "claim": "some modules are important; the combined test is significant",
        "ours": ours,
        "agrees": (True if all(ok) else False if not any(ok) else None) if possible else None,
    }


def _section(key: str, u: Mapping[str, Any], classes: list[str]) -> dict:
    title = f"Lesions of {key} (test accuracy {u['accuracy']:.4f})"
    return lesion_section(title, classes, u["study"], u["pairs"])
