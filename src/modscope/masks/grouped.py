"""One mask logit per group of weights: any gate and penalty, applied to groups and expanded to the weights.

The logits are ``(T, G)``, one per task and group (:mod:`modscope.masks.grouping`); ``index`` ``(N,)`` gives
the group of each masked weight in the flat layout (:meth:`~.grouping.Grouping.flat_index`). The gate draws
one sample per group -- the same sampler, noise and straight-through gradient as per weight, run on the
groups -- and the sample is expanded to the weights by indexing, so a sample keeps or drops a group whole and
the read-out ``logit > 0`` of the expanded logits is the group's. The penalty is the wrapped penalty of the
*expanded* logits: a group counts once per weight it holds, so ``beta`` means the same at every granularity
(an all-equal-logit structured mask has exactly the penalty of the per-weight mask it expands to; for
:class:`~.penalty.LogitPenalty`, ``beta * sum_g size_g * logit_g / B``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from modscope.masks.gates import Gate
from modscope.masks.layout import from_flat
from modscope.masks.penalty import Penalty

__all__ = ["GroupedGate", "GroupedPenalty"]


class GroupedGate(Gate):
    """``gate`` drawn per group and expanded to the weights by ``index`` ``(N,)`` (entry -> group);
    parameters flagged in ``implied`` (one bool per parameter, default none) are passed through ungated
    (:attr:`~modscope.masks.grouping.Grouping.implied`)."""

    def __init__(self, gate: Gate, index: Tensor, sizes: Tensor, implied: tuple[bool, ...] | None = None):
        self.gate, self.index, self.sizes, self.implied = gate, index, sizes, implied

    def config(self) -> dict[str, Any]:
        return self.gate.config()

    def keys(self, samples: int, generator: torch.Generator) -> Tensor:
        return self.gate.keys(samples, generator)

    def precompute(self, logits: Tensor) -> tuple[Any, Tensor]:
        aux, _ = self.gate.precompute(logits)
        sizes = self.sizes.to(logits.device)
        return aux, ((logits.detach() > 0) * sizes).sum(-1)  # kept weights, not groups

    def sample(self, logits, keys, weight, shapes, finite, aux):
        # the gate's own sample of (T, S, G) groups: with weight 1 a masked weight is the gate's value
        ones = torch.ones(logits.shape[-1], dtype=weight.dtype, device=weight.device)
        (z,) = self.gate.sample(logits, keys, ones, [(logits.shape[-1],)], True, aux)
        index = self.index.to(z.device)
        implied = self.implied or (False,) * len(shapes)
        outs, start = [], 0
        for shape, skip in zip(shapes, implied, strict=True):
            end = start + int(torch.Size(shape).numel())
            if skip:
                outs.append(from_flat(weight[start:end].expand(*z.shape[:2], end - start), tuple(shape)))
                start = end
                continue
            gate, w = z[..., index[start:end]], weight[start:end]
            masked = gate * w if finite else torch.where(gate > 0, gate * w, torch.zeros((), dtype=w.dtype))
            outs.append(from_flat(masked, tuple(shape)))
            start = end
        return tuple(outs)

    def __repr__(self) -> str:
        return f"GroupedGate({self.gate!r}, groups={self.sizes.numel()})"


class GroupedPenalty(Penalty):
    """``penalty`` of the expanded logits ``logits[..., index]`` (module docstring: why)."""

    def __init__(self, penalty: Penalty, index: Tensor):
        self.penalty, self.index = penalty, index

    def config(self) -> dict[str, Any]:
        return self.penalty.config()

    def __call__(self, logits: Tensor, batch_sizes: Tensor) -> Tensor:
        return self.penalty(logits[..., self.index.to(logits.device)], batch_sizes)

    def add_grad(self, grad: Tensor, logits: Tensor, batch_sizes: Tensor) -> None:
        index = self.index.to(logits.device)
        expanded = logits.detach()[:, index]
        g = torch.zeros_like(expanded)
        self.penalty.add_grad(g, expanded, batch_sizes)  # the wrapped penalty's closed form, if it has one
        grad.index_add_(1, index, g)

    def __repr__(self) -> str:
        return f"GroupedPenalty({self.penalty!r})"
