"""Hard Gumbel-sigmoid sampling of binary masks with straight-through gradients.

The reference sampler (:func:`hard_gumbel_sigmoid` of :func:`logistic_noise`) and the fused one
(:func:`masked_weight_list`: the same samples from the counter-based noise of :mod:`modscope.masks.noise`,
in the flat layout of :mod:`modscope.masks.layout`, without storing a noise tensor).

Csordás et al., "Are Neural Nets Modular?" (ICLR 2021, arXiv:2010.02066), §2: a mask entry is kept when
``sigmoid(logit + l) > 0.5`` with ``l`` logistic noise (the difference of two Gumbel variables, temperature
1); the backward pass uses the gradient of the soft ``sigmoid(logit + l)``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch import Tensor

from modscope.masks.kernels import run_kernel
from modscope.masks.layout import from_flat, to_flat
from modscope.masks.noise import _shift_keys, bits_to_uniform, noise_bits, noise_keys

__all__ = [
    "bits_to_uniform",
    "from_flat",
    "hard_gumbel_sigmoid",
    "keep_probabilities",
    "logistic_noise",
    "masked_weight_list",
    "masked_weights",
    "noise_bits",
    "noise_keys",
    "to_flat",
]

# torch.rand can return exactly 0; logit(0) = -inf would still threshold correctly but a finite clamp keeps
# every intermediate finite (the distortion, 1e-7 of probability mass, is far below sampling error).
_EPS = 1e-7


def logistic_noise(
    shape: tuple[int, ...],
    generator: torch.Generator,
    *,
    dtype: torch.dtype = torch.float32,
    out: Tensor | None = None,
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


def keep_probabilities(logits: Tensor) -> tuple[Tensor, Tensor]:
    """``sigmoid(logits)`` of ``(T, N)`` logits, and per row how many the read-out ``logit > 0`` keeps.

    One pass over the logits: the probabilities feed both kernels of :func:`masked_weight_list` (forward
    threshold, backward soft gradient), so a training step computes the sigmoid once, not in each kernel.
    """
    return run_kernel("probabilities", logits.numel(), logits.detach())


class _MaskedWeights(torch.autograd.Function):
    """Per parameter, ``weight * hard_gumbel_sigmoid(logits, logit(u))`` without a transcendental per sample.

    With ``p = sigmoid(logit)``, ``q = 1 - p``: a sample keeps a weight iff ``u > q`` (integer compare of the
    bits against a per-logit threshold), and the soft sample's derivative is
    ``sigmoid'(logit + logit(u)) = u (1 - u) p q / (q + u (p - q))**2``; both passes recompute the 16 bits
    from the keys (:func:`noise_bits`), so nothing of size ``T * S * N`` besides the outputs is stored. One
    output per parameter (``(T, S, *shape)`` in the layout of :func:`to_flat`), so neither a split nor its
    backward concatenation of ``T * S * N`` gradients, nor a copy of a transposed gradient, is needed.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        logits: Tensor,
        param_keys: Tensor,
        weight: Tensor,
        shapes: tuple[tuple[int, ...], ...],
        finite: bool | None,
        probs: Tensor,
    ):
        if finite is None:
            finite = bool(torch.isfinite(weight).all())
        keep = "keep" if finite else "keep_where"
        pr = probs.unsqueeze(1)
        outs = []
        for shape, k, (start, end) in zip(shapes, param_keys, _bounds(shapes), strict=True):
            size = k.shape[0] * k.shape[1] * (end - start)
            outs.append(from_flat(run_kernel(keep, size, k, pr[..., start:end], weight[start:end]), shape))
        return tuple(outs)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # type: ignore[override]
        _, param_keys, weight, shapes, _, probs = inputs
        ctx.save_for_backward(param_keys, weight, probs)
        ctx.shapes = shapes

    @staticmethod
    def backward(ctx, *grads: Tensor):  # type: ignore[override]
        param_keys, weight, probs = ctx.saved_tensors
        parts = []
        bounds = _bounds(ctx.shapes)
        for shape, grad, k, (start, end) in zip(ctx.shapes, grads, param_keys, bounds, strict=True):
            if grad is None:
                parts.append(probs.new_zeros(probs.shape[0], end - start))
            else:
                g = to_flat(grad, shape)
                parts.append(run_kernel("soft_grad", g.numel(), k, probs[:, start:end], g, weight[start:end]))
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0], None, None, None, None, None


def _bounds(shapes: Sequence[tuple[int, ...]]) -> list[tuple[int, int]]:
    ends = list(itertools.accumulate(math.prod(s) for s in shapes))
    return list(zip([0, *ends[:-1]], ends, strict=True))


def _param_keys(keys: Tensor, shapes: Sequence[tuple[int, ...]]) -> Tensor:
    """``(P, T, S, 2)``: for each parameter, the keys whose index 0 is the parameter's first weight."""
    starts = torch.tensor([b[0] for b in _bounds(shapes)], dtype=torch.int64, device=keys.device)
    return _shift_keys(keys.unsqueeze(0), starts.view(-1, 1, 1))


def masked_weight_list(
    logits: Tensor,
    keys: Tensor,
    weight: Tensor,
    shapes: Sequence[tuple[int, ...]],
    finite: bool | None = None,
    probs: Tensor | None = None,
) -> tuple[Tensor, ...]:
    """:func:`masked_weights` cut into parameters: one ``(T, S, *shape)`` tensor per entry of ``shapes``
    (whose sizes add up to ``N``, in order), each parameter's slice of ``logits``, the noise and ``weight``
    in the layout of :func:`to_flat` (2-d parameters transposed). ``finite``: whether all weights are finite
    (checked when None; a caller reusing ``weight`` passes it once known). ``probs``: ``sigmoid(logits)``
    when the caller has it (:func:`keep_probabilities`), else computed here."""
    shapes = tuple(tuple(s) for s in shapes)
    if sum(math.prod(s) for s in shapes) != weight.numel():
        raise ValueError(f"shapes {shapes} do not add up to {weight.numel()} weights")
    if weight.numel() > 2**31:
        raise ValueError(f"at most 2**31 masked weights, got {weight.numel()}")
    if probs is None:
        probs = torch.sigmoid(logits.detach())
    # keys per parameter, derived once for the forward and the backward pass
    return _MaskedWeights.apply(logits, _param_keys(keys, shapes), weight, shapes, finite, probs)


def masked_weights(logits: Tensor, keys: Tensor, weight: Tensor) -> Tensor:
    """Sampled masked weights for every task and sample at once.

    Args:
        logits: ``(T, N)`` mask logits, one row per task, ``N`` = all masked scalars concatenated.
        keys: ``(T, S, 2)`` int32 noise keys (:func:`noise_keys`), one per task and sample; sample ``(t, s)``
            uses ``u = bits_to_uniform(noise_bits(keys[t, s], N))``, equivalent to logistic noise
            ``logit(u)`` in :func:`hard_gumbel_sigmoid`.
        weight: ``(N,)`` the frozen weights, concatenated in the same order.

    Returns:
        ``(T, S, N)`` weights with the dropped entries zeroed; gradients flow to ``logits`` only, equal to
        those of ``weight * sigmoid(logits + logit(u))`` (straight-through).
    """
    return masked_weight_list(logits, keys, weight, [(weight.numel(),)])[0]
