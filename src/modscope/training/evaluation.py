"""Loss and accuracy of a model on a data set, in eval mode and without gradients."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from modscope.checks import check_positive_int
from modscope.training.data import as_tensors, on_device
from modscope.training.losses import LossFn, correct, resolve_loss
from modscope.training.result import Evaluation

__all__ = ["evaluate", "evaluate_tensors"]


def evaluate(
    model: nn.Module, dataset: Any, *, loss: str | LossFn = "cross_entropy", batch_size: int = 1024
) -> Evaluation:
    """Mean loss and accuracy of ``model`` on ``dataset`` in eval mode, without gradients.

    ``dataset`` and ``loss`` as in :func:`~modscope.training.train`. The model's training/eval mode is
    restored afterwards.
    """
    check_positive_int(batch_size, "batch_size")
    _, loss_fn = resolve_loss(loss)
    p = next(model.parameters())
    x, y = on_device(as_tensors(dataset, "dataset"), p.device, p.dtype)
    return evaluate_tensors(model, x, y, loss_fn, batch_size)


def evaluate_tensors(model: nn.Module, x: Tensor, y: Tensor, loss_fn: LossFn, batch_size: int) -> Evaluation:
    """:func:`evaluate` on ``(N, ...)`` inputs and targets already on the model's device."""
    was_training = model.training
    model.eval()
    total, hits, scored = 0.0, 0, 0
    try:
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                xb, yb = x[i : i + batch_size], y[i : i + batch_size]
                out = model(xb)
                total += float(loss_fn(out, yb)) * len(xb)
                hit = correct(out, yb)
                if hit is not None:
                    hits += int(hit.sum())
                    scored += len(xb)
    finally:
        model.train(was_training)
    return Evaluation(loss=total / len(x), accuracy=hits / scored if scored else None, n=len(x))
