"""The layer-to-weight-block rule: how one weight layer of a feed-forward chain becomes edges between units.

The one definition of the rule, in torch: :class:`~modscope.graph.WeightGraph` converts its blocks to numpy
(float64), while the clusterability penalty and the clusterable initialization of :mod:`modscope.training`
keep torch tensors and their gradients. The chain itself is found by :func:`modscope.graph.trace.trace_chain`.

A weight layer with weight ``W`` gives the non-negative block ``B`` of shape ``(out_units, in_units)``
(Filan et al., "Clusterability in Neural Networks", arXiv:2103.03386, §2):

* ``Linear`` on a feature vector: ``B[j, i] = |W[j, i]|``;
* ``Linear`` after the channel-major flatten of ``C`` channels of ``P`` positions each:
  ``B[j, c] = || W[j, c*P : (c+1)*P] ||``, the ``channel_norm`` (``"l1"``: sum of magnitudes, ``"l2"``:
  Euclidean norm) over the channel's positions;
* ``Conv1d/2d/3d`` with kernel ``K`` of shape ``(out, in / groups, *k)``: ``B[j, i] = || K[j, i', ...] ||``
  when input channel ``i`` is in output ``j``'s group (``i = g(j) * in / groups + i'``,
  ``g(j) = j // (out / groups)``), and 0 otherwise -- a grouped convolution is block-diagonal;
* a ``BatchNorm`` with eval statistics computes ``y_j = s_j x_j + t_j`` with
  ``s_j = gamma_j / sqrt(var_j + eps)``. Right after the layer (nothing but identities between) it
  multiplies row ``j`` of ``B`` by ``|s_j|``; after a nonlinearity it multiplies column ``j`` of the next
  layer's block by ``|s_j|``; after the last nonlinearity of the network, the last block's rows. The shift
  ``t`` (like every bias) adds no edge;
* ``LayerNorm`` / ``RMSNorm`` over the feature vector (``normalized_shape`` = its size) and ``GroupNorm``
  fold the same way with ``s_j = |gamma_j|`` (1 without an affine): their per-channel affine is a fixed
  scale of unit ``j``, while the division by the sample's standard deviation (RMS) is one positive number
  shared by all units of the sample, so it does not change which unit is joined more strongly than
  which. A LayerNorm over a feature map (several dimensions) has no per-channel scale and is refused;
* ``ConvTranspose1d/2d/3d`` store their kernel as ``(in, out / groups, *k)``:
  ``B[j, i] = || K[i, j', ...] ||`` for output ``j = g(i) * out / groups + j'`` of input ``i``'s group,
  0 across groups;
* ``Embedding`` (``kind="embedding"``): the ``(num_embeddings, d)`` table gives ``B = |W|^T``, from the
  indices (input units) to the ``d`` features (:mod:`modscope.graph.attention`); an attention module's
  packed ``in_proj_weight`` gives one ``Linear`` block per projection, its rows ``rows``;
* ``LSTM`` / ``GRU`` / ``RNN`` weights (``kind="recurrent"``, ``param`` names the tensor): the
  ``(G * out, in)`` weight of ``G`` stacked gates gives ``B[j, i] = || (W[g * out + j, i])_g ||``, the
  ``channel_norm`` over the gates (rules and reasons in :mod:`modscope.graph.recurrent`).
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from modscope.graph.layer import check_channel_norm, reduce_kernel

CONV_TRANSPOSE = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, *CONV_TRANSPOSE)
BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
# Normalizations whose eval-mode effect on unit j is a fixed scale (see the module docstring).
FEATURE_NORMS = (nn.LayerNorm, nn.GroupNorm, *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()))
NORMS = (*BATCHNORM, *FEATURE_NORMS)

__all__ = [
    "BATCHNORM",
    "CONV_TRANSPOSE",
    "FEATURE_NORMS",
    "NORMS",
    "WEIGHTED",
    "WeightLayer",
    "batchnorm_scale",
    "expand_factor",
    "layer_block",
    "norm_scale",
    "weight_modules",
]


@dataclass(frozen=True)
class WeightLayer:
    """One weight layer of a feed-forward chain and everything its block is read from.

    Attributes:
        name: module path of the ``Linear``/``Conv`` module.
        module: the module itself (its ``weight`` is read when the block is computed).
        kind: ``"linear"``, ``"conv"``, ``"conv_transpose"``, ``"embedding"`` or ``"recurrent"``.
        in_units, out_units: units (channels for a convolution) of the layer before and of this one.
        spatial: flattened positions per input channel (``P`` above; 1 unless a Linear follows a flatten).
        row_norms: norms (BatchNorm, LayerNorm, ...) folded into the rows, in the order they are applied.
        col_norms: norms folded into the columns (they normalize this layer's inputs).
        param: the module's weight tensor (``"weight_ih_l0"``, ... for a recurrent layer).
        rows: ``(start, stop)``: the block is these rows of ``param`` (a packed attention projection).
    """

    name: str
    module: nn.Module
    kind: str
    in_units: int
    out_units: int
    spatial: int = 1
    row_norms: tuple[nn.Module, ...] = ()
    col_norms: tuple[nn.Module, ...] = ()
    param: str = "weight"
    rows: tuple[int, int] | None = None


def _same(t: Tensor) -> Tensor:
    return t


def batchnorm_scale(norm: nn.Module, read: Callable[[Tensor], Tensor] = _same) -> Tensor:
    """``|gamma| / sqrt(running_var + eps)`` of a BatchNorm, shape ``(num_features,)``.

    ``read`` is applied to each tensor read from the module (the identity keeps gradients flowing to
    ``gamma``). Raises ``ValueError`` for a BatchNorm without running statistics.
    """
    if norm.running_var is None:
        raise ValueError(
            f"{type(norm).__name__} has no running statistics (track_running_stats=False), "
            "so it cannot be folded into the weights"
        )
    scale = (read(norm.running_var) + norm.eps) ** -0.5
    if norm.weight is not None:
        scale = scale * read(norm.weight).abs()
    return scale


def norm_scale(norm: nn.Module, read: Callable[[Tensor], Tensor] = _same) -> Tensor:
    """The per-unit scale ``|s_j|`` of a BatchNorm (:func:`batchnorm_scale`), or of a LayerNorm / RMSNorm /
    GroupNorm: ``|gamma_j|``, ones without an affine (module docstring)."""
    if isinstance(norm, BATCHNORM):
        return batchnorm_scale(norm, read)
    if norm.weight is not None:
        return read(norm.weight).abs().reshape(-1)
    n = norm.num_channels if isinstance(norm, nn.GroupNorm) else math.prod(norm.normalized_shape)
    return torch.ones(n)


def _product(scales: Sequence[Tensor]) -> Tensor:
    return functools.reduce(operator.mul, scales)


def layer_block(
    layer: WeightLayer, *, channel_norm: str = "l1", read: Callable[[Tensor], Tensor] = _same
) -> Tensor:
    """The ``(out_units, in_units)`` block of non-negative edge weights of ``layer`` (rule in the module doc).

    ``read`` is applied to every tensor taken from the modules: the identity (default) keeps the block
    differentiable in the weights and the BatchNorm ``gamma``; ``WeightGraph`` reads detached float64 copies.
    A layer pruned with ``torch.nn.utils.prune`` contributes its masked weight.
    """
    check_channel_norm(channel_norm)
    w = read(getattr(layer.module, layer.param))
    if layer.rows is not None:
        w = w[layer.rows[0] : layer.rows[1]]
    if layer.kind == "embedding":
        block = w.abs().T
    elif layer.kind == "recurrent":  # rows are G stacked gates of out units: reduce over the gates
        gates = w.reshape(-1, layer.out_units, layer.in_units)
        block = reduce_kernel(gates.permute(1, 2, 0), channel_norm) if len(gates) > 1 else w.abs()
    elif layer.kind == "linear":
        if layer.spatial == 1:
            block = w.abs()
        else:  # PyTorch flattens channel-major: feature c * spatial + s belongs to channel c
            block = reduce_kernel(w.reshape(layer.out_units, layer.in_units, layer.spatial), channel_norm)
    elif layer.kind == "conv_transpose":
        reduced = reduce_kernel(w, channel_norm).T  # (out / groups, in)
        groups = layer.module.groups
        block = reduced if groups == 1 else torch.block_diag(*reduced.chunk(groups, dim=1))
    else:
        reduced = reduce_kernel(w, channel_norm)  # (out, in / groups)
        groups = layer.module.groups
        block = reduced if groups == 1 else torch.block_diag(*reduced.chunk(groups, dim=0))
    if layer.col_norms:
        block = block * _product([norm_scale(n, read) for n in layer.col_norms])[None, :]
    for norm in layer.row_norms:
        block = block * norm_scale(norm, read)[:, None]
    return block


def expand_factor(layer: WeightLayer, factor: Tensor) -> Tensor:
    """Broadcast a ``(out_units, in_units)`` factor on the units to the shape of ``layer``'s weight.

    The inverse direction of :func:`layer_block`: every weight entry that ``B[j, i]`` summarizes (all spatial
    positions of channel ``i``, the whole kernel slice, the group's own inputs) gets ``factor[j, i]``.
    """
    w = getattr(layer.module, layer.param)
    if layer.kind == "recurrent":  # every gate's weight of the pair (j, i)
        return factor.repeat(w.shape[0] // layer.out_units, 1)
    if layer.kind == "linear":
        return factor if layer.spatial == 1 else factor.repeat_interleave(layer.spatial, dim=1)
    groups = layer.module.groups
    if layer.kind == "conv_transpose":  # weight (in, out / groups): output j' of i is g(i) * per_out + j'
        per_in, per_out = layer.in_units // groups, layer.out_units // groups
        t = factor.T
        if groups > 1:
            rows = torch.arange(layer.in_units, device=factor.device)
            cols = (rows // per_in)[:, None] * per_out + torch.arange(per_out, device=factor.device)[None, :]
            t = t[rows[:, None], cols]
        return t.reshape(*t.shape, *([1] * (w.ndim - 2))).expand_as(w)
    per_in, per_out = layer.in_units // groups, layer.out_units // groups
    if groups > 1:  # weight (out, in / groups): input i of output j is global input g(j) * per_in + i
        rows = torch.arange(layer.out_units, device=factor.device)
        cols = (rows // per_out)[:, None] * per_in + torch.arange(per_in, device=factor.device)[None, :]
        factor = factor[rows[:, None], cols]
    return factor.reshape(*factor.shape, *([1] * (w.ndim - 2))).expand_as(w)


def weight_modules(model: nn.Module, names: Sequence[str] | None = None) -> list[tuple[str, nn.Module]]:
    """``(path, module)`` of the ``Linear``/``Conv``/``ConvTranspose`` modules of ``model`` (definition
    order) or of ``names``.

    Raises ``ValueError`` for a name that is not a weight layer, listing those that are.
    """
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, WEIGHTED)]
    if names is None:
        return found
    known = dict(found)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"no Linear/Conv layer named {unknown[0]!r}; weight layers are {list(known)}")
    return [(n, known[n]) for n in names]
