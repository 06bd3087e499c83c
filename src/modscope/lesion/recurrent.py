"""Silencing the hidden units of ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` layers, and the units they read.

A weight graph (:mod:`modscope.graph.recurrent`) names the weights of a recurrent module
``"<path>.weight_ih_l<k><sfx>"`` / ``"<path>.weight_hh_l<k><sfx>"`` (``sfx`` ``""`` or ``"_reverse"``):
names of parameters, not of modules, so a forward pre-hook cannot zero what they read. Two cases:

* **read from the module's input** (``weight_ih_l0``, either direction): the units of the module's input
  (a Linear's outputs, a concatenation's groups at their offsets) are zeroed by a pre-hook on the
  recurrent module itself, along the input's last (feature) dimension -- as for a Linear;
* **read inside the module** (``weight_hh_l<k>``: the recurrence; ``weight_ih_l<k>``, ``k > 0``: the next
  stacked layer, the reverse direction's units at offset ``hidden_size``): these are hidden units of the
  module's own layers, silenced at their source so that ``h_j = 0`` at every step, for the recurrence,
  the next layer, ``output`` and ``h_n`` (:func:`at_source`).

**At the source.** Hidden unit ``j`` of layer ``k`` is silenced by zeroing, in the weights of that layer
and direction, its rows of the *candidate* gate (``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh``);
every other gate is left alone. With the zero initial state the graph requires (a state passed in is
refused when the graph is built), by induction over the steps ``t``:

* LSTM (gates ``i, f, g, o``; ``g`` is row block 2): ``g_j = tanh(0) = 0``, so
  ``c_j(t) = f_j c_j(t-1) + i_j g_j = f_j * 0 + i_j * 0 = 0`` and ``h_j(t) = o_j tanh(c_j(t)) = 0``. The
  cell is part of the unit (a graph node is the whole unit), and ``c_n`` is 0 at ``j`` too. This needs no
  infinite bias (a closed output gate would need ``bias = -inf`` and would leave ``c_j`` running) and works
  without biases;
* GRU (gates ``r, z, n``; ``n`` is row block 2):
  ``n_j = tanh(W_in x + b_in + r_j (W_hn h + b_hn))_j = tanh(0 + r_j * 0) = 0``, so
  ``h_j(t) = (1 - z_j) n_j + z_j h_j(t-1) = 0 + z_j * 0 = 0``;
* RNN (one gate, ``tanh`` or ``relu``): ``h_j(t) = act(0) = 0``.

All products are of finite numbers by 0, so the zeros are exact (no NaN). A bidirectional module's
directions are separate groups with separate weights (``..._reverse``): silencing one direction's unit
leaves the other direction alone. ``proj_size > 0`` is refused when the graph is built. The edited rows are
restored on exit, also after an exception, by copying the saved values back into the same ``Parameter``
objects (optimizers and ``flatten_parameters`` views stay valid); a unit reached through several sites
is edited once. The model is meant to be evaluated inside the context: an update of the edited rows made
there (training) is overwritten on exit.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from modscope.graph import GraphError

__all__ = ["CANDIDATE_GATE", "at_source", "candidate_gate", "inside", "recurrent_reader"]

# Row block of the gate whose zeroing keeps a unit's state at 0 (module docstring): LSTM g, GRU n, RNN's one.
CANDIDATE_GATE = {nn.LSTM: 2, nn.GRU: 2, nn.RNN: 0}
_WEIGHT = re.compile(r"weight_(ih|hh)_l(\d+)(_reverse)?")


def recurrent_reader(modules: Mapping[str, nn.Module], name: str) -> tuple[str, nn.RNNBase, str] | None:
    """``(owner path, owner, parameter)`` when ``name`` is ``"<owner>.<weight_ih|hh_l<k>[_reverse]>"`` of a
    recurrent module in ``modules`` (``model.named_modules()``), else None."""
    owner, _, param = name.rpartition(".")
    module = modules.get(owner)
    if not isinstance(module, nn.RNNBase) or _WEIGHT.fullmatch(param) is None:
        return None
    candidate_gate(module, owner)
    return owner, module, param


def candidate_gate(module: nn.RNNBase, path: str) -> int:
    """The row block of ``module``'s candidate gate (:data:`CANDIDATE_GATE`), or a GraphError naming
    ``path`` for a recurrent module of another kind."""
    for kind, gate in CANDIDATE_GATE.items():
        if isinstance(module, kind):
            return gate
    raise GraphError(f"'{path}' is a {type(module).__name__}; lesions handle nn.LSTM, nn.GRU, nn.RNN")


def inside(owner: nn.RNNBase, param: str, units: np.ndarray) -> tuple[str, np.ndarray] | None:
    """Where input units ``units`` of the weight ``param`` of ``owner`` come from: None for the module's
    input (``weight_ih_l0``), else ``(layer, hidden units)``, ``layer`` ``"l<k>"`` / ``"l<k>_reverse"``
    (``weight_hh_l<k>``: layer ``k`` itself; ``weight_ih_l<k>``, ``k > 0``: layer ``k - 1``, its reverse
    direction from input unit ``hidden_size`` on)."""
    kind, k, suffix = _WEIGHT.fullmatch(param).groups()
    k = int(k)
    if kind == "hh":
        return f"l{k}{suffix or ''}", units
    if k == 0:
        return None
    size = owner.hidden_size
    directions = units // size
    if np.unique(directions).size > 1:  # a group is one direction's units: never split by the graph
        raise GraphError(f"units {units.tolist()} of '{param}' span both directions of layer {k - 1}")
    return f"l{k - 1}{'_reverse' if directions.size and directions[0] else ''}", units % size


@contextmanager
def at_source(
    modules: Mapping[str, nn.Module], sources: Mapping[tuple[str, str], set[int] | np.ndarray]
) -> Iterator[None]:
    """Silence hidden units at their source while the context is open (module docstring).

    ``sources`` maps ``(module path, layer)`` -- ``layer`` ``"l<k>"`` or ``"l<k>_reverse"`` -- to the unit
    indices ``0 .. hidden_size - 1`` to silence; ``modules`` is ``model.named_modules()``.
    """
    saved: list[tuple[nn.Parameter, torch.Tensor, torch.Tensor]] = []
    try:
        with torch.no_grad():
            for (path, layer), units in sources.items():
                module = modules[path]
                units = torch.as_tensor(np.asarray(sorted(set(np.asarray(units).tolist())), dtype=np.int64))
                if not units.numel():
                    continue
                size = module.hidden_size
                if int(units.min()) < 0 or int(units.max()) >= size:
                    raise ValueError(
                        f"hidden units of '{path}' must be in 0..{size - 1}, got {units.tolist()}"
                    )
                rows = candidate_gate(module, path) * size + units
                names = [f"{w}_{layer}" for w in ("weight_ih", "weight_hh")]
                names += [f"{b}_{layer}" for b in ("bias_ih", "bias_hh") if module.bias]
                for name in names:
                    p = getattr(module, name)
                    r = rows.to(p.device)
                    saved.append((p, r, p[r].clone()))
                    p[r] = 0.0
        yield
    finally:
        with torch.no_grad():
            for p, r, values in reversed(saved):
                p[r] = values
