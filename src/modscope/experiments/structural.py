"""What the structural-lens experiments share (clusterability, lesions, demo): the seeds of a network, the
MLP's config and data, its training, and the lesion section of a study.

Filan et al., "Clusterability in Neural Networks", arXiv:2103.03386.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from modscope.experiments.checks import check_int
from modscope.experiments.run import Run
from modscope.models import parse_spec
from modscope.results import lesions_section, module_name
from modscope.seeding import derive
from modscope.training import save_trained
from modscope.training.recipes import RECIPES, TaskData, load_task_data, run_recipe

__all__ = [
    "RECIPE", "NetworkSeeds", "check_k_fits", "check_mlp_config", "forward", "lesion_section", "load_task",
    "network_seeds", "steps_per_epoch", "train_mlp",
]  # fmt: skip

RECIPE = "clusterability-mlp"


class NetworkSeeds(NamedTuple):
    """The seeds of one network's random streams (see :func:`network_seeds`)."""

    train: int
    cluster: int
    lesion: int
    pairs: int
    masks: int


def network_seeds(seed: int, network: int) -> NetworkSeeds:
    """The seeds of network ``network`` under the master ``seed``: ``derive(seed, "network", network,
    purpose)`` (:func:`modscope.seeding.derive`) per purpose.

    ``train`` sets the initialization, data order and dropout (and, for ``"digits"``, the train/test
    split); ``cluster`` the partition and the shuffles; ``lesion`` and ``pairs`` the random control lesions
    of single modules and of pairs; ``masks`` the mask samples. Independent across networks, purposes and
    master seeds.
    """
    return NetworkSeeds(*(derive(seed, "network", network, p) for p in NetworkSeeds._fields))


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
        check_int(config, key, low)
    return f"mlp:{{in}}-{hidden}-{{out}}"


def load_task(dataset: str, seed: int) -> TaskData:
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


def lesion_section(
    title: str, classes: Sequence[str], study: Mapping[str, Any], pairs: Sequence[Mapping[str, Any]]
) -> dict:
    """The ``"lesions"`` section of a study (``LesionStudy.to_dict()``) and its pairs (``PairLesion``
    dicts), modules named by :func:`modscope.results.module_name`."""
    modules = study["modules"]
    names = [module_name(m["layer_name"], m["cluster"]) for m in modules]
    return lesions_section(
        title,
        classes=classes,
        modules=[
            {"name": name, **{k: m[k] for k in ("label", "p_important", "damage", "class_damage")}}
            for name, m in zip(names, modules)
        ],
        pairs=[
            {"a": names[p["a"]], "b": names[p["b"]], "interaction": p["interaction"], "p": p["p_value"]}
            for p in pairs
        ],
    )
