"""Hard Gumbel-sigmoid sampling of binary masks with straight-through gradients.

Csordás et al., "Are Neural Nets Modular?" (ICLR 2021, arXiv:2010.02066), §2: a mask entry is kept when
``sigmoid(logit + l) > 0.5`` with ``l`` logistic noise (the difference of two Gumbel variables, temperature
1); the backward pass uses the gradient of the soft ``sigmoid(logit + l)``.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

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


# Counter-based noise: the 16 random bits of weight ``i`` in one sample are a hash of ``i`` under the
# sample's key ``(a, b)`` (``a`` odd): ``x = a * i + b`` (a different bijection of the indices per sample),
# then two xor-shift / multiply rounds (those of Wellons' "lowbias32"), and the top 16 bits. Computed inside
# the kernels in int32 arithmetic (wrapping, vectorized by the compiler), so no noise tensor is drawn or
# stored: the forward and the backward pass recompute the same bits from the keys. Each step draws fresh keys
# from the task's generator (:func:`noise_keys`).
_M1 = 0x7FEB352D
_M2 = 0x846CA68B - (1 << 32)


def noise_keys(samples: int, generator: torch.Generator) -> Tensor:
    """``(samples, 2)`` int32 keys ``(a, b)`` (``a`` odd) of one step's noise, drawn from ``generator``.

    The torch generator stays the single, checkpointable source of randomness: the noise of a step is a
    function of the generator's state alone.
    """
    keys = torch.randint(-(2**31), 2**31, (samples, 2), generator=generator, dtype=torch.int64)
    keys[:, 0] |= 1
    return keys.to(torch.int32)


def _shift_keys(keys: Tensor, start: int | Tensor) -> Tensor:
    """Keys whose index 0 is index ``start`` of ``keys`` (``b + a * start`` modulo 2**32); ``start`` an int
    or an int64 tensor that broadcasts against ``keys[..., 0]``."""
    if isinstance(start, int) and start == 0:
        return keys
    k = keys.to(torch.int64)
    b = (k[..., 1] + k[..., 0] * start + 2**31) % 2**32 - 2**31
    return torch.stack([k[..., 0].expand_as(b), b], dim=-1).to(torch.int32)


def _bits(keys: Tensor, n: int) -> Tensor:
    """``(..., n)`` int32 bits in ``[-32768, 32767]`` for ``(..., 2)`` keys and indices ``0 .. n-1``."""
    i = torch.arange(n, dtype=torch.int32, device=keys.device)
    x = i * keys[..., 0:1] + keys[..., 1:2]
    x = x ^ ((x >> 16) & 0xFFFF)
    x = x * _M1
    x = x ^ ((x >> 15) & 0x1FFFF)
    x = x * _M2
    return x >> 16


def noise_bits(keys: Tensor, n: int, start: int = 0) -> Tensor:
    """The bits the kernels compute: ``(..., n)`` int32 in ``[-32768, 32767]`` for ``(..., 2)`` keys, indices
    ``start .. start+n-1``; ``u = (bits + 32768.5) / 65536`` is uniform on (0, 1) (see
    :func:`bits_to_uniform`). 16 bits resolve keep probabilities to 2**-16 and make logits beyond +-11
    deterministic, far below the sampling error of any mask statistic."""
    if keys.numel() and n + start > 2**31:
        raise ValueError(f"at most 2**31 masked weights, got {n + start}")
    return _bits(_shift_keys(keys, start), n)


def bits_to_uniform(bits: Tensor) -> Tensor:
    """The uniform variates (float32, in (0, 1)) that the bits of :func:`noise_bits` stand for."""
    return (bits.to(torch.float32) + 32768.5) / 65536.0


def _threshold(probs: Tensor) -> Tensor:
    """Per-weight threshold: a sample keeps a weight iff ``bits > threshold`` (see :func:`_keep`)."""
    # keep iff u = (bits + 32768.5) / 65536 > 1 - p  <=>  bits > 32767.5 - 65536 p
    return 32767.5 - 65536.0 * probs


def _keep(keys: Tensor, probs: Tensor, weight: Tensor) -> Tensor:
    """``weight * (bits > threshold(probs))``: ``(T, S, 2)`` keys, ``(T, 1, n)`` keep probabilities
    ``sigmoid(logits)``, ``(n,)`` finite weights.

    A product, not ``where``: compiled, it vectorizes (``where`` does not, 6x slower); non-finite weights go
    to :func:`_keep_where`, so a dropped entry is exactly 0 either way. The threshold is recomputed per sample
    inside the kernel: the kernel is bound by writing its output, and a separate pass would cost more.
    """
    threshold = _threshold(probs)
    return weight * (_bits(keys, weight.shape[0]) > threshold)


def _keep_where(keys: Tensor, probs: Tensor, weight: Tensor) -> Tensor:
    threshold = _threshold(probs)
    keep = _bits(keys, weight.shape[0]) > threshold
    return torch.where(keep, weight, torch.zeros((), dtype=weight.dtype))


def _soft_grad(keys: Tensor, probs: Tensor, grad: Tensor, weight: Tensor) -> Tensor:
    """``sum_s grad[:, s] * weight * sigmoid'(logit + logit(u_s))`` for ``(T, S, 2)`` keys, ``(T, S, n)``
    grad, ``(T, n)`` keep probabilities ``p = sigmoid(logit)`` and ``(n,)`` weights; returns ``(T, n)``.
    With ``q = 1 - p``:

    In units of 1/K (K = 65536) with w = bits + 0.5, so u = 1/2 + w/K:
    u (1 - u) = (K^2/4 - w^2) / K^2 and q + u (p - q) = (K/2 + w (p - q)) / K, hence
    sigmoid'(logit + logit(u)) = u (1 - u) p q / (q + u (p - q))^2 = p q (K^2/4 - w^2) / (K/2 + w (p - q))^2.
    """
    # A sum over an unrolled loop of samples, not .sum(1): compiled, the strided reduction over the sample
    # dimension is not vectorized, while each term (contiguous in n) is.
    p = probs
    d = 2.0 * p - 1.0
    n = weight.shape[0]
    acc = None
    for s in range(keys.shape[1]):
        w = _bits(keys[:, s], n).to(grad.dtype) + 0.5
        denom = w * d + 32768.0
        term = (1073741824.0 - w * w) * grad[:, s] / (denom * denom)
        acc = term if acc is None else acc + term
    return acc * (p * (1.0 - p) * weight)


def _probabilities(logits: Tensor) -> tuple[Tensor, Tensor]:
    kept = (logits > 0).sum(-1, dtype=torch.int64 if logits.shape[-1] >= 2**31 else torch.int32)
    return torch.sigmoid(logits), kept


# The kernels above touch T * S * N elements each (every weight of every sample) and dominate a mask step
# on CPU when run op by op: each eager op is a pass over memory. torch.compile fuses each into one loop; when
# it cannot (no C++ compiler, an unsupported device or dtype), the eager functions give the same numbers.
_kernels: dict[str, Any] = {
    "keep": _keep,
    "keep_where": _keep_where,
    "soft_grad": _soft_grad,
    "probabilities": _probabilities,
}
_compiled: dict[str, Any] = {}
_COMPILE = os.environ.get("MODSCOPE_COMPILE", "1") not in ("0", "false", "no", "")


# Below this many elements the eager ops are fast enough and compiling (seconds, once) would not pay off.
_COMPILE_MIN_ELEMENTS = 1 << 16


def _run(name: str, size: int, *args: Tensor) -> Any:
    """Kernel ``name`` on ``args``; compiled when it touches ``size >= _COMPILE_MIN_ELEMENTS`` elements."""
    if not _COMPILE or size < _COMPILE_MIN_ELEMENTS:
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


def keep_probabilities(logits: Tensor) -> tuple[Tensor, Tensor]:
    """``sigmoid(logits)`` of ``(T, N)`` logits, and per row how many the read-out ``logit > 0`` keeps.

    One pass over the logits: the probabilities feed both kernels of :func:`masked_weight_list` (forward
    threshold, backward soft gradient), so a training step computes the sigmoid once, not in each kernel.
    """
    return _run("probabilities", logits.numel(), logits.detach())


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
            outs.append(from_flat(_run(keep, size, k, pr[..., start:end], weight[start:end]), shape))
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
                parts.append(_run("soft_grad", g.numel(), k, probs[:, start:end], g, weight[start:end]))
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
