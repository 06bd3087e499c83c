"""Silencing units: their outputs become 0 for everything downstream, whatever the activation.

A unit is zeroed where it is read: a forward pre-hook on each weight layer reading it zeroes the input
features that carry it (one feature per unit of a Linear, one channel per unit of a convolution, ``S``
consecutive features per channel when a Linear reads a flattened feature map). Zeroing there, rather than
the pre-activation, silences a unit even when ``act(0) != 0`` (sigmoid) and after pooling or a BatchNorm
that follows the activation. The hooks are removed on exit, also after an exception.

On a layered chain, the graph layer ``l`` (units of the weight layer ``layers[l].name``) is read by the
weight layer ``layers[l + 1].name``. On a general graph (residual adds, concatenations) the readers of each
group are found by tracing the model (:func:`modscope.graph.sites.unit_sites`): every layer reading a
residual stream (``residual="merge"``: silencing a stream dimension is then the same as zeroing it after
every add), the one layer reading a copy of a stream (``residual="filan"``), the features at a group's
offset in a concatenation. Inside a ``MultiheadAttention`` call no hook reaches the units, so there the
weight columns reading them are zeroed; queries and keys, read only by the attention pattern, are zeroed at
their source (the projection's rows and bias entries); PyTorch's fused attention fast path, which would
bypass the hooks of a transformer layer's Linear modules, is off while the context is open. A recurrent
module (``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN``) reads its input through a hook on the module itself, and its
hidden units are silenced at their source, by editing its weights (:mod:`modscope.lesion.recurrent`).
Every edited weight is restored on exit. The groups that can be silenced (:func:`hidden_groups`) are the
hidden ones: not an input, not the output.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from modscope.graph import GraphError, WeightGraph
from modscope.graph.sites import Site, UnitSites, unit_sites
from modscope.lesion.recurrent import at_source, inside, recurrent_reader

__all__ = ["hidden_groups", "silenced", "sites_of"]


def sites_of(model: nn.Module, graph: WeightGraph) -> UnitSites | None:
    """Where ``graph``'s groups are read in ``model`` (None for a layered chain, which needs no tracing)."""
    return None if graph.is_layered else unit_sites(model, graph)


def hidden_groups(graph: WeightGraph, sites: UnitSites | None) -> list[int]:
    """The groups whose units can be silenced: ``1 .. len(layers) - 2`` of a chain; of a general graph
    (``sites`` from :func:`sites_of`), every group read by a weight layer that is not an input."""
    if sites is None:
        return list(range(1, len(graph.layers) - 1))
    return [g for g, layer in enumerate(graph.layers) if layer.kind != "input" and sites.sites[g]]


def _feature_index(module: nn.Module, spatial: int, channels: np.ndarray) -> tuple[int, torch.Tensor]:
    """(dimension, indices) of the input of ``module`` that carry input units ``channels``."""
    channels = torch.as_tensor(np.asarray(channels, dtype=np.int64))
    if isinstance(module, nn.Linear):
        # channel-major flattening: channel c owns features c * spatial .. (c + 1) * spatial - 1
        return -1, (channels[:, None] * spatial + torch.arange(spatial)[None, :]).reshape(-1)
    return 1, channels  # convolutions: channel dimension


def _chain_reader(module: nn.Module, n_units: int) -> int:
    """Input features per unit of ``module`` reading a chain layer of ``n_units`` units."""
    if not isinstance(module, nn.Linear):
        return 1
    spatial = module.in_features // n_units
    if spatial * n_units != module.in_features:
        raise GraphError(f"Linear with {module.in_features} inputs cannot read a layer of {n_units} units")
    return spatial


