"""Where a weight mask falls on a weight graph: the one mapping from mask entries to graph edges.

Each edge block of a :class:`~modscope.graph.WeightGraph` comes from one weight layer (``graph.sources``;
for a layered chain, the layer that writes the block's units). The parameter a block is read from, and how
the entries of that parameter fold onto the block's ``(out, in)`` unit pairs, follow the graph's own rule
(:mod:`modscope.graph.blocks`), read here from the shapes:

* a ``Linear`` weight ``(out, in)``: entry ``[j, i]`` is edge ``(j, i)``;
* a ``Linear`` after a flatten ``(out, C * P)``: the ``P`` positions of channel ``c`` fold onto ``(j, c)``;
* a recurrent weight ``(G * out, in)``: the ``G`` gates fold onto ``(j, i)``;
* a conv kernel ``(out, in / groups, *k)``: the kernel slice folds onto ``(j, i)`` (block-diagonal across
  groups); a ``ConvTranspose`` kernel ``(in, out / groups, *k)`` the same way, transposed;
* an ``Embedding`` table ``(num, d)``: entry ``[n, f]`` is edge ``(f, n)``;
* a packed attention projection (``in_proj_weight``): the rows of the query, key or value part;
* a layer reading a concatenation: one block per operand, cut from the parameter by columns; a copy of a
  block (``residual="filan"``) counts the parameter again, since it is a separate edge of the graph.

A square ``ConvTranspose`` kernel (``in == out``, one group) or a square ``Embedding`` has the shape of a
``Conv`` / ``Linear`` weight: without ``model`` it is read as the latter; pass the model to read the
module type instead.

Only edges the graph has count (``block > 0``): a mask entry on a weight the network does not have (pruned
to 0) joins no units. Biases and other 1-D parameters add no edge and are ignored; a masked parameter of
two or more dimensions that no block comes from is an error (restrict the mask to the graph's parameters).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from modscope.graph import WeightGraph

__all__ = ["BlockSource", "block_sources", "fold", "kept_counts"]


@dataclass(frozen=True)
class BlockSource:
    """The masked parameter one graph block is read from: ``rows`` of it (a packed attention projection),
    and the block's columns ``cols`` within the parameter's folded ``(out, width)`` block."""

    param: str
    rows: tuple[int, int] | None
    cols: tuple[int, int]
    width: int


def _candidates(base: str, n_rows: int) -> list[tuple[str, tuple[int, int] | None]]:
    out = [(base, None), (f"{base}.weight", None)]
    parent, _, part = base.rpartition(".")
    if parent and part in ("q", "k", "v"):
        i = "qkv".index(part)
        out.append((f"{parent}.in_proj_weight", (i * n_rows, (i + 1) * n_rows)))
        out.append((f"{parent}.{part}_proj_weight", None))
    return out


def block_sources(graph: WeightGraph, shapes: Mapping[str, Sequence[int]]) -> list[BlockSource | None]:
    """For every edge block of ``graph`` (edge order), the masked parameter it is read from, or ``None`` when
    that parameter is not masked. ``ValueError`` naming a masked parameter (2-D or more) that no block comes
    from."""
    bases = []
    for i, (e, source) in enumerate(zip(graph.edges, graph.sources)):
        name = graph.layers[e.dst].name
        default = source == f"{name}#{i}"  # a layered chain keeps no sources: the writing layer is the name
        bases.append(name if default else re.sub(r"->.*$", "", source))
    widths: dict[str, int] = {}
    for e, source in zip(graph.edges, graph.sources):
        widths[source] = widths.get(source, 0) + e.block.shape[1]
    out: list[BlockSource | None] = []
    col: dict[str, int] = {}
    for e, source, base in zip(graph.edges, graph.sources, bases):
        start = col.get(source, 0)
        col[source] = start + e.block.shape[1]
        found = [(p, rows) for p, rows in _candidates(base, e.block.shape[0]) if p in shapes]
        if not found:
            out.append(None)
            continue
        param, rows = found[0]
        out.append(BlockSource(param, rows, (start, start + e.block.shape[1]), widths[source]))
    used = {s.param for s in out if s is not None}
    stray = [n for n, s in shapes.items() if len(s) >= 2 and n not in used]
    if stray:
        known = sorted(set(bases))
        raise ValueError(
            f"the mask covers parameters the graph does not have: {stray[:5]} (the graph's blocks come from "
            f"{known[:8]}{'...' if len(known) > 8 else ''}); restrict the mask to the graph's parameters, "
            "e.g. mask.restrict(names)"
        )
    if not used:
        raise ValueError(f"no block of the graph comes from a masked parameter (masked: {list(shapes)[:8]})")
    return out


def _module_kind(model: Any, param: str) -> str:
    if model is None:
        return ""
    from torch import nn

    module = model.get_submodule(param.rpartition(".")[0])
    if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        return "conv_transpose"
    return "embedding" if isinstance(module, nn.Embedding) else "other"


def fold(mask: np.ndarray, out: int, width: int, *, kind: str = "", what: str = "") -> np.ndarray:
    """The number of kept entries of ``mask`` on every ``(j, i)`` of the parameter's ``(out, width)`` block
    (rules in the module docstring); ``kind`` ``"conv_transpose"`` / ``"embedding"`` settles square shapes."""
    m = mask.astype(np.int64)
    if m.ndim == 2:
        a, b = m.shape
        if kind == "embedding" and (b, a) == (out, width):
            return m.T
        if (a, b) == (out, width):
            return m
        if (b, a) == (out, width):
            return m.T
        if b == width and a % out == 0:
            return m.reshape(a // out, out, width).sum(axis=0)
        if a == out and b % width == 0:
            return m.reshape(out, width, b // width).sum(axis=2)
    elif m.ndim > 2:
        s = m.reshape(m.shape[0], m.shape[1], -1).sum(axis=2)
        a, b = s.shape
        if kind != "conv_transpose" and a == out and width % b == 0:
            groups, per = width // b, out // (width // b)
            full = np.zeros((out, width), np.int64)
            for g in range(groups):  # grouped: output j reads the inputs of its own group only
                full[g * per : (g + 1) * per, g * b : (g + 1) * b] = s[g * per : (g + 1) * per]
            return full
        if a == width and out % b == 0:
            groups, per = out // b, width // (out // b)
            full = np.zeros((out, width), np.int64)
            for g in range(groups):  # a ConvTranspose kernel is (in, out / groups, ...)
                full[g * b : (g + 1) * b, g * per : (g + 1) * per] = s[g * per : (g + 1) * per].T
            return full
    raise ValueError(f"mask of {what or 'a parameter'} has shape {tuple(mask.shape)}, which does not fold "
                     f"onto the graph's ({out}, {width}) block")  # fmt: skip


def kept_counts(
    graph: WeightGraph, mask: Mapping[str, Any], *, model: Any = None, sources: Sequence[Any] | None = None
) -> list[np.ndarray | None]:
    """Per edge block of ``graph``: the number of ``mask``'s kept entries on each of its ``(out, in)`` edges
    (0 where the graph has no edge), int array of the block's shape; ``None`` for an unmasked block.

    ``mask`` maps parameter names to bool tensors or arrays shaped like the parameter (a
    :class:`~modscope.masks.Mask`); ``model`` (optional) settles square ConvTranspose / Embedding shapes.
    """
    arrays = {n: _numpy(t) for n, t in mask.items()}
    if sources is None:
        sources = block_sources(graph, {n: a.shape for n, a in arrays.items()})
    folded: dict[tuple[str, Any, int], np.ndarray] = {}
    out: list[np.ndarray | None] = []
    for e, src in zip(graph.edges, sources):
        if src is None:
            out.append(None)
            continue
        key = (src.param, src.rows, src.width)
        if key not in folded:
            m = arrays[src.param]
            m = m if src.rows is None else m[src.rows[0] : src.rows[1]]
            kind = _module_kind(model, src.param)
            folded[key] = fold(m, e.block.shape[0], src.width, kind=kind, what=repr(src.param))
        counts = folded[key][:, src.cols[0] : src.cols[1]]
        out.append(np.where(e.block > 0, counts, 0))
    return out


def _numpy(t: Any) -> np.ndarray:
    if hasattr(t, "detach"):
        t = t.detach().cpu().numpy()
    a = np.asarray(t)
    if a.dtype != np.bool_:
        raise ValueError(f"a mask must hold bool arrays, got {a.dtype}")
    return a
