"""Find the feed-forward chain of a PyTorch model by tracing it with ``torch.fx``.

Tracing (rather than reading ``nn.Sequential`` order) means a model written as a plain ``forward`` works,
and anything that is not a chain -- a residual ``add``, a branch, an LSTM, attention -- is seen and refused
by name instead of being silently turned into a wrong graph.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from modscope.graph.layer import GraphError, Layer, reduce_kernel

_WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
# Modules with no edge weights between units that keep the unit identity: passed through.
_PASS_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Tanh,
    nn.Sigmoid,
    nn.Hardtanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Softplus,
    nn.Softsign,
    nn.LogSigmoid,
    nn.Tanhshrink,
    nn.Softmax,
    nn.LogSoftmax,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
    nn.LPPool1d,
    nn.LPPool2d,
)
# Modules that leave values untouched in eval mode: a BatchNorm right after them still folds into rows.
_IDENTITY_MODULES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
_PASS_FUNCTIONS = {
    torch.relu,
    F.relu,
    F.relu6,
    F.leaky_relu,
    F.elu,
    F.selu,
    F.celu,
    F.gelu,
    F.silu,
    F.mish,
    torch.tanh,
    F.tanh,
    torch.sigmoid,
    F.sigmoid,
    F.hardtanh,
    F.hardswish,
    F.softplus,
    F.softsign,
    F.logsigmoid,
    torch.softmax,
    F.softmax,
    torch.log_softmax,
    F.log_softmax,
    F.max_pool1d,
    F.max_pool2d,
    F.max_pool3d,
    F.avg_pool1d,
    F.avg_pool2d,
    F.avg_pool3d,
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
    F.adaptive_avg_pool3d,
    F.adaptive_max_pool1d,
    F.adaptive_max_pool2d,
    F.adaptive_max_pool3d,
}
_IDENTITY_FUNCTIONS = {F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout}
_FLATTEN_FUNCTIONS = {torch.flatten}
_PASS_METHODS = {"relu", "sigmoid", "tanh", "softmax", "log_softmax", "gelu"}
_IDENTITY_METHODS = {"contiguous", "float", "double", "to", "type_as", "detach"}
_FLATTEN_METHODS = {"flatten", "view", "reshape"}
# Methods whose result is not a unit activation (e.g. ``x.size(0)`` feeding a ``view``).
_META_METHODS = {"size", "dim"}

SUPPORTED = (
    "Linear, Conv1d/2d/3d, BatchNorm1d/2d/3d, activations (ReLU, GELU, Tanh, Sigmoid, ...), Dropout, "
    "Identity, max/avg/adaptive pooling, Flatten / torch.flatten / view / reshape, in one feed-forward chain"
)


@dataclass
class _Units:
    """What flows along the chain: the units of one layer of the graph."""

    layer: int  # index into the list of layers being built
    channels: int | None  # None: a feature vector (or the still-unknown input)
    flat: bool = False  # channels flattened into one feature vector (channel-major)
    foldable: bool = True  # nothing but identities since the weight layer: BatchNorm scales its rows
    col_scale: np.ndarray | None = None  # BatchNorm after a nonlinearity: scales the next layer's columns


def _where(node: fx.Node, gm: fx.GraphModule) -> str:
    if node.op == "call_module":
        mod = gm.get_submodule(node.target)
        return f"module '{node.target}' ({type(mod).__name__})"
    stack = node.meta.get("nn_module_stack")
    inside = f" inside '{next(reversed(stack))}'" if stack else ""
    target = getattr(node.target, "__name__", str(node.target))
    return f"operation '{node.name}' ({node.op} {target}){inside}"


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy()


def trace_layers(
    model: nn.Module, input_shape: Sequence[int] | None, channel_norm: str
) -> tuple[list[Layer], list[np.ndarray]]:
    """Layers and ``(out, in)`` edge blocks of ``model``'s feed-forward chain."""
    if not isinstance(model, nn.Module):
        raise GraphError(f"expected a torch.nn.Module, got {type(model).__name__}")
    if isinstance(model, (*_WEIGHTED, *_BATCHNORM)):  # fx would trace its forward's use of self.weight
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
    try:
        gm = fx.symbolic_trace(model)
    except Exception as exc:  # fx raises many types; the user needs the reason and the way out
        raise GraphError(
            f"could not trace {type(model).__name__} with torch.fx ({type(exc).__name__}: {exc}). "
            "modscope needs a feed-forward forward() without data-dependent control flow; "
            "for raw matrices use WeightGraph.from_weights"
        ) from exc
    if input_shape is not None:
        _check_flattens(gm, input_shape)

    layers: list[Layer] = [Layer("input", -1, "input")]
    blocks: list[np.ndarray] = []
    state: dict[fx.Node, _Units] = {}
    consumed: set[fx.Node] = set()
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise GraphError(f"the model's forward must take exactly one tensor input, got {len(placeholders)}")

    def take(node: fx.Node) -> _Units:
        tensors = [a for a in node.all_input_nodes if a in state]
        if len(tensors) != 1:
            raise GraphError(
                f"{_where(node, gm)} combines {len(tensors)} activations; only a single feed-forward chain "
                "is supported (residual connections and branches are not yet)"
            )
        src = tensors[0]
        if src in consumed:
            raise GraphError(
                f"{_where(node, gm)} reuses an activation that another operation already consumed: "
                "branching networks are not supported"
            )
        consumed.add(src)
        return state[src]

    def set_input_size(units: _Units, size: int, channels: int | None) -> None:
        if units.layer == 0 and layers[0].size < 0:
            layers[0] = Layer("input", size, "input")
            units.channels = channels if not units.flat else None

    def add_layer(node: fx.Node, module: nn.Module, units: _Units) -> _Units:
        w = _numpy(module.weight)
        if isinstance(module, nn.Linear):
            if units.channels is not None and not units.flat:
                raise GraphError(
                    f"{_where(node, gm)} is applied to a {units.channels}-channel feature map without a "
                    "flatten; only Linear on feature vectors (or after a flatten) is supported"
                )
            set_input_size(units, module.in_features, None)
            if units.flat and units.channels is not None:
                c = units.channels
                if module.in_features % c:
                    raise GraphError(
                        f"{_where(node, gm)} has {module.in_features} inputs, not a multiple of the "
                        f"{c} channels flattened into it"
                    )
                # PyTorch flattens channel-major: feature c * spatial + s belongs to channel c.
                block = reduce_kernel(
                    w.reshape(module.out_features, c, module.in_features // c), channel_norm
                )
                scale = units.col_scale
            else:
                if layers[units.layer].size != module.in_features:
                    raise GraphError(
                        f"{_where(node, gm)} expects {module.in_features} inputs but the previous layer "
                        f"'{layers[units.layer].name}' has {layers[units.layer].size} units"
                    )
                block = np.abs(w)
                scale = units.col_scale
            kind, out = "linear", module.out_features
            channels = None
        else:  # convolution
            if units.flat:
                raise GraphError(f"{_where(node, gm)} follows a flatten; convolutions need a feature map")
            set_input_size(units, module.in_channels, module.in_channels)
            if layers[units.layer].size != module.in_channels:
                raise GraphError(
                    f"{_where(node, gm)} expects {module.in_channels} input channels but the previous layer "
                    f"'{layers[units.layer].name}' has {layers[units.layer].size}"
                )
            reduced = reduce_kernel(w, channel_norm)  # (out, in / groups)
            g = module.groups
            block = np.zeros((module.out_channels, module.in_channels))
            per_in, per_out = module.in_channels // g, module.out_channels // g
            for gi in range(g):  # grouped conv: block-diagonal channel graph
                rows = slice(gi * per_out, (gi + 1) * per_out)
                block[rows, gi * per_in : (gi + 1) * per_in] = reduced[rows]
            scale = units.col_scale
            kind, out = "conv", module.out_channels
            channels = module.out_channels
        if scale is not None:
            block = block * scale[None, :]
        blocks.append(block)
        layers.append(Layer(str(node.target), int(out), kind))
        return _Units(len(layers) - 1, channels)

    def fold_batchnorm(node: fx.Node, module: nn.Module, units: _Units) -> _Units:
        if module.running_var is None:
            raise GraphError(
                f"{_where(node, gm)} has no running statistics (track_running_stats=False), "
                "so it cannot be folded into the weights"
            )
        n = module.num_features
        size = layers[units.layer].size
        if units.layer == 0 and size < 0:
            set_input_size(units, n, n if isinstance(module, (nn.BatchNorm2d, nn.BatchNorm3d)) else None)
            size = n
        if units.flat and units.channels is not None:
            raise GraphError(f"{_where(node, gm)} normalizes a flattened feature map; not supported")
        if size != n:
            raise GraphError(f"{_where(node, gm)} normalizes {n} features but the layer has {size} units")
        scale = (_numpy(module.running_var) + module.eps) ** -0.5
        if module.weight is not None:
            scale = scale * np.abs(_numpy(module.weight))
        if units.foldable and units.layer > 0:
            blocks[-1] = blocks[-1] * scale[:, None]
            return units
        prior = units.col_scale if units.col_scale is not None else 1.0
        return _Units(units.layer, units.channels, units.flat, False, prior * scale)

    output_units: _Units | None = None
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            state[node] = _Units(0, None)
        elif node.op == "get_attr":
            raise GraphError(
                f"{_where(node, gm)} reads a parameter directly ({node.target}); functional use of weights "
                "is not supported: use nn.Linear / nn.Conv modules"
            )
        elif node.op == "output":
            arg = node.args[0]
            if not isinstance(arg, fx.Node) or arg not in state:
                raise GraphError("the model must return a single tensor computed by its layers")
            output_units = state[arg]
        elif node.op == "call_method" and node.target in _META_METHODS:
            continue
        elif node.op == "call_module":
            module = gm.get_submodule(node.target)
            units = take(node)
            if isinstance(module, _WEIGHTED):
                state[node] = add_layer(node, module, units)
            elif isinstance(module, _BATCHNORM):
                state[node] = fold_batchnorm(node, module, units)
            elif isinstance(module, _IDENTITY_MODULES):
                state[node] = units
            elif isinstance(module, _PASS_MODULES):
                state[node] = _Units(units.layer, units.channels, units.flat, False, units.col_scale)
            elif isinstance(module, nn.Flatten):
                state[node] = _flatten(units)
            else:
                raise GraphError(f"unsupported {_where(node, gm)}. Supported: {SUPPORTED}")
        elif node.op in ("call_function", "call_method"):
            t = node.target
            if t in (operator.add, torch.add, operator.iadd, "add", "add_"):
                raise GraphError(
                    f"{_where(node, gm)} adds activations (a residual connection?), not yet "
                    f"supported. Supported: {SUPPORTED}"
                )
            units = take(node)
            if t in _IDENTITY_FUNCTIONS or t in _IDENTITY_METHODS:
                state[node] = units
            elif t in _PASS_FUNCTIONS or t in _PASS_METHODS:
                state[node] = _Units(units.layer, units.channels, units.flat, False, units.col_scale)
            elif t in _FLATTEN_FUNCTIONS or t in _FLATTEN_METHODS:
                state[node] = _flatten(units)
            else:
                raise GraphError(f"unsupported {_where(node, gm)}. Supported: {SUPPORTED}")
    if output_units is None or not blocks:
        raise GraphError(f"{type(model).__name__} has no weight layers ({SUPPORTED})")
    if output_units.layer != len(layers) - 1:
        raise GraphError("the model's output is not produced by its last weight layer")
    if output_units.col_scale is not None:
        # A BatchNorm after the last nonlinearity rescales the outputs: fold it into the last rows.
        blocks[-1] = blocks[-1] * output_units.col_scale[:, None]
    return layers, blocks


def _flatten(units: _Units) -> _Units:
    if units.channels is None or units.flat:
        return _Units(units.layer, units.channels, units.flat, units.foldable, units.col_scale)
    return _Units(units.layer, units.channels, True, units.foldable, units.col_scale)


def _check_flattens(gm: fx.GraphModule, input_shape: Sequence[int]) -> None:
    """Run the model once on zeros and check that each view/reshape/flatten gives ``(batch, features)``."""
    shape = tuple(int(s) for s in input_shape)
    if not shape or any(s <= 0 for s in shape):
        raise GraphError(f"input_shape must be positive sizes without the batch dimension, got {input_shape}")
    was_training = gm.training
    gm.eval()
    run = _Shapes(gm)
    try:
        with torch.no_grad():
            run.run(torch.zeros((2, *shape)))
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        where = f"{_where(run.node, gm)} fails ({reason})" if run.node is not None else reason
        raise GraphError(
            f"the model does not accept inputs of shape {shape}: {where}; {_expected_input(gm)}"
        ) from None
    finally:
        gm.train(was_training)
    for node in gm.graph.nodes:
        is_flatten = (
            (node.op == "call_method" and node.target in _FLATTEN_METHODS)
            or (node.op == "call_function" and node.target in _FLATTEN_FUNCTIONS)
            or (node.op == "call_module" and isinstance(gm.get_submodule(node.target), nn.Flatten))
        )
        out = run.shapes.get(node)
        if is_flatten and out is not None and (len(out) != 2 or out[0] != 2):
            raise GraphError(
                f"{_where(node, gm)} reshapes to {out}; only a flatten to (batch, features) is supported"
            )


class _Shapes(fx.Interpreter):
    """Runs the traced model, recording each node's output shape and the node being run (for errors).

    torch's ``ShapeProp`` would do the first, but prints a full traceback to stderr on any error."""

    extra_traceback = False  # keep the exception's message to its own first line

    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm)
        self.shapes: dict[fx.Node, tuple[int, ...]] = {}
        self.node: fx.Node | None = None

    def run_node(self, n: fx.Node):
        self.node = n
        out = super().run_node(n)
        if isinstance(out, torch.Tensor):
            self.shapes[n] = tuple(out.shape)
        return out


def _expected_input(gm: fx.GraphModule) -> str:
    """What the first weight layer takes, as a hint for the input shape."""
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(gm.get_submodule(node.target), _WEIGHTED):
            module = gm.get_submodule(node.target)
            if isinstance(module, nn.Linear):
                return f"its first layer {_where(node, gm)} takes {module.in_features} input features"
            dims = {nn.Conv1d: "L", nn.Conv2d: "HxW", nn.Conv3d: "DxHxW"}[type(module)]
            return f"its first layer {_where(node, gm)} takes {module.in_channels}x{dims} inputs"
    return "it has no Linear or Conv layer"
