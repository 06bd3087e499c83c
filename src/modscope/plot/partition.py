"""The clustered weight graph drawn as in Filan et al. (arXiv:2103.03386, Fig. 1).

Layers are columns of nodes from input (left) to output (right); within a column the nodes are sorted by
cluster so that each cluster forms a band, coloured by cluster (grey for nodes without edges, label -1).
Edges are straight lines whose opacity is their weight relative to the strongest edge of their layer.

A general graph (residual adds, concatenations: :mod:`modscope.graph.trace`) is drawn the same way with
one column per group, in the graph's order of groups: the order the forward pass creates them, a
topological order of the blocks except where a merged residual stream (``residual="merge"``), created by
its first writer, is written again by later layers (those blocks point left). A block between columns
that are not neighbours is drawn across the columns between; a block within a group joins nodes of one
column.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from modscope.cluster import Partition
    from modscope.graph import WeightGraph

__all__ = ["cluster_colors", "edge_list", "node_positions", "plot_partition"]

_GREY = (0.6, 0.6, 0.6, 1.0)


def node_positions(graph: WeightGraph, labels: np.ndarray) -> np.ndarray:
    """``(n_nodes, 2)`` plot coordinates: x = layer index, y in ``[0, 1]`` (top = first cluster).

    Within a layer, nodes are ordered by cluster label (``-1`` last, at the bottom), then by unit index,
    and spread evenly over the full height so that layers of different widths line up.
    """
    pos = np.zeros((graph.n_nodes, 2))
    off = graph.offsets
    for li, layer in enumerate(graph.layers):
        idx = np.arange(off[li], off[li + 1])
        lab = labels[idx]
        # -1 sorts after every cluster; the stable sort keeps unit order inside a cluster.
        order = idx[np.argsort(np.where(lab < 0, np.iinfo(np.int64).max, lab), kind="stable")]
        y = np.linspace(1.0, 0.0, layer.size) if layer.size > 1 else np.array([0.5])
        pos[order, 0] = li
        pos[order, 1] = y
    return pos


def edge_list(
    graph: WeightGraph, max_edges: int | None = None, *, relative_to: str = "layer"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The strongest non-zero edges, at most ``max_edges``, weakest first: ``(source, target, strength)``.

    Sources and targets are global node indices (``source`` in the block's ``src`` group); ``max_edges=None``
    keeps every edge.

    ``relative_to="layer"`` (default): ``strength`` is the weight over the largest weight of its block (a
    chain's layer), and the budget is shared equally between the blocks -- the gaps between the columns of
    a chain -- (a block with fewer edges than its share keeps them all and passes the rest on), each
    keeping its strongest edges. Weights of different layers
    live on different scales (conv kernel norms vs single dense weights, Glorot bounds that shrink with
    width), so any global ranking would spend the whole budget on one or two layers.
    ``relative_to="global"``: ``strength`` is the weight over the largest weight in the graph and the
    ``max_edges`` globally strongest edges are kept.
    """
    if relative_to not in ("layer", "global"):
        raise ValueError(f"relative_to must be 'layer' or 'global', got {relative_to!r}")
    off = graph.offsets
    top = max((float(b.max()) for b in graph.blocks if b.size), default=0.0)
    src, dst, w = [], [], []
    for edge in graph.edges:
        block = edge.block
        r, c = np.nonzero(block)
        scale = (block.max() if relative_to == "layer" else top) if r.size else 1.0
        src.append(c + off[edge.src])
        dst.append(r + off[edge.dst])
        w.append(block[r, c] / scale)
    if relative_to == "layer":
        quotas = _equal_shares([x.size for x in w], max_edges)
        keep = [_top(x, q) for x, q in zip(w, quotas)]
        src, dst, w = ([a[k] for a, k in zip(arrs, keep)] for arrs in (src, dst, w))
    s, d, wt = np.concatenate(src), np.concatenate(dst), np.concatenate(w)
    if relative_to == "global" and max_edges is not None:
        k = _top(wt, max_edges)
        s, d, wt = s[k], d[k], wt[k]
    # Weakest first, so that the strong edges are drawn on top.
    order = np.argsort(wt, kind="stable")
    return s[order], d[order], wt[order]


def _top(values: np.ndarray, n: int | None) -> np.ndarray:
    """Indices of the ``n`` largest ``values`` (all if ``n`` is None or at least their number)."""
    if n is None or n >= values.size:
        return np.arange(values.size)
    if n <= 0:
        return np.empty(0, dtype=np.int64)
    return np.argpartition(values, values.size - n)[values.size - n :]


