"""Training losses and accuracy, for one class per example or several digit classes per example.

Targets decide the task:

* ``(N,)`` integer class ids, outputs ``(N, C)`` logits: ordinary classification.
* ``(N, D)`` integer class ids, outputs ``(N, D * C)``: ``D`` classifications per example -- the digits of
  the arithmetic tasks of Csordás et al. (arXiv:2010.02066), e.g. ``(a + b) mod 100`` as two digits,
  ``D = 2``, ``C = 10``. The outputs are read as ``outputs.reshape(N, D, C)`` (digit-major: logits
  ``d * C .. d * C + C - 1`` belong to digit ``d``), the loss is the cross-entropy averaged over examples
  *and* digits, and an example counts as correct only when all ``D`` digits are.
* Class id ``-100`` (:data:`IGNORE_INDEX`, PyTorch's ``ignore_index``) marks padding, e.g. the positions
  after the end of a target sequence: it adds nothing to the loss (the mean is over the other entries) and
  counts as right in the accuracy.
* Float targets with ``loss="mse"``: regression, mean squared error over all entries, no accuracy.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["IGNORE_INDEX", "LOSSES", "LossFn", "correct", "cross_entropy", "mse", "resolve_loss"]

LossFn = Callable[[Tensor, Tensor], Tensor]
IGNORE_INDEX = -100


def _digits(outputs: Tensor, targets: Tensor) -> Tensor:
    """``outputs`` as ``(N, C)`` for ``(N,)`` targets or ``(N, D, C)`` for ``(N, D)`` targets."""
    if targets.ndim == 1:
        if outputs.ndim != 2:
            raise ValueError(f"class-id targets (N,) need outputs (N, C), got outputs {tuple(outputs.shape)}")
        return outputs
    if targets.ndim == 2:
        n, d = targets.shape
        if outputs.ndim != 2 or outputs.shape[1] % d:
            raise ValueError(
                f"targets of shape {tuple(targets.shape)} ({d} classes per example) need outputs "
                f"(N, {d} * C), "
                f"got {tuple(outputs.shape)}"
            )
        return outputs.reshape(n, d, outputs.shape[1] // d)
    raise ValueError(f"class-id targets must have shape (N,) or (N, D), got {tuple(targets.shape)}")


def cross_entropy(outputs: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy; for ``(N, D)`` targets the mean over examples and digits (see module doc)."""
    if targets.is_floating_point():
        raise ValueError(f"cross_entropy needs integer class ids as targets, got {targets.dtype}")
    logits = _digits(outputs, targets)
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX
    )


def mse(outputs: Tensor, targets: Tensor) -> Tensor:
    """Mean squared error over all entries; ``outputs`` and ``targets`` of the same shape."""
    if outputs.shape != targets.shape:
        raise ValueError(
            f"mse needs outputs and targets of the same shape, got {tuple(outputs.shape)} and "
            f"{tuple(targets.shape)}"
        )
    return F.mse_loss(outputs, targets.to(outputs.dtype))


LOSSES: dict[str, LossFn] = {"cross_entropy": cross_entropy, "mse": mse}


def resolve_loss(loss: str | LossFn) -> tuple[str, LossFn]:
    """``(name, function)`` for a loss name in :data:`LOSSES` or a callable ``loss(outputs, targets)``."""
    if callable(loss):
        return getattr(loss, "__qualname__", type(loss).__name__), loss
    if isinstance(loss, str) and loss in LOSSES:
        return loss, LOSSES[loss]
    raise ValueError(f"unknown loss {loss!r}; choose one of {sorted(LOSSES)} or pass a callable")


def correct(outputs: Tensor, targets: Tensor) -> Tensor | None:
    """Boolean ``(N,)``: example correct (every digit's argmax right), or ``None`` for non-class targets."""
    if targets.is_floating_point() or targets.ndim not in (1, 2):
        return None
    try:
        logits = _digits(outputs, targets)
    except ValueError:
        return None
    hit = (logits.argmax(-1) == targets) | (targets == IGNORE_INDEX)
    return hit if hit.ndim == 1 else hit.all(-1)


def accuracy(outputs: Tensor, targets: Tensor) -> float | None:
    hit = correct(outputs, targets)
    return None if hit is None else float(hit.to(torch.float64).mean())
