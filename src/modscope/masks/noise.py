"""Counter-based noise of the mask samples: 16 random bits per weight and sample, recomputed from two keys.

Every gate (:mod:`modscope.masks.gates`) draws its uniform variates here, so a task's generator
(:func:`noise_keys`) is the single, checkpointable source of a mask training's randomness.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["bits_to_uniform", "noise_bits", "noise_keys"]

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
