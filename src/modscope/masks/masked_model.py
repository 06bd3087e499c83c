"""Masks that fit the user's own training loop: a frozen model seen through trainable mask logits.

:class:`MaskedModel` is an ``nn.Module`` whose only parameters are the mask logits, so any optimizer,
scheduler or trainer can learn them (Csordás et al. 2021, arXiv:2010.02066, §2; SPEC §2.1). Its forward pass
is the one :func:`~modscope.masks.train_masks` trains with: the same gate, noise keys drawn from the task's
generator ``derive(seed, task)``, the grouping of :mod:`modscope.masks.grouping`, and the grouped forward of
:mod:`modscope.masks.forward` (``samples`` contiguous example groups, each with its own mask sample in every
layer).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
import torch.utils._pytree as pytree
from torch import Tensor, nn
from torch.func import functional_call

from modscope.checks import check_finite, check_positive_int, check_real
from modscope.masks.forward import grouped_forward, vmap_supported
from modscope.masks.frozen import frozen
from modscope.masks.gates import Gate, GumbelSigmoid
from modscope.masks.grouped import GroupedGate, GroupedPenalty
from modscope.masks.grouping import groupings, masked_names
from modscope.masks.layout import from_flat, to_flat
from modscope.masks.maskset import MaskSet, model_fingerprint
from modscope.masks.penalty import LogitPenalty, Penalty
from modscope.seeding import check_seed, derive

__all__ = ["MaskedModel"]

log = logging.getLogger(__name__)


class MaskedModel(nn.Module):
    """``model`` under one trainable mask per task; only the logits ``(T, G)`` are parameters.

    Train mode: ``forward(*args, task=..., **kwargs)`` splits the batch into ``samples`` contiguous groups
    and runs group ``s`` with its own mask sample (drawn by ``gate``, one draw per group of weights) in every
    layer; gradients reach the logits only (straight-through). Eval mode: the deterministic read-out
    ``logit > 0``, the whole batch at once. The model is never modified, nor registered as a submodule: it
    is run in eval mode with its gradients off (:func:`~modscope.masks.frozen.frozen`), ``.to()`` moves
    only the logits, ``state_dict()`` holds only them. Call it as the model is called: positional inputs
    go through the vmapped grouped forward, keyword inputs (a Hugging Face model's ``input_ids=...``) through
    a loop of ``functional_call``; batch-first tensors are split, other arguments passed as they are, and a
    0-d output (a Hugging Face ``loss``) is the group-size-weighted mean of the groups'.

    A plain loop works::

        mm = MaskedModel(model, granularity="unit", tasks=("a", "b"), beta=1e-3)
        opt = torch.optim.Adam(mm.parameters(), lr=1e-2)
        loss = task_loss(mm(x, task="a"), y) + mm.penalty("a"); loss.backward(); opt.step()

    Args:
        model: any ``nn.Module``, inputs and outputs batch-first.
        granularity, names, fallback: the grouping (:func:`~modscope.masks.grouping.groupings`; default one
            logit per weight of :func:`~modscope.masks.select_parameters`).
        tasks: a task name or a sequence of distinct names (default ``"task"``: one mask).
        samples: mask samples per forward (positive int, default 4).
        init: initial logit (finite, default 2.0: keeps about 88% per sample).
        beta / penalty: the sparsity penalty, ``LogitPenalty(beta)`` or any :class:`~.penalty.Penalty` (one
            of the two), of the logits expanded to the weights (:mod:`modscope.masks.grouped`).
        gate: the gate distribution (default :class:`~modscope.masks.gates.GumbelSigmoid`).
        seed: task ``t`` draws its noise keys from ``derive(seed, t)`` (non-negative int).
        method: ``"auto"`` (vmap unless recurrent layers or vmap fails), ``"vmap"`` or ``"loop"``.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        granularity: str | Mapping[str, Tensor] = "weight",
        names: Sequence[str] | None = None,
        fallback: str | None = None,
        tasks: str | Sequence[str] = "task",
        samples: int = 4,
        init: float = 2.0,
        beta: float | None = None,
        penalty: Penalty | None = None,
        gate: Gate | None = None,
        seed: int = 0,
        method: Literal["auto", "vmap", "loop"] = "auto",
    ):
        super().__init__()
        tasks = (tasks,) if isinstance(tasks, str) else tuple(tasks)
        if not tasks or not all(isinstance(t, str) for t in tasks) or len(set(tasks)) != len(tasks):
            raise ValueError(f"tasks must be a name or a sequence of distinct names, got {tasks!r}")
        check_positive_int(samples, "samples")
        check_finite(init, "init")
        check_seed(seed)
        if method not in ("auto", "vmap", "loop"):
            raise ValueError(f"method must be 'auto', 'vmap' or 'loop', got {method!r}")
        if (beta is None) == (penalty is None):
            raise ValueError(f"give exactly one of beta and penalty, got beta={beta!r}, penalty={penalty!r}")
        if penalty is None:
            penalty = LogitPenalty(check_real(beta, "beta"))
        elif not isinstance(penalty, Penalty):
            raise TypeError(f"penalty must be a modscope.masks.Penalty, got {penalty!r}")
        if gate is not None and not isinstance(gate, Gate):
            raise TypeError(f"gate must be a modscope.masks.Gate, got {gate!r}")
        gate = GumbelSigmoid() if gate is None else gate
        object.__setattr__(self, "model", model)  # not a submodule: its parameters are not ours
        # per weight, no group ids are built (int64 per weight): the logits are the weights' own
        self.grouping = None if granularity == "weight" else groupings(model, granularity, names=names,
                                                                      fallback=fallback)  # fmt: skip
        params = dict(model.named_parameters())
        self.names = masked_names(model, names) if self.grouping is None else self.grouping.names
        self.shapes = tuple(tuple(params[n].shape) for n in self.names)
        self._weight = torch.cat([to_flat(params[n].detach(), s) for n, s in zip(self.names, self.shapes)])
        if not self._weight.is_floating_point():
            raise ValueError(f"masked parameters must be floating point, got {self._weight.dtype}")
        self._finite = bool(torch.isfinite(self._weight).all())
        device, dtype = self._weight.device, self._weight.dtype
        # "weight" keeps the fused per-weight sampler on flat-layout logits; groups expand by index
        self._index = None if self.grouping is None else self.grouping.flat_index().to(device)
        if self.grouping is not None:
            implied = tuple(n in self.grouping.implied for n in self.names)
            gate = GroupedGate(gate, self._index, self.grouping.sizes().to(device), implied)
            penalty = GroupedPenalty(penalty, self._index)
        self.gate, self.penalty_fn, self.tasks, self.samples = gate, penalty, tasks, samples
        grouping = {"granularity": "weight"} if self.grouping is None else self.grouping.config()
        self.settings = {"samples": samples, "init": float(init), "seed": seed, **grouping,
                         "fallback": fallback, **gate.config(), **penalty.config()}  # fmt: skip
        n = self._weight.numel() if self._index is None else self.grouping.n_groups
        self.logits = nn.Parameter(torch.full((len(tasks), n), float(init), dtype=dtype, device=device))
        self._generators = {t: torch.Generator().manual_seed(derive(seed, t)) for t in tasks}
        self._batch_sizes: dict[str, int] = {}
        self._method = ("vmap" if vmap_supported(model) else "loop") if method == "auto" else method
        self._auto = method == "auto"

    def _task(self, task: str | None) -> int:
        if task is None:
            if len(self.tasks) > 1:
                raise ValueError(f"task=... is needed with several tasks {list(self.tasks)}")
            return 0
        if task not in self.tasks:
            raise ValueError(f"unknown task {task!r}; tasks are {list(self.tasks)}")
        return self.tasks.index(task)

    def expanded_logits(self) -> Tensor:
        """``(T, N)`` per-weight logits in the flat layout (:func:`~modscope.masks.layout.to_flat`)."""
        return self.logits if self._index is None else self.logits[:, self._index]

    def forward(self, *args: Any, task: str | None = None, **kwargs: Any) -> Any:
        t = self._task(task)
        if not self.training:
            # the parameters' own layout, not the flat one: a transposed weight may take another matmul path
            keep = (self.expanded_logits()[t].detach() > 0).split(self._sizes())
            params = dict(self.model.named_parameters())
            weights = {n: torch.where(from_flat(k, s).contiguous(), params[n].detach(), 0.0)
                       for n, k, s in zip(self.names, keep, self.shapes, strict=True)}  # fmt: skip
            with frozen(self.model):
                return functional_call(self.model, weights, args, kwargs)
        logits = self.logits[t : t + 1]
        keys = self.gate.keys(self.samples, self._generators[self.tasks[t]])[None].to(logits.device)
        aux, _ = self.gate.precompute(logits)
        sampled = self.gate.sample(logits, keys, self._weight, self.shapes, self._finite, aux)
        weights = dict(zip(self.names, sampled, strict=True))
        self._batch_sizes[self.tasks[t]] = _batch_size(args, kwargs)
        with frozen(self.model):
            if kwargs:
                return _split_call(self.model, weights, args, kwargs, self.samples)
            if self._auto and self._method == "vmap":
                self._auto = False
                try:
                    return grouped_forward(self.model, weights, [args], self.samples, "vmap")[0]
                except (RuntimeError, NotImplementedError) as exc:
                    log.warning("vmap failed on %s (%s); using the loop", type(self.model).__name__, exc)
                    self._method = "loop"
            return grouped_forward(self.model, weights, [args], self.samples, self._method)[0]

    def _sizes(self) -> list[int]:
        return [int(torch.Size(s).numel()) for s in self.shapes]

    def penalty(self, task: str | None = None, *, batch_size: int | None = None) -> Tensor:
        """The sparsity penalty of ``task`` (default: the sum over all tasks), a scalar differentiable in
        the logits; ``batch_size`` defaults to that of the task's last forward pass in train mode."""
        rows = range(len(self.tasks)) if task is None else [self._task(task)]
        sizes = []
        for r in rows:
            b = batch_size if batch_size is not None else self._batch_sizes.get(self.tasks[r])
            if b is None:
                raise ValueError(f"task {self.tasks[r]!r}: no forward pass yet; pass batch_size=")
            sizes.append(b)
        batch = torch.tensor(sizes, dtype=self.logits.dtype, device=self.logits.device)
        return self.penalty_fn(self.logits[list(rows)], batch).sum()

    def masks(self) -> MaskSet:
        """The read-out ``logit > 0`` per task as a :class:`~modscope.masks.MaskSet` of per-weight logits
        (a group's logit copied to its weights); ``hparams`` record the settings."""
        final = self.expanded_logits().detach()
        per_task = {
            t: {n: from_flat(v, s).clone(memory_format=torch.contiguous_format)
                for n, v, s in zip(self.names, final[i].split(self._sizes()), self.shapes)}
            for i, t in enumerate(self.tasks)
        }  # fmt: skip
        fingerprint = model_fingerprint(self.model, self.names)
        return MaskSet.from_logits(per_task, hparams=dict(self.settings), fingerprint=fingerprint)


