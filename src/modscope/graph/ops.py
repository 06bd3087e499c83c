"""Which modules and operations a feed-forward chain may contain, and what each does to the units.

Read by :mod:`modscope.graph.trace`: a *pass* operation keeps the units (an activation, a pooling) but ends a
run of identities, so a BatchNorm after it scales the next layer's inputs; an *identity* leaves values
untouched in eval mode, so a BatchNorm after it still folds into the previous layer's rows; a *flatten* turns
channels into one feature vector (:func:`check_flattens` checks that it does); a *meta* method returns no
activation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import fx, nn

from modscope.graph.layer import GraphError

# Modules with no edge weights between units that keep the unit identity: passed through.
PASS_MODULES = (
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
IDENTITY_MODULES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
PASS_FUNCTIONS = {
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
IDENTITY_FUNCTIONS = {F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout}
FLATTEN_FUNCTIONS = {torch.flatten}
PASS_METHODS = {"relu", "sigmoid", "tanh", "softmax", "log_softmax", "gelu"}
IDENTITY_METHODS = {"contiguous", "float", "double", "to", "type_as", "detach"}
FLATTEN_METHODS = {"flatten", "view", "reshape"}
# Methods whose result is not a unit activation (e.g. ``x.size(0)`` feeding a ``view``).
META_METHODS = {"size", "dim"}

SUPPORTED = (
    "Linear, Conv1d/2d/3d, BatchNorm1d/2d/3d, activations (ReLU, GELU, Tanh, Sigmoid, ...), Dropout, "
    "Identity, max/avg/adaptive pooling, Flatten / torch.flatten / view / reshape, in one feed-forward chain"
)


def where(node: fx.Node, gm: fx.GraphModule) -> str:
    """Where ``node`` is, for error messages: the module path and type, or the operation and its module."""
    if node.op == "call_module":
        mod = gm.get_submodule(node.target)
        return f"module '{node.target}' ({type(mod).__name__})"
    stack = node.meta.get("nn_module_stack")
    inside = f" inside '{next(reversed(stack))}'" if stack else ""
    target = getattr(node.target, "__name__", str(node.target))
    return f"operation '{node.name}' ({node.op} {target}){inside}"


def check_flattens(gm: fx.GraphModule, input_shape: Sequence[int]) -> None:
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
        at = f"{where(run.node, gm)} fails ({reason})" if run.node is not None else reason
        raise GraphError(
            f"the model does not accept inputs of shape {shape}: {at}; {_expected_input(gm)}"
        ) from None
    finally:
        gm.train(was_training)
    for node in gm.graph.nodes:
        is_flatten = (
            (node.op == "call_method" and node.target in FLATTEN_METHODS)
            or (node.op == "call_function" and node.target in FLATTEN_FUNCTIONS)
            or (node.op == "call_module" and isinstance(gm.get_submodule(node.target), nn.Flatten))
        )
        out = run.shapes.get(node)
        if is_flatten and out is not None and (len(out) != 2 or out[0] != 2):
            raise GraphError(
                f"{where(node, gm)} reshapes to {out}; only a flatten to (batch, features) is supported"
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
        module = gm.get_submodule(node.target) if node.op == "call_module" else None
        if isinstance(module, nn.Linear):
            return f"its first layer {where(node, gm)} takes {module.in_features} input features"
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            dims = {nn.Conv1d: "L", nn.Conv2d: "HxW", nn.Conv3d: "DxHxW"}[type(module)]
            return f"its first layer {where(node, gm)} takes {module.in_channels}x{dims} inputs"
    return "it has no Linear or Conv layer"
