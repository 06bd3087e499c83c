"""Modularity over training: clusterability and mask metrics of one network at saved steps of its training.

The network is Filan et al.'s MLP recipe (``clusterability-mlp``: ReLU MLP ``in-{hidden}-out``, Adam 1e-3,
batch 128; "Clusterability in Neural Networks", arXiv:2103.03386), trained for ``epochs`` epochs on
``dataset`` and kept before the first update, every ``every`` updates and at the end
(:func:`modscope.training.snapshots.train_with_snapshots`). At each kept step:

* test accuracy;
* structural lens: the n-cut of its spectral partition into ``k`` clusters against ``shuffles`` shuffled
  copies (``shuffle``: ``layer`` by default), with the null's mean, z-score and one-sided p-value
  (:func:`modscope.cluster.clusterability`; with few shuffles p cannot go below ``1 / (1 + shuffles)``);
* functional lens (``mask_steps`` > 0): one weight mask for each half of the classes (the digits 0-4 and
  5-9; Csordás et al., arXiv:2010.02066), the IoU of the two masks and P_specialize both ways (drops from
  the snapshot's full network, chance one over the classes of a half; undefined where the snapshot is not
  above chance on a half, as at initialization).

All steps share the clustering seed and the mask seed (:func:`modscope.experiments.structural.network_seeds`),
so a change over the steps is the network's, not the seed's. Reported as lines over the training steps and
a table. ``quick``: the digits that ship with scikit-learn, a 64-128x4-10 MLP, 40 epochs (480 steps), kept
every 40 steps, 10 shuffles, 200 mask steps at lr 0.1 (beta 1e-3; the masks keep about a fifth of the
weights): about a minute on 2 CPU cores. ``paper``: Fashion-MNIST, the paper's 784-256x4-10 for 20 epochs,
kept every epoch, 20 shuffles, 2,000 mask steps at lr 1e-2 (the same ``lr x steps``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from modscope.experiments.checks import (
    NUMBER,
    check_choice,
    check_fields,
    check_int,
    check_n_jobs,
    check_number,
)
from modscope.experiments.run import Run
from modscope.experiments.structural import RECIPE, check_k_fits, check_mlp_config, load_task, network_seeds
from modscope.graph import SHUFFLES
from modscope.results import RunResult, lines_section, table
from modscope.versions import versions

__all__ = ["SETTINGS", "TITLE", "check_config", "reproduce"]

TITLE = "Modularity over training: clusterability and masks at saved steps of one MLP's training"

SETTINGS: dict[str, dict[str, Any]] = {
    "quick": {
        "seed": 0, "dataset": "digits", "hidden": "128x4", "epochs": 40, "every": 40, "k": 8,
        "shuffles": 10, "shuffle": "layer", "mask_steps": 200, "mask_lr": 0.1, "beta": 1e-3,
        "n_jobs": 1,
    },
    "paper": {
        "seed": 0, "dataset": "fashion-mnist", "hidden": "256x4", "epochs": 20, "every": 469, "k": 12,
        "shuffles": 20, "shuffle": "layer", "mask_steps": 2000, "mask_lr": 1e-2, "beta": 1e-3,
        "n_jobs": -1,
    },
}  # fmt: skip

_CLUSTERS = {"ncut": NUMBER, "null_mean": NUMBER, "null_std": NUMBER, "z": NUMBER, "p_value": NUMBER}


def check_config(config: Mapping[str, Any]) -> str:
    """Validate ``config`` (ValueError naming the key); returns the model spec template."""
    template = check_mlp_config({**config, "networks": 1})
    check_int(config, "every", 1)
    check_int(config, "shuffles", 2)
    check_choice(config, "shuffle", SHUFFLES)
    check_int(config, "mask_steps", 0)
    check_number(config, "mask_lr", positive=True)
    check_number(config, "beta", positive=False)
    check_n_jobs(config)
    return template


def _halves(y: torch.Tensor) -> dict[str, list[int]]:
    classes = sorted(int(c) for c in y.unique())
    first, second = classes[: len(classes) // 2], classes[len(classes) // 2 :]
    return {f"{h[0]}-{h[-1]}": h for h in (first, second)}


def _split(data: tuple, halves: Mapping[str, list[int]]) -> dict[str, tuple]:
    x, y = data
    keep = {name: torch.isin(y, torch.tensor(c)) for name, c in halves.items()}
    return {name: (x[k], y[k]) for name, k in keep.items()}


def _train(run: Run, config: Mapping[str, Any], template: str) -> dict[str, Any]:
    from modscope.models import build_model, parse_spec
    from modscope.training.recipes import RECIPES
    from modscope.training.snapshots import train_with_snapshots

    seed = network_seeds(config["seed"], 0).train
    task = load_task(config["dataset"], seed)
    spec = parse_spec(template.format(**task.fill))
    model = build_model(spec, seed=seed)
    recipe = RECIPES[RECIPE]
    result, kept = train_with_snapshots(
        model, spec, task.train, every=config["every"], folder=run.out / "snapshots",
        checkpoint=run.checkpoint_prefix("network") + ".train.pt", epochs=config["epochs"],
        batch_size=recipe.batch_size, lr=recipe.lr, seed=seed, eval_set=task.test, progress=run.report,
    )  # fmt: skip
    return {
        "steps": [s for s, _ in kept],
        "snapshots": [run.relative(p) for _, p in kept],
        "steps_per_epoch": result.batches_per_epoch,
        "test_accuracy": result.eval_accuracy,
    }


def _step(run: Run, config: Mapping[str, Any], path: str, test: tuple, train: tuple) -> dict[str, Any]:
    from modscope.cluster import clusterability
    from modscope.masks import evaluate_masks, iou, p_specialize, train_masks
    from modscope.models import load_model
    from modscope.training import evaluate

    model, _ = load_model(run.out / path)
    seeds = network_seeds(config["seed"], 0)
    res = clusterability(model, k=config["k"], n_shuffles=config["shuffles"], shuffle=config["shuffle"],
                         seed=seeds.cluster, n_jobs=config["n_jobs"])  # fmt: skip
    doc: dict[str, Any] = {
        "accuracy": evaluate(model, test).accuracy,
        "clusters": {k: getattr(res, k) for k in _CLUSTERS},
    }
    if config["mask_steps"]:
        halves = _halves(train[1])
        masks = train_masks(
            model, _split(train, halves), F.cross_entropy, steps=config["mask_steps"], lr=config["mask_lr"],
            beta=config["beta"], batch_size=128, seed=seeds.masks,
        )  # fmt: skip
        tab = evaluate_masks(model, masks, {n: [xy] for n, xy in _split(test, halves).items()})
        a, b = halves
        chance = {n: 1 / len(c) for n, c in halves.items()}
        defined = all(tab.score("full", None, n) > chance[n] for n in halves)

        def spec_(x: str, y: str) -> float | None:
            return p_specialize(tab, x, y, chance=chance) if defined else None

        doc["masks"] = {
            "iou": iou(masks[a], masks[b]).total,
            "p_specialize": {f"{a}|{b}": spec_(a, b), f"{b}|{a}": spec_(b, a)},
            "kept": {t: masks[t].total_kept for t in masks.tasks},
        }
    return doc


def _check_network(doc: Mapping[str, Any]) -> None:
    check_fields(doc, {"steps": list, "snapshots": list, "steps_per_epoch": int})
    if len(doc["steps"]) != len(doc["snapshots"]):
        raise ValueError("'steps' and 'snapshots' differ in length")


def _check_step(doc: Mapping[str, Any]) -> None:
    check_fields(doc, {"accuracy": NUMBER, "clusters": _CLUSTERS})
    if "masks" in doc:
        check_fields(doc["masks"], {"iou": NUMBER, "p_specialize": dict, "kept": dict}, "masks")


def reproduce(run: Run, config: dict) -> RunResult:
    """Run (or resume) the experiment in ``run``'s folder; see the module docstring."""
    template = check_config(config)
    task = load_task(config["dataset"], network_seeds(config["seed"], 0).train)
    check_k_fits(template, task, config["k"])
    net = run.unit("network", lambda: _train(run, config, template), check=_check_network)
    units: dict[str, dict[str, Any]] = {"network": net}
    n = len(net["steps"])
    for i, (step, path) in enumerate(zip(net["steps"], net["snapshots"], strict=True)):
        run.report("snapshots", i, n, {"step": step})
        key = f"step-{step:07d}"
        doc = run.unit(key, lambda p=path: _step(run, config, p, task.test, task.train), check=_check_step)
        units[key] = {"step": step, **doc}
    run.report("snapshots", n, n, {})
    return _result(run, config, units)


