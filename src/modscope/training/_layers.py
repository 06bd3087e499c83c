"""The chain of weight layers of a feed-forward model, as the training tools see it.

The training helpers (clusterable init, the clusterability penalty, weight penalties, pruning) work on the
``Linear`` / ``Conv1d/2d/3d`` modules of a model, **in definition order**, which must form a feed-forward
chain: each layer's inputs are the previous layer's outputs (a ``Linear`` after a convolution sees the
channel-major flattening of the feature map, as after ``nn.Flatten``). This is true of every built-in
modscope model (:func:`modscope.models.build_model`). Unlike :class:`modscope.graph.WeightGraph`, nothing is
traced and the edge blocks stay differentiable torch tensors; BatchNorm is not folded in.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from modscope.graph.layer import check_channel_norm

WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass(frozen=True)
class WeightLayer:
    """One weight layer: ``name`` (module path), the module, and how its input units are laid out.

    ``in_units`` is the number of units of the previous layer (or of the input), ``spatial`` the number of
    flattened positions per input unit (1 unless a Linear follows a convolution's flattened feature map).
    """

    name: str
    module: nn.Module
    in_units: int
    out_units: int
    spatial: int = 1


def weight_layers(model: nn.Module, names: tuple[str, ...] | list[str] | None = None) -> list[WeightLayer]:
    """The ``Linear``/``Conv`` layers of ``model`` in definition order, checked to form a chain.

    ``names`` restricts the list to those module paths (no chain check then: any subset is allowed).

    Raises:
        ValueError: no weight layer, an unknown name, or consecutive layers whose sizes do not connect
            (naming both modules and their sizes).
    """
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, WEIGHTED)]
    if not found:
        raise ValueError(f"{type(model).__name__} has no Linear or Conv layers")
    if names is not None:
        known = dict(found)
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(f"no Linear/Conv layer named {unknown[0]!r}; weight layers are {list(known)}")
        return [_layer(n, known[n], None) for n in names]
    layers: list[WeightLayer] = []
    prev: WeightLayer | None = None
    for name, module in found:
        layer = _layer(name, module, prev)
        layers.append(layer)
        prev = layer
    return layers


def _units(module: nn.Module) -> tuple[int, int]:
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    return module.in_channels, module.out_channels


def _layer(name: str, module: nn.Module, prev: WeightLayer | None) -> WeightLayer:
    n_in, n_out = _units(module)
    if prev is None or n_in == prev.out_units:
        return WeightLayer(name, module, n_in, n_out)
    if (
        isinstance(module, nn.Linear)
        and not isinstance(prev.module, nn.Linear)
        and n_in % prev.out_units == 0
    ):
        return WeightLayer(name, module, prev.out_units, n_out, n_in // prev.out_units)
    raise ValueError(
        f"layer '{name}' ({type(module).__name__}) takes {n_in} inputs but the previous weight layer "
        f"'{prev.name}' ({type(prev.module).__name__}) has {prev.out_units} outputs: the Linear/Conv modules "
        "in definition order must form a feed-forward chain"
    )


def unit_block(layer: WeightLayer, weight: Tensor | None = None, channel_norm: str = "l1") -> Tensor:
    """The ``(out_units, in_units)`` block of non-negative edge weights of one layer, differentiable.

    ``|W|`` for a Linear on units; for a convolution, the ``channel_norm`` of each kernel slice
    ``K[j, i, ...]`` (grouped convolutions give a block-diagonal matrix); for a Linear after a flattened
    feature map, the ``channel_norm`` over the spatial positions of each channel (as in
    :mod:`modscope.graph`). ``weight`` defaults to ``layer.module.weight`` (the masked weight when pruned).
    """
    check_channel_norm(channel_norm)
    w = layer.module.weight if weight is None else weight
    if isinstance(layer.module, nn.Linear):
        if layer.spatial == 1:
            return w.abs()
        w = w.reshape(layer.out_units, layer.in_units, layer.spatial)
        return _norm(w, (2,), channel_norm)
    reduced = _norm(w, tuple(range(2, w.ndim)), channel_norm)  # (out, in / groups)
    groups = layer.module.groups
    if groups == 1:
        return reduced
    per_in, per_out = layer.in_units // groups, layer.out_units // groups
    blocks = [reduced[g * per_out : (g + 1) * per_out] for g in range(groups)]
    return torch.block_diag(*blocks).reshape(layer.out_units, groups * per_in)


def reduce_weight(w: Tensor, channel_norm: str = "l1") -> Tensor:
    """``|W|`` for a matrix ``(out, in)``; the ``channel_norm`` of each kernel slice, ``(out, in, *k)``."""
    return w.abs() if w.ndim == 2 else _norm(w, tuple(range(2, w.ndim)), channel_norm)


def _norm(w: Tensor, dims: tuple[int, ...], channel_norm: str) -> Tensor:
    if channel_norm == "l1":
        return w.abs().sum(dims)
    return w.square().sum(dims).sqrt()


def expand_factor(layer: WeightLayer, factor: Tensor) -> Tensor:
    """Broadcast a ``(out_units, in_units)`` factor to the shape of ``layer``'s weight tensor."""
    w = layer.module.weight
    if isinstance(layer.module, nn.Linear):
        if layer.spatial == 1:
            return factor
        return factor.repeat_interleave(layer.spatial, dim=1)
    groups = layer.module.groups
    per_in, per_out = layer.in_units // groups, layer.out_units // groups
    if groups > 1:  # weight (out, in / groups): input i of output j is global input g(j) * per_in + i
        rows = torch.arange(layer.out_units)
        cols = (rows // per_out)[:, None] * per_in + torch.arange(per_in)[None, :]
        factor = factor[rows[:, None], cols]
    return factor.reshape(*factor.shape, *([1] * (w.ndim - 2))).expand_as(w)


def penalized_weights(model: nn.Module) -> list[tuple[str, Tensor]]:
    """``(name, weight)`` of every weight matrix/kernel: parameters with "weight" in their name and >= 2 dims.

    That is Linear/Conv weights, recurrent ``weight_ih``/``weight_hh`` and attention projections (and
    embeddings); biases and norm parameters (1-D) are excluded. A layer pruned with ``torch.nn.utils.prune``
    contributes its masked weight (``weight_orig * weight_mask``), not ``weight_orig``.
    """
    out = []
    for mname, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            if "weight" not in pname or p.ndim < 2:
                continue
            if pname.endswith("_orig") and hasattr(module, pname[: -len("_orig")] + "_mask"):
                pname = pname[: -len("_orig")]
                p = getattr(module, pname)
            out.append((f"{mname}.{pname}" if mname else pname, p))
    return out
