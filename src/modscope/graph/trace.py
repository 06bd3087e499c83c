"""Find the feed-forward chain of a PyTorch model by tracing it with ``torch.fx``.

Tracing (rather than reading ``nn.Sequential`` order) means a model written as a plain ``forward`` works,
and anything that is not a chain -- a residual ``add``, a branch, an LSTM, attention -- is seen and refused
by name instead of being silently turned into a wrong graph.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import fx, nn

from modscope.graph import ops
from modscope.graph.blocks import BATCHNORM, WEIGHTED, WeightLayer, layer_block
from modscope.graph.layer import GraphError, Layer
from modscope.graph.ops import where


@dataclass
class _Units:
    """What flows along the chain: the units of one layer of the graph."""

    layer: int  # index into the list of layers being built
    channels: int | None  # None: a feature vector (or the still-unknown input)
    flat: bool = False  # channels flattened into one feature vector (channel-major)
    foldable: bool = True  # nothing but identities since the weight layer: BatchNorm scales its rows
    col_norms: tuple[nn.Module, ...] = ()  # BatchNorms after a nonlinearity: scale the next layer's columns


def _float64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu", torch.float64)


def trace_layers(
    model: nn.Module, input_shape: Sequence[int] | None, channel_norm: str
) -> tuple[list[Layer], list[np.ndarray]]:
    """Layers and float64 ``(out, in)`` edge blocks of ``model``'s feed-forward chain (for WeightGraph)."""
    if not isinstance(model, nn.Module):
        raise GraphError(f"expected a torch.nn.Module, got {type(model).__name__}")
    if isinstance(model, (*WEIGHTED, *BATCHNORM)):  # fx would trace its forward's use of self.weight
        raise GraphError(
            f"the model is a bare {type(model).__name__} layer; wrap it as a network of one layer, "
            "nn.Sequential(model)"
        )
    for name, p in list(model.named_parameters()) + list(model.named_buffers()):
        if p.is_meta:
            raise GraphError(
                f"parameter '{name}' is on the meta device (a shape without values): load or initialize "
                "the weights first, e.g. model.to_empty(device='cpu') then load_state_dict"
            )
        if p.is_floating_point() and not torch.all(torch.isfinite(p)):
            raise GraphError(f"parameter '{name}' has non-finite values (NaN or inf)")
    layers, chain = _trace(model, input_shape)
    blocks = [layer_block(w, channel_norm=channel_norm, read=_float64).numpy() for w in chain]
    return layers, blocks


def trace_chain(model: nn.Module, input_shape: Sequence[int] | None = None) -> list[WeightLayer]:
    """The weight layers of ``model``'s feed-forward chain, in the order ``forward`` calls them.

    The chain :meth:`WeightGraph.from_module <modscope.graph.WeightGraph.from_module>` builds its graph
    from (same tracing, same checks, same ``input_shape``): pass each layer to
    :func:`~modscope.graph.blocks.layer_block` for its edge block. ``chain[0].in_units`` is the number of
    input units. Raises :class:`GraphError` naming any module or operation that is not a feed-forward chain.
    """
    if not isinstance(model, nn.Module):
        raise GraphError(f"expected a torch.nn.Module, got {type(model).__name__}")
    return _trace(model, input_shape)[1]


