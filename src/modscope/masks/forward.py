"""One forward pass of a frozen model under many mask samples, each example group seeing its own sample.

Per-example alignment (SPEC §2.1): the batch of task ``t`` is split into ``S`` contiguous groups and group
``s`` runs with sample ``(t, s)`` in *every* layer. The fast path stacks all ``T * S`` groups and calls the
model once under ``torch.func.vmap``, so each masked layer becomes one batched matmul; where vmap cannot go
(``nn.LSTM`` and ``nn.GRU`` have no batching rule; Hugging Face models branch in Python on the values of a
2-d ``attention_mask``) or the groups are unequal, a loop of ``functional_call`` gives the same numbers.
Inputs (:class:`~modscope.masks.batches.ModelInputs`) and outputs are batch-first; an output may be any
pytree of tensors (a tuple, a dict, a Hugging Face ``ModelOutput``), put back together per task, and a 0-d
float output of each group (a loss the model computed) is averaged over the groups.

Hugging Face encoders (transformers 5) run under vmap when given no ``attention_mask`` or a prepared 4-d
additive one, ``(1 - mask[:, None, None, :]) * finfo.min`` of shape ``(B, 1, 1, L)``, which they use as is
(eager and sdpa attention alike); a 2-d mask makes them test ``mask.all()`` in Python, which vmap refuses.
On CPU the loop is as fast there (benchmarks/bench_masks.py minilm, MiniLM-L6, batch 32 x 32 tokens, one
thread: a step of the loop 0.89x, of vmap 0.91x a plain fine-tuning step): the matmuls dominate either way.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.utils._pytree as pytree
from torch import Tensor, nn
from torch.func import functional_call, vmap

from modscope.masks.batches import ModelInputs

__all__ = ["Method", "grouped_forward", "vmap_supported"]

Method = Literal["vmap", "loop"]


def vmap_supported(model: nn.Module) -> bool:
    """False for models with modules known to lack vmap batching rules (recurrent layers)."""
    return not any(isinstance(m, nn.RNNBase) for m in model.modules())


def _check_leaf(leaf: Any, path: Any) -> Tensor:
    if not isinstance(leaf, Tensor) or (leaf.ndim == 0 and not leaf.is_floating_point()):
        what = f"a 0-d {leaf.dtype} tensor" if isinstance(leaf, Tensor) else type(leaf).__name__
        raise ValueError(
            f"model output {pytree.keystr(path) or '(the output)'} is {what}, neither a batch-first tensor "
            "nor a scalar to average: the outputs of the example groups cannot be put together (return a "
            "tensor, tuple, dict or registered pytree of them)"
        )
    return leaf


def _join(column: Sequence[tuple[Any, Any]], sizes: Sequence[int]) -> Tensor:
    """The groups' values of one output: batch-first tensors concatenated, a 0-d float (a loss the model
    computed, e.g. a Hugging Face model given ``labels``) averaged with weights the groups' sizes, which is
    the whole batch's mean for a loss that averages over examples."""
    values = [_check_leaf(v, p) for p, v in column]
    if values[0].ndim == 0:
        return sum(v * (n / sum(sizes)) for v, n in zip(values, sizes, strict=True))
    return torch.cat(values)


def _cat_outputs(outputs: list[Any], sizes: list[int]) -> Any:
    flat = [pytree.tree_flatten_with_path(o) for o in outputs]
    spec = flat[0][1]
    if any(s != spec for _, s in flat):
        raise ValueError("the model's output structure differs between example groups; cannot concatenate")
    parts = zip(*(leaves for leaves, _ in flat), strict=True)
    return pytree.tree_unflatten([_join(col, sizes) for col in parts], spec)


def _unbind_groups(w: Tensor) -> tuple[Tensor, ...]:
    """The ``T * S`` weights of ``(T, S, *shape)`` ``w`` as views, for one call each.

    Unbound, not indexed as ``w[t, s]``: the backward of one unbind stacks the gradients once, where each
    index would write its gradient into a zero-filled ``(T, S, *shape)`` buffer. A 2-d weight stored
    transposed (the layout of :func:`~modscope.masks.sampling.to_flat`) is unbound in that layout, so that
    its gradients (``linear`` produces them transposed) are stacked without transposing copies (on MiniLM
    the two changes took a step from 1.24x to 0.89x a plain fine-tuning step).
    """
    flat = w.flatten(0, 1)
    if flat.ndim == 3 and flat.shape[1] > 1 and flat.stride(1) == 1 and flat.stride(2) == flat.shape[1]:
        return tuple(p.t() for p in flat.transpose(1, 2).unbind(0))
    return flat.unbind(0)


