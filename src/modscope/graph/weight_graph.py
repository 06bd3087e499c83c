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
import scipy.sparse as sp

if TYPE_CHECKING:  # torch is only needed to read a module
    import torch

from modscope.graph.layer import GraphError, Layer, check_channel_norm, reduce_kernel


class WeightGraph:
    """A layered weight graph.

    Parameters
    ----------
    layers : sequence of :class:`Layer`
        The node columns, input first.
    blocks : sequence of arrays
        ``blocks[l]`` has shape ``(layers[l+1].size, layers[l].size)`` (PyTorch's ``(out, in)``
        convention) and holds the non-negative, finite edge weights between layer ``l`` and ``l + 1``.

    Nodes are numbered layer by layer: node ``offsets[l] + i`` is unit ``i`` of layer ``l``.
    Build one with :meth:`from_module` or :meth:`from_weights`.
    """

    def __init__(self, layers: Sequence[Layer], blocks: Sequence[np.ndarray]):
        layers = tuple(layers)
        if len(layers) < 2:
            raise GraphError(f"a weight graph needs at least two layers, got {len(layers)}")
        if len(blocks) != len(layers) - 1:
            raise GraphError(f"{len(layers)} layers need {len(layers) - 1} blocks, got {len(blocks)}")
        checked = []
        for i, block in enumerate(blocks):
            b = np.array(block, dtype=np.float64, copy=True)
            want = (layers[i + 1].size, layers[i].size)
            if b.shape != want:
                raise GraphError(
                    f"block {i} ({layers[i].name} -> {layers[i + 1].name}) has shape {b.shape}, "
                    f"expected {want}"
                )
            if not np.all(np.isfinite(b)):
                raise GraphError(f"block {i} ({layers[i + 1].name}) has non-finite weights (NaN or inf)")
            if np.any(b < 0):
                raise GraphError(f"block {i} ({layers[i + 1].name}) has negative edge weights")
            b.setflags(write=False)
            checked.append(b)
        self.layers: tuple[Layer, ...] = layers
        self.blocks: tuple[np.ndarray, ...] = tuple(checked)

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
        channel_norm: str = "l1",
        include_inputs: bool = True,
        include_outputs: bool = True,
    ) -> WeightGraph:
        """The weight graph of a feed-forward PyTorch model.

        The chain of layers is found by tracing ``model.forward`` with ``torch.fx``, so a model written as
        a plain ``forward`` works as well as an ``nn.Sequential``. Supported: ``Linear``, ``Conv1d/2d/3d``
        (one node per channel, edge = ``channel_norm`` of the kernel slice), ``BatchNorm1d/2d/3d``
        (folded: right after a weight layer it scales row ``j`` by ``|gamma_j| / sqrt(var_j + eps)``,
        after a nonlinearity it scales the next layer's column ``j``), activations, dropout, pooling,
        ``Flatten``/``view``/``reshape`` (a linear layer after a flatten is mapped back onto channels by
        combining the edges of all spatial positions with ``channel_norm``). Biases are ignored. The rule
        is :mod:`modscope.graph.blocks`, the one the clusterability penalty of :mod:`modscope.training`
        uses; the chain is :func:`modscope.graph.trace.trace_chain`.

        Parameters
        ----------
        model : nn.Module
            Anything ``torch.fx.symbolic_trace`` can trace, with one tensor input and one tensor output.
        input_shape : sequence of int, optional
            Shape of one example, without the batch dimension, e.g. ``(1, 28, 28)``. When given, the model
            is run once on zeros to check that every flatten really flattens; without it, a
            ``view``/``reshape`` is taken to be a flatten to ``(batch, -1)``.
        channel_norm : {"l1", "l2"}
            Norm of a conv kernel slice (``"l1"``: sum of ``|K|``, the default; ``"l2"``: Frobenius).
        include_inputs, include_outputs : bool
            Keep the input-feature nodes and the output-unit nodes (default: both, as in the papers).

        Raises
        ------
        GraphError
            For a module or operation that is not a feed-forward chain (residual ``add``, LSTM,
            attention, ...) -- naming its path and type -- and for non-finite weights.
        """
        from modscope.graph.trace import trace_layers

        check_channel_norm(channel_norm)
        layers, blocks = trace_layers(model, input_shape, channel_norm)
        graph = cls(layers, blocks)
        return graph.trimmed(include_inputs=include_inputs, include_outputs=include_outputs)

    def trimmed(self, *, include_inputs: bool = True, include_outputs: bool = True) -> WeightGraph:
        """The same graph without the input and/or output layer."""
        lo = 0 if include_inputs else 1
        hi = len(self.layers) if include_outputs else len(self.layers) - 1
        if hi - lo < 2:
            raise GraphError(
                f"dropping inputs/outputs leaves {max(hi - lo, 0)} layer(s); a weight graph needs two"
            )
        return WeightGraph(self.layers[lo:hi], self.blocks[lo : hi - 1])

    def with_blocks(self, blocks: Sequence[np.ndarray]) -> WeightGraph:
        """The same layers with other edge weights (a shuffled null model, say)."""
        return WeightGraph(self.layers, blocks)

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
        """Weighted degree of every node, shape ``(n_nodes,)``."""
        deg = np.zeros(self.n_nodes)
        off = self.offsets
        for i, b in enumerate(self.blocks):
            deg[off[i] : off[i + 1]] += b.sum(axis=0)
            deg[off[i + 1] : off[i + 2]] += b.sum(axis=1)
        return deg

    def adjacency(self) -> sp.csr_array:
        """The symmetric ``(n_nodes, n_nodes)`` adjacency matrix, sparse (zeros not stored)."""
        off = self.offsets
        rows, cols, vals = [], [], []
        for i, b in enumerate(self.blocks):
            r, c = np.nonzero(b)
            rows.append(r + off[i + 1])
            cols.append(c + off[i])
            vals.append(b[r, c])
        # 32-bit indices where they fit: scikit-learn's graph code refuses 64-bit ones.
        idx = np.int32 if self.n_nodes < 2**31 else np.int64
        r = np.concatenate(rows).astype(idx)
        c = np.concatenate(cols).astype(idx)
        v = np.concatenate(vals)
        n = self.n_nodes
        a = sp.csr_array((np.concatenate([v, v]), (np.concatenate([r, c]), np.concatenate([c, r]))), (n, n))
        a.indices, a.indptr = a.indices.astype(idx), a.indptr.astype(idx)
        return a

    def __repr__(self) -> str:
        sizes = "-".join(str(s) for s in self.layer_sizes)
        return f"WeightGraph(layers={sizes}, nodes={self.n_nodes}, edges={self.n_edges})"


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
