"""One forward pass of a frozen model under many mask samples, each example group seeing its own sample.

Per-example alignment (SPEC §2.1): the batch of task ``t`` is split into ``S`` contiguous groups and group
``s`` runs with sample ``(t, s)`` in *every* layer. The fast path stacks all ``T * S`` groups and calls the
model once under ``torch.func.vmap``, so each masked layer becomes one batched matmul; where vmap cannot go
(``nn.LSTM`` and ``nn.GRU`` have no batching rule) or the groups are unequal, a loop of ``functional_call``
gives the same numbers. Inputs and outputs are batch-first.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.utils._pytree as pytree
from torch import Tensor, nn
from torch.func import functional_call, vmap

__all__ = ["Method", "grouped_forward", "vmap_supported"]

Method = Literal["vmap", "loop"]


def vmap_supported(model: nn.Module) -> bool:
    """False for models with modules known to lack vmap batching rules (recurrent layers)."""
    return not any(isinstance(m, nn.RNNBase) for m in model.modules())


def _cat_outputs(outputs: list[Any]) -> Any:
    leaves, spec = zip(*(pytree.tree_flatten(o) for o in outputs), strict=True)
    return pytree.tree_unflatten([torch.cat(parts) for parts in zip(*leaves, strict=True)], spec[0])


def _groups_equal(inputs: Sequence[tuple[Tensor, ...]], samples: int) -> bool:
    first = [tuple(x.shape) for x in inputs[0]]
    if any([tuple(x.shape) for x in args] != first for args in inputs):
        return False
    return all(len(s) > 0 and s[0] % samples == 0 for s in first)


def grouped_forward(
    model: nn.Module,
    weights: dict[str, Tensor],
    inputs: Sequence[tuple[Tensor, ...]],
    samples: int,
    method: Method = "vmap",
) -> list[Any]:
    """Outputs of ``model`` for each task, each group of examples under its own masked weights.

    Args:
        model: any module, called as ``model(*inputs[t])`` with parameters substituted functionally.
        weights: ``name -> (T, S, *param.shape)`` substituted parameters (the sampled masked weights).
        inputs: per task, the positional inputs, each batch-first with the same batch size ``B_t``.
        samples: ``S``; group ``s`` of task ``t`` is ``torch.tensor_split(x, S)[s]`` (contiguous examples).
        method: ``"vmap"`` (falls back to the loop when the groups are unequal) or ``"loop"``.

    Returns:
        Per task, the model's output (any pytree of batch-first tensors) for the ``B_t`` examples in order.
    """
    n_tasks = len(inputs)
    if method == "vmap" and _groups_equal(inputs, samples):
        flat_w = {n: w.reshape(n_tasks * samples, *w.shape[2:]) for n, w in weights.items()}
        flat_x = tuple(
            torch.stack([args[i] for args in inputs]).reshape(n_tasks * samples, -1, *inputs[0][i].shape[1:])
            for i in range(len(inputs[0]))
        )

        def call(w: dict[str, Tensor], *xs: Tensor) -> Any:
            return functional_call(model, w, xs)

        with warnings.catch_warnings():
            # vmap's per-example fallback for ops without a batching rule (e.g. CPU flash attention) is
            # correct, only slower; the warning would repeat every step.
            warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet")
            out = vmap(call)(flat_w, *flat_x)
        out = pytree.tree_map(lambda y: y.reshape(n_tasks, -1, *y.shape[2:]), out)
        return [pytree.tree_map(lambda y, t=t: y[t], out) for t in range(n_tasks)]
    if method not in ("vmap", "loop"):
        raise ValueError(f"method must be 'vmap' or 'loop', got {method!r}")
    results = []
    for t, args in enumerate(inputs):
        groups = list(zip(*(torch.tensor_split(x, samples) for x in args), strict=True))
        outs = [
            functional_call(model, {n: w[t, s] for n, w in weights.items()}, group)
            for s, group in enumerate(groups)
            if group[0].shape[0] > 0
        ]
        results.append(_cat_outputs(outs))
    return results
