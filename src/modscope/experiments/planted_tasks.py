"""The two planted tasks: disjoint inputs, disjoint outputs, labels from a seeded teacher of the same family.

Inputs are standard normal, shaped as :func:`~modscope.experiments.planted_nets.input_shape`; task A reads
the first ``m`` input features (channels for the CNN) and writes the first ``C`` outputs, task B the other
``m`` features and the other ``C`` outputs. The labels come from a *teacher*: a random network of the same
family with the planted modules and no cross weight (``c = 0``), so task A's label depends on A's inputs
only (the transformer's LayerNorm excepted, :mod:`~modscope.experiments.planted_nets`) and the student's
architecture can express the rule exactly. Each task's label is the argmax of the
teacher's ``C`` logits after subtracting their mean over the drawn examples, which keeps the classes
roughly balanced (chance ``1 / C``). Nothing is downloaded; everything follows from the seed.

Targets are ``(N, 2)`` class ids ``[y_A, y_B]`` for training (the network's ``2C`` outputs read as two
digits of ``C`` classes, :func:`modscope.training.train`), and per task ``y_A`` or ``C + y_B`` (a class id
in the task's half of the outputs) for the masks and their evaluation (:func:`task_loss`,
:func:`task_accuracy`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from modscope.experiments.planted_nets import CrossTalk, build, input_shape
from modscope.seeding import derive, torch_generator

__all__ = ["PlantedData", "make_data", "task_accuracy", "task_loss", "task_sets"]


class PlantedData(NamedTuple):
    """Train and test examples: inputs ``(N, *input_shape)``, targets ``(N, 2)`` = ``[y_A, y_B]``."""

    train: tuple[Tensor, Tensor]
    test: tuple[Tensor, Tensor]
    classes: int


def make_data(
    family: str, *, features: int, hidden: int, classes: int, length: int, n_train: int, n_test: int,
    seed: int,
) -> PlantedData:
    """The two tasks' examples for ``family``: inputs from ``torch_generator(seed, "inputs")``, the teacher
    initialized from ``derive(seed, "teacher")``."""
    shape = input_shape(family, features=features, length=length)
    x = torch.randn(n_train + n_test, *shape, generator=torch_generator(seed, "inputs"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive(seed, "teacher"))
        teacher = CrossTalk(build(family, features=features, hidden=hidden, classes=classes), 0.0).bake()
    teacher.eval()
    with torch.no_grad():
        logits = teacher(x).reshape(len(x), 2, classes)
    y = (logits - logits.mean(dim=0)).argmax(dim=-1)
    return PlantedData((x[:n_train], y[:n_train]), (x[n_train:], y[n_train:]), classes)


def task_sets(data: tuple[Tensor, Tensor], classes: int) -> dict[str, tuple[Tensor, Tensor]]:
    """``{"A": (x, y_A), "B": (x, C + y_B)}``: each task's targets as ids in its half of the outputs."""
    x, y = data
    return {"A": (x, y[:, 0]), "B": (x, classes + y[:, 1])}


def _own_half(outputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Each example's logits of its task's half (``(B, C)``) and its class id within that half."""
    n, width = outputs.shape
    classes = width // 2
    halves = outputs.reshape(n, 2, classes)
    return halves[torch.arange(n), targets // classes], targets % classes


def task_loss(outputs: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy of each example's task over that task's ``C`` outputs only (batch mean)."""
    logits, y = _own_half(outputs, targets)
    return F.cross_entropy(logits, y)


def task_accuracy(outputs: Tensor, targets: Tensor) -> Tensor:
    """Per example (``(B,)`` floats): 1 when the argmax of its task's outputs is its class."""
    logits, y = _own_half(outputs, targets)
    return (logits.argmax(dim=-1) == y).float()
