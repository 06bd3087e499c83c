"""Hard Gumbel-sigmoid sampling of binary masks with straight-through gradients.

Csordás et al., "Are Neural Nets Modular?" (ICLR 2021, arXiv:2010.02066), §2: a mask entry is kept when
``sigmoid(logit + l) > 0.5`` with ``l`` logistic noise (the difference of two Gumbel variables, temperature 1);
the backward pass uses the gradient of the soft ``sigmoid(logit + l)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["hard_gumbel_sigmoid", "logistic_noise", "masked_weights"]

# torch.rand can return exactly 0; logit(0) = -inf would still threshold correctly but a finite clamp keeps
# every intermediate finite (the distortion, 1e-7 of probability mass, is far below sampling error).
_EPS = 1e-7


def logistic_noise(
    shape: tuple[int, ...], generator: torch.Generator, *, dtype: torch.dtype = torch.float32, out: Tensor | None = None
) -> Tensor:
    """Standard logistic noise ``logit(u)``, ``u ~ U(0, 1)``, drawn from ``generator``.

    ``out`` (optional) receives the result in place, which lets a caller fill slices of one fused buffer.
    """
    u = torch.rand(shape, generator=generator, dtype=dtype, out=out)
    return torch.special.logit(u, eps=_EPS, out=u)


def hard_gumbel_sigmoid(logits: Tensor, noise: Tensor) -> Tensor:
    """Binary sample ``1[logits + noise > 0]`` whose gradient is that of ``sigmoid(logits + noise)``.

    Shapes broadcast; the result has the broadcast shape and ``logits``' dtype. The forward value is exactly 0
    or 1, so a sample evaluates the network with a true binary mask.
    """
    soft = torch.sigmoid(logits + noise)
    hard = (soft > 0.5).to(soft.dtype)
    return hard + (soft - soft.detach())


class _MaskedWeights(torch.autograd.Function):
    """``weight * hard_gumbel_sigmoid(logits, noise)`` in one pass forward and one pass backward.

    The unfused expression keeps four ``(T, S, N)`` intermediates alive for autograd; for a 2M-weight network
    and 12 samples that is the dominant cost of a mask step, so the sample is recomputed from ``z`` instead.
    """

    @staticmethod
    def forward(logits: Tensor, noise: Tensor, weight: Tensor) -> Tensor:  # type: ignore[override]
        z = noise.add_(logits.unsqueeze(-2))  # noise is a fresh buffer owned by the caller: reuse it
        return torch.where(z > 0, weight, torch.zeros((), dtype=weight.dtype))

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # type: ignore[override]
        _, z, weight = inputs
        ctx.save_for_backward(z, weight)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        z, weight = ctx.saved_tensors
        soft = torch.sigmoid(z)
        # d/dlogit of weight * sigmoid(z) = weight * s (1 - s), summed over the samples axis.
        grad_logits = (grad * soft * (1 - soft)).sum(-2) * weight
        return grad_logits, None, None


def masked_weights(logits: Tensor, noise: Tensor, weight: Tensor) -> Tensor:
    """Sampled masked weights for every task and sample at once.

    Args:
        logits: ``(T, N)`` mask logits, one row per task, ``N`` = all masked scalars concatenated.
        noise: ``(T, S, N)`` logistic noise, one slice per sample; **overwritten** (used as scratch).
        weight: ``(N,)`` the frozen weights, concatenated in the same order.

    Returns:
        ``(T, S, N)`` weights with the dropped entries zeroed; gradients flow to ``logits`` only
        (straight-through, as :func:`hard_gumbel_sigmoid`).
    """
    return _MaskedWeights.apply(logits, noise, weight)
