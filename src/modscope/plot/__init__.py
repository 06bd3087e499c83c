"""Figures from results (never recomputing them). Matplotlib's Agg canvas only: no display needed."""

from modscope.plot.partition import cluster_colors, edge_list, node_positions, plot_partition

__all__ = ["cluster_colors", "edge_list", "node_positions", "plot_partition"]
