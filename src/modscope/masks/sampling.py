"""Hard Gumbel-sigmoid sampling of binary masks with straight-through gradients.

Csordás et al., "Are Neural Nets Modular?" (ICLR 2021, arXiv:2010.02066), §2: a mask entry is kept when
``sigmoid(logit + l) > 0.5`` with ``l`` logistic noise (the difference of two Gumbel variables, temperature
1);
the backward pass uses the gradient of the soft ``sigmoid(logit + l)``.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "bits_to_uniform",
    "from_flat",
    "hard_gumbel_sigmoid",
    "logistic_noise",
    "masked_weight_list",
    "masked_weights",
    "to_flat",
    "uniform_bits",
]

log = logging.getLogger(__name__)

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


def uniform_bits(shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    """``int16`` uniform random integers of ``shape``; ``u = (bits + 32768.5) / 65536`` is uniform on (0, 1).

    Drawing fresh noise for every sample of every weight each step dominates a mask step on CPU, so the bits
    come from numpy's SFC64 (about 5x faster than torch's Mersenne twister), seeded from ``generator``: the
    torch generator stays the single, checkpointable source of randomness. 16 bits resolve keep probabilities
    to 2**-16 and make logits beyond +-11 deterministic, far below the sampling error of any mask statistic.
    """
    n = math.prod(shape)
    seed = int(torch.randint(0, 2**62, (), generator=generator))
    raw = np.random.SFC64(seed).random_raw((n + 3) // 4)
    return torch.from_numpy(raw.view(np.int16)[:n]).view(shape)


def bits_to_uniform(bits: Tensor) -> Tensor:
    """The uniform variates (float32, in (0, 1)) that :func:`uniform_bits` stands for."""
    return (bits.to(torch.float32) + 32768.5) / 65536.0


def _threshold(logits: Tensor) -> Tensor:
    """Per-logit int32 threshold: a sample keeps a weight iff ``bits > threshold`` (see :func:`_keep`)."""
    # keep iff u = (bits + 32768.5) / 65536 > q = sigmoid(-logit)  <=>  bits > floor(65536 q - 32768.5)
    return torch.floor(torch.sigmoid(-logits) * 65536.0 - 32768.5).to(torch.int32)


def _keep(bits: Tensor, threshold: Tensor, weight: Tensor) -> Tensor:
    """``weight * (bits > threshold)``: ``(T, S, n)`` bits, ``(T, 1, n)`` thresholds, ``(n,)`` finite weights.

    A product, not ``where``: compiled, it vectorizes (``where`` does not, 6x slower); non-finite weights go
    to :func:`_keep_where`, so a dropped entry is exactly 0 either way.
    """
    return weight * (bits > threshold)


def _keep_where(bits: Tensor, threshold: Tensor, weight: Tensor) -> Tensor:
    return torch.where(bits > threshold, weight, torch.zeros((), dtype=weight.dtype))


def _soft_grad(bits: Tensor, logits: Tensor, grad: Tensor, weight: Tensor) -> Tensor:
    """``sum_s grad[:, s] * weight * sigmoid'(logit + logit(u_s))`` for ``(T, S, n)`` bits and grad,
    ``(T, n)`` logits and ``(n,)`` weights; returns ``(T, n)``. With ``p = sigmoid(logit)``, ``q = 1 - p``:

    In units of 1/K (K = 65536) with w = bits + 0.5, so u = 1/2 + w/K:
    u (1 - u) = (K^2/4 - w^2) / K^2 and q + u (p - q) = (K/2 + w (p - q)) / K, hence
    sigmoid'(logit + logit(u)) = u (1 - u) p q / (q + u (p - q))^2 = p q (K^2/4 - w^2) / (K/2 + w (p - q))^2.
    """
    # A sum over an unrolled loop of samples, not .sum(1): compiled, the strided reduction over the sample
    # dimension is not vectorized, while each term (contiguous in n) is.
    p = torch.sigmoid(logits)
    d = 2.0 * p - 1.0
    acc = None
    for s in range(bits.shape[1]):
        w = bits[:, s].to(grad.dtype) + 0.5
        denom = w * d + 32768.0
        term = (1073741824.0 - w * w) * grad[:, s] / (denom * denom)
        acc = term if acc is None else acc + term
    return acc * (p * (1.0 - p) * weight)


# The two kernels above touch T * S * N elements each (every weight of every sample) and dominate a mask step
# on CPU when run op by op: each eager op is a pass over memory. torch.compile fuses each into one loop; when
# it cannot (no C++ compiler, an unsupported device or dtype), the eager functions give the same numbers.
_kernels: dict[str, Any] = {
    "threshold": _threshold,
    "keep": _keep,
    "keep_where": _keep_where,
    "soft_grad": _soft_grad,
}
_compiled: dict[str, Any] = {}
_COMPILE = os.environ.get("MODSCOPE_COMPILE", "1") not in ("0", "false", "no", "")


# Below this many elements the eager ops are fast enough and compiling (seconds, once) would not pay off.
_COMPILE_MIN_ELEMENTS = 1 << 18


def _run(name: str, *args: Tensor) -> Tensor:
    if not _COMPILE or args[0].numel() < _COMPILE_MIN_ELEMENTS:
        return _kernels[name](*args)
    if name not in _compiled:
        try:
            _compiled[name] = torch.compile(_kernels[name], dynamic=True)
        except Exception:
            _compiled[name] = None
    fn = _compiled.get(name)
    if fn is not None:
        try:
            return fn(*args)
        except Exception as exc:
            log.warning("torch.compile of the mask kernel %r failed (%s); using eager ops", name, exc)
            _compiled[name] = None
    return _kernels[name](*args)


def _is_transposed(shape: tuple[int, ...]) -> bool:
    return len(shape) == 2


def to_flat(tensor: Tensor, shape: tuple[int, ...]) -> Tensor:
    """A parameter-shaped ``(..., *shape)`` tensor as ``(..., n)`` in the flat layout of the mask logits.

    The layout stores a 2-d parameter transposed: ``F.linear`` (and ``matmul`` in general) produces the
    gradient of a ``(out, in)`` weight as the transpose of a contiguous ``(in, out)`` tensor, so in this
    layout the gradients arrive contiguous and the backward kernel reads them without a copy.
    """
    lead = tensor.shape[: tensor.ndim - len(shape)]
    if _is_transposed(shape):
        tensor = tensor.transpose(-1, -2)
    return tensor.reshape(*lead, math.prod(shape))


def from_flat(flat: Tensor, shape: tuple[int, ...]) -> Tensor:
    """Inverse of :func:`to_flat`: ``(..., n)`` in the flat layout -> ``(..., *shape)`` (a view)."""
    lead = flat.shape[:-1]
    if _is_transposed(shape):
        return flat.view(*lead, shape[1], shape[0]).transpose(-1, -2)
    return flat.view(*lead, *shape)


class _MaskedWeights(torch.autograd.Function):
    """Per parameter, ``weight * hard_gumbel_sigmoid(logits, logit(u))`` without a transcendental per sample.

    With ``p = sigmoid(logit)``, ``q = 1 - p``: a sample keeps a weight iff ``u > q`` (integer compare of the
    bits against a per-logit threshold), and the soft sample's derivative is
    ``sigmoid'(logit + logit(u)) = u (1 - u) p q / (q + u (p - q))**2``; both passes read the int16 bits
    alone. One output per parameter (``(T, S, *shape)`` in the layout of :func:`to_flat`), so neither a split
    nor its backward concatenation of ``T * S * N`` gradients, nor a copy of a transposed gradient, is needed.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        logits: Tensor,
        bits: Tensor,
        weight: Tensor,
        shapes: tuple[tuple[int, ...], ...],
        finite: bool | None,
    ):
        threshold = _run("threshold", logits.detach()).unsqueeze(1)
        if finite is None:
            finite = bool(torch.isfinite(weight).all())
        keep = "keep" if finite else "keep_where"
        outs, start = [], 0
        for shape in shapes:
            end = start + math.prod(shape)
            out = _run(keep, bits[..., start:end], threshold[..., start:end], weight[start:end])
            outs.append(from_flat(out, shape))
            start = end
        return tuple(outs)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # type: ignore[override]
        logits, bits, weight, shapes, _ = inputs
        ctx.save_for_backward(logits, bits, weight)
        ctx.shapes = shapes

    @staticmethod
    def backward(ctx, *grads: Tensor):  # type: ignore[override]
        logits, bits, weight = ctx.saved_tensors
        n_tasks = bits.shape[0]
        lg = logits.detach()
        parts, start = [], 0
        for shape, grad in zip(ctx.shapes, grads, strict=True):
            end = start + math.prod(shape)
            if grad is None:
                parts.append(torch.zeros(n_tasks, end - start, dtype=logits.dtype, device=logits.device))
            else:
                g = to_flat(grad, shape)
                parts.append(
                    _run("soft_grad", bits[..., start:end], lg[..., start:end], g, weight[start:end])
                )
            start = end
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0], None, None, None, None


