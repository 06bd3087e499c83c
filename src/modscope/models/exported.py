"""``torch.export`` archives (``.pt2``): checked, loaded, and rebuilt as plain ``torch.nn`` layers.

The archive is first checked by :func:`modscope.models.archive.check_archive` (why: see there), so that
loading it neither unpickles nor runs anything from the file.

An exported graph calls ATen operators on its weights (``aten.linear(x, w, b)``), while the structural lens
reads ``nn.Linear`` / ``nn.Conv`` / ``nn.BatchNorm`` modules. :func:`delower` turns ``aten.linear``,
``aten.conv1d/2d/3d`` and eval-mode ``aten.batch_norm`` back into those modules, registered under the
original module paths (``features.0``, ``fc1``; taken from the weights' names) and holding the archive's
tensors; activations, pooling, dropout and flatten become the ``torch`` functions they lower from (a
``view``/``reshape`` to ``(batch, features)``, into which export writes the example's batch size, becomes
``torch.flatten(x, 1)``); every
other operator is kept as it is, so the rebuilt module computes exactly what the archive does and the
graph tracer names what it cannot represent.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from modscope.models.archive import check_archive

__all__ = ["delower", "load_exported"]


def load_exported(path: Path) -> tuple[nn.Module, tuple[int, ...] | None]:
    """Check and load a ``.pt2``; returns the rebuilt module (eval mode) and the shape of its one example
    input without the batch dimension (``None`` when it takes several inputs or a non-tensor)."""
    check_archive(path)
    # torch logs the real error with a full traceback, then raises a vague one: keep the first, quietly
    logger, caught = logging.getLogger("torch.export"), _Caught()
    handlers, propagate = logger.handlers, logger.propagate
    logger.handlers, logger.propagate = [caught], False
    try:
        ep = torch.export.load(str(path))
    except Exception as exc:  # torch raises many types for a damaged or incompatible archive
        cause = caught.error or exc
        reason = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
        raise ValueError(f"'{path}' could not be loaded by torch.export.load: {reason}") from exc
    finally:
        logger.handlers, logger.propagate = handlers, propagate
    return delower(ep)


class _Caught(logging.Handler):
    """Keeps the first exception torch logs (and nothing else)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.error: BaseException | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None and self.error is None:
            self.error = record.exc_info[1]


def delower(ep: torch.export.ExportedProgram) -> tuple[nn.Module, tuple[int, ...] | None]:
    """An ``fx.GraphModule`` computing ``ep`` with ``nn.Linear``/``nn.ConvNd``/``nn.BatchNormNd`` modules."""
    from torch.export.graph_signature import InputKind, OutputKind

    sig = ep.graph_signature
    tensors = {**ep.state_dict, **ep.constants}
    attrs: dict[str, str] = {}  # placeholder name -> FQN of its parameter, buffer or constant
    for spec in sig.input_specs:
        if spec.kind in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
            attrs[spec.arg.name] = spec.target
        elif spec.kind != InputKind.USER_INPUT:
            raise ValueError(f"the exported program takes a {spec.kind.name} input; modscope cannot run it")
    root, graph, env = nn.Module(), fx.Graph(), {}
    shapes = []

    def arg(a: Any) -> Any:
        return fx.node.map_arg(a, lambda n: env[n.name])

    def attr(node: fx.Node) -> torch.Tensor | None:
        return None if node is None else tensors[attrs[node.name]]

    for node in ep.graph.nodes:
        if node.op == "placeholder":
            if node.name in attrs:
                fqn = attrs[node.name]
                _set(root, fqn, tensors[fqn])
                env[node.name] = graph.get_attr(fqn)
            else:
                val = node.meta.get("val")
                shapes.append(tuple(val.shape[1:]) if isinstance(val, torch.Tensor) else None)
                env[node.name] = graph.placeholder(node.name)
        elif node.op == "call_function":
            module = _module(node, attr)
            if node.target in _RESHAPES and _flattens_batch(node):
                env[node.name] = graph.call_function(torch.flatten, (env[node.args[0].name], 1))
            elif node.target in _RESHAPES:
                env[node.name] = graph.call_method("reshape", arg(node.args[:2]))
            elif module is not None:
                fqn = attrs[node.args[1].name]
                path = fqn.rsplit(".", 1)[0] if "." in fqn else node.name
                _set(root, path, module)
                env[node.name] = graph.call_module(path, (env[node.args[0].name],))
            else:
                target, args = _function(node)
                env[node.name] = graph.call_function(target, arg(args), arg(node.kwargs))
        elif node.op == "output":
            outs = [
                env[o.name]
                for o, spec in zip(node.args[0], sig.output_specs)
                if spec.kind == OutputKind.USER_OUTPUT
            ]
            graph.output(outs[0] if len(outs) == 1 else tuple(outs))
        else:  # get_attr / call_module appear only in sub-graphs of control flow, which are not rebuilt
            raise ValueError(f"the exported program has a {node.op} node '{node.name}': not supported")
    for n in reversed(list(graph.nodes)):  # weights now live in their modules: drop their unused reads
        if n.op == "get_attr" and not n.users:
            graph.erase_node(n)
    gm = fx.GraphModule(root, graph, class_name="Exported")
    gm.graph.eliminate_dead_code()  # e.g. the batch size read by a view that became a flatten
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm.eval(), shapes[0] if len(shapes) == 1 else None


