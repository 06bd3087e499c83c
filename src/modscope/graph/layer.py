"""What a weight graph is made of: layers of units and the reduction of a weight tensor to edges."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

CHANNEL_NORMS = ("l1", "l2")


class GraphError(ValueError):
    """A network that cannot be turned into a weight graph (unsupported layer, bad weights, bad shapes)."""


@dataclass(frozen=True)
class Layer:
    """One group ("column") of nodes.

    ``name`` is the module path of the weight layer that produces the units (``"input"`` for the input
    features; for a residual stream, the first layer writing it), ``kind`` one of ``"input"``, ``"linear"``,
    ``"conv"``, ``"weights"`` (from raw matrices), ``"stream"`` (units shared by a residual add).
    """

    name: str
    size: int
    kind: str


def check_channel_norm(channel_norm: str) -> str:
    if channel_norm not in CHANNEL_NORMS:
        raise ValueError(f"channel_norm must be one of {CHANNEL_NORMS}, got {channel_norm!r}")
    return channel_norm


def reduce_kernel(weight: Any, channel_norm: str) -> Any:
    """``|W|`` for a matrix; for a kernel ``(out, in, *spatial)``, the norm of each ``(out, in)`` slice.

    ``"l1"``: ``sum |K[j, i, ...]|``; ``"l2"``: ``sqrt(sum K[j, i, ...]**2)``. Written with the operations
    numpy arrays and torch tensors share, so the same rule serves :meth:`WeightGraph.from_weights` (numpy,
    without importing torch) and the differentiable blocks of :mod:`modscope.graph.blocks` (torch).
    """
    a = abs(weight)
    if a.ndim == 2:
        return a
    axes = tuple(range(2, a.ndim))
    if channel_norm == "l1":
        return a.sum(axis=axes)
    return (a * a).sum(axis=axes) ** 0.5