def _trace(model: nn.Module, input_shape: Sequence[int] | None) -> tuple[list[Layer], list[WeightLayer]]:
    try:
        gm = fx.symbolic_trace(model)
    except Exception as exc:  # fx raises many types; the user needs the reason and the way out
        raise GraphError(
            f"could not trace {type(model).__name__} with torch.fx ({type(exc).__name__}: {exc}). "
            "modscope needs a feed-forward forward() without data-dependent control flow; "
            "for raw matrices use WeightGraph.from_weights"
        ) from exc
    if input_shape is not None:
        ops.check_flattens(gm, input_shape)

    layers: list[Layer] = [Layer("input", -1, "input")]
    chain: list[WeightLayer] = []
    state: dict[fx.Node, _Units] = {}
    consumed: set[fx.Node] = set()
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise GraphError(f"the model's forward must take exactly one tensor input, got {len(placeholders)}")

    def take(node: fx.Node) -> _Units:
        tensors = [a for a in node.all_input_nodes if a in state]
        if len(tensors) != 1:
            raise GraphError(
                f"{where(node, gm)} combines {len(tensors)} activations; only a single feed-forward chain "
                "is supported (residual connections and branches are not yet)"
            )
        src = tensors[0]
        if src in consumed:
            raise GraphError(
                f"{where(node, gm)} reuses an activation that another operation already consumed: "
                "branching networks are not supported"
            )
        consumed.add(src)
        return state[src]

    def set_input_size(units: _Units, size: int, channels: int | None) -> None:
        if units.layer == 0 and layers[0].size < 0:
            layers[0] = Layer("input", size, "input")
            units.channels = channels if not units.flat else None

    def add_layer(node: fx.Node, module: nn.Module, units: _Units) -> _Units:
        spatial = 1
        if isinstance(module, nn.Linear):
            if units.channels is not None and not units.flat:
                raise GraphError(
                    f"{where(node, gm)} is applied to a {units.channels}-channel feature map without a "
                    "flatten; only Linear on feature vectors (or after a flatten) is supported"
                )
            set_input_size(units, module.in_features, None)
            n_in = module.in_features
            if units.flat and units.channels is not None:
                n_in = units.channels
                if module.in_features % n_in:
                    raise GraphError(
                        f"{where(node, gm)} has {module.in_features} inputs, not a multiple of the "
                        f"{n_in} channels flattened into it"
                    )
                spatial = module.in_features // n_in
            elif layers[units.layer].size != module.in_features:
                raise GraphError(
                    f"{where(node, gm)} expects {module.in_features} inputs but the previous layer "
                    f"'{layers[units.layer].name}' has {layers[units.layer].size} units"
                )
            kind, out, channels = "linear", module.out_features, None
        else:  # convolution
            if units.flat:
                raise GraphError(f"{where(node, gm)} follows a flatten; convolutions need a feature map")
            set_input_size(units, module.in_channels, module.in_channels)
            if layers[units.layer].size != module.in_channels:
                raise GraphError(
                    f"{where(node, gm)} expects {module.in_channels} input channels but the previous layer "
                    f"'{layers[units.layer].name}' has {layers[units.layer].size}"
                )
            n_in = module.in_channels
            kind, out, channels = "conv", module.out_channels, module.out_channels
        name = str(node.target)
        chain.append(WeightLayer(name, module, kind, int(n_in), int(out), spatial, (), units.col_norms))
        layers.append(Layer(name, int(out), kind))
        return _Units(len(layers) - 1, channels)

    def fold_rows(norms: tuple[nn.Module, ...]) -> None:
        chain[-1] = replace(chain[-1], row_norms=chain[-1].row_norms + norms)

    def fold_batchnorm(node: fx.Node, module: nn.Module, units: _Units) -> _Units:
        if module.running_var is None:
            raise GraphError(
                f"{where(node, gm)} has no running statistics (track_running_stats=False), "
                "so it cannot be folded into the weights"
            )
        n = module.num_features
        size = layers[units.layer].size
        if units.layer == 0 and size < 0:
            set_input_size(units, n, n if isinstance(module, (nn.BatchNorm2d, nn.BatchNorm3d)) else None)
            size = n
        if units.flat and units.channels is not None:
            raise GraphError(f"{where(node, gm)} normalizes a flattened feature map; not supported")
        if size != n:
            raise GraphError(f"{where(node, gm)} normalizes {n} features but the layer has {size} units")
        if units.foldable and units.layer > 0:
            fold_rows((module,))
            return units
        return _Units(units.layer, units.channels, units.flat, False, (*units.col_norms, module))

    output_units: _Units | None = None
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            state[node] = _Units(0, None)
        elif node.op == "get_attr":
            raise GraphError(
                f"{where(node, gm)} reads a parameter directly ({node.target}); functional use of weights "
                "is not supported: use nn.Linear / nn.Conv modules"
            )
        elif node.op == "output":
            arg = node.args[0]
            if not isinstance(arg, fx.Node) or arg not in state:
                raise GraphError("the model must return a single tensor computed by its layers")
            output_units = state[arg]
        elif node.op == "call_method" and node.target in ops.META_METHODS:
            continue
        elif node.op == "call_module":
            module = gm.get_submodule(node.target)
            units = take(node)
            if isinstance(module, WEIGHTED):
                state[node] = add_layer(node, module, units)
            elif isinstance(module, BATCHNORM):
                state[node] = fold_batchnorm(node, module, units)
            elif isinstance(module, ops.IDENTITY_MODULES):
                state[node] = units
            elif isinstance(module, ops.PASS_MODULES):
                state[node] = _Units(units.layer, units.channels, units.flat, False, units.col_norms)
            elif isinstance(module, nn.Flatten):
                state[node] = _flatten(units)
            else:
                raise GraphError(f"unsupported {where(node, gm)}. Supported: {ops.SUPPORTED}")
        elif node.op in ("call_function", "call_method"):
            t = node.target
            if t in (operator.add, torch.add, operator.iadd, "add", "add_"):
                raise GraphError(
                    f"{where(node, gm)} adds activations (a residual connection?), not yet "
                    f"supported. Supported: {ops.SUPPORTED}"
                )
            units = take(node)
            if t in ops.IDENTITY_FUNCTIONS or t in ops.IDENTITY_METHODS:
                state[node] = units
            elif t in ops.PASS_FUNCTIONS or t in ops.PASS_METHODS:
                state[node] = _Units(units.layer, units.channels, units.flat, False, units.col_norms)
            elif t in ops.FLATTEN_FUNCTIONS or t in ops.FLATTEN_METHODS:
                state[node] = _flatten(units)
            else:
                raise GraphError(f"unsupported {where(node, gm)}. Supported: {ops.SUPPORTED}")
    if output_units is None or not chain:
        raise GraphError(f"{type(model).__name__} has no weight layers ({ops.SUPPORTED})")
    if output_units.layer != len(layers) - 1:
        raise GraphError("the model's output is not produced by its last weight layer")
    if output_units.col_norms:
        # A BatchNorm after the last nonlinearity rescales the outputs: fold it into the last rows.
        fold_rows(output_units.col_norms)
    return layers, chain


def _flatten(units: _Units) -> _Units:
    if units.channels is None or units.flat:
        return _Units(units.layer, units.channels, units.flat, units.foldable, units.col_norms)
    return _Units(units.layer, units.channels, True, units.foldable, units.col_norms)