def _equal_shares(counts: list[int], budget: int | None) -> list[int | None]:
    """Split ``budget`` equally over groups of ``counts`` items; small groups pass their leftover on."""
    if budget is None:
        return [None] * len(counts)
    shares = [0] * len(counts)
    left, groups = budget, len(counts)
    for i in sorted(range(len(counts)), key=counts.__getitem__):
        shares[i] = min(counts[i], left // groups)
        left -= shares[i]
        groups -= 1
    return shares


def cluster_colors(labels: np.ndarray, k: int) -> np.ndarray:
    """RGBA colour per node, shape ``(n, 4)``: a qualitative colormap by cluster, grey for ``-1``.

    ``tab10`` up to 10 clusters, ``tab20`` up to 20; beyond that ``tab20`` colours repeat.
    """
    from matplotlib import colormaps

    cmap = colormaps["tab10" if k <= 10 else "tab20"]
    n_colors = cmap.N
    colors = np.array([cmap(int(lab) % n_colors) for lab in range(max(k, 1))])
    out = np.empty((labels.size, 4))
    live = labels >= 0
    out[live] = colors[labels[live] % len(colors)]
    out[~live] = _GREY
    return out


def plot_partition(
    graph: WeightGraph,
    partition: Partition,
    path: str | os.PathLike | None = None,
    *,
    max_edges: int = 20000,
    ax: Axes | None = None,
    edges_relative_to: str = "layer",
) -> Figure:
    """Draw ``graph`` with the clusters of ``partition``; write a PNG to ``path`` if given.

    Parameters
    ----------
    graph : WeightGraph
        The graph that was clustered (``partition.labels`` has one label per node of it): a layered chain
        or a general graph (one column per group, module docstring).
    partition : Partition
        A finished clustering (e.g. ``clusterability(...).partition``); nothing is recomputed.
    path : path, optional
        Where to save the figure (PNG, 150 dpi; another suffix such as ``.pdf`` picks that format);
        parent folders are created.
    max_edges : int, default 20000
        At most this many edges are drawn, the strongest ones (all if fewer): a big network has millions,
        which would take minutes to render and hide the structure. ``0`` draws no edges. Edge opacity is
        the edge's strength (see ``edges_relative_to``), scaled down where many edges share a gap.
    ax : matplotlib Axes, optional
        Draw into this axes instead of a new figure.
    edges_relative_to : {"layer", "global"}, default "layer"
        ``"layer"``: the budget is shared equally by the blocks (the gaps between a chain's columns), each
        drawing its strongest edges, shaded relative to the strongest edge of the block; ``"global"``: the
        ``max_edges`` strongest edges of the graph, shaded relative to the strongest of all
        (see :func:`edge_list`).

    Returns
    -------
    matplotlib.figure.Figure
        One ``PathCollection`` holds the nodes (one point per node, in node order) and one
        ``LineCollection`` the edges.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure

    labels = np.asarray(partition.labels)
    if labels.shape != (graph.n_nodes,):
        raise ValueError(
            f"partition has {labels.size} labels but the graph has {graph.n_nodes} nodes: "
            "plot the graph that was clustered"
        )
    if isinstance(max_edges, bool) or not isinstance(max_edges, (int, np.integer)) or max_edges < 0:
        raise ValueError(f"max_edges must be a non-negative int, got {max_edges!r}")

    n_layers = len(graph.layers)
    if ax is None:
        # A bare Figure with an Agg canvas: no pyplot, no global state, no display ever needed.
        fig = Figure(figsize=(float(np.clip(1.4 * n_layers, 6.0, 20.0)), 6.0), layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
    else:
        fig = ax.figure

    pos = node_positions(graph, labels)
    s, d, w = edge_list(graph, max_edges, relative_to=edges_relative_to)
    rgba = np.zeros((w.size, 4))
    # Opacity proportional to strength, with a ceiling that falls as more edges join the same two columns,
    # so that thousands of edges do not merge into a black slab.
    columns = graph.node_layer[s] * len(graph.layers) + graph.node_layer[d]
    _, which, counts = np.unique(columns, return_inverse=True, return_counts=True)
    per_gap = counts[which]
    rgba[:, 3] = w * np.clip(150.0 / np.maximum(per_gap, 1), 0.03, 0.8)
    segments = np.stack([pos[s], pos[d]], axis=1) if w.size else np.zeros((0, 2, 2))
    ax.add_collection(LineCollection(segments, colors=rgba, linewidths=0.5, zorder=1))

    biggest = max(layer.size for layer in graph.layers)
    size = float(np.clip(4000.0 / biggest, 2.0, 40.0))
    ax.scatter(pos[:, 0], pos[:, 1], c=cluster_colors(labels, partition.k), s=size, linewidths=0, zorder=2)

    ax.set_xlim(-0.5, n_layers - 0.5)
    ax.set_ylim(-0.05, 1.05)
    ax.set_xticks(range(n_layers))
    ax.set_xticklabels([f"{layer.name}\n({layer.size})" for layer in graph.layers], fontsize=8)
    ax.set_yticks([])
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    shown = f"{w.size} strongest of {graph.n_edges} edges" if w.size < graph.n_edges else f"{w.size} edges"
    ax.set_title(f"k = {partition.k}, n-cut = {partition.ncut:.3f}  ({graph.n_nodes} nodes, {shown})")
    if path is not None:
        _save(fig, path)
    return fig


def _save(fig: Any, path: str | os.PathLike) -> None:
    from pathlib import Path

    from modscope.atomic import atomic_path

    fmt = Path(path).suffix.lstrip(".").lower() or "png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=150, format=fmt)
