"""Where the units of each group of a traced weight graph are read in the model's forward pass (for lesions).

A group's units are found again by tracing the model the way :meth:`WeightGraph.from_module
<modscope.graph.WeightGraph.from_module>` did (:mod:`modscope.graph.trace`) and matching the groups by name,
kind and size, so a graph needs to carry nothing but its groups. A unit lives, for a lesion, where it is
*read*: in the input of every weight layer whose block reads it (:class:`Site`). Zeroing it there, as
:mod:`modscope.lesion.silence` does, silences it whatever happens between its producer and its readers
(an activation with ``act(0) != 0``, a pooling, a norm, a flatten, a concatenation). Per kind of group:

* the output of a weight layer: read by the next layer(s) -- the chain's rule;
* a residual stream (``residual="merge"``): read by every layer reading the stream, at any add along it.
  The adds themselves only carry the stream on to further adds and readers, so zeroing the stream units in
  every reader's input is the same, for every weight layer and so for the model's output, as zeroing them
  after each add; unlike zeroing after the adds it also holds when an activation that does not map 0 to 0
  lies between the stream and a reader;
* a copy of a stream (``residual="filan"``): the copy read by one layer, so that layer's input alone;
* a group read through a concatenation: the features at its offset in the concatenated input;
* a group read inside one ``nn.MultiheadAttention`` call (the stream its projections read, the values its
  ``out_proj`` reads), where no hook can reach: the weight columns that read it (``edit="columns"``);
* queries and keys (read by the attention pattern only, :mod:`modscope.graph.attention`): at their source,
  the projection's weight rows and bias entries (``edit="rows"``), so the unit is 0 at every position.

The input groups are read by the first layers (lesions leave them out, like the chain's input) and the
output group by nothing (it has no site).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from modscope.graph.layer import GraphError, Layer
from modscope.graph.trace import RESIDUAL_RULES, _trace
from modscope.graph.weight_graph import WeightGraph

__all__ = ["Site", "UnitSites", "unit_sites"]


@dataclass(frozen=True)
class Site:
    """Units ``0 .. size - 1`` of a group are the input units ``offset .. offset + size - 1`` of the weight
    module ``module`` (its input units in the order it reads them: the groups of a concatenation one
    after another; channels of a convolution, features of a Linear). ``spatial``: input features per unit
    when a Linear reads a flattened feature map (channel-major), else 1; ``calls``: how many times
    ``forward`` calls the module (a hook on a module called more than once cannot tell the calls apart).

    ``edit``: ``"input"`` (the input features, by a forward pre-hook); ``"columns"``: instead, columns
    ``offset ..`` of the weight ``param`` (its rows ``rows``, all when ``None``) are zeroed; ``"rows"``: the
    units are outputs, rows ``offset ..`` of ``param`` and entries ``bias_offset ..`` of ``bias`` are
    zeroed (``bias`` empty or absent: no bias)."""

    module: str
    offset: int
    size: int
    spatial: int = 1
    calls: int = 1
    edit: str = "input"
    param: str = "weight"
    rows: tuple[int, int] | None = None
    bias: str = ""
    bias_offset: int = 0


@dataclass(frozen=True)
class UnitSites:
    """The sites of every group of a graph, ``sites[g]`` for group ``g`` (empty for the output group), and
    the residual rule the graph was found to be built with."""

    residual: str
    sites: tuple[tuple[Site, ...], ...]


def unit_sites(model: nn.Module, graph: WeightGraph) -> UnitSites:
    """Where each group of ``graph`` (built by ``WeightGraph.from_module(model, ...)``, any residual rule,
    inputs and outputs kept or not) is read in ``model``.

    The rule is not stored on the graph: a graph with copy groups was built with ``residual="filan"``,
    otherwise ``"merge"`` is tried first (without adds the two give the same graph). Raises
    :class:`GraphError` when neither rule gives ``graph``'s groups (a graph of another model).
    """
    rules = RESIDUAL_RULES[::-1] if any(layer.kind == "copy" for layer in graph.layers) else RESIDUAL_RULES
    reasons = []
    for rule in rules:
        try:
            traced = _trace(model, None, None, rule)
        except GraphError as exc:
            reasons.append(f"residual={rule!r}: {exc}")
            continue
        _, roots = traced.groups.kept(traced.reads, traced.output)
        index = _match(graph.layers, [traced.groups.layers[g] for g in roots])
        if index is None:
            names = [traced.groups.layers[g].name for g in roots]
            reasons.append(f"residual={rule!r} gives the groups {names[:12]}")
            continue
        root_index = {roots[i]: j for i, j in index.items()}
        calls = Counter(traced.chain[r.layer].name for r in traced.reads)
        found: list[list[Site]] = [[] for _ in graph.layers]
        for r in traced.reads:
            layer = traced.chain[r.layer]
            offset = 0
            for g in r.inputs:
                size = traced.groups.size(g)
                j = root_index.get(traced.groups.find(g))
                if j is not None and r.layer in traced.unhooked:
                    site = Site(traced.unhooked[r.layer], offset, size, edit="columns", param=layer.param,
                                rows=layer.rows)  # fmt: skip
                    found[j].append(site)
                elif j is not None:
                    found[j].append(Site(layer.name, offset, size, layer.spatial, calls[layer.name]))
                offset += size
        for e in traced.ends:
            j = root_index.get(traced.groups.find(e.group))
            if j is not None:
                size = traced.groups.size(e.group)
                found[j].append(Site(e.module, e.first, size, edit="rows", param=e.param, bias=e.bias,
                                     bias_offset=e.bias_first))  # fmt: skip
        return UnitSites(rule, tuple(tuple(s) for s in found))
    names = [layer.name for layer in graph.layers]
    raise GraphError(
        f"the graph's groups {names[:12]} are not those of {type(model).__name__} "
        f"(was the graph built from this model with WeightGraph.from_module?): {'; '.join(reasons)}"
    )


def _match(want: Sequence[Layer], traced: Sequence[Layer]) -> dict[int, int] | None:
    """``{traced index: want index}`` when ``want`` is ``traced``, with or without its input groups and its
    last (output) group (:meth:`WeightGraph.trimmed`); None otherwise."""
    n = len(traced)
    inputs = {i for i, layer in enumerate(traced) if layer.kind == "input"}
    for drop in (set(), inputs, {n - 1}, inputs | {n - 1}):
        keep = [i for i in range(n) if i not in drop]
        if len(keep) == len(want) and all(_same(traced[i], w) for i, w in zip(keep, want)):
            return {i: j for j, i in enumerate(keep)}
    return None


def _same(traced: Layer, want: Layer) -> bool:
    # An input's size is found by the first layer reading it; a trace without an input shape may not know it.
    size_ok = traced.size == want.size or (traced.kind == "input" and traced.size < 0)
    return traced.name == want.name and traced.kind == want.kind and size_ok
