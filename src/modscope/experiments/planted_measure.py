"""One planted network, trained at one cross-talk and read by both lenses: the recovery scores.

Structural lens (Filan et al., arXiv:2103.03386): the spectral partition of the weight graph into ``k = 2``
clusters (:func:`modscope.cluster.spectral_partition`), scored by the adjusted Rand index (ARI,
scikit-learn) of its labels against the planted modules over every node with edges (inputs, hidden units
and outputs: all have a planted module), and its n-cut.

Functional lens (Csordás et al., arXiv:2010.02066): one weight mask per task (:func:`modscope.masks.
train_masks`), scored by

* ``iou``: IoU of each task's mask with its planted module (the weights joining two of the module's units),
  averaged over the two tasks; bounded by the mask's size, so a sparse mask scores low even inside its
  module, hence also
* ``inside``: the share of each mask's kept weights inside its planted module (1: the mask never leaves
  it), averaged over the tasks;
* ``p_specialize``: ``P_specialize(A|B)`` and ``(B|A)`` (chance ``1 / C``) averaged, ``None`` when the
  network is not above chance on both tasks; it measures specialization, not *which* weights;
* ``ari_units``: ARI of the masks' unit assignment (:func:`modscope.bridge.assignment`: the task using a
  unit, or "shared") against the planted modules, over the units some mask uses.

Connected (the scores of :func:`modscope.bridge.bridge`, by :func:`modscope.bridge.observe`):
``ari_bridge``, the ARI of the clusters against the masks' unit assignment (the bridge's own rule: over the
units used by exactly one task; no null is drawn here), and
``one_task``, the share of the used units that exactly one task uses -- the units that ARI stands on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from modscope.experiments.checks import finite_or_none
from modscope.experiments.planted_nets import CrossTalk, build, input_shape, module_weights, node_modules
from modscope.experiments.planted_tasks import make_data, task_accuracy, task_loss, task_sets
from modscope.progress import Progress, labelled
from modscope.seeding import derive

__all__ = ["SCORES", "measure"]

#: lens -> the scores of a unit under ``doc[lens]``.
SCORES = {
    "structural": ("ari", "ncut"),
    "functional": ("iou", "inside", "p_specialize", "ari_units"),
    "connected": ("ari_bridge", "one_task"),
}


def measure(
    family: str, c: float, config: Mapping[str, Any], seed: int, *, progress: Progress | None = None
) -> dict[str, Any]:
    """Train network ``family`` at cross-talk ``c`` and score both lenses (module docstring).

    Seeds: the data and teacher from ``derive(seed, "data")``, the initialization from ``derive(seed,
    "init")``, the batch order ``derive(seed, "train")``, the partition ``derive(seed, "cluster")``, the
    masks ``derive(seed, "masks")`` -- the same for every ``c``, so the curves compare the same network
    and data across cross-talk (paired replicates)."""
    from sklearn.metrics import adjusted_rand_score

    from modscope.bridge import NONE, check_partition, observe, usage_of
    from modscope.cluster import spectral_partition
    from modscope.graph import WeightGraph
    from modscope.masks import evaluate_masks, train_masks
    from modscope.training import train

    size = {k: config[k] for k in ("features", "hidden", "classes")}
    data = make_data(family, **size, length=config["length"], n_train=config["n_train"],
                     n_test=config["n_test"], seed=derive(seed, "data"))  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive(seed, "init"))
        wrapped = CrossTalk(build(family, **size), c)
    train(wrapped, data.train, steps=config["steps"], batch_size=128, lr=config["lr"],
          seed=derive(seed, "train"), progress=labelled(progress, "train"))  # fmt: skip
    net = wrapped.bake().eval()
    test = task_sets(data.test, data.classes)
    with torch.no_grad():
        outputs = net(data.test[0])
    accuracy = {t: float(task_accuracy(outputs, y).mean()) for t, (_, y) in test.items()}

    shape = input_shape(family, features=config["features"], length=config["length"])
    graph = WeightGraph.from_module(net, shape)
    planted = node_modules(graph.layer_sizes)
    partition = spectral_partition(graph, k=2, seed=derive(seed, "cluster"))
    clustered = partition.labels >= 0
    structural = {"ari": float(adjusted_rand_score(planted[clustered], partition.labels[clustered])),
                  "ncut": float(partition.ncut)}  # fmt: skip

    masks = train_masks(
        net, task_sets(data.train, data.classes), task_loss, steps=config["mask_steps"], beta=config["beta"],
        lr=config["mask_lr"], init=config["mask_init"], batch_size=128, seed=derive(seed, "masks"),
        progress=labelled(progress, "masks"),
    )  # fmt: skip
    modules = module_weights(net, masks.param_names)
    iou, inside = [], []
    for task in masks.tasks:
        kept = {n: masks[task][n] for n in masks.param_names}
        both = sum(int((kept[n] & modules[task][n]).sum()) for n in kept)
        union = sum(int((kept[n] | modules[task][n]).sum()) for n in kept)
        n_kept = sum(int(kept[n].sum()) for n in kept)
        iou.append(both / union if union else math.nan)
        inside.append(both / n_kept if n_kept else math.nan)
    table = evaluate_masks(net, masks, {t: [s] for t, s in test.items()}, metric=task_accuracy)
    usage = usage_of(graph, masks, model=net)
    used = usage.assignment
    some = used != NONE  # a unit no mask uses says nothing about either module
    functional = {
        "iou": float(np.mean(iou)), "inside": float(np.mean(inside)),
        "p_specialize": _p_specialize(table, 1 / data.classes),
        "ari_units": float(adjusted_rand_score(planted[some], used[some])) if some.any() else None,
        "kept": {t: masks[t].total_kept / masks[t].total_size for t in masks.tasks},
    }  # fmt: skip
    lenses = observe(*check_partition(graph, partition), usage)  # the bridge's scores, without nulls
    return {
        "family": family, "c": float(c), "accuracy": accuracy, "structural": structural,
        "functional": functional,
        "connected": {"ari_bridge": finite_or_none(lenses.scores["ari"]), "one_task": _share(used)},
    }  # fmt: skip


def _p_specialize(table: Any, chance: float) -> float | None:
    from modscope.masks import p_specialize

    try:
        both = p_specialize(table, "A", "B", chance=chance), p_specialize(table, "B", "A", chance=chance)
    except ValueError:  # the full network at chance on a task: the relative drops are undefined
        return None
    return sum(both) / 2


def _share(assignment: np.ndarray) -> float | None:
    """The share of the used units that one task alone uses."""
    from modscope.bridge import NONE

    one, used = int(np.count_nonzero(assignment >= 0)), int(np.count_nonzero(assignment != NONE))
    return one / used if used else None

