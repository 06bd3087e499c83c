"""Clusterable initialization (Filan et al., "Clusterability in Neural Networks", arXiv:2103.03386, §4).

Units are assigned to ``n_modules`` modules at random; every weight between two units of the same module is
multiplied by ``inside`` (4.6 in the paper's MLP experiments) and every weight between units of different
modules by ``across`` (0.6). Applied to a freshly initialized network before training, it gives the weight
graph a planted block structure that training may keep.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from modscope.graph.blocks import expand_factor
from modscope.graph.trace import trace_chain

__all__ = ["ModuleAssignment", "clusterable_init"]


@dataclass(frozen=True)
class ModuleAssignment:
    """Which module every unit was assigned to by :func:`clusterable_init`.

    ``layers`` names the unit layers in order: ``"input"`` (the first weight layer's inputs), then the module
    path of each Linear/Conv layer (its output units or channels). ``labels[layer]`` holds one module id in
    ``0 .. n_modules - 1`` per unit, or ``-1`` for units left unassigned (inputs/outputs unless included).
    """

    n_modules: int
    inside: float
    across: float
    seed: int
    layers: tuple[str, ...]
    labels: dict[str, tuple[int, ...]] = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_modules": self.n_modules,
            "inside": self.inside,
            "across": self.across,
            "seed": self.seed,
            "layers": list(self.layers),
            "labels": {k: list(v) for k, v in self.labels.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModuleAssignment:
        return cls(
            n_modules=int(d["n_modules"]),
            inside=float(d["inside"]),
            across=float(d["across"]),
            seed=int(d["seed"]),
            layers=tuple(d["layers"]),
            labels={k: tuple(int(x) for x in v) for k, v in d["labels"].items()},
        )

    def modules_of(self, layer: str) -> np.ndarray:
        """Module id of each unit of ``layer`` (``-1``: unassigned)."""
        return np.asarray(self.labels[layer], dtype=np.int64)


def clusterable_init(
    model: nn.Module,
    n_modules: int = 10,
    inside: float = 4.6,
    across: float = 0.6,
    seed: int = 0,
    *,
    include_inputs: bool = False,
    include_outputs: bool = False,
) -> ModuleAssignment:
    """Scale ``model``'s weights in place so that units form ``n_modules`` planted modules.

    Each hidden layer's units (conv channels for convolutions) are split into ``n_modules`` modules of
    equal size (sizes differ by at most one): a seeded random permutation of ``0, 1, ..., n_modules - 1``
    repeated. Then the weight ``W[j, i]`` of every Linear layer (the whole kernel slice ``K[j, i, ...]`` of a
    convolution; all spatial positions of channel ``i`` for a Linear after a flatten) is multiplied by
    ``inside`` when units ``i`` and ``j`` are in the same module and by ``across`` otherwise. Biases are not
    touched.

    Filan et al. do not say whether input features and output units take part; by default they do not
    (``include_inputs=False``, ``include_outputs=False``): their units are unassigned (``-1``) and weights
    touching them are left as they are, so only hidden-to-hidden weights are scaled. Set the flags to assign
    them too (each unit layer then gets its own random assignment).

    Layers are the Linear/Conv modules of the feed-forward chain that ``forward`` calls, found by tracing as
    for :meth:`WeightGraph.from_module <modscope.graph.WeightGraph.from_module>` (every
    :func:`modscope.models.build_model` feed-forward network is one; anything else raises ``GraphError``).
    The assignment depends only on ``seed`` and the layer sizes, never on the global RNG.

    Args:
        model: the network, modified in place (typically freshly built).
        n_modules: number of modules m >= 1 (default 10, the paper's).
        inside: factor for within-module weights (default 4.6).
        across: factor for cross-module weights (default 0.6).
        seed: seed of the random assignment.
        include_inputs, include_outputs: also assign input features / output units.

    Returns:
        The :class:`ModuleAssignment`.
    """
    if isinstance(n_modules, bool) or not isinstance(n_modules, int) or n_modules < 1:
        raise ValueError(f"n_modules must be a positive int, got {n_modules!r}")
    for name, v in (("inside", inside), ("across", across)):
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not np.isfinite(v) or v < 0:
            raise ValueError(f"{name} must be a finite non-negative number, got {v!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__} {seed!r}")
    layers = trace_chain(model)
    gen = torch.Generator().manual_seed(seed)
    names = ["input"] + [layer.name for layer in layers]
    sizes = [layers[0].in_units] + [layer.out_units for layer in layers]
    labels: dict[str, torch.Tensor] = {}
    for k, (name, size) in enumerate(zip(names, sizes)):
        assigned = (
            (0 < k < len(names) - 1)
            or (k == 0 and include_inputs)
            or (k == len(names) - 1 and include_outputs)
        )
        if assigned:
            labels[name] = (torch.arange(size) % n_modules)[torch.randperm(size, generator=gen)]
        else:
            labels[name] = torch.full((size,), -1, dtype=torch.long)
    with torch.no_grad():
        for k, layer in enumerate(layers):
            src, dst = labels[names[k]], labels[names[k + 1]]
            w = layer.module.weight
            same = dst[:, None] == src[None, :]
            factor = torch.where(
                same, torch.tensor(inside, dtype=w.dtype), torch.tensor(across, dtype=w.dtype)
            )
            free = (dst[:, None] < 0) | (src[None, :] < 0)
            factor = torch.where(free, torch.ones((), dtype=w.dtype), factor)
            w.mul_(expand_factor(layer, factor.to(w.device)))
    return ModuleAssignment(
        n_modules=n_modules,
        inside=float(inside),
        across=float(across),
        seed=seed,
        layers=tuple(names),
        labels={n: tuple(int(x) for x in labels[n]) for n in names},
    )
