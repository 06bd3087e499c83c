"""Sparsity penalties of mask training: the term that pushes each task's mask to keep few weights.

Separate from the gate distribution (:mod:`modscope.masks.gates`), as captum separates a gate's
distribution from its regularizer. A :class:`Penalty` maps ``(T, N)`` logits and the ``(T,)`` batch sizes to
one penalty per task, added to that task's loss; :func:`~modscope.masks.train_masks` only needs its gradient
(:meth:`Penalty.add_grad`), which a penalty may compute in closed form.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import Tensor

from modscope.checks import check_real

__all__ = ["ExpectedKeptPenalty", "LogitPenalty", "Penalty"]


class Penalty(ABC):
    """``penalty(logits, batch_sizes) -> (T,)``: the sparsity term of each task's loss."""

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """The penalty's settings (JSON), recorded in the checkpoint and the trained masks' ``hparams``."""

    @abstractmethod
    def __call__(self, logits: Tensor, batch_sizes: Tensor) -> Tensor:
        """Per task, the penalty of ``(T, N)`` ``logits`` for batches of ``batch_sizes`` ``(T,)``."""

    def add_grad(self, grad: Tensor, logits: Tensor, batch_sizes: Tensor) -> None:
        """Add the gradient of the summed penalty with respect to ``logits`` to ``grad`` ``(T, N)``, in place
        (by autograd unless a penalty knows it in closed form)."""
        with torch.enable_grad():
            x = logits.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self(x, batch_sizes).sum(), x)
        grad.add_(g)


class LogitPenalty(Penalty):
    """``beta * sum(logits_t) / B_t`` per task (the default; Csordás et al. 2021, §2: the regularizer on the
    sum of the mask logits, scaled by the batch size ``B_t``; the papers use ``beta`` 1e-4).

    Its gradient is the constant ``beta / B_t``, added directly (no pass over the logits through autograd).
    """

    def __init__(self, beta: float):
        self.beta = check_real(beta, "beta")

    def config(self) -> dict[str, Any]:
        return {"beta": self.beta}

    def __call__(self, logits: Tensor, batch_sizes: Tensor) -> Tensor:
        return self.beta * logits.sum(-1) / batch_sizes

    def add_grad(self, grad: Tensor, logits: Tensor, batch_sizes: Tensor) -> None:
        if self.beta:
            grad.add_((self.beta / batch_sizes).unsqueeze(1))

    def __repr__(self) -> str:
        return f"LogitPenalty(beta={self.beta!r})"


class ExpectedKeptPenalty(Penalty):
    """``beta * sum(sigmoid(logits_t)) / B_t`` per task: the expected number of kept weights under the
    Gumbel-sigmoid gate (the expected L0 norm of the mask, Louizos et al. 2018, arXiv:1712.01312, eq. 3 for
    temperature 1 and no stretch). Bounded, unlike :class:`LogitPenalty`: a weight whose logit is already
    far below 0 is no longer pushed down."""

    def __init__(self, beta: float):
        self.beta = check_real(beta, "beta")

    def config(self) -> dict[str, Any]:
        return {"penalty": "expected_kept", "beta": self.beta}

    def __call__(self, logits: Tensor, batch_sizes: Tensor) -> Tensor:
        return self.beta * torch.sigmoid(logits).sum(-1) / batch_sizes

    def __repr__(self) -> str:
        return f"ExpectedKeptPenalty(beta={self.beta!r})"
