"""The checks :func:`~modscope.training.train` runs on its arguments before any work."""

from __future__ import annotations

from typing import Any

from modscope.checks import check_positive_int, check_real
from modscope.seeding import check_seed
from modscope.training.prune import PruneSchedule
from modscope.training.step import OPTIMIZERS, Regularizer

__all__ = ["check_regularizer", "check_train_arguments"]


def check_train_arguments(
    *,
    epochs: Any,
    steps: Any,
    batch_size: Any,
    optimizer: Any,
    lr: Any,
    momentum: Any,
    l1: Any,
    l2: Any,
    clip_grad_norm: Any,
    seed: Any,
    eval_batch_size: Any,
    checkpoint_every: Any,
    prune: Any,
) -> None:
    """ValueError naming the parameter and its value for anything :func:`train` cannot run with.

    Every number must be finite: ``lr`` and ``clip_grad_norm`` positive, ``momentum`` in [0, 1) (and 0 with
    Adam), ``l1``/``l2`` non-negative; lengths, batch sizes and ``checkpoint_every`` positive ints.
    """
    if epochs is not None and steps is not None:
        raise ValueError(f"give epochs or steps, not both (got epochs={epochs!r}, steps={steps!r})")
    if epochs is None and steps is None:
        raise ValueError("give the length of the run: epochs=... or steps=...")
    if epochs is not None:
        check_positive_int(epochs, "epochs")
    if steps is not None:
        check_positive_int(steps, "steps")
    check_positive_int(batch_size, "batch_size")
    check_positive_int(eval_batch_size, "eval_batch_size")
    check_positive_int(checkpoint_every, "checkpoint_every")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {OPTIMIZERS}")
    check_real(lr, "lr", positive=True)
    check_real(momentum, "momentum", below=1.0)
    if momentum and optimizer != "sgd":
        raise ValueError(f"momentum={momentum!r} is for optimizer='sgd', not {optimizer!r}")
    check_real(l1, "l1")
    check_real(l2, "l2")
    if clip_grad_norm is not None:
        check_real(clip_grad_norm, "clip_grad_norm", positive=True)
    check_seed(seed)
    if prune is not None and not isinstance(prune, PruneSchedule):
        raise TypeError(f"prune must be a PruneSchedule, got {type(prune).__name__}")


def check_regularizer(regularizer: Any) -> Regularizer | None:
    """``(penalty_fn, float(weight))``, ``None`` for ``None``; ValueError for anything but such a pair."""
    if regularizer is None:
        return None
    if not (isinstance(regularizer, (tuple, list)) and len(regularizer) == 2 and callable(regularizer[0])):
        raise ValueError(f"regularizer must be a pair (penalty_fn, weight), got {regularizer!r}")
    return regularizer[0], check_real(regularizer[1], "regularizer weight")
