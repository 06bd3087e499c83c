"""Attention, embeddings and token sequences in the weight graph.

**Attention.** ``nn.MultiheadAttention`` (one call) and :func:`modscope.graph.views.attend` (the
self-attention of a BERT-layout encoder, :mod:`modscope.graph.views`) project the stream into queries,
keys and values: three groups of units (``<path>.q``, ``<path>.k``, ``<path>.v`` for the module; a BERT
layer's ``query`` / ``key`` / ``value`` Linear outputs), each joined to the units it reads by its
projection's block (``|W|``, one ``source`` each, so each is shuffled on its own). Head ``h`` of ``H``
is units ``h * d .. (h + 1) * d - 1`` of each group (``d = size / H``): a head is a contiguous run of
units, and a lesion of a head silences that run.

The attention pattern mixes *positions*: output feature ``j`` is a weighted mean over positions of value
feature ``j``, with weights (a softmax of query-key products) that are activations, not weights. So the
output's units are the value units themselves (no edge, nothing to shuffle -- as for a pooling), and the
output projection (``out_proj``; a BERT layer's ``attention.output.dense``) reads them. The query and key
units are nodes joined to the stream by their projections and to nothing after: their products set the
pattern, a multiplicative effect on every value unit of the head that no single edge weight represents.
This is the one rule offered (no paper clustered attention weights); the residual stream around attention
follows ``residual`` (``"merge"`` by default for attention models: every layer reads from and writes to one
stream, the view of Elhage et al., "A Mathematical Framework for Transformer Circuits", 2021; Filan et
al.'s copies grow with the square of the depth there).

``add_bias_kv`` / ``add_zero_attn`` (a learned or zero extra key and value position) add no edge. Refused
by name: the attention weights (the call's second result) used as an activation.

**Embeddings** (``nn.Embedding``): row ``t`` of the ``(num_embeddings, d)`` table is what index ``t`` writes
into the ``d`` output units, so the indices are input units: each embedding reads its own input group
``<path>:index`` of ``num_embeddings`` units with the block ``|W|^T`` (the vocabulary as input units;
positions and token types likewise, whether their indices come from the model's input or are made inside
it). ``include_inputs=False`` drops these groups and so the embedding tables ("skipped by option").

**Token sequences.** A feature vector may carry positions (``(batch, length, features)``): indexing that
leaves the last dimension whole (``x[:, 0]``, ``x[0]``) and ``mean`` / ``sum`` / ``amax`` / ``amin`` over
another dimension keep the units; with ``example_inputs`` / ``input_shape`` the shapes are checked,
without them an index slicing features or a reduction over ``dim=-1`` is refused. A flatten of a sequence
(positions into features) is refused.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, replace

from torch import fx, nn

from modscope.graph import ops
from modscope.graph.activation import Units, fix_input
from modscope.graph.blocks import WeightLayer
from modscope.graph.groups import Groups, Reads
from modscope.graph.layer import GraphError
from modscope.graph.ops import arg, where
from modscope.graph.views import attend

_REDUCTIONS = ops.REDUCE_METHODS | ops.REDUCE_FUNCTIONS


@dataclass(frozen=True)
class _AttentionResult:
    """The ``(output, weights)`` tuple of a ``MultiheadAttention`` call (``output`` None: the weights)."""

    output: Units | None
    at: str


@dataclass(frozen=True)
class Ends:
    """A group read by an attention pattern only (queries, keys): unit ``i`` is silenced at its source,
    row ``first + i`` of the weight ``param`` and row ``bias_first + i`` of ``bias`` of ``module``."""

    group: int
    module: str
    param: str
    first: int
    bias: str
    bias_first: int


class Attention:
    """Adds attention, embeddings and token-sequence operations to a trace (module docstring).

    :meth:`step` is called on every node before the feed-forward rules of :mod:`modscope.graph.trace`:
    it returns the node's value when the rule is its own, ``None`` otherwise.
    """

    def __init__(
        self,
        gm: fx.GraphModule,
        groups: Groups,
        chain: list[WeightLayer],
        reads: list[Reads],
        shapes: dict[fx.Node, tuple[int, ...]],
    ) -> None:
        self.gm, self.groups, self.chain, self.reads, self.shapes = gm, groups, chain, reads, shapes
        self.ends: list[Ends] = []  # query and key groups
        # chain layer -> module holding its weight, for layers whose inputs no forward hook can reach
        # (MultiheadAttention reads its weights inside one call): silenced by zeroing weight columns
        self.unhooked: dict[int, str] = {}
        self.tokens = False  # an embedding or attention was met: sequences of tokens may follow

    def step(self, node: fx.Node, state: dict) -> object | None:
        if node.op == "call_module":
            module = self.gm.get_submodule(node.target)
            if isinstance(module, nn.MultiheadAttention):
                return self._multihead(node, module, state)
            if isinstance(module, nn.Embedding):
                return self._embedding(node, module, state)
        if node.op == "call_function" and node.target is attend:
            return self._attend(node, state)
        inputs = [a for a in node.all_input_nodes if a in state]
        results = [state[a] for a in inputs if isinstance(state[a], _AttentionResult)]
        if results and len(inputs) == 1 and node.op == "call_function" and node.target is operator.getitem:
            if node.args[1] in (0, -2) and results[0].output is not None:
                return results[0].output
            if node.args[1] in (1, -1):  # the weights: refused where they are used (``a, _ = attn(...)``)
                return _AttentionResult(None, results[0].at)
        if results:
            raise GraphError(
                f"{where(node, self.gm)} uses the attention weights of {results[0].at}, or its result tuple "
                "as a whole; only its output (result[0]) is an activation of units"
            )
        if len(inputs) == 1 and isinstance(state[inputs[0]], Units) and state[inputs[0]].channels is False:
            return self._token_op(node, inputs[0], state[inputs[0]])
        return None

    # ------------------------------------------------------------------ layers
    def _layer(self, node: fx.Node, layer: WeightLayer, units: Units, group_name: str) -> int:
        read = self.groups.reading(units.groups, layer.name, self.reads, where(node, self.gm))
        self.chain.append(replace(layer, col_norms=units.col_norms))
        g = self.groups.new(group_name, layer.out_units, "linear")
        self.reads.append(Reads(len(self.chain) - 1, read, g))
        return g

    def _input(self, node: fx.Node, arg: object, size: int, state: dict) -> Units:
        at = where(node, self.gm)
        units = state.get(arg) if isinstance(arg, fx.Node) else None
        if not isinstance(units, Units):
            raise GraphError(f"{at} reads something other than an activation of the model")
        if units.channels:
            raise GraphError(f"{at} reads a feature map; attention reads feature vectors")
        units = fix_input(units, size, False, self.groups)
        if self.groups.total(units.groups) != size:
            raise GraphError(f"{at} expects {size} features but reads {self.groups.total(units.groups)}")
        return units

    def _multihead(self, node: fx.Node, module: nn.MultiheadAttention, state: dict) -> _AttentionResult:
        at, name = where(node, self.gm), str(node.target)
        e = module.embed_dim
        args = [arg(node, i, n) for i, n in enumerate(("query", "key", "value"))]
        sizes = (e, module.kdim, module.vdim)
        groups = []
        for part, source, n_in, offset in zip("qkv", args, sizes, (0, e, 2 * e)):
            units = self._input(node, source, n_in, state)
            if module._qkv_same_embed_dim:
                layer = WeightLayer(f"{name}.{part}", module, "linear", n_in, e, param="in_proj_weight",
                                    rows=(offset, offset + e))  # fmt: skip
            else:
                layer = WeightLayer(f"{name}.{part}", module, "linear", n_in, e, param=f"{part}_proj_weight")
            groups.append(self._layer(node, layer, units, f"{name}.{part}"))
        q, k, v = groups
        for part, g, offset in (("q", q, 0), ("k", k, e)):
            packed = module._qkv_same_embed_dim
            param = "in_proj_weight" if packed else f"{part}_proj_weight"
            self.ends.append(Ends(g, name, param, offset if packed else 0, "in_proj_bias", offset))
        self.groups.read.update((q, k))
        out = WeightLayer(f"{name}.out_proj", module.out_proj, "linear", e, e)
        g = self._layer(node, out, Units((v,), False), f"{name}.out_proj")
        n = len(self.chain)
        self.unhooked.update({n - 4: name, n - 3: name, n - 2: name, n - 1: f"{name}.out_proj"})
        self.tokens = True
        return _AttentionResult(Units((g,), False, producer=len(self.chain) - 1), at)

    def _attend(self, node: fx.Node, state: dict) -> Units:
        at = where(node, self.gm)
        parts = [state.get(a) for a in node.args[:3]]
        if not all(isinstance(p, Units) and p.producer is not None and len(p.groups) == 1 for p in parts):
            raise GraphError(f"{at}: queries, keys and values must each be one Linear layer's output")
        for p in parts[:2]:
            layer = self.chain[p.producer]
            self.ends.append(Ends(p.groups[0], layer.name, layer.param, 0, "bias", 0))
            self.groups.read.add(self.groups.find(p.groups[0]))
        self.tokens = True
        return parts[2].passed()

    def _embedding(self, node: fx.Node, module: nn.Embedding, state: dict) -> Units:
        name = str(node.target)
        source = self.groups.new(f"{name}:index", module.num_embeddings, "input")
        d = module.embedding_dim
        self.chain.append(WeightLayer(name, module, "embedding", module.num_embeddings, d))
        g = self.groups.new(name, d, "linear")
        self.reads.append(Reads(len(self.chain) - 1, (source,), g))
        self.tokens = True
        return Units((g,), False, producer=len(self.chain) - 1)

    # ------------------------------------------------------------------ token sequences
    def _token_op(self, node: fx.Node, src: fx.Node, units: Units) -> Units | None:
        t, at = node.target, where(node, self.gm)
        shape = self.shapes.get(src)
        if shape is None and not self.tokens:
            return None  # no shapes and no sequence seen: the feed-forward rules decide
        if node.op == "call_function" and t is operator.getitem and node.args[0] is src:
            entries = node.args[1] if isinstance(node.args[1], tuple) else (node.args[1],)
            if shape is not None and len(shape) < 3:
                return None  # a plain feature vector: the feed-forward rules decide
            whole = all(isinstance(e, int) or e == slice(None) for e in entries if e is not Ellipsis)
            last = len(shape) - 1 if shape is not None else 2  # without shapes: (batch, length, features)
            touches = Ellipsis in entries[:-1] or (len(entries) > last and entries[last] != slice(None))
            if not whole or touches:
                raise GraphError(f"{at} indexes the feature dimension (the units); only x[:, i] / x[i] "
                                 "over positions keep whole units")  # fmt: skip
            return units.passed()
        flatten = (node.op == "call_function" and t in ops.FLATTEN_FUNCTIONS) or (
            node.op == "call_method" and t in ops.FLATTEN_METHODS
        )
        if node.op == "call_module":
            flatten = isinstance(self.gm.get_submodule(t), nn.Flatten)
        if flatten and (shape is None or len(shape) >= 3):
            raise GraphError(f"{at} flattens a sequence of tokens, mixing positions into the features; "
                             "pool over the positions first (x.mean(dim=1), x[:, 0])")  # fmt: skip
        if node.op in ("call_method", "call_function") and t in _REDUCTIONS:
            if shape is not None and len(shape) < 3:
                return None
            dim = arg(node, 1, "dim")
            last = len(shape) - 1 if shape is not None else -1
            if not isinstance(dim, int) or dim in (-1, last) or arg(node, 2, "keepdim", False):
                raise GraphError(f"{at} reduces other than over positions (dim={dim!r}); only a reduction "
                                 "over a position dimension keeps the units")  # fmt: skip
            return units.passed()
        return None