def _groups_equal(inputs: Sequence[ModelInputs], samples: int) -> bool:
    structure = inputs[0].structure()
    if any(x.structure() != structure for x in inputs[1:]):
        return False
    tensors, _ = inputs[0].flatten()
    return bool(tensors) and all(t.ndim > 0 and t.shape[0] % samples == 0 for t in tensors)


def grouped_forward(
    model: nn.Module,
    weights: dict[str, Tensor],
    inputs: Sequence[Any],
    samples: int,
    method: Method = "vmap",
) -> list[Any]:
    """Outputs of ``model`` for each task, each group of examples under its own masked weights.

    Args:
        model: any module, called as ``inputs[t](model)`` (``model(*args, **kwargs)``) with parameters
            substituted functionally.
        weights: ``name -> (T, S, *param.shape)`` substituted parameters (the sampled masked weights).
        inputs: per task, the model's inputs (a :class:`~modscope.masks.batches.ModelInputs`, or a tensor,
            tuple or mapping as it takes them), every tensor batch-first with the same batch size ``B_t``.
        samples: ``S``; group ``s`` of task ``t`` is ``torch.tensor_split(x, S)[s]`` (contiguous examples)
            of every input tensor ``x``.
        method: ``"vmap"`` (falls back to the loop when the tasks' inputs differ in shape or the groups are
            unequal) or ``"loop"``.

    Returns:
        Per task, the model's output (any pytree of batch-first tensors) for the ``B_t`` examples in order;
        a 0-d float output of each group (a loss) is their mean weighted by the groups' sizes.

    Raises:
        ValueError: an output leaf that is neither a tensor nor a 0-d float.
    """
    if method not in ("vmap", "loop"):
        raise ValueError(f"method must be 'vmap' or 'loop', got {method!r}")
    inputs = [ModelInputs.of(x) for x in inputs]
    n_tasks = len(inputs)
    if method == "vmap" and _groups_equal(inputs, samples):
        flat_w = {n: w.reshape(n_tasks * samples, *w.shape[2:]) for n, w in weights.items()}
        per_task = [x.flatten()[0] for x in inputs]
        _, rebuild = inputs[0].flatten()
        flat_x = [
            torch.stack(column).reshape(n_tasks * samples, -1, *column[0].shape[1:])
            for column in zip(*per_task, strict=True)
        ]

        def call(w: dict[str, Tensor], *xs: Tensor) -> Any:
            x = rebuild(list(xs))
            return functional_call(model, w, x.args, x.kwargs)

        with warnings.catch_warnings():
            # vmap's per-example fallback for ops without a batching rule (e.g. CPU flash attention) is
            # correct, only slower; the warning would repeat every step.
            warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet")
            out = vmap(call)(flat_w, *flat_x)
        leaves, spec = pytree.tree_flatten_with_path(out)
        regrouped = []
        for path, y in leaves:
            _check_leaf(y[0], path)
            y = y.reshape(n_tasks, samples, *y.shape[1:])
            # per group, a 0-d output (a loss) comes back as (T * S,); the groups are equal: a plain mean
            regrouped.append(y.mean(1) if y.ndim == 2 else y.flatten(1, 2))
        out = pytree.tree_unflatten(regrouped, spec)
        return [pytree.tree_map(lambda y, t=t: y[t], out) for t in range(n_tasks)]
    groups = {n: _unbind_groups(w) for n, w in weights.items()}
    results = []
    for t, x in enumerate(inputs):
        parts = [(s, p) for s, p in enumerate(x.split(samples)) if p.batch_size > 0]
        outs = [functional_call(model, {n: g[t * samples + s] for n, g in groups.items()}, p.args, p.kwargs)
                for s, p in parts]  # fmt: skip
        results.append(_cat_outputs(outs, [p.batch_size for _, p in parts]))
    return results