def masked_weight_list(
    logits: Tensor,
    bits: Tensor,
    weight: Tensor,
    shapes: Sequence[tuple[int, ...]],
    finite: bool | None = None,
) -> tuple[Tensor, ...]:
    """:func:`masked_weights` cut into parameters: one ``(T, S, *shape)`` tensor per entry of ``shapes``
    (whose sizes add up to ``N``, in order), each parameter's slice of ``logits``, ``bits`` and ``weight``
    in the layout of :func:`to_flat` (2-d parameters transposed). ``finite``: whether all weights are finite
    (checked when None; a caller reusing ``weight`` passes it once known)."""
    shapes = tuple(tuple(s) for s in shapes)
    if sum(math.prod(s) for s in shapes) != weight.numel():
        raise ValueError(f"shapes {shapes} do not add up to {weight.numel()} weights")
    return _MaskedWeights.apply(logits, bits, weight, shapes, finite)


def masked_weights(logits: Tensor, bits: Tensor, weight: Tensor) -> Tensor:
    """Sampled masked weights for every task and sample at once.

    Args:
        logits: ``(T, N)`` mask logits, one row per task, ``N`` = all masked scalars concatenated.
        bits: ``(T, S, N)`` int16 noise from :func:`uniform_bits` (``u = (bits + 32768.5) / 65536``), one
            slice per sample; equivalent to logistic noise ``logit(u)`` in :func:`hard_gumbel_sigmoid`.
        weight: ``(N,)`` the frozen weights, concatenated in the same order.

    Returns:
        ``(T, S, N)`` weights with the dropped entries zeroed; gradients flow to ``logits`` only, equal to
        those of ``weight * sigmoid(logits + logit(u))`` (straight-through).
    """
    return masked_weight_list(logits, bits, weight, [(weight.numel(),)])[0]
