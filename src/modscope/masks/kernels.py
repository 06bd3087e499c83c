"""The fused kernels of the Gumbel-sigmoid mask sampler (:mod:`modscope.masks.sampling`), compiled when large.

Each kernel recomputes the counter-based noise bits (:mod:`modscope.masks.noise`) from the keys, so nothing
of size ``T * S * N`` besides the outputs is stored. Set ``MODSCOPE_COMPILE=0`` to run them eagerly.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from torch import Tensor

from modscope.masks.noise import _bits

__all__ = ["run_kernel"]

log = logging.getLogger(__name__)


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


def run_kernel(name: str, size: int, *args: Tensor) -> Any:
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
