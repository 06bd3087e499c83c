"""Which modules and operations a traced network may contain, and what each does to the units.

Read by :mod:`modscope.graph.trace`: a *pass* operation keeps the units (an activation, a pooling) but ends a
run of identities, so a BatchNorm after it scales the next layer's inputs; an *identity* leaves values
untouched in eval mode, so a BatchNorm after it still folds into the previous layer's rows; a *flatten* turns
channels into one feature vector (:func:`check_flattens` checks that it does); a *meta* method returns no
activation. An *add* of two activations merges their units, a *cat* concatenates them, and a *constant*
operation (a number added or multiplied) keeps them (rules in :mod:`modscope.graph.trace`).
"""

from __future__ import annotations

import operator
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
#: reductions over a sequence's positions (time, tokens), as methods and as functions
REDUCE_METHODS = {"mean", "sum", "amax", "amin"}
REDUCE_FUNCTIONS = {torch.mean, torch.sum, torch.amax, torch.amin}
ADD_OPS = {operator.add, operator.iadd, operator.sub, operator.isub, torch.add, torch.sub, "add", "add_"}
CAT_OPS = {torch.cat, torch.concat, torch.concatenate}
# With one activation and a number: a shift or a uniform scale keeps the units.
CONSTANT_OPS = ADD_OPS | {operator.mul, operator.imul, operator.truediv, operator.neg, torch.mul, "mul"}
# Methods whose result is not a unit activation (e.g. ``x.size(0)`` feeding a ``view``).
META_METHODS = {"size", "dim"}

SUPPORTED = (
    "Linear, Conv1d/2d/3d, ConvTranspose1d/2d/3d, BatchNorm1d/2d/3d, LayerNorm/RMSNorm over features, "
    "GroupNorm, activations (ReLU, GELU, Tanh, Sigmoid, ...), Dropout, Identity, max/avg/adaptive pooling, "
    "Flatten / torch.flatten / view / reshape, residual adds, torch.cat on channels, LSTM/GRU/RNN "
    "(modscope.graph.recurrent), MultiheadAttention, TransformerEncoder(Layer), BERT-layout Hugging Face "
    "encoders, Embedding (modscope.graph.attention)"
)


def arg(node: fx.Node, position: int, name: str, default: object = None) -> object:
    """Argument ``name`` of a traced call, given by ``position`` or by keyword (``default`` when absent)."""
    return node.args[position] if len(node.args) > position else node.kwargs.get(name, default)


def where(node: fx.Node, gm: fx.GraphModule) -> str:
    """Where ``node`` is, for error messages: the module path and type, or the operation and its module."""
    if node.op == "call_module":
        mod = gm.get_submodule(node.target)
        return f"module '{node.target}' ({type(mod).__name__})"
    stack = node.meta.get("nn_module_stack")
    inside = f" inside '{next(reversed(stack))}'" if stack else ""
    target = getattr(node.target, "__name__", str(node.target))
    return f"operation '{node.name}' ({node.op} {target}){inside}"


def check_flattens(
    gm: fx.GraphModule, input_shape: Sequence[int] | None, example_inputs: tuple | dict | None = None
) -> dict[fx.Node, tuple[int, ...]]:
    """Run the model once (on zeros of ``input_shape`` with a batch of 2, or on ``example_inputs``: a tuple
    of positional or a dict of keyword inputs) and check that each view/reshape/flatten gives
    ``(batch, features)``; returns every tensor-valued node's output shape."""
    if input_shape is not None:
        shape = tuple(int(s) for s in input_shape)
        if not shape or any(s <= 0 for s in shape):
            raise GraphError(
                f"input_shape must be positive sizes without the batch dimension, got {input_shape}"
            )
        args, what = (torch.zeros((2, *shape)),), f"inputs of shape {shape}"
    elif isinstance(example_inputs, tuple):
        args, what = example_inputs, "the example_inputs"
    elif isinstance(example_inputs, dict):
        args, what = example_inputs, "the example_inputs"
    else:
        raise GraphError(
            "example_inputs must be a tuple of positional inputs or a dict of keyword inputs, got "
            f"{type(example_inputs).__name__}"
        )
    was_training = gm.training
    gm.eval()
    run = _Shapes(gm)
    try:
        with torch.no_grad():
            if isinstance(args, dict):
                names = [n.target for n in gm.graph.nodes if n.op == "placeholder"]
                unknown = sorted(set(args) - set(names))
                if unknown:
                    raise GraphError(f"example_inputs names {unknown}; forward takes {names}")
                run.run(*[args.get(n) for n in names])
            else:
                run.run(*args)
    except GraphError:
        raise
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        at = f"{where(run.node, gm)} fails ({reason})" if run.node is not None else reason
        raise GraphError(f"the model does not accept {what}: {at}; {_expected_input(gm)}") from None
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
    return run.shapes


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
