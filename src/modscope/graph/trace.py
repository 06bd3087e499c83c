"""Find the weight graph of a PyTorch model by tracing it with ``torch.fx``.

Tracing (rather than reading ``nn.Sequential`` order) means a model written as a plain ``forward`` works,
and anything that cannot be represented -- attention, a product of two activations -- is seen and
refused by name instead of being silently turned into a wrong graph.

Units are nodes: the input features, and the outputs (channels for a convolution) of every weight layer;
each weight layer joins the units it reads to the units it writes by its block
(:mod:`modscope.graph.blocks`). Activations, pooling, dropout and flattens keep the units. An LSTM / GRU /
RNN adds one group per layer with a recurrent self-block; its rules, and those for what may read its output
tuple, are in :mod:`modscope.graph.recurrent`. Attention (``nn.MultiheadAttention``, transformer encoders,
BERT-layout Hugging Face encoders), ``nn.Embedding`` and token sequences follow
:mod:`modscope.graph.attention`; the modules ``torch.fx`` cannot trace are first replaced by the traceable
views of :mod:`modscope.graph.views`. Nodes computed from no activation (``torch.arange(n)`` from a size)
are constants, not units.

**Residual add** (``a + b``, ``torch.add``, ``+=``, and ``-``): the sum's unit ``j`` carries unit ``j`` of
both operands, added with weight 1 -- an identity, not a learned weight. So the two operands' units are
made *the same nodes* (their groups are merged): the block that writes into a residual stream and the
skip that carries it end on one group of nodes, and every layer reading the stream reads that group. A
ResNet stage's stream is then one group, written by every block's last conv (and the downsample) and read
by every block's first conv; a skip with a downsample (a 1x1 conv) is an ordinary weight block. No edge
is made for the identity, so no identity weight is ever shuffled (:mod:`modscope.graph.shuffle`). Adding
an activation after a norm-after-nonlinearity on one branch only is refused: that scale cannot be put
on shared nodes. A constant added or a constant factor keeps the units (a shift, a uniform scale).

**Concatenation** (``torch.cat`` on the channel / feature dimension, ``dim=1`` or ``-1`` for a feature
vector): the result's units are the operands' units, in order, so a layer reading it has one block per
operand group, cut from its weight block by columns (DenseNet-style concatenation).

Filan et al. (arXiv:2103.03386) treated ResNet-50 differently (their ``get_conv_weight_connections`` /
``connections_to_graph_imagenet``, github dfilan/clusterability_in_neural_networks): nodes are the
*input* channels of each conv layer (one group per conv, the image input dropped, the dense head's inputs
last), and a conv's reduced kernel (times the BatchNorm scales met on the way) is copied as a block from its
own input group to the input group of *every* conv or dense layer reached through non-weight layers --
adds, activations, pooling, BatchNorm -- so through an identity skip it is copied to each later block's
first conv until a downsample conv is met; a residual stream dimension is then a separate node in each
consumer's group, and their shuffled null model permutes each copy independently. ``residual="filan"``
gives that graph: an add makes a *sum*; a layer (or the output) reading a sum gets its own group of units,
joined by a copy of the block of every layer written into the sum (earlier sums included, so through the
identity skips back to the last downsample); a layer's own output group is kept only where it is read
directly. Each copy is its own ``source``, so it is shuffled on its own, as they did. Two differences
from their code remain on purpose: norms fold by this package's rule (:mod:`modscope.graph.blocks`; they
multiplied every BatchNorm into the weights before it, even across a nonlinearity), and the input and
head are kept (``include_inputs`` / ``include_outputs``). Without adds the two rules give the same graph.
``"merge"`` represents each unit once (a lesion silences a stream dimension, not one of its copies) and
never counts a weight twice. The default, ``"auto"``, is the papers' choice for each kind of network:
``"filan"`` (Filan et al.'s, for ResNets), and ``"merge"`` for a model with attention, where every layer
reads from and writes to one residual stream (Elhage et al., "A Mathematical Framework for Transformer
Circuits", 2021) and the copies would grow with the square of the depth (each layer would read a copy of
every block written before it; a post-norm transformer, whose norm follows each add, is refused under
``"filan"``: its scale cannot be put on the copies).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import fx, nn

from modscope.graph import ops
from modscope.graph.activation import Units, cat, fix_input, flatten, layer_inputs, norm_units
from modscope.graph.attention import Attention, Ends
from modscope.graph.blocks import CONV_TRANSPOSE, NORMS, WEIGHTED, WeightLayer, layer_block
from modscope.graph.groups import Groups, Reads
from modscope.graph.layer import GraphError, Layer
from modscope.graph.ops import where
from modscope.graph.recurrent import Recurrent
from modscope.graph.views import has_attention, symbolic_trace

RESIDUAL_RULES = ("merge", "filan")


def _float64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu", torch.float64)


def trace_layers(
    model: nn.Module,
    input_shape: Sequence[int] | None,
    channel_norm: str,
    *,
    example_inputs: tuple | dict | None = None,
    residual: str = "auto",
) -> tuple[list[Layer], list[tuple[int, int, np.ndarray]], list[str]]:
    """Groups, float64 ``(src, dst, (out, in) block)`` edges and their weight layers, for WeightGraph."""
    _check_model(model)
    residual = resolve_residual(model, residual)
    traced = _trace(model, input_shape, example_inputs, residual)
    blocks = [layer_block(w, channel_norm=channel_norm, read=_float64).numpy() for w in traced.chain]
    return traced.groups.assemble(traced.reads, blocks, [w.name for w in traced.chain], traced.output)


def resolve_residual(model: nn.Module, residual: str) -> str:
    """The rule ``residual`` names: ``"auto"`` is ``"merge"`` for a model with attention, else ``"filan"``."""
    if residual == "auto":
        return "merge" if has_attention(model) else "filan"
    if residual not in RESIDUAL_RULES:
        raise ValueError(f"residual must be one of {('auto', *RESIDUAL_RULES)}, got {residual!r}")
    return residual


def _check_model(model: nn.Module) -> None:
    if not isinstance(model, nn.Module):
        raise GraphError(f"expected a torch.nn.Module, got {type(model).__name__}")
    if isinstance(model, (*WEIGHTED, *NORMS)):  # fx would trace its forward's use of self.weight
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


def trace_chain(model: nn.Module, input_shape: Sequence[int] | None = None) -> list[WeightLayer]:
    """The weight layers of ``model``'s feed-forward chain, in the order ``forward`` calls them.

    The chain :meth:`WeightGraph.from_module <modscope.graph.WeightGraph.from_module>` builds its graph
    from (same tracing, same checks, same ``input_shape``): pass each layer to
    :func:`~modscope.graph.blocks.layer_block` for its edge block. ``chain[0].in_units`` is the number of
    input units. Raises :class:`GraphError` naming any module or operation that is not a feed-forward chain
    (a residual add or a concatenation among them: those graphs are not a chain of blocks).
    """
    if not isinstance(model, nn.Module):
        raise GraphError(f"expected a torch.nn.Module, got {type(model).__name__}")
    traced = _trace(model, input_shape, None, "merge")
    for w in traced.chain:
        if w.kind == "recurrent":
            raise GraphError(
                f"module '{w.name[: -len(w.param) - 1]}' ({type(w.module).__name__}) is recurrent: the "
                "clusterability penalty and init work on feed-forward chains only"
            )
    g = traced.groups
    reads = traced.reads
    chain_like = all(
        r.inputs == ((g.find(0),) if i == 0 else (reads[i - 1].output,)) and g.find(r.output) == r.output
        for i, r in enumerate(reads)
    ) and g.find(traced.output) == reads[-1].output
    if not chain_like:
        at = traced.joins[0] if traced.joins else "the model"
        raise GraphError(
            f"{at} joins or branches activations (a residual connection or concatenation): this needs a "
            "feed-forward chain (the clusterability penalty and init work on chains only)"
        )
    return traced.chain


@dataclass
class _Traced:
    groups: Groups
    chain: list[WeightLayer]
    reads: list[Reads]
    output: int
    joins: list[str]  # where activations are added or concatenated, for messages
    ends: list[Ends]  # groups read by an attention pattern only (queries, keys)
    unhooked: dict[int, str]  # chain layer -> module whose weight columns silence its inputs


def _trace(
    model: nn.Module, input_shape: Sequence[int] | None, example_inputs: tuple | dict | None, residual: str
) -> _Traced:
    try:
        gm = symbolic_trace(model, example_inputs)
    except GraphError:
        raise
    except Exception as exc:  # fx raises many types; the user needs the reason and the way out
        raise GraphError(
            f"could not trace {type(model).__name__} with torch.fx ({type(exc).__name__}: {exc}). "
            "modscope needs a forward() without data-dependent control flow; "
            "for raw matrices use WeightGraph.from_weights"
        ) from exc
    shapes = {}
    if input_shape is not None:
        shapes = ops.check_flattens(gm, input_shape)
    elif example_inputs is not None:
        shapes = ops.check_flattens(gm, None, example_inputs)

    groups = Groups()
    chain: list[WeightLayer] = []
    reads: list[Reads] = []
    joins: list[str] = []
    state: dict[fx.Node, Units] = {}
    recurrent = Recurrent(gm, groups, chain, reads, shapes)
    attention = Attention(gm, groups, chain, reads, shapes)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder" and n.users]
    if not placeholders:
        raise GraphError("the model's forward takes no tensor input")

    def take(node: fx.Node) -> Units:
        tensors = [a for a in node.all_input_nodes if a in state]
        if len(tensors) != 1:
            raise GraphError(
                f"{where(node, gm)} combines {len(tensors)} activations; supported are adds (residual "
                f"connections) and torch.cat. Supported: {ops.SUPPORTED}"
            )
        return state[tensors[0]]

    def add_layer(node: fx.Node, module: nn.Module, units: Units) -> Units:
        units, n_in, spatial = layer_inputs(node, gm, module, units, groups)
        if isinstance(module, nn.Linear):
            kind, out = "linear", module.out_features
        else:
            kind = "conv_transpose" if isinstance(module, CONV_TRANSPOSE) else "conv"
            out = module.out_channels
        name = str(node.target)
        units = replace(units, groups=groups.reading(units.groups, name, reads, where(node, gm)))
        chain.append(WeightLayer(name, module, kind, int(n_in), int(out), spatial, (), units.col_norms))
        g = groups.new(name, int(out), "linear" if kind == "linear" else "conv")
        reads.append(Reads(len(chain) - 1, units.groups, g))
        return Units((g,), kind != "linear", producer=len(chain) - 1)

    def fold_norm(node: fx.Node, module: nn.Module, units: Units) -> Units:
        n = norm_units(node, module, units, gm)
        if units.channels is None:
            units = fix_input(units, n, isinstance(module, (nn.BatchNorm2d, nn.BatchNorm3d)), groups)
        size = groups.total(units.groups)
        if units.flat and units.channels:
            raise GraphError(f"{where(node, gm)} normalizes a flattened feature map; not supported")
        if size != n:
            raise GraphError(f"{where(node, gm)} normalizes {n} features but the layer has {size} units")
        if units.producer is not None:
            chain[units.producer] = replace(
                chain[units.producer], row_norms=(*chain[units.producer].row_norms, module)
            )
            return units
        return replace(units, col_norms=(*units.col_norms, module))

    def join(node: fx.Node, tensors: list[fx.Node]) -> Units:
        joins.append(where(node, gm))
        parts = [state[t] for t in tensors]
        # A norm over a merged stream (a post-norm transformer's norm(x + f(x))) scales values that reach
        # the next add through the identity skip, which has no edge to scale: it leaves the sum unscaled.
        scaled = [p for p in parts if not (residual == "merge" and p.joined and p.col_norms)]
        if any(p.col_norms for p in scaled) and len({p.col_norms for p in scaled}) > 1:
            raise GraphError(
                f"{where(node, gm)} joins activations normalized differently after a nonlinearity; "
                "a norm on one branch only cannot be folded into shared units"
            )
        if any(p.flat for p in parts):
            raise GraphError(f"{where(node, gm)} joins flattened feature maps; not supported")
        channels = next((p.channels for p in parts if p.channels is not None), None)
        return Units((), channels, col_norms=scaled[0].col_norms if scaled else (), joined=True)

    output: int | None = None
    for node in gm.graph.nodes:
        value = recurrent.step(node, state)  # recurrent modules, their tuples and sequences
        if value is None:
            value = attention.step(node, state)  # attention, embeddings, token sequences
        if value is not None:
            state[node] = value
        elif node.op in ("call_function", "call_method") and all(
            a not in state for a in node.all_input_nodes
        ):
            continue  # a constant, computed from no activation
        elif node.op == "placeholder":
            if node.users:
                name = "input" if len(placeholders) == 1 else f"input:{node.target}"
                state[node] = Units((groups.new(name, -1, "input"),), None)
        elif node.op == "get_attr":
            raise GraphError(
                f"{where(node, gm)} reads a parameter directly ({node.target}); functional use of weights "
                "is not supported: use nn.Linear / nn.Conv modules"
            )
        elif node.op == "output":
            arg = node.args[0]
            if not isinstance(arg, fx.Node) or arg not in state:
                raise GraphError("the model must return a single tensor computed by its layers")
            out_units = state[arg]
            if len(out_units.groups) != 1:
                raise GraphError("the model returns a concatenation; return one layer's (or stream's) output")
            (output,) = groups.reading(out_units.groups, "output", reads, "the model's output")
            if out_units.col_norms:
                # A norm after the last nonlinearity rescales the outputs: fold it into the rows of every
                # layer writing them (residual="filan": every copy of them shares the layer's block).
                for r in reads + groups.copies:
                    if groups.find(r.output) == groups.find(output):
                        chain[r.layer] = replace(
                            chain[r.layer], row_norms=chain[r.layer].row_norms + out_units.col_norms
                        )
        elif node.op == "call_method" and node.target in ops.META_METHODS:
            continue
        elif node.op == "call_module":
            module = gm.get_submodule(node.target)
            units = take(node)
            if isinstance(module, WEIGHTED):
                state[node] = add_layer(node, module, units)
            elif isinstance(module, NORMS):
                state[node] = fold_norm(node, module, units)
            elif isinstance(module, ops.IDENTITY_MODULES):
                state[node] = units
            elif isinstance(module, ops.PASS_MODULES):
                state[node] = units.passed()
            elif isinstance(module, nn.Flatten):
                state[node] = flatten(units)
            else:
                raise GraphError(f"unsupported {where(node, gm)}. Supported: {ops.SUPPORTED}")
        elif node.op in ("call_function", "call_method"):
            t = node.target
            tensors = [a for a in node.all_input_nodes if a in state]
            if t in ops.ADD_OPS and len(tensors) == 2:
                merged = join(node, tensors)
                a, b = state[tensors[0]], state[tensors[1]]
                for p in (a, b):  # an input of unknown size takes the other operand's
                    if p.channels is None and groups.size(p.groups[0]) < 0:
                        other = b if p is a else a
                        groups.set_size(p.groups[0], groups.total(other.groups))
                combine = groups.merge if residual == "merge" else groups.sum_of
                state[node] = replace(merged, groups=combine(a.groups, b.groups, where(node, gm)))
            elif t in ops.CAT_OPS:
                state[node] = cat(node, gm, state, groups, join)
            elif t in ops.CONSTANT_OPS and len(tensors) == 1:
                state[node] = take(node)
            else:
                units = take(node)
                if t in ops.IDENTITY_FUNCTIONS or t in ops.IDENTITY_METHODS:
                    state[node] = units
                elif t in ops.PASS_FUNCTIONS or t in ops.PASS_METHODS:
                    state[node] = units.passed()
                elif t in ops.FLATTEN_FUNCTIONS or t in ops.FLATTEN_METHODS:
                    state[node] = flatten(units)
                else:
                    raise GraphError(f"unsupported {where(node, gm)}. Supported: {ops.SUPPORTED}")
    if output is None or not chain:
        raise GraphError(f"{type(model).__name__} has no weight layers ({ops.SUPPORTED})")
    if all(groups.find(output) != groups.find(r.output) for r in reads + groups.copies):
        raise GraphError("the model's output is not produced by a weight layer")
    return _Traced(groups, chain, reads, output, joins, attention.ends, attention.unhooked)

