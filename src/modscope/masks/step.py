"""One step of mask training: the task losses under sampled masks, their gradient, and the logit update.

:func:`~modscope.masks.train_masks` (the driver) folds these over the steps; they touch nothing but the
logits and the optimizer's state. Tasks never interact: each loss depends on its own logits only, the
penalty and the clipping are per task, and Adam is element-wise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from modscope.masks.batches import Batch
from modscope.masks.forward import Method, grouped_forward
from modscope.masks.gates import Gate
from modscope.masks.penalty import Penalty

__all__ = ["MaskedLosses", "clip_per_task", "mask_update"]


@dataclass(frozen=True)
class MaskedLosses:
    """A frozen model seen through mask logits: ``weight`` ``(N,)`` holds the masked parameters ``names``
    (of ``shapes``) in the flat layout of :func:`~modscope.masks.sampling.to_flat`; ``samples`` mask samples
    per task and step, drawn by ``gate``; ``loss_fn(outputs, targets)`` the loss of task ``tasks[t]``."""

    model: nn.Module
    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    weight: Tensor
    finite: bool
    samples: int
    gate: Gate
    loss_fn: Callable[[Any, Tensor], Tensor]
    tasks: tuple[str, ...]

    def losses(self, logits: Tensor, batches: Sequence[Batch], keys: Tensor, aux: Any, how: Method) -> Tensor:
        """``(T,)`` task losses of one step: task ``t``'s batch split into ``samples`` groups, group ``s``
        under mask sample ``(t, s)`` (``keys`` ``(T, S, 2)``; ``aux`` from the gate's ``precompute``)."""
        sampled = self.gate.sample(logits, keys, self.weight, self.shapes, self.finite, aux)
        substituted = dict(zip(self.names, sampled, strict=True))
        outputs = grouped_forward(self.model, substituted, [args for args, _ in batches], self.samples, how)
        task_losses = []
        for t, (out, (_, targets)) in enumerate(zip(outputs, batches, strict=True)):
            loss = self.loss_fn(out, targets)
            if not isinstance(loss, Tensor) or loss.numel() != 1:
                raise ValueError(
                    f"loss_fn must return a scalar tensor, got {loss!r} for task {self.tasks[t]!r}"
                )
            task_losses.append(loss.reshape(()))
        return torch.stack(task_losses)

    def gradient(
        self, logits: Tensor, batches: Sequence[Batch], keys: Tensor, aux: Any, how: Method
    ) -> tuple[Tensor, Tensor]:
        """``(grad, losses)``: the gradient ``(T, N)`` of the summed task losses in the logits, and the
        ``(T,)`` losses (detached)."""
        task_losses = self.losses(logits, batches, keys, aux, how)
        (grad,) = torch.autograd.grad(task_losses.sum(), logits)
        return grad, task_losses.detach()


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
