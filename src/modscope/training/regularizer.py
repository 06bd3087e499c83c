"""Weight penalties for training: L1/L2 on weights and a differentiable clusterability penalty.

The clusterability regularizer follows Filan et al., "Clusterability in Neural Networks"
(arXiv:2103.03386), §4: the n-cut of the best partition of a graph into ``k`` parts is bounded below
(in its spectral relaxation) by the sum of the ``k`` smallest eigenvalues of the graph's normalized
Laplacian, the first of which is always 0. Penalizing ``lambda_2 + ... + lambda_{e+1}`` therefore pushes the
weight graph towards ``e + 1`` weakly connected clusters.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from modscope.graph.blocks import WeightLayer, layer_block
from modscope.graph.layer import check_channel_norm, reduce_kernel
from modscope.graph.trace import trace_chain

__all__ = ["clusterability_penalty", "path_flow", "weight_blocks", "weight_penalty"]


def weight_penalty(model: nn.Module, l1: float = 0.0, l2: float = 0.0) -> Tensor:
    """``l1 * sum |W| + l2 * sum W**2`` over the weight matrices and kernels (biases and norms excluded).

    The weights are every parameter with "weight" in its name and at least 2 dimensions (Linear, Conv,
    recurrent ``weight_ih``/``weight_hh``, attention projections, embeddings); biases and norm parameters
    (1-D) are excluded.

    The same convention as Keras' ``kernel_regularizer=l1(l1)`` / ``l2(l2)``, which Filan et al. used
    (5e-5). Returns a scalar tensor (0 when both are 0), differentiable; with pruning masks attached, the
    masked weights are penalized.
    """
    weights = _penalized_weights(model)
    total = weights[0].new_zeros(())
    for w in weights:
        if l1:
            total = total + l1 * w.abs().sum()
        if l2:
            total = total + l2 * w.square().sum()
    return total


def path_flow(blocks: Sequence[Tensor]) -> list[Tensor]:
    """Rescaling-invariant edge weights: the share of all input-to-output path weight through each edge.

    For non-negative blocks ``B_l`` (shape ``(n_{l+1}, n_l)``), let ``p_in`` be the total weight of the paths
    (products of edge weights) from all inputs to a unit and ``p_out`` that from the unit to all outputs.
    Edge ``(i -> j)`` of block ``l`` carries ``B_l[j, i] * p_in[i] * p_out[j]``: the weight of every
    input-output path through it. Rescaling a hidden unit (incoming edges times ``c``, outgoing divided by
    ``c``, which leaves a ReLU network's function unchanged) multiplies its ``p_in`` by ``c`` and its
    ``p_out`` by ``1/c``, so every edge weight is unchanged. Every block carries the same total (the total
    path weight of the network); each block is returned divided by it (sum 1), which also removes any
    global or per-layer scale. ``p_in`` and ``p_out`` are renormalized layer by layer, so long chains
    neither overflow nor underflow. Differentiable.
    """
    p_in = [blocks[0].new_ones(blocks[0].shape[1]) / blocks[0].shape[1]]
    for b in blocks:
        p = b @ p_in[-1]
        p_in.append(p / p.sum().clamp_min(torch.finfo(p.dtype).tiny))
    p_out = [blocks[-1].new_ones(blocks[-1].shape[0]) / blocks[-1].shape[0]]
    for b in reversed(blocks):
        p = b.T @ p_out[0]
        p_out.insert(0, p / p.sum().clamp_min(torch.finfo(p.dtype).tiny))
    out = []
    for k, b in enumerate(blocks):
        e = b * p_out[k + 1][:, None] * p_in[k][None, :]
        total = e.sum()
        if not bool(total > 0):
            raise ValueError(
                "the network has no input-to-output path of non-zero weights; the penalty is undefined"
            )
        out.append(e / total)
    return out


def clusterability_penalty(
    weights: nn.Module | Sequence[Tensor],
    n_eigs: int = 11,
    *,
    invariant: bool = True,
    include_inputs: bool = True,
    include_outputs: bool = True,
    channel_norm: str = "l1",
    max_nodes: int = 4096,
) -> Tensor:
    """Sum of the 2nd to ``(n_eigs + 1)``-th smallest eigenvalues of the weight graph's normalized Laplacian.

    The graph is the layered weight graph of :meth:`WeightGraph.from_module
    <modscope.graph.WeightGraph.from_module>`, with the same blocks (:mod:`modscope.graph.blocks`: units as
    nodes, input features and outputs included by default; edges ``|W[j, i]|``, a conv kernel slice reduced
    by ``channel_norm``, grouped convolutions block-diagonal, the channels of a flattened feature map merged,
    BatchNorm folded in with its running statistics) kept as differentiable tensors, and made
    scale-invariant (below). With affinity ``A`` and
    degrees ``d``, ``L = I - D^-1/2 A D^-1/2``; zero-degree nodes (dead units, pruned inputs) get a zero row
    in ``D^-1/2 A D^-1/2``, i.e. eigenvalue 1, so disconnecting units cannot lower the penalty. Lower is
    more clusterable (Filan et al., arXiv:2103.03386, §4). The default ``n_eigs = 11`` matches the default
    ``k = 12`` clusters.

    **Why not raw ``|W|``.** The normalized Laplacian does not change under global scaling of ``A``, but a
    ReLU network computes the same function after one hidden unit's incoming weights are multiplied by
    ``c > 0`` and its outgoing weights by ``1/c``, and with raw ``|W|`` that changes the graph: the
    optimizer could lower the penalty by rescaling units without changing what the network does. With
    ``invariant=True`` (default) the edges are :func:`path_flow` weights -- each edge's share of the total
    input-to-output path weight, exactly invariant to rescaling any hidden unit (so to any positive
    rescaling of hidden units) and to scaling any layer or the whole network. It keeps the block structure
    that matters: an edge on no strong path carries little flow. ``invariant=False`` uses raw ``|W|``
    (invariant to global scaling only).

    **Cost and limits.** The Laplacian is dense, ``n x n`` for ``n`` nodes, and ``torch.linalg.eigvalsh``
    costs ``O(n^3)`` per call (and its backward as much): about a millisecond at ``n = 100``, a second at
    ``n = 2000`` on a CPU core. It is meant for small networks; larger graphs (``> max_nodes``) raise
    ``ValueError``; ``include_inputs=False`` drops the input features (784 for MNIST). The gradient of an
    eigenvalue sum is ``sum_k v_k^T dL v_k``; it is well defined unless ``lambda_{e+1} == lambda_{e+2}``
    (then it is one of the subgradients).

    Args:
        weights: a model (traced like :meth:`WeightGraph.from_module`: its forward must be a feed-forward
            chain) or the weight tensors ``[W1, W2, ...]`` in ``(out, in)`` / ``(out, in, *kernel)`` layout.
        n_eigs: number of eigenvalues ``e`` after the trivial one (>= 1).
        invariant: use rescaling-invariant path-flow edges (default) or raw ``|W|``.
        include_inputs, include_outputs: keep the input-feature / output-unit nodes.
        channel_norm: ``"l1"`` (default) or ``"l2"`` norm of a conv kernel slice.
        max_nodes: refuse larger graphs.

    Returns:
        A differentiable scalar tensor in ``[0, 2 * n_eigs]``, in the weights' dtype.
    """
    if isinstance(n_eigs, bool) or not isinstance(n_eigs, int) or n_eigs < 1:
        raise ValueError(f"n_eigs must be a positive int, got {n_eigs!r}")
    blocks = weight_blocks(weights, channel_norm=channel_norm)
    if invariant:
        blocks = path_flow(blocks)
    if not include_inputs:
        blocks = blocks[1:]
    if not include_outputs:
        blocks = blocks[:-1]
    if not blocks:
        raise ValueError("dropping inputs and outputs leaves no edges (the network needs more layers)")
    sizes = [blocks[0].shape[1]] + [b.shape[0] for b in blocks]
    n = sum(sizes)
    if n > max_nodes:
        raise ValueError(
            f"the weight graph has {n} nodes, more than max_nodes={max_nodes}: the dense eigendecomposition "
            "would be too slow (use include_inputs=False, a smaller network, or raise max_nodes)"
        )
    if n_eigs + 1 > n:
        raise ValueError(f"n_eigs={n_eigs} needs at least {n_eigs + 1} nodes, the graph has {n}")
    a = blocks[0].new_zeros((n, n))
    off = 0
    for b, size in zip(blocks, sizes):
        a[off + size : off + size + b.shape[0], off : off + size] = b  # autograd tracks the slice copy
        off += size
    a = a + a.T
    d = a.sum(1)
    alive = d > 0
    inv_sqrt = torch.where(alive, torch.where(alive, d, torch.ones_like(d)).rsqrt(), torch.zeros_like(d))
    lap = torch.eye(n, dtype=a.dtype, device=a.device) - inv_sqrt[:, None] * a * inv_sqrt[None, :]
    eigs = torch.linalg.eigvalsh(lap)
    return eigs[1 : n_eigs + 1].sum()


# Tracing a model costs milliseconds, more than the penalty itself on a small network, and the penalty is
# evaluated at every step: keep each model's chain while its modules stay the same objects of the same types.
_CHAINS: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, list[WeightLayer]]] = weakref.WeakKeyDictionary()


def _chain(model: nn.Module) -> list[WeightLayer]:
    key = tuple((id(m), type(m)) for m in model.modules())
    cached = _CHAINS.get(model)
    if cached is None or cached[0] != key:
        cached = (key, trace_chain(model))
        _CHAINS[model] = cached
    return cached[1]


def weight_blocks(weights: nn.Module | Sequence[Tensor], *, channel_norm: str = "l1") -> list[Tensor]:
    """The differentiable ``(out, in)`` edge blocks that :func:`clusterability_penalty` builds its graph from.

    For a model, the blocks of :meth:`WeightGraph.from_module <modscope.graph.WeightGraph.from_module>`
    (the rule of :mod:`modscope.graph.blocks`, BatchNorm folded in) as torch tensors in the weights' dtype;
    for weight tensors, ``|W|`` and each conv kernel slice's ``channel_norm``, checked to chain.
    """
    if isinstance(weights, nn.Module):
        check_channel_norm(channel_norm)
        return [layer_block(layer, channel_norm=channel_norm) for layer in _chain(weights)]
    weights = list(weights)
    if not weights:
        raise ValueError("clusterability_penalty needs at least one weight tensor")
    check_channel_norm(channel_norm)
    blocks = []
    prev_out = None
    for i, w in enumerate(weights):
        if not isinstance(w, Tensor):
            raise TypeError(f"weights[{i}] must be a tensor, got {type(w).__name__}")
        if w.ndim < 2:
            raise ValueError(f"weights[{i}] must be (out, in) or a conv kernel, got shape {tuple(w.shape)}")
        block = reduce_kernel(w, channel_norm)
        if prev_out is not None and block.shape[1] != prev_out:
            raise ValueError(
                f"weights[{i}] has {block.shape[1]} inputs but weights[{i - 1}] has {prev_out} outputs"
            )
        prev_out = block.shape[0]
        blocks.append(block)
    return blocks


def _penalized_weights(model: nn.Module) -> list[Tensor]:
    # A layer pruned with torch.nn.utils.prune contributes its masked weight, not weight_orig.
    out = []
    for module in model.modules():
        for pname, p in module.named_parameters(recurse=False):
            if "weight" not in pname or p.ndim < 2:
                continue
            if pname.endswith("_orig") and hasattr(module, pname[: -len("_orig")] + "_mask"):
                p = getattr(module, pname[: -len("_orig")])
            out.append(p)
    return out
