"""One optimizer update of :func:`~modscope.training.train`: forward, loss, penalties, backward, clip, step.

The loop's state (position, running sums, RNG streams) lives in :mod:`modscope.training.state` and the
driver in :mod:`modscope.training.loop`; this function touches only the model's parameters, the optimizer's
state and -- through dropout -- the global RNG, so a run is a fold of it over the batches.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from modscope.training.losses import LossFn
from modscope.training.regularizer import weight_penalty

__all__ = ["OPTIMIZERS", "Regularizer", "StepOutput", "make_optimizer", "train_step"]

#: ``(penalty_fn, weight)``: ``weight * penalty_fn(model)`` is added to the loss of every batch.
Regularizer = tuple[Callable[[nn.Module], Tensor], float]
OPTIMIZERS = ("adam", "sgd")


@dataclass(frozen=True)
class StepOutput:
    """What one update reports: the batch's task loss, its total penalty (0.0 without one), and the model's
    outputs on the batch (detached; for the accuracy)."""

    loss: float
    penalty: float
    outputs: Tensor


def make_optimizer(
    params: Sequence[nn.Parameter], optimizer: str, lr: float, momentum: float
) -> torch.optim.Optimizer:
    """``"adam"`` (betas 0.9/0.999, eps 1e-8) or ``"sgd"`` with ``momentum`` over ``params``."""
    if optimizer == "adam":
        return torch.optim.Adam(params, lr=lr)
    if optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum)
    raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {OPTIMIZERS}")


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: LossFn,
    inputs: Tensor,
    targets: Tensor,
    *,
    params: Sequence[nn.Parameter],
    l1: float = 0.0,
    l2: float = 0.0,
    regularizer: Regularizer | None = None,
    clip_grad_norm: float | None = None,
    step: int = 0,
) -> StepOutput:
    """One update in training mode on the batch ``(inputs, targets)``.

    Minimizes ``loss_fn(model(inputs), targets) + l1 * sum|W| + l2 * sum W**2 (+ weight * penalty_fn(model))``
    (weight matrices and kernels only, :func:`~modscope.training.weight_penalty`), clipping the global
    gradient norm of ``params`` to ``clip_grad_norm`` when given. ``step`` (the updates done before this one)
    only names the step in the error.

    Raises:
        ValueError: a non-finite loss (before any update, so the model keeps its last finite weights).
    """
    model.train()
    out = model(inputs)
    task = loss_fn(out, targets)
    penalty = weight_penalty(model, l1, l2) if (l1 or l2) else None
    if regularizer is not None:
        fn, weight = regularizer
        reg = weight * fn(model)
        penalty = reg if penalty is None else penalty + reg
    total = task if penalty is None else task + penalty
    value = float(task.detach())
    if not math.isfinite(value) or not bool(torch.isfinite(total.detach())):
        raise ValueError(
            f"training diverged: loss is {value} (with penalties {float(total.detach())}) at "
            f"step {step + 1}; lower lr or enable clip_grad_norm"
        )
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    if clip_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(params, clip_grad_norm)
    optimizer.step()
    return StepOutput(value, 0.0 if penalty is None else float(penalty.detach()), out.detach())