def _batch_size(args: tuple, kwargs: dict) -> int:
    for leaf in pytree.tree_leaves((args, kwargs)):
        if isinstance(leaf, Tensor) and leaf.ndim > 0:
            return int(leaf.shape[0])
    raise ValueError("no batch-first tensor among the inputs")


def _split_call(model: nn.Module, weights: dict[str, Tensor], args: tuple, kwargs: dict, samples: int) -> Any:
    """Group ``s`` of the batch-first tensors in ``args``/``kwargs`` under ``weights[n][0, s]``; outputs
    concatenated, 0-d outputs averaged weighted by group size."""
    leaves, spec = pytree.tree_flatten((args, kwargs))
    b = _batch_size(args, kwargs)
    split = [isinstance(x, Tensor) and x.ndim > 0 and x.shape[0] == b for x in leaves]
    bounds = [len(c) for c in torch.tensor_split(torch.arange(b), samples)]
    outs, sizes, start = [], [], 0
    for s, size in enumerate(bounds):
        if size == 0:
            continue
        part = [x[start : start + size] if cut else x for x, cut in zip(leaves, split)]
        a, k = pytree.tree_unflatten(part, spec)
        outs.append(functional_call(model, {n: w[0, s] for n, w in weights.items()}, a, k))
        sizes.append(size)
        start += size
    flat, specs = zip(*(pytree.tree_flatten(o) for o in outs), strict=True)

    def join(parts: tuple) -> Any:
        if not isinstance(parts[0], Tensor):
            return parts[0]
        if parts[0].ndim == 0:
            return sum(p * (n / b) for p, n in zip(parts, sizes))
        return torch.cat(parts)

    return pytree.tree_unflatten([join(p) for p in zip(*flat, strict=True)], specs[0])
