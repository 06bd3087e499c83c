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
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call

from modscope.checks import check_finite, check_positive_int, check_real
from modscope.masks.batches import ModelInputs
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
    only the logits. Call it as the model is called (``mm(x)``, ``mm(**batch)``): every batch-first tensor
    is split, other arguments are passed as they are (:mod:`~modscope.masks.forward`; a 0-d output such as a
    Hugging Face ``loss`` is the group-size-weighted mean of the groups'). ``state_dict()`` holds the
    logits and, as ``_extra_state``, the tasks' noise generators (a uint8 tensor), so that a run resumed
    from it draws the same masks as one never stopped; :meth:`task_losses` runs every task in one call.

    A plain loop works::

        mm = MaskedModel(model, granularity="unit", tasks=("a", "b"), beta=1e-3)
        opt = torch.optim.Adam(mm.parameters(), lr=3e-2)
        loss = task_loss(mm(x, task="a"), y) + mm.penalty("a"); loss.backward(); opt.step()

    and so does Hugging Face's ``Trainer`` (one task, a batch with ``labels``): add ``mm.penalty()`` to the
    loss in ``compute_loss``, and keep the batches' columns (``remove_unused_columns=False``: ``forward``
    takes ``**kwargs``, which the Trainer cannot match against a dataset's columns).

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
        self.generators = {t: torch.Generator().manual_seed(derive(seed, t)) for t in tasks}
        self._batch_sizes: dict[str, int] = {}
        self.method = ("vmap" if vmap_supported(model) else "loop") if method == "auto" else method
        self._auto = method == "auto"

    @property
    def n_weights(self) -> int:
        """The number of masked weights."""
        return self._weight.numel()

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
        inputs = ModelInputs(args, kwargs)
        self._batch_sizes[self.tasks[t]] = inputs.batch_size
        return self._run(self._sample(t), [inputs])[0]

    def task_losses(
        self,
        batches: Sequence[tuple[Any, Tensor]],
        loss_fn: Callable[[Any, Tensor], Tensor] | Mapping[str, Callable[[Any, Tensor], Tensor]],
        *,
        aux: Any = None,
    ) -> Tensor:
        """``(T,)`` losses of every task at once (train mode): ``batches[t]`` is task ``t``'s ``(inputs,
        targets)``, ``loss_fn`` one function or one per task name; all ``T * samples`` example groups run
        in one vmapped call where they can. ``aux`` is the gate's ``precompute`` of the current logits
        (computed when None). The step of :func:`~modscope.masks.train_masks`."""
        if len(batches) != len(self.tasks):
            raise ValueError(f"need one batch per task {list(self.tasks)}, got {len(batches)}")
        inputs = [ModelInputs.of(x) for x, _ in batches]
        self._batch_sizes.update((t, x.batch_size) for t, x in zip(self.tasks, inputs, strict=True))
        outputs = self._run(self._sample(None, aux), inputs)
        losses = []
        for task, out, (_, targets) in zip(self.tasks, outputs, batches, strict=True):
            loss = (loss_fn[task] if isinstance(loss_fn, Mapping) else loss_fn)(out, targets)
            if not isinstance(loss, Tensor) or loss.numel() != 1:
                raise ValueError(f"loss_fn must return a scalar tensor, got {loss!r} for task {task!r}")
            losses.append(loss.reshape(()))
        return torch.stack(losses)

    def _sample(self, t: int | None, aux: Any = None) -> dict[str, Tensor]:
        """``name -> (T', S, *shape)`` weights, one mask sample per example group of task ``t`` (all tasks
        when None), the noise keys drawn from each task's generator."""
        logits = self.logits if t is None else self.logits[t : t + 1]
        names = self.tasks if t is None else (self.tasks[t],)
        keys = torch.stack([self.gate.keys(self.samples, self.generators[n]) for n in names])
        if aux is None:
            aux, _ = self.gate.precompute(logits)
        keys = keys.to(logits.device)
        sampled = self.gate.sample(logits, keys, self._weight, self.shapes, self._finite, aux)
        return dict(zip(self.names, sampled, strict=True))

    def _run(self, weights: dict[str, Tensor], inputs: list[ModelInputs]) -> list[Any]:
        with frozen(self.model):
            if self._auto and self.method == "vmap":
                self._auto = False  # decided on the first call, for good
                try:
                    return grouped_forward(self.model, weights, inputs, self.samples, "vmap")
                except (RuntimeError, NotImplementedError) as exc:
                    log.info("vmap failed on %s (%s); using the loop", type(self.model).__name__, exc)
                    self.method = "loop"
            return grouped_forward(self.model, weights, inputs, self.samples, self.method)

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

    def masks(self, hparams: Mapping[str, Any] | None = None) -> MaskSet:
        """The read-out ``logit > 0`` per task as a :class:`~modscope.masks.MaskSet` of per-weight logits
        (a group's logit copied to its weights), recording ``hparams`` (default: :attr:`settings`)."""
        final = self.expanded_logits().detach()
        per_task = {
            t: {n: from_flat(v, s).clone(memory_format=torch.contiguous_format)
                for n, v, s in zip(self.names, final[i].split(self._sizes()), self.shapes)}
            for i, t in enumerate(self.tasks)
        }  # fmt: skip
        fingerprint = model_fingerprint(self.model, self.names)
        hparams = dict(self.settings if hparams is None else hparams)
        return MaskSet.from_logits(per_task, hparams=hparams, fingerprint=fingerprint)

    def get_extra_state(self) -> Tensor:
        """The tasks' noise generators, ``(T, L)`` uint8: a tensor, so safetensors files keep it."""
        return torch.stack([g.get_state() for g in self.generators.values()])

    def set_extra_state(self, state: Any) -> None:
        n = len(self.tasks)
        if not isinstance(state, Tensor) or state.dtype != torch.uint8 or state.shape[:1] != (n,):
            raise ValueError(f"extra state: expected the {n} task generators' states as a uint8 tensor "
                             f"(T, L), got {state!r}")  # fmt: skip
        for g, s in zip(self.generators.values(), state.cpu(), strict=True):
            g.set_state(s.contiguous())