@contextmanager
def silenced(
    model: nn.Module,
    graph: WeightGraph,
    units: Mapping[int, Sequence[int]],
    *,
    sites: UnitSites | None = None,
) -> Iterator[nn.Module]:
    """Evaluate ``model`` with some units silenced: ``units`` maps a hidden group of ``graph``
    (:func:`hidden_groups`: ``1 .. len(graph.layers) - 2`` of a chain) to unit indices within it.

    ``sites``: :func:`sites_of` ``(model, graph)``, to trace a general graph's model once for many lesions
    (traced here when not given; unused for a chain).
    """
    if not graph.is_layered and sites is None:
        sites = unit_sites(model, graph)
    if sites is not None and len(sites.sites) != len(graph.layers):
        raise ValueError(f"sites has {len(sites.sites)} groups but the graph has {len(graph.layers)}")
    hidden = set(hidden_groups(graph, None if graph.is_layered else sites))
    modules = dict(model.named_modules())
    handles = []
    saved: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}  # (module, tensor) -> (it, copy)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    sources: dict[tuple[str, str], set[int]] = {}  # hidden units of recurrent layers, silenced at the source
    try:
        for layer, idx in units.items():
            if layer not in hidden:
                what = f"'{graph.layers[layer].name}' " if 0 <= layer < len(graph.layers) else ""
                raise ValueError(
                    f"layer {layer} {what}is not a hidden layer of a graph with {len(graph.layers)} layers "
                    "(lesions silence units read by weight layers: not an input, not the output)"
                )
            idx = np.asarray(idx, dtype=np.int64).reshape(-1)
            size = graph.layers[layer].size
            if idx.size and (idx.min() < 0 or idx.max() >= size):
                raise ValueError(f"units of layer {layer} must be in 0..{size - 1}, got {idx.tolist()}")
            if sites is not None:
                for site in sites.sites[layer]:
                    if site.edit != "input":
                        _zero_weights(modules, site, idx, saved)
            for module, features, dim in _targets(model, modules, graph, layer, idx, sites, sources):

                def hook(_module, args, dim=dim, features=features):
                    x = args[0].clone()
                    x.index_fill_(dim, features.to(x.device), 0.0)
                    return (x, *args[1:])

                handles.append(module.register_forward_pre_hook(hook))
        with at_source(modules, sources):
            yield model
    finally:
        for h in handles:
            h.remove()
        with torch.no_grad():
            for tensor, original in saved.values():
                tensor.copy_(original)
        torch.backends.mha.set_fastpath_enabled(fastpath)


def _zero_weights(
    modules: dict[str, nn.Module],
    site: Site,
    idx: np.ndarray,
    saved: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]],
) -> None:
    """Zero the weight entries through which ``site`` reads (``"columns"``) or writes (``"rows"``) units
    ``idx``, keeping a copy of each tensor the first time it is changed (restored by :func:`silenced`)."""
    module = modules.get(site.module)
    if module is None:
        raise GraphError(f"'{site.module}' is not a module of the model")
    index = torch.as_tensor(np.asarray(idx, dtype=np.int64) + site.offset)
    targets = [(site.param, 1 if site.edit == "columns" else 0, index)]
    if site.edit == "rows" and getattr(module, site.bias, None) is not None:
        targets.append((site.bias, 0, index - site.offset + site.bias_offset))
    with torch.no_grad():
        for name, dim, where in targets:
            tensor = getattr(module, name)
            if (site.module, name) not in saved:
                saved[site.module, name] = (tensor, tensor.detach().clone())
            view = tensor if site.rows is None else tensor[site.rows[0] : site.rows[1]]
            view.index_fill_(dim, where.to(tensor.device), 0.0)


def _targets(
    model: nn.Module,
    modules: dict[str, nn.Module],
    graph: WeightGraph,
    layer: int,
    idx: np.ndarray,
    sites: UnitSites | None,
    sources: dict[tuple[str, str], set[int]],
) -> list[tuple[nn.Module, torch.Tensor, int]]:
    """``(module, input features, dimension)`` to zero for units ``idx`` of group ``layer``; the hidden
    units of recurrent layers that read them are added to ``sources`` instead
    (:mod:`modscope.lesion.recurrent`)."""
    if sites is None:  # a chain: read by the next layer
        consumer = graph.layers[layer + 1].name
        if consumer not in modules:
            raise GraphError(f"the graph's layer '{consumer}' is not a module of {type(model).__name__}")
        calls = sum(other.name == consumer for other in graph.layers)
        if calls > 1:
            raise _shared(consumer, layer, graph, calls)
        spatial = _chain_reader(modules[consumer], graph.layers[layer].size)
        dim, features = _feature_index(modules[consumer], spatial, idx)
        return [(modules[consumer], features, dim)]
    out, hooked = [], set()
    for site in sites.sites[layer]:
        if site.edit != "input":  # weight edits (_zero_weights), not hooks
            continue
        if site.calls > 1:
            raise _shared(site.module, layer, graph, site.calls)
        reader = None if site.module in modules else recurrent_reader(modules, site.module)
        if reader is not None:
            path, owner, param = reader
            source = inside(owner, param, idx + site.offset)
            if source is not None:  # a hook cannot reach a unit read inside the recurrence
                sources.setdefault((path, source[0]), set()).update(source[1].tolist())
            elif (path, site.offset) not in hooked:  # both directions read the module's input
                hooked.add((path, site.offset))
                out.append((owner, torch.as_tensor(idx + site.offset), -1))
            continue
        if site.module not in modules:
            raise GraphError(f"'{site.module}' is not a module of {type(model).__name__}")
        dim, features = _feature_index(modules[site.module], site.spatial, idx + site.offset)
        out.append((modules[site.module], features, dim))
    return out


def _shared(module: str, layer: int, graph: WeightGraph, calls: int) -> GraphError:
    return GraphError(
        f"module '{module}' reads layer {layer} ('{graph.layers[layer].name}') but forward calls it {calls} "
        "times: a hook on it cannot silence the units in one call only"
    )
