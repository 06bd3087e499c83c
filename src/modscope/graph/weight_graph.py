"""The weight graph of a feed-forward network: units as nodes, weight magnitudes as edges.

Filan et al., "Clusterability in Neural Networks" (arXiv:2103.03386), §2: every unit of every layer is a
node (input features and outputs included), and unit ``i`` of one layer is joined to unit ``j`` of the next
by ``|W[j, i]|``. A convolution contributes one node per channel, joined by a norm of the kernel slice
``K[j, i, ...]``. The graph is layered, so it is stored as one dense block per pair of adjacent layers;
the symmetric sparse adjacency is built from the blocks on demand.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # torch is only needed to read a module
    import torch

from modscope.graph.edges import Edge, adjacency_of, check_edges
from modscope.graph.layer import GraphError, Layer, check_channel_norm, reduce_kernel


class WeightGraph:
    """A weight graph: groups of units ("layers") joined by dense weight blocks.

    Parameters
    ----------
    layers : sequence of :class:`Layer`
        The groups of nodes, input first.
    blocks : sequence of arrays, optional
        The layered chain: ``blocks[l]`` has shape ``(layers[l+1].size, layers[l].size)`` (PyTorch's
        ``(out, in)`` convention) and holds the non-negative, finite edge weights between layer ``l`` and
        ``l + 1``. Give either ``blocks`` or ``edges``.
    edges : sequence of ``(src, dst, block)``, optional
        A general graph: blocks between any two groups (:class:`Edge`), several between the same pair
        (their weights add) or from a group to itself allowed. Edges ``[(0, 1, B0), (1, 2, B1), ...]``
        are the same graph as ``blocks=[B0, B1, ...]``.
    sources : sequence of str, optional
        The weight layer each block comes from (default: one per block). The blocks of one weight layer
        (a layer reading a concatenation is split by the groups it reads) are shuffled together.

    Nodes are numbered group by group: node ``offsets[l] + i`` is unit ``i`` of group ``l``. A graph whose
    edges are exactly the chain ``l -> l + 1`` is *layered* (:attr:`is_layered`): the clustering then uses
    its block-tridiagonal structure, otherwise its blocks as they are (both dense products, never the
    sparse :meth:`adjacency`, which is there for other tools); lesions find where a general
    graph's groups are read by tracing the model again (:mod:`modscope.graph.sites`). Build one with
    :meth:`from_module` or :meth:`from_weights`.
    """

    def __init__(
        self,
        layers: Sequence[Layer],
        blocks: Sequence[np.ndarray] | None = None,
        *,
        edges: Sequence[tuple[int, int, Any]] | None = None,
        sources: Sequence[str] | None = None,
    ):
        layers = tuple(layers)
        if len(layers) < 2:
            raise GraphError(f"a weight graph needs at least two layers, got {len(layers)}")
        if (blocks is None) == (edges is None):
            raise GraphError("give either blocks (a layered chain) or edges (a general graph), not both")
        if blocks is not None:
            if len(blocks) != len(layers) - 1:
                raise GraphError(f"{len(layers)} layers need {len(layers) - 1} blocks, got {len(blocks)}")
            edges = [(i, i + 1, b) for i, b in enumerate(blocks)]
        checked = check_edges(layers, edges)
        if not checked:
            raise GraphError("a weight graph needs at least one block of edges")
        if sources is None:
            sources = [f"{layers[e.dst].name}#{i}" for i, e in enumerate(checked)]
        if len(sources) != len(checked):
            raise GraphError(f"got {len(sources)} sources for {len(checked)} blocks")
        self.layers: tuple[Layer, ...] = layers
        self.edges: tuple[Edge, ...] = tuple(checked)
        self.sources: tuple[str, ...] = tuple(str(s) for s in sources)
        self.blocks: tuple[np.ndarray, ...] = tuple(e.block for e in checked)
        self.is_layered: bool = len(checked) == len(layers) - 1 and all(
            e.src == i and e.dst == i + 1 for i, e in enumerate(checked)
        )

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_weights(
        cls,
        weights: Sequence[Any],
        *,
        names: Sequence[str] | None = None,
        channel_norm: str = "l1",
    ) -> WeightGraph:
        """A graph from raw weight matrices ``[W1, W2, ...]`` in PyTorch's ``(out, in)`` convention.

        ``W[l]`` has shape ``(n_{l+1}, n_l)``; a conv kernel ``(out, in, *spatial)`` is reduced to its
        channel block with ``channel_norm``. Tensors and arrays are accepted; signs are dropped.
        """
        check_channel_norm(channel_norm)
        if len(weights) == 0:
            raise GraphError("from_weights needs at least one weight matrix")
        mats = [reduce_kernel(_as_numpy(w, f"weights[{i}]"), channel_norm) for i, w in enumerate(weights)]
        for i, m in enumerate(mats):
            if m.ndim != 2:
                raise GraphError(f"weights[{i}] must be 2-D (out, in) or a conv kernel, got {m.ndim}-D")
            if i and m.shape[1] != mats[i - 1].shape[0]:
                raise GraphError(
                    f"weights[{i}] has {m.shape[1]} inputs but weights[{i - 1}] has "
                    f"{mats[i - 1].shape[0]} outputs"
                )
        if names is None:
            names = [f"layer{i + 1}" for i in range(len(mats))]
        if len(names) != len(mats):
            raise GraphError(f"got {len(names)} names for {len(mats)} weight matrices")
        layers = [Layer("input", mats[0].shape[1], "input")]
        layers += [Layer(str(n), m.shape[0], "weights") for n, m in zip(names, mats)]
        return cls(layers, mats)

    @classmethod
    def from_module(
        cls,
        model: torch.nn.Module,
        input_shape: Sequence[int] | None = None,
        *,
        example_inputs: tuple | dict | None = None,
        channel_norm: str = "l1",
        residual: str = "auto",
        include_inputs: bool = True,
        include_outputs: bool = True,
    ) -> WeightGraph:
        """The weight graph of a PyTorch model: a feed-forward chain, or a residual / concatenating network.

        The layers are found by tracing ``model.forward`` with ``torch.fx``, so a model written as
        a plain ``forward`` works as well as an ``nn.Sequential``. Supported: ``Linear``, ``Conv1d/2d/3d``
        (one node per channel, edge = ``channel_norm`` of the kernel slice), ``BatchNorm1d/2d/3d``
        (folded: right after a weight layer it scales row ``j`` by ``|gamma_j| / sqrt(var_j + eps)``,
        after a nonlinearity it scales the next layer's column ``j``), activations, dropout, pooling,
        ``Flatten``/``view``/``reshape`` (a linear layer after a flatten is mapped back onto channels by
        combining the edges of all spatial positions with ``channel_norm``). Biases are ignored. The rule
        is :mod:`modscope.graph.blocks`, the one the clusterability penalty of :mod:`modscope.training`
        uses; the chain is :func:`modscope.graph.trace.trace_chain`. Residual adds and channel
        concatenations give a general graph (rules in :mod:`modscope.graph.trace`); LayerNorm / GroupNorm /
        RMSNorm fold by their per-channel ``|gamma|``; ``ConvTranspose`` is read in its ``(in, out)`` layout.

        Parameters
        ----------
        model : nn.Module
            Anything ``torch.fx.symbolic_trace`` can trace, returning one tensor; each tensor input is a
            group of input units (``"input"``, or ``"input:NAME"`` for several). Also
            ``nn.TransformerEncoder(Layer)`` inside a model and a BERT-layout Hugging Face encoder
            (``BertModel``, ... with ``example_inputs={"input_ids": ...}``), through the views of
            :mod:`modscope.graph.views`; attention and embeddings follow :mod:`modscope.graph.attention`.
        input_shape : sequence of int, optional
            Shape of one example, without the batch dimension, e.g. ``(1, 28, 28)``. When given, the model
            is run once on zeros to check that every flatten really flattens; without it, a
            ``view``/``reshape`` is taken to be a flatten to ``(batch, -1)``.
        example_inputs : tuple or dict, optional
            Instead of ``input_shape``, real inputs for that run: a tuple of positional inputs or a dict of
            keyword inputs, batch dimension included (for several inputs or inputs of several shapes).
        channel_norm : {"l1", "l2"}
            Norm of a conv kernel slice (``"l1"``: sum of ``|K|``, the default; ``"l2"``: Frobenius).
        residual : {"auto", "filan", "merge"}
            How a residual add is represented (:mod:`modscope.graph.trace`). ``"filan"`` (what Filan et
            al.'s code did for ResNet-50): each layer reading a sum has its own copy of the units, joined
            by a copy of the block of every layer written into the sum (each copy shuffled on its own).
            ``"merge"``: the two operands' units are the same nodes, one group per residual stream, no
            weight copied (each unit appears once). ``"auto"`` (default): ``"merge"`` for a model with
            attention (one residual stream, as transformer circuits are read), ``"filan"`` otherwise. The
            same graph on a network without adds.
        include_inputs, include_outputs : bool
            Keep the input-feature nodes and the output-unit nodes (default: both, as in the papers).

        Raises
        ------
        GraphError
            For a module or operation that cannot be represented (a product of two activations, ...) --
            naming its path and type -- and for non-finite weights. LSTM / GRU / RNN layers are groups of
            hidden units with recurrent self-blocks (:mod:`modscope.graph.recurrent`).
        """
        from modscope.graph.trace import trace_layers

        check_channel_norm(channel_norm)
        if input_shape is not None and example_inputs is not None:
            raise GraphError("give input_shape or example_inputs, not both")
        layers, edges, sources = trace_layers(
            model, input_shape, channel_norm, example_inputs=example_inputs, residual=residual
        )
        if [(s, d) for s, d, _ in edges] == [(i, i + 1) for i in range(len(layers) - 1)]:
            graph = cls(layers, [b for _, _, b in edges])
        else:
            graph = cls(layers, edges=edges, sources=sources)
        return graph.trimmed(include_inputs=include_inputs, include_outputs=include_outputs)

    def trimmed(self, *, include_inputs: bool = True, include_outputs: bool = True) -> WeightGraph:
        """The same graph without the input groups (kind ``"input"``) and/or the output group (the last)."""
        drop = set()
        if not include_inputs:
            inputs = [i for i, layer in enumerate(self.layers) if layer.kind == "input"]
            drop |= {0} if self.is_layered else set(inputs)
        if not include_outputs:
            drop.add(len(self.layers) - 1)
        if len(self.layers) - len(drop) < 2:
            raise GraphError(
                f"dropping inputs/outputs leaves {max(len(self.layers) - len(drop), 0)} layer(s); "
                "a weight graph needs two"
            )
        if self.is_layered:
            lo, hi = (1 if 0 in drop else 0), len(self.layers) - (1 if len(self.layers) - 1 in drop else 0)
            return WeightGraph(self.layers[lo:hi], self.blocks[lo : hi - 1])
        keep = [i for i in range(len(self.layers)) if i not in drop]
        new = {old: j for j, old in enumerate(keep)}
        kept = [i for i, e in enumerate(self.edges) if e.src in new and e.dst in new]
        edges = [(new[self.edges[i].src], new[self.edges[i].dst], self.edges[i].block) for i in kept]
        return WeightGraph(
            [self.layers[i] for i in keep], edges=edges, sources=[self.sources[i] for i in kept]
        )

    def with_blocks(self, blocks: Sequence[np.ndarray]) -> WeightGraph:
        """The same groups and edges with other edge weights (a shuffled null model, say), in edge order."""
        if self.is_layered:
            return WeightGraph(self.layers, blocks)
        if len(blocks) != len(self.edges):
            raise GraphError(f"the graph has {len(self.edges)} blocks, got {len(blocks)}")
        edges = [(e.src, e.dst, b) for e, b in zip(self.edges, blocks)]
        return WeightGraph(self.layers, edges=edges, sources=self.sources)

    def require_layered(self, what: str) -> None:
        """Raise :class:`GraphError` unless the graph is a layered chain (``what`` needs one)."""
        if not self.is_layered:
            pairs = ", ".join(
                f"{self.layers[e.src].name} -> {self.layers[e.dst].name}"
                for i, e in enumerate(self.edges)
                if not (e.src + 1 == e.dst and i == e.src)
            )
            raise GraphError(
                f"this graph is not a layered chain (blocks {pairs[:200]} join groups out of chain "
                f"order): {what} are not yet available for residual or concatenating networks"
            )

    # ------------------------------------------------------------------ views
    @property
    def n_nodes(self) -> int:
        return int(sum(layer.size for layer in self.layers))

    @property
    def n_edges(self) -> int:
        """Number of non-zero edges."""
        return int(sum(np.count_nonzero(b) for b in self.blocks))

    @property
    def layer_sizes(self) -> tuple[int, ...]:
        return tuple(layer.size for layer in self.layers)

    @property
    def offsets(self) -> np.ndarray:
        """``offsets[l]`` is the index of the first node of layer ``l``; the last entry is ``n_nodes``."""
        return np.concatenate([[0], np.cumsum(self.layer_sizes)]).astype(np.int64)

    @property
    def node_layer(self) -> np.ndarray:
        """Layer index of every node, shape ``(n_nodes,)``."""
        return np.repeat(np.arange(len(self.layers)), self.layer_sizes)

    def degrees(self) -> np.ndarray:
        """Weighted degree of every node, shape ``(n_nodes,)`` (a self-loop ``i -> i`` counts once)."""
        if not self.is_layered:
            return np.asarray(self.adjacency().sum(axis=1)).ravel()
        deg = np.zeros(self.n_nodes)
        off = self.offsets
        for i, b in enumerate(self.blocks):
            deg[off[i] : off[i + 1]] += b.sum(axis=0)
            deg[off[i + 1] : off[i + 2]] += b.sum(axis=1)
        return deg

    def adjacency(self) -> Any:
        """The symmetric ``(n_nodes, n_nodes)`` adjacency matrix, sparse (zeros not stored).

        ``A[u, v]`` is the sum of the blocks' weights joining ``u`` and ``v`` in either direction; the
        weight of a self-loop ``W[i, i]`` (a self-block's diagonal) is stored once, on the diagonal
        (a ``scipy.sparse.csr_array``).
        """
        return adjacency_of(self.edges, self.offsets)

    def __repr__(self) -> str:
        sizes = "-".join(str(s) for s in self.layer_sizes)
        extra = "" if self.is_layered else f", blocks={len(self.edges)}"
        return f"WeightGraph(layers={sizes}, nodes={self.n_nodes}, edges={self.n_edges}{extra})"


def _as_numpy(w: Any, what: str) -> np.ndarray:
    if hasattr(w, "detach"):
        w = w.detach().cpu().double().numpy()
    try:
        a = np.asarray(w, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise GraphError(f"{what} is not a numeric array: {type(w).__name__}") from exc
    if not np.all(np.isfinite(a)):
        raise GraphError(f"{what} has non-finite weights (NaN or inf)")
    return a