def _result(run: Run, config: Mapping[str, Any], units: Mapping[str, dict]) -> RunResult:
    net = units["network"]
    docs = [units[f"step-{s:07d}"] for s in net["steps"]]
    shuffle, k = config["shuffle"], config["k"]
    rows, pairs = [], []
    for d in docs:
        c, m = d["clusters"], d.get("masks")
        if m is not None:
            pairs = list(m["p_specialize"])
        row = [d["step"], d["step"] / net["steps_per_epoch"], d["accuracy"], c["ncut"], c["null_mean"],
               c["z"], c["p_value"]]  # fmt: skip
        rows.append(row + ([m["iou"], *m["p_specialize"].values()] if m is not None else []))
    summary = table(
        "Modularity at each kept step", ["step", "epoch", "test accuracy", f"n-cut (k={k})",
        f"{shuffle} shuffles' mean", "z", "p", *(["IoU of the masks"] + [f"P_specialize({p})" for p in pairs]
        if pairs else [])], rows,
        note=f"n-cut of the spectral partition against {config['shuffles']} {shuffle} shuffles (z: (n-cut - "
        "mean) / std, negative = more clusterable than the shuffles; p one-sided, at least 1 / (1 + "
        "shuffles)). Masks: one per half of the classes, trained on each step's frozen network; "
        "P_specialize undefined while the network is at chance.",
    )  # fmt: skip

    def series(get) -> list[list[float]]:
        return [[d["step"], v] for d in docs if (v := get(d)) is not None]

    sections = [lines_section(
        "Clusterability over training", xlabel="training step", ylabel=f"n-cut (k={k})",
        series={"network": series(lambda d: d["clusters"]["ncut"]),
                f"{shuffle} shuffles (mean)": series(lambda d: d["clusters"]["null_mean"])},
        note="Lower n-cut = more clusterable; the network is clusterable where its line runs below the "
        "shuffles'.",
    )]  # fmt: skip
    lines = {"test accuracy": series(lambda d: d["accuracy"])}
    if pairs:
        lines["IoU of the masks"] = series(lambda d: d["masks"]["iou"] if "masks" in d else None)
        for p in pairs:
            lines[f"P_specialize({p})"] = series(lambda d, p=p: d["masks"]["p_specialize"][p] if "masks" in d
                                                 else None)  # fmt: skip
    sections.append(lines_section(
        "Accuracy and masks over training", xlabel="training step", ylabel="accuracy, IoU, P_specialize",
        series=lines, note="Masks for each half of the classes at every kept step (the same seed).",
    ))  # fmt: skip
    return RunResult(
        "training-dynamics", TITLE, run.setting, summary, (), tuple(sections), dict(config), versions(),
        run.seconds(), dict(units),
    )  # fmt: skip
