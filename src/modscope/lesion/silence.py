"""Silencing units: their outputs become 0 for everything downstream, whatever the activation.

The graph layer ``l`` (units of the weight layer ``layers[l].name``) feeds the weight layer
``layers[l + 1].name``. A forward pre-hook on that next layer zeroes the input features that carry the
silenced units (one feature per unit after a Linear; one channel per unit after a convolution; ``S``
consecutive features per channel when a Linear reads a flattened feature map). Zeroing there, rather than
the pre-activation, silences a unit even when ``act(0) != 0`` (sigmoid) and after pooling or a BatchNorm
that follows the activation. The hooks are removed on exit, also after an exception.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from modscope.graph import GraphError, WeightGraph


def _feature_index(module: nn.Module, n_units: int, units: np.ndarray) -> tuple[int, torch.Tensor]:
    """(dimension, indices) of the input of ``module`` that carry ``units`` of a layer of ``n_units``."""
    units = torch.as_tensor(np.asarray(units, dtype=np.int64))
    if isinstance(module, nn.Linear):
        spatial = module.in_features // n_units
        if spatial * n_units != module.in_features:
            raise GraphError(
                f"Linear with {module.in_features} inputs cannot read a layer of {n_units} units"
            )
        # channel-major flattening: channel c owns features c * spatial .. (c + 1) * spatial - 1
        return 1, (units[:, None] * spatial + torch.arange(spatial)[None, :]).reshape(-1)
    return 1, units  # convolutions: channel dimension


@contextmanager
def silenced(model: nn.Module, graph: WeightGraph, units: Mapping[int, Sequence[int]]) -> Iterator[nn.Module]:
    """Evaluate ``model`` with some units silenced: ``units`` maps a hidden layer index of ``graph`` (1 ..
    ``len(graph.layers) - 2``) to the unit indices within that layer.
    """
    graph.require_layered("lesions")
    modules = dict(model.named_modules())
    handles = []
    try:
        for layer, idx in units.items():
            if not 1 <= layer <= len(graph.layers) - 2:
                raise ValueError(
                    f"layer {layer} is not a hidden layer of a graph with {len(graph.layers)} layers"
                )
            consumer = graph.layers[layer + 1].name
            if consumer not in modules:
                raise GraphError(f"the graph's layer '{consumer}' is not a module of {type(model).__name__}")
            dim, features = _feature_index(modules[consumer], graph.layers[layer].size, np.asarray(idx))

            def hook(_module, args, dim=dim, features=features):
                x = args[0].clone()
                x.index_fill_(dim, features.to(x.device), 0.0)
                return (x, *args[1:])

            handles.append(modules[consumer].register_forward_pre_hook(hook))
        yield model
    finally:
        for h in handles:
            h.remove()
