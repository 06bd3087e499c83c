"""Gate distributions: how mask training turns each task's logits into sampled masks of the weights.

The gate distribution and the sparsity penalty (:mod:`modscope.masks.penalty`) are separate, pluggable
pieces, as captum's stochastic gates separate the distribution (``BinaryConcreteStochasticGates``,
``GaussianStochasticGates``) from the regularizer. :func:`~modscope.masks.train_masks` asks a :class:`Gate`
for one thing per step: the masked weights of every task and sample, differentiable in the logits. Every
gate draws its noise the same way, as counter-based keys from the task's generator
(:func:`~modscope.masks.sampling.noise_keys`), so the generator stays the single, checkpointable source of
randomness. The read-out of a trained mask is ``logit > 0`` whatever the gate
(:meth:`~modscope.masks.MaskSet.from_logits`).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from modscope.checks import check_finite, check_real
from modscope.masks.sampling import (
    bits_to_uniform,
    from_flat,
    keep_probabilities,
    masked_weight_list,
    noise_bits,
    noise_keys,
)

__all__ = ["Gate", "GumbelSigmoid", "HardConcrete"]

#: The noise generator of every gate (sampling.noise_keys / noise_bits): recorded in checkpoints, since a
#: checkpoint of another generator would resume with different noise.
NOISE = "hash32-v1"


class Gate(ABC):
    """A distribution of mask samples given ``(T, N)`` logits (``T`` tasks, ``N`` masked weights)."""

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """The gate's settings (JSON), recorded in the checkpoint and the trained masks' ``hparams``."""

    def keys(self, samples: int, generator: torch.Generator) -> Tensor:
        """One step's ``(samples, 2)`` int32 noise keys for one task, drawn from its ``generator``."""
        return noise_keys(samples, generator)

    def precompute(self, logits: Tensor) -> tuple[Any, Tensor]:
        """After each update: what :meth:`sample` needs from the logits (passed back as ``aux``), and per
        task the number of weights the read-out ``logit > 0`` keeps (``(T,)``)."""
        return None, (logits.detach() > 0).sum(-1)

    @abstractmethod
    def sample(
        self,
        logits: Tensor,
        keys: Tensor,
        weight: Tensor,
        shapes: Sequence[tuple[int, ...]],
        finite: bool,
        aux: Any,
    ) -> tuple[Tensor, ...]:
        """Masked weights: one ``(T, S, *shape)`` tensor per entry of ``shapes`` (sizes adding up to ``N``).

        ``logits`` ``(T, N)`` (requires grad), ``keys`` ``(T, S, 2)``, ``weight`` ``(N,)`` the frozen weights,
        all in the flat layout of :func:`~modscope.masks.sampling.to_flat`; ``finite``: whether every weight
        is finite (a dropped entry must be exactly 0 even for an infinite weight).
        """


class GumbelSigmoid(Gate):
    """Hard Gumbel-sigmoid gates with straight-through gradients (the default; Csordás et al. 2021, §2).

    A sample keeps weight ``i`` iff ``logit_i + l > 0`` with ``l`` standard logistic noise (temperature 1),
    so with probability ``sigmoid(logit_i)``; the gradient is that of ``sigmoid(logit_i + l)``. Computed by
    the fused kernels of :func:`~modscope.masks.sampling.masked_weight_list`.
    """

    def config(self) -> dict[str, Any]:
        return {"noise": NOISE}

    def precompute(self, logits: Tensor) -> tuple[Any, Tensor]:
        return keep_probabilities(logits)  # the sigmoid both kernels need, once per update

    def sample(self, logits, keys, weight, shapes, finite, aux):
        return masked_weight_list(logits, keys, weight, shapes, finite, aux)

    def __repr__(self) -> str:
        return "GumbelSigmoid()"


class HardConcrete(Gate):
    """Hard concrete gates (Louizos, Welling, Kingma, "Learning Sparse Neural Networks through L0
    Regularization", ICLR 2018, arXiv:1712.01312, §4).

    ``s = sigmoid((logit + log u - log(1 - u)) / temperature)`` with ``u ~ U(0, 1)``, stretched to
    ``limits = (low, high)`` and clipped: ``z = clamp(low + (high - low) * s, 0, 1)``; the masked weight is
    ``z * w``. Unlike the Gumbel-sigmoid gate, ``z`` is continuous between its exact 0 and 1 and the gradient
    flows through it (zero where clipped). With symmetric limits (``low + high = 1``, the default) the
    read-out ``logit > 0`` is the test-time gate ``clamp(low + (high - low) * sigmoid(logit), 0, 1) > 1/2``.

    Args:
        temperature: of the concrete distribution (default 2/3, Louizos et al.), > 0.
        limits: the stretch interval ``(low, high)``, ``low < 0`` and ``high > 1`` (default (-0.1, 1.1)).
    """

    def __init__(self, temperature: float = 2 / 3, limits: tuple[float, float] = (-0.1, 1.1)):
        self.temperature = check_real(temperature, "temperature", positive=True)
        if not (isinstance(limits, (tuple, list)) and len(limits) == 2):
            raise ValueError(f"limits must be a pair (low, high), got {limits!r}")
        low, high = (check_finite(v, "limits") for v in limits)
        if not (low < 0 and high > 1):
            raise ValueError(f"limits must have low < 0 and high > 1, got {limits!r}")
        self.limits = (low, high)

    def config(self) -> dict[str, Any]:
        return {"noise": NOISE, "gate": "hard_concrete", "temperature": self.temperature,
                "limits": list(self.limits)}  # fmt: skip

    def sample(self, logits, keys, weight, shapes, finite, aux):
        low, high = self.limits
        outs, start = [], 0
        for shape in shapes:
            end = start + math.prod(shape)
            u = bits_to_uniform(noise_bits(keys, end - start, start)).to(logits.dtype)  # (T, S, n)
            noise = torch.log(u) - torch.log1p(-u)  # standard logistic
            s = torch.sigmoid((logits[:, None, start:end] + noise) / self.temperature)
            z = (low + (high - low) * s).clamp(0.0, 1.0)
            w = weight[start:end]
            masked = z * w if finite else torch.where(z > 0, z * w, torch.zeros((), dtype=w.dtype))
            outs.append(from_flat(masked, shape))
            start = end
        return tuple(outs)

    def __repr__(self) -> str:
        return f"HardConcrete(temperature={self.temperature!r}, limits={self.limits!r})"
