"""One update of mask training: the penalty's gradient, per-task clipping, and the optimizer step.

:func:`~modscope.masks.train_masks` (the driver) folds it over the steps, after
:meth:`~modscope.masks.MaskedModel.task_losses`; it touches nothing but the logits and the optimizer's
state. Tasks never interact: each loss depends on its own logits only, the penalty and the clipping are per
task, and Adam is element-wise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from modscope.masks.penalty import Penalty

__all__ = ["clip_per_task", "mask_update"]


def clip_per_task(grad: Tensor, max_norm: float) -> None:
    """Scale each row of ``grad`` ``(T, N)`` in place to norm at most ``max_norm``.

    Per task, unlike ``clip_grad_norm_``: a joint norm would let one task's gradient shrink another's.
    """
    norms = torch.linalg.vector_norm(grad, dim=1, keepdim=True)
    grad.mul_((max_norm / (norms + 1e-6)).clamp(max=1.0))


def mask_update(
    logits: Tensor,
    grad: Tensor,
    task_losses: Tensor,
    optimizer: torch.optim.Optimizer,
    *,
    penalty: Penalty,
    batch_sizes: Tensor,
    max_grad_norm: float | None,
    tasks: Sequence[str],
    step: int,
) -> list[float]:
    """Add the penalty's gradient to ``grad``, clip it per task, and take one optimizer step on ``logits``.

    Returns the task losses as floats. Raises ValueError, before touching the logits, when a loss is not
    finite (naming the task, the value and ``step``).
    """
    # the penalty's gradient is added here, not through autograd of the loss: a closed form (the default
    # penalty's is a constant) saves passes over the (T, N) logits
    penalty.add_grad(grad, logits, batch_sizes)
    values = task_losses.tolist()
    bad = [(t, v) for t, v in zip(tasks, values, strict=True) if not math.isfinite(v)]
    if bad:
        raise ValueError(f"loss of task {bad[0][0]!r} is {bad[0][1]} at step {step}; masks not updated")
    if max_grad_norm is not None:
        clip_per_task(grad, max_grad_norm)
    logits.grad = grad
    optimizer.step()
    logits.grad = None
    return values