_CONVS = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_NORMS = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}
_aten = torch.ops.aten
_RESHAPES = {_aten.view.default, _aten.reshape.default, _aten._unsafe_view.default}
_FUNCTIONS = {
    _aten.relu.default: torch.relu,
    _aten.tanh.default: torch.tanh,
    _aten.sigmoid.default: torch.sigmoid,
    _aten.gelu.default: F.gelu,
    _aten.silu.default: F.silu,
    _aten.max_pool1d.default: F.max_pool1d,
    _aten.max_pool2d.default: F.max_pool2d,
    _aten.max_pool3d.default: F.max_pool3d,
    _aten.avg_pool1d.default: F.avg_pool1d,
    _aten.avg_pool2d.default: F.avg_pool2d,
    _aten.avg_pool3d.default: F.avg_pool3d,
    _aten.adaptive_avg_pool1d.default: F.adaptive_avg_pool1d,
    _aten.adaptive_avg_pool2d.default: F.adaptive_avg_pool2d,
    _aten.adaptive_avg_pool3d.default: F.adaptive_avg_pool3d,
    _aten.flatten.using_ints: torch.flatten,
    _aten.dropout.default: F.dropout,
}


def _module(node: fx.Node, attr: Any) -> nn.Module | None:
    """The ``nn`` layer an ATen weight operation lowers from (sharing the archive's tensors), or ``None``."""
    t, args = node.target, list(node.args) + [None] * 9
    try:
        if t == _aten.linear.default:
            w, b = attr(args[1]), attr(args[2])
            module = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device="meta")
        elif t in (_aten.conv1d.default, _aten.conv2d.default, _aten.conv3d.default):
            w, b = attr(args[1]), attr(args[2])
            d = w.dim() - 2
            stride, padding, dilation, groups = (
                v if v is not None else default for v, default in zip(args[3:7], (1, 0, 1, 1))
            )
            module = _CONVS[d](
                w.shape[1] * groups, w.shape[0], tuple(w.shape[2:]), stride=stride, padding=padding,
                dilation=dilation, groups=groups, bias=b is not None, device="meta",
            )  # fmt: skip
        elif t == _aten.batch_norm.default and args[5] is False:
            w, b = attr(args[1]), attr(args[2])
            mean, var = attr(args[3]), attr(args[4])
            rank = node.args[0].meta["val"].dim()
            # built on the CPU (not meta): its small num_batches_tracked buffer must hold a value
            module = _NORMS[rank](mean.shape[0], eps=args[7], affine=w is not None)
            module.running_mean, module.running_var = mean, var
        else:
            return None
    except KeyError:  # an argument is an activation rather than a stored tensor: keep the operator
        return None
    if w is not None:
        module.weight = w if isinstance(w, nn.Parameter) else nn.Parameter(w, requires_grad=False)
    if b is not None:
        module.bias = b if isinstance(b, nn.Parameter) else nn.Parameter(b, requires_grad=False)
    return module


def _flattens_batch(node: fx.Node) -> bool:
    """A ``view``/``reshape`` to ``(batch, features)``: export wrote the example's batch size into its
    arguments, so it becomes ``torch.flatten(x, 1)``, which holds for any batch (as the model's did)."""
    src, out = node.args[0].meta.get("val"), node.meta.get("val")
    if not (isinstance(src, torch.Tensor) and isinstance(out, torch.Tensor)):
        return False
    if out.dim() != 2 or src.dim() < 2:
        return False
    try:
        return bool(src.shape[0] == out.shape[0])
    except Exception:  # a symbolic size that cannot be compared: keep the reshape as it is
        return False


def _function(node: fx.Node) -> tuple[Any, tuple]:
    target = _FUNCTIONS.get(node.target)
    if target is None:
        return node.target, node.args
    if node.target == _aten.dropout.default:
        return target, (node.args[0], node.args[1], False)
    return target, node.args


def _set(root: nn.Module, path: str, value: Any) -> None:
    *parents, name = path.split(".")
    for part in parents:
        if not hasattr(root, part):
            root.add_module(part, nn.Module())
        root = getattr(root, part)
    if isinstance(value, nn.Module):
        # a weight layer replaces the container its tensors were first read into; any other tensor of
        # that module (read elsewhere in the graph) moves onto it so that its reads still resolve
        old = root._modules.get(name) or nn.Module()
        for key, tensor in [*old.named_parameters(recurse=False), *old.named_buffers(recurse=False)]:
            if not hasattr(value, key):
                _set(value, key, tensor)
        root.add_module(name, value)
    elif isinstance(value, nn.Parameter):
        root.register_parameter(name, value)
    else:
        root.register_buffer(name, value)
