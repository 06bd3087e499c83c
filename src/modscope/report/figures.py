"""The report's figures, drawn from stored results only (nothing is recomputed).

Every function returns a :class:`matplotlib.figure.Figure` on its own Agg canvas: no pyplot, no global
backend switch, no display. :func:`png_bytes` turns one into the PNG that the report embeds.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from modscope.graph import WeightGraph

__all__ = [
    "DPI",
    "kept_bars",
    "lesion_heatmap",
    "line_plot",
    "new_figure",
    "null_histogram",
    "overlap_bars",
    "partition_figure",
    "png_bytes",
    "share_heatmaps",
]

#: Resolution of the embedded PNGs: sharp on a laptop screen at the figure sizes used here, and a few
#: hundred kB at most per figure.
DPI = 110
# Colour of the network's own value against its null, and of the two overlap measures.
_NETWORK = "#c0392b"
_IOU, _IOMIN = "#2e86c1", "#f5b041"
# Tick-label colour of each lesion label (Filan et al. arXiv:2103.03386: important / prunable; modules that
# cannot be tested against random sets of their layer: modscope.lesion.controls).
LABEL_COLORS = {
    "important": "#c0392b", "prunable": "#1e8449", "not significant": "#566573", "whole layer": "#7d3c98",
    "untestable": "#7d3c98",
}  # fmt: skip


def new_figure(width: float, height: float) -> Figure:
    """A bare Figure (inches) with an Agg canvas attached: drawing never touches pyplot's state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig: Figure, dpi: int = DPI) -> bytes:
    """``fig`` as PNG bytes (no timestamp in the metadata: the same results give the same file)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return buf.getvalue()


def null_histogram(nulls: Sequence[float], ncut: float, shuffle: str, network: str = "network") -> Figure:
    """Histogram of the n-cuts of the shuffled networks, with the network's n-cut as a vertical line.

    The test of Filan et al. (arXiv:2103.03386): the network is clusterable when its n-cut lies in the
    left tail of its shuffles' n-cuts. Missing (``None``) null values are skipped.
    """
    values = np.array([v for v in nulls if v is not None], dtype=float)
    fig = new_figure(4.8, 2.8)
    ax = fig.add_subplot()
    if values.size:
        lo, hi = min(values.min(), ncut), max(values.max(), ncut)
        span = hi - lo if hi > lo else max(abs(hi), 1.0) * 0.01
        bins = np.linspace(lo - 0.02 * span, hi + 0.02 * span, int(np.clip(values.size // 2, 8, 40)) + 1)
        ax.hist(
            values,
            bins=bins,
            color="#aab7b8",
            edgecolor="white",
            label=f"'{shuffle}' shuffles (n={values.size})",
        )
    ax.axvline(ncut, color=_NETWORK, linewidth=2, label=f"{network}: {ncut:.4g}")
    ax.set_xlabel("n-cut (lower = more clusterable)")
    ax.set_ylabel("shuffled networks")
    ax.set_title(f"null '{shuffle}'", fontsize=10)
    ax.legend(fontsize=8, loc="best", frameon=False)
    for side in ("right", "top"):
        ax.spines[side].set_visible(False)
    return fig


def partition_figure(graph: WeightGraph, labels: Sequence[int], k: int, ncut: float) -> Figure:
    """The clustered graph (:func:`modscope.plot.plot_partition`) from stored labels.

    ``labels`` has one entry per node of ``graph`` in ``-1..k-1``; ``ncut`` is the stored n-cut shown in
    the title. Raises ValueError if the labels do not fit the graph.
    """
    from modscope.cluster import Partition
    from modscope.plot import plot_partition

    lab = np.asarray(labels, dtype=np.int64)
    if lab.shape != (graph.n_nodes,):
        raise ValueError(f"{lab.size} labels stored for a graph of {graph.n_nodes} nodes")
    if lab.size and (lab.min() < -1 or lab.max() >= k):
        raise ValueError(f"labels must lie in -1..{k - 1}, got {lab.min()}..{lab.max()}")
    unknown = np.full(k, np.nan)  # not stored in results.json and not needed for the drawing
    partition = Partition(
        labels=lab,
        ncut=float(ncut),
        k=int(k),
        sizes=np.bincount(lab[lab >= 0], minlength=k),
        cuts=unknown,
        volumes=unknown,
        eigenvalues=unknown,
        solver="stored",
    )
    return plot_partition(graph, partition)


def _grouped_bars(ax: Any, groups: Sequence[str], series: Mapping[str, Sequence[float]], colors=None) -> None:
    """One cluster of bars per group, one bar per series; ``nan`` bars are left out."""
    n = max(len(series), 1)
    width = 0.8 / n
    x = np.arange(len(groups))
    for i, (name, values) in enumerate(series.items()):
        kw = {"color": colors[i]} if colors else {}
        ax.bar(x + (i - (n - 1) / 2) * width, values, width, label=name, **kw)
    ax.set_xticks(x)
    ax.set_xticklabels(
        groups, rotation=30 if len(groups) > 4 else 0, ha="right" if len(groups) > 4 else "center"
    )
    for side in ("right", "top"):
        ax.spines[side].set_visible(False)


def kept_bars(
    layers: Sequence[str], sizes: Mapping[str, int], kept: Mapping[str, Mapping[str, int]]
) -> Figure:
    """Fraction of each layer's weights kept by each task's mask (Csordás et al. arXiv:2010.02066).

    ``kept[task][layer]`` counts kept weights out of ``sizes[layer]``; a missing count is left out.
    """
    fig = new_figure(min(max(4.8, 0.7 * len(layers) * max(len(kept), 1) ** 0.5 + 2.4), 14.0), 3.0)
    ax = fig.add_subplot()
    series = {
        task: [_ratio(counts.get(layer), sizes.get(layer)) for layer in layers]
        for task, counts in kept.items()
    }
    _grouped_bars(ax, layers, series)
    ax.set_ylabel("kept weights / layer size")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title("weights kept by each task's mask", fontsize=10)
    return fig


def overlap_bars(
    layers: Sequence[str], iou: Mapping[str, float], iomin: Mapping[str, float], pair: Sequence[str]
) -> Figure:
    """Per-layer IoU and IoMin of the masks of the two tasks in ``pair``; missing values are left out."""
    fig = new_figure(min(max(4.8, 0.8 * len(layers) + 2.4), 14.0), 3.0)
    ax = fig.add_subplot()
    series = {
        "IoU": [_float(iou.get(layer)) for layer in layers],
        "IoMin": [_float(iomin.get(layer)) for layer in layers],
    }
    _grouped_bars(ax, layers, series, colors=[_IOU, _IOMIN])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("overlap")
    ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title(f"overlap of the masks of {pair[0]} and {pair[1]}", fontsize=10)
    return fig


def line_plot(
    series: Mapping[str, Sequence[Sequence[float]]], xlabel: str, ylabel: str, xscale: str = "linear",
    bands: Mapping[str, Sequence[Sequence[float]]] | None = None,
) -> Figure:
    """One line with markers per series of ``[x, y]`` points, ``bands[name]`` (``[x, low, high]``) shaded
    around the series of that name in its colour; the legend beside the axes."""
    fig = new_figure(7.2, 3.2)
    ax = fig.add_subplot()
    for name, points in series.items():
        xs, ys = zip(*points, strict=True)
        marker = "o" if len(xs) < 30 else None
        (line,) = ax.plot(xs, ys, marker=marker, markersize=3, linewidth=1.2, label=name)
        if (bands or {}).get(name):
            bx, lo, hi = zip(*bands[name], strict=True)
            ax.fill_between(bx, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xscale(xscale)
    xs = sorted({x for points in series.values() for x, _ in points})
    if xscale == "log" and len(xs) <= 10:  # a few widths: label them, not powers of ten
        ax.set_xticks(xs, [f"{x:g}" for x in xs])
        ax.minorticks_off()
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if len(series) <= 12:
        ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    for side in ("right", "top"):
        ax.spines[side].set_visible(False)
    return fig


def lesion_heatmap(classes: Sequence[str], modules: Sequence[Mapping[str, Any]]) -> Figure:
    """Modules x classes heat map of the accuracy drop when a module is lesioned.

    Diverging colormap centred at 0 (red: accuracy lost, blue: gained; missing values grey). Rows are
    labelled ``name (label)`` with the label coloured as in :data:`LABEL_COLORS`. Cells carry their value
    when the map is small enough to read them (Filan et al. arXiv:2103.03386).
    """
    from matplotlib import colormaps

    data = np.array([[_float(v) for v in m["class_damage"]] for m in modules], dtype=float).reshape(
        len(modules), len(classes)
    )
    finite = data[np.isfinite(data)]
    top = float(np.abs(finite).max()) if finite.size else 0.0
    top = top if top > 0 else 1.0
    fig = new_figure(
        float(np.clip(0.55 * len(classes) + 3.5, 6.0, 16.0)),
        float(np.clip(0.32 * len(modules) + 1.6, 2.5, 24.0)),
    )
    ax = fig.add_subplot()
    cmap = colormaps["RdBu_r"].with_extremes(bad="#d5d8dc")
    im = ax.imshow(
        np.ma.masked_invalid(data), cmap=cmap, vmin=-top, vmax=top, aspect="auto", interpolation="nearest"
    )
    ax.set_xticks(range(len(classes)))
    ax.set_xticklabels([str(c) for c in classes], rotation=45 if len(classes) > 10 else 0, fontsize=8)
    ax.set_yticks(range(len(modules)))
    ax.set_yticklabels([f"{m['name']} ({m['label']})" for m in modules], fontsize=8)
    for tick, m in zip(ax.get_yticklabels(), modules):
        tick.set_color(LABEL_COLORS.get(str(m["label"]), "black"))
    if data.size <= 300:
        for (i, j), v in np.ndenumerate(data):
            if math.isfinite(v):
                ax.text(
                    j,
                    i,
                    f"{v:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if abs(v) > 0.6 * top else "black",
                )
    ax.set_xlabel("class")
    fig.colorbar(im, ax=ax, label="accuracy drop", shrink=0.9)
    ax.set_title("per-class accuracy drop when the module is lesioned", fontsize=10)
    return fig


def share_heatmaps(clusters: Sequence[str], masks: Sequence[str], shares: Mapping[str, Any]) -> Figure:
    """One clusters x masks heat map per entry of ``shares`` (title -> rows of shares in [0, 1], ``None``
    grey): where each task's mask falls among the clusters (:mod:`modscope.bridge`)."""
    from matplotlib import colormaps

    cmap = colormaps["viridis"].with_extremes(bad="#d5d8dc")
    width = float(np.clip(0.5 * len(masks) + 1.6, 2.6, 8.0))
    fig = new_figure(width * len(shares) + 0.8, float(np.clip(0.3 * len(clusters) + 1.4, 2.4, 14.0)))
    axes = fig.subplots(1, len(shares), squeeze=False)[0]
    for ax, (title, rows) in zip(axes, shares.items()):
        data = np.array([[_float(v) for v in r] for r in rows], dtype=float)
        data = data.reshape(len(clusters), len(masks))
        im = ax.imshow(np.ma.masked_invalid(data), cmap=cmap, vmin=0, vmax=1, aspect="auto",
                       interpolation="nearest")  # fmt: skip
        ax.set_xticks(range(len(masks)), [str(m) for m in masks], fontsize=8)
        ax.set_yticks(range(len(clusters)), [str(c) for c in clusters], fontsize=8)
        if data.size <= 120:
            for (i, j), v in np.ndenumerate(data):
                if math.isfinite(v):
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                            color="black" if v > 0.6 else "white")  # fmt: skip
        ax.set_xlabel("mask")
        ax.set_ylabel("cluster")
        ax.set_title(str(title), fontsize=10)
    fig.colorbar(im, ax=list(axes), label="share", shrink=0.9)
    return fig


def _float(v: Any) -> float:
    return float("nan") if v is None else float(v)


def _ratio(count: Any, size: Any) -> float:
    return float("nan") if count is None or not size else float(count) / float(size)
