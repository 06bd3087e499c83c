"""Recurrent layers (``nn.LSTM``, ``nn.GRU``, ``nn.RNN``) in the weight graph, and what may read them.

**Units.** Each layer ``k`` (and each direction) of a recurrent module is one group of ``hidden_size``
nodes, named ``"<path>.l<k>"`` (``"<path>.l<k>_reverse"`` for the reverse direction), kind
``"recurrent"``. A node is one hidden unit ``j`` -- its gates, its cell (LSTM) and its output ``h_j``
together: every gate of unit ``j`` writes only unit ``j``'s state, so the gates are parts of one unit,
not units of their own (the issue's "hidden units as nodes"; the masks side prunes the same weights).

**Blocks.** PyTorch stacks the ``G`` gates (LSTM ``G = 4``: i, f, g, o; GRU ``G = 3``: r, z, n; RNN
``G = 1``) along the rows of ``weight_ih_l<k>`` (``(G * H, in)``) and ``weight_hh_l<k>`` (``(G * H, H)``).
Unit ``i`` is joined to unit ``j`` through every gate of ``j``, so the block reduces over the gates with
the graph's ``channel_norm``, as a conv kernel is reduced over its positions
(:func:`modscope.graph.layer.reduce_kernel`): ``B[j, i] = || (W[g * H + j, i])_g ||``, ``"l1"`` the sum
of magnitudes, ``"l2"`` the Euclidean norm. An RNN's single gate gives ``|W|``.

* ``weight_ih_l<k>`` joins the units the layer reads to its group: the module's input for ``k = 0``
  (a BatchNorm / LayerNorm after the last nonlinearity before it scales its columns, as for a Linear),
  the previous layer's group(s) for ``k > 0`` -- both directions, split by columns, when bidirectional;
* ``weight_hh_l<k>`` is a *self-block* (``src == dst``): the recurrence joins unit ``i`` at step ``t - 1``
  to unit ``j`` at step ``t``, and both are the same nodes, so the graph is no longer layered and is
  clustered through the general sparse path (:class:`modscope.cluster.sparse_affinity.SparseAffinity`);
  a diagonal entry is a self-loop, counted once;
* each weight tensor is its own ``source`` (``"<path>.weight_ih_l0"``, ``"<path>.weight_hh_l0"``, ...: the
  names the masks use), so a ``layer`` shuffle permutes the input and the recurrent block each on its own.

Biases add no edge. **Bidirectional** modules are supported: the two directions are separate groups (they
share no weights and no state), and a stacked layer or a later Linear reads both, in PyTorch's order
(forward, then reverse). **Refused**: ``proj_size > 0`` (the projection is a second set of units), an
initial state passed by the model (it would join units the graph has not got), ``PackedSequence``
inputs, and ``LSTMCell`` / ``GRUCell`` / ``RNNCell`` (a loop of calls, not one module).

**What may read a recurrent module.** ``torch.fx`` keeps the module as one call returning
``(output, h_n)`` (GRU, RNN) or ``(output, (h_n, c_n))`` (LSTM). Accepted, all keeping the units:

* ``output``, the sequence ``(batch, time, features)`` (``batch_first``) or ``(time, batch, features)``
  (``(time, features)`` when ``example_inputs`` / ``input_shape`` show an unbatched call; otherwise a
  batched call is assumed): indexing (``out[:, -1]``, ``out[-1]``, ``out[:, 2:]``, ``out[:, -1, :]``) and
  ``select`` that leave the feature dimension whole, and ``mean`` / ``sum`` / ``amax`` / ``amin`` over
  the time dimension, all act on each unit's own values; elementwise operations (activations, dropout,
  adds, constants), ``Linear`` and a ``LayerNorm`` / ``RMSNorm`` over the features act per time step, and
  a stacked recurrent module may read it; ``torch.cat`` on the feature dimension (``-1``);
* ``h_n`` / ``c_n`` (shape ``(layers * directions, batch, H)``): an integer index picks one layer and
  direction, ``h_n[-1]`` the last layer's (reverse direction when bidirectional), ``h_n[-2]`` its forward
  one; ``c_n`` is the cells of the same units.

Refused, by the operation's name: indexing or slicing the feature dimension (it would split a direction's
units), a flatten / view / reshape / transpose of a sequence (it mixes time into the features), pooling
and convolutions over a sequence, reducing over other dimensions, slicing ``h_n`` across layers, and
returning the module's tuple itself.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
from torch import fx, nn

from modscope.graph import ops
from modscope.graph.activation import Units, fix_input
from modscope.graph.blocks import FEATURE_NORMS, WeightLayer
from modscope.graph.groups import Groups, Reads
from modscope.graph.layer import GraphError
from modscope.graph.ops import arg, where

RECURRENT = (nn.LSTM, nn.GRU, nn.RNN)
ACCEPTED = (
    "on a recurrent output: out[:, -1] / out[-1] / out.select(time, i) (the feature dimension whole), "
    "mean/sum/amax/amin over time, elementwise operations, Linear, LayerNorm, torch.cat(dim=-1), a "
    "stacked LSTM/GRU/RNN; on h_n / c_n: an integer index such as h_n[-1]"
)
_ELEMENTWISE_MODULES = tuple(m for m in ops.PASS_MODULES if "Pool" not in m.__name__) + ops.IDENTITY_MODULES
_ELEMENTWISE = (
    {f for f in ops.PASS_FUNCTIONS if "pool" not in getattr(f, "__name__", "")}
    | ops.IDENTITY_FUNCTIONS
    | ops.PASS_METHODS
    | ops.IDENTITY_METHODS
    | ops.CONSTANT_OPS
)


@dataclass(frozen=True)
class _Returned:
    """The tuple a recurrent module returns: ``(output, h_n)`` or ``(output, (h_n, c_n))``."""

    output: tuple[int, ...]  # groups of the last layer, forward then reverse
    states: tuple[int, ...]  # group of every (layer, direction), in h_n's order
    dims: tuple[str, ...]  # of the output sequence: "b" batch, "t" time, "f" features
    pair: bool  # an LSTM: the state is (h_n, c_n)
    at: str


@dataclass(frozen=True)
class _States:
    """``h_n`` / ``c_n`` (or, with ``pair``, the LSTM's ``(h_n, c_n)``)."""

    states: tuple[int, ...]
    pair: bool
    at: str


class Recurrent:
    """Adds recurrent modules to a trace and follows the values that read them (module docstring).

    :meth:`step` is called on every node before the feed-forward rules of :mod:`modscope.graph.trace`:
    it returns the node's value when the rule is its own, ``None`` to leave the node to them (marking it
    a sequence when it reads one), or raises :class:`GraphError`.
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
        self.seqs: dict[fx.Node, tuple[str, ...]] = {}  # nodes whose value is a sequence, and its dims

    def step(self, node: fx.Node, state: dict) -> object | None:
        if node.op == "call_module" and isinstance(self.gm.get_submodule(node.target), RECURRENT):
            return self._add(node, self.gm.get_submodule(node.target), state)
        inputs = node.all_input_nodes
        returned = [state[a] for a in inputs if isinstance(state.get(a), (_Returned, _States))]
        if returned:
            return self._unpack(node, returned[0], len(inputs))
        seqs = [a for a in inputs if a in self.seqs]
        if not seqs or node.op == "output":
            return None
        return self._on_sequence(node, state, self.seqs[seqs[0]])

    # ------------------------------------------------------------------ the module
    def _add(self, node: fx.Node, module: nn.Module, state: dict) -> _Returned:
        at = where(node, self.gm)
        if getattr(module, "proj_size", 0):
            raise GraphError(f"{at} has proj_size={module.proj_size}; LSTM projections are not supported")
        x, hx = arg(node, 0, "input"), arg(node, 1, "hx")
        if hx is not None:
            raise GraphError(
                f"{at} is given an initial state by the model; only zero initial states are supported "
                "(the graph has no units for a state passed in)"
            )
        units = state.get(x) if isinstance(x, fx.Node) else None
        if not isinstance(units, Units):
            raise GraphError(f"{at} reads something other than an activation of the model")
        if units.channels:
            raise GraphError(f"{at} reads a feature map; a recurrent layer reads feature vectors")
        units = fix_input(units, module.input_size, False, self.groups)
        if self.groups.total(units.groups) != module.input_size:
            raise GraphError(
                f"{at} expects {module.input_size} input features but reads {self.groups.total(units.groups)}"
            )
        name, size = str(node.target), module.hidden_size
        prev = self.groups.reading(units.groups, name, self.reads, at)
        n_in, states = module.input_size, []
        for k in range(module.num_layers):
            layer = []
            for suffix in ("", "_reverse")[: 2 if module.bidirectional else 1]:
                g = self.groups.new(f"{name}.l{k}{suffix}", size, "recurrent")
                col_norms = units.col_norms if k == 0 else ()
                for param, read, n in (("weight_ih", prev, n_in), ("weight_hh", (g,), size)):
                    p = f"{param}_l{k}{suffix}"
                    w = WeightLayer(f"{name}.{p}", module, "recurrent", n, size, 1, (), col_norms, p)
                    self.chain.append(w)
                    read = self.groups.reading(read, name, self.reads, at)
                    self.reads.append(Reads(len(self.chain) - 1, read, g))
                    col_norms = ()
                layer.append(g)
            prev, n_in = tuple(layer), size * len(layer)
            states += layer
        dims = ("b", "t", "f") if module.batch_first else ("t", "b", "f")
        return _Returned(prev, tuple(states), dims, isinstance(module, nn.LSTM), at)

    # ------------------------------------------------------------------ its tuple
    def _unpack(self, node: fx.Node, value: _Returned | _States, n_inputs: int) -> object:
        if node.op == "output":
            raise GraphError(
                f"the model returns the (output, state) tuple of {value.at}; return a tensor, e.g. "
                "output[:, -1] or h_n[-1]"
            )
        getitem = node.op == "call_function" and node.target is operator.getitem and n_inputs == 1
        index = node.args[1] if getitem else None
        if type(index) is int and -2 <= index < 2 and (isinstance(value, _Returned) or value.pair):
            index %= 2  # both tuples have two entries
        if isinstance(value, _Returned) and index in (0, 1):
            if index == 1:
                return _States(value.states, value.pair, value.at)
            shape = self.shapes.get(node)
            self.seqs[node] = ("t", "f") if shape is not None and len(shape) == 2 else value.dims
            return Units(value.output, False)
        if isinstance(value, _States) and value.pair and index in (0, 1):
            return _States(value.states, False, value.at)
        if isinstance(value, _States) and not value.pair and getitem:
            entries = index if isinstance(index, tuple) else (index,)
            first = entries[0] if entries else None
            if isinstance(first, int) and not isinstance(first, bool) and -len(value.states) <= first:
                if first < len(value.states):
                    shape = self.shapes.get(node)  # h_n[i] is (batch, H), or (H,) unbatched
                    ndim = None if shape is None else len(shape) + sum(type(e) is int for e in entries[1:])
                    dims = ("f",) if ndim == 1 else ("b", "f")
                    units = Units((value.states[first],), False)
                    return self._index(node, units, dims, entries[1:])
        raise GraphError(
            f"unsupported {where(node, self.gm)} on the result of {value.at}. Accepted: {ACCEPTED}"
        )

    # ------------------------------------------------------------------ its output sequence
    def _on_sequence(self, node: fx.Node, state: dict, dims: tuple[str, ...]) -> Units | None:
        at, t = where(node, self.gm), node.target
        src = node.args[0] if node.args else None
        if node.op == "call_function" and t is operator.getitem and isinstance(src, fx.Node):
            index = node.args[1]
            return self._index(node, state[src], dims, index if isinstance(index, tuple) else (index,))
        if (node.op == "call_method" and t == "select") or (node.op == "call_function" and t is torch.select):
            d = _axis(arg(node, 1, "dim"), dims, at)
            return self._index(node, state[src], dims, (*(slice(None),) * d, arg(node, 2, "index")))
        reduction = node.op == "call_method" and t in ops.REDUCE_METHODS
        if reduction or (node.op == "call_function" and t in ops.REDUCE_FUNCTIONS):
            dim, keep = arg(node, 1, "dim"), arg(node, 2, "keepdim", False)
            if dim is None or keep or isinstance(dim, (tuple, list)) or dims[_axis(dim, dims, at)] != "t":
                raise GraphError(f"{at} reduces a recurrent sequence other than over its time dimension")
            return self._done(node, state[src], tuple(x for x in dims if x != "t"))
        if node.op == "call_method" and t in ops.META_METHODS:
            return None
        ok = node.op == "call_module" and isinstance(
            self.gm.get_submodule(t), (nn.Linear, *_ELEMENTWISE_MODULES, *FEATURE_NORMS)
        )
        ok = ok and not isinstance(self.gm.get_submodule(t), nn.GroupNorm)
        if node.op in ("call_function", "call_method"):
            ok = t in _ELEMENTWISE
            if t in ops.CAT_OPS:
                ok = arg(node, 1, "dim", 0) in (-1, len(dims) - 1)
        if not ok:
            raise GraphError(
                f"unsupported {at} on a recurrent sequence (dimensions {''.join(dims)}: b batch, t time, "
                f"f features). Accepted: {ACCEPTED}"
            )
        self.seqs[node] = dims
        return None

    def _index(self, node: fx.Node, units: Units, dims: tuple[str, ...], entries: tuple) -> Units:
        at = where(node, self.gm)
        if entries and entries[-1] is Ellipsis:
            entries = entries[:-1]
        if len(entries) > len(dims):
            raise GraphError(f"{at} indexes {len(entries)} dimensions of a {len(dims)}-dimensional value")
        kept = []
        for d, e in zip(dims, entries):
            if isinstance(e, int) and not isinstance(e, bool) and d != "f":
                continue
            if isinstance(e, slice) and (d != "f" or e == slice(None)):
                kept.append(d)
                continue
            what = "the feature dimension (the units)" if d == "f" else f"with {e!r}"
            raise GraphError(f"{at} indexes {what}; only whole units are supported. Accepted: {ACCEPTED}")
        return self._done(node, units, (*kept, *dims[len(entries) :]))

    def _done(self, node: fx.Node, units: Units, dims: tuple[str, ...]) -> Units:
        if "t" in dims:
            self.seqs[node] = dims
        # a norm before it still scales the next layer's columns
        return units.passed()



def _axis(dim: object, dims: tuple[str, ...], at: str) -> int:
    if not isinstance(dim, int) or isinstance(dim, bool) or not -len(dims) <= dim < len(dims):
        raise GraphError(f"{at} has dimension {dim!r}, not one of the {len(dims)} of a recurrent sequence")
    return dim % len(dims)
