"""The flat layout of mask logits, noise and weights: all masked parameters as one ``(..., N)`` vector."""

from __future__ import annotations

import math

from torch import Tensor

__all__ = ["from_flat", "to_flat"]


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
