"""Training differentiable weight masks for several sub-tasks at once on a frozen network.

Csordás, van Steenkiste, Schmidhuber, "Are Neural Nets Modular? Inspecting Functional Modularity Through
Differentiable Weight Masks", ICLR 2021 (arXiv:2010.02066), §2; SPEC §2.1. :func:`train_masks` is a driver
over a :class:`~modscope.masks.MaskedModel` (which holds the logits, the gate, the penalty and the noise
generators): it checks the arguments, restores or starts the logits, optimizer and generators through a
:class:`~modscope.checkpoint.Checkpointer`, and folds :meth:`~modscope.masks.MaskedModel.task_losses` and
the update of :mod:`modscope.masks.step` over the batches of :class:`~modscope.masks.batches.TaskBatches`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch
from torch import Tensor, nn

from modscope.atomic import check_writable
from modscope.checkpoint import Checkpointer
from modscope.masks.batches import TaskBatches
from modscope.masks.checks import check_mask_arguments
from modscope.masks.gates import Gate, GumbelSigmoid
from modscope.masks.masked_model import MaskedModel
from modscope.masks.maskset import MaskSet, model_fingerprint
from modscope.masks.penalty import LogitPenalty, Penalty
from modscope.masks.selection import Include, select_parameters
from modscope.masks.step import mask_update
from modscope.progress import Progress, notify

__all__ = ["train_masks"]

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "modscope.masks.checkpoint/1"
# settings of the checkpoint's config that say where the logits sit, not how they were trained
_LAYOUT_KEYS = ("tasks", "params", "shapes", "fingerprint", "layout", "noise")


def train_masks(
    model: nn.Module,
    tasks: Mapping[str, Any],
    loss_fn: Callable[[Any, Tensor], Tensor] | Mapping[str, Callable[[Any, Tensor], Tensor]],
    *,
    steps: int,
    beta: float | None = None,
    lr: float = 3e-2,
    samples: int = 4,
    init: float = 2.0,
    batch_size: int | None = None,
    seed: int = 0,
    include: Include | None = None,
    progress: Progress | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 100,
    max_grad_norm: float | None = 1.0,
    method: Literal["auto", "vmap", "loop"] = "auto",
    gate: Gate | None = None,
    penalty: Penalty | None = None,
    granularity: str | Mapping[str, Tensor] = "weight",
    fallback: str | None = None,
) -> MaskSet:
    """Learn one binary weight mask per sub-task on a frozen ``model``, all tasks in one vectorized loop.

    Each masked weight gets a real logit (initialized to ``init``; 2.0 keeps about 88%). Per step and task,
    the batch is split into ``samples`` contiguous groups; group ``s`` runs with its own sample of the mask in
    every layer, drawn by ``gate`` (default: hard Gumbel-sigmoid with a straight-through gradient). The loss
    of task ``t`` is ``loss_fn(outputs_t, targets_t) + penalty_t`` (default ``beta * sum(logits_t) / B_t``);
    Adam (``lr``) updates the logits only, after clipping each task's gradient to norm ``max_grad_norm``.
    The papers use beta 1e-4 (arithmetic FNN), batch 128 and 20k steps. Tasks never interact: each has its
    own generator (seeded ``derive(seed, task)``), its own gradient clipping, and Adam is element-wise.

    Args:
        model: any ``nn.Module`` called as ``model(*inputs)`` or ``model(**inputs)``; inputs and outputs
            batch-first (outputs any pytree of tensors, e.g. a Hugging Face ``ModelOutput``). It is put in
            eval mode with gradients off during training; its parameters, buffers, mode and ``requires_grad``
            flags are left exactly as they were.
        tasks: ``name -> source``. A source is a re-iterable of ``(inputs, targets)`` batches (a list, a
            DataLoader; cycled), or with ``batch_size`` an ``(inputs, targets)`` pair of tensors to draw from.
            ``inputs`` is a tensor, a tuple of tensors or a mapping of keyword inputs (a dict, a
            ``BatchEncoding``); a batch may also be one mapping with the targets under ``"labels"``
            (:mod:`~modscope.masks.batches`).
        loss_fn: ``loss_fn(outputs, targets) -> scalar tensor`` (mean over the batch), or a mapping ``task
            -> loss_fn`` (one per task); ``outputs`` is what the model returns for the task's batch.
        steps: number of optimizer steps (a positive int).
        beta: weight of the default penalty :class:`~modscope.masks.penalty.LogitPenalty` (finite, >= 0);
            give ``beta`` or ``penalty``, not both.
        lr: Adam's learning rate (finite, > 0; default 3e-2; the papers: 1e-2 for 20k steps). A logit moves at
            most about ``lr`` per step, so no read-out changes before step ``init / lr``: measured, the first
            weights drop at step 201 with lr 1e-2 and 67 with 3e-2 (a digits CNN; MiniLM-L6 cut to 2 layers,
            two probes, batch 32; beta 1e-4), masked-task accuracy at step 300 as good or better.
        samples: mask samples per step (a positive int, default 4); the batch is split into that many groups.
        init: the initial logit of every weight (finite; default 2.0).
        batch_size: ``None`` (default; the sources are iterables of batches) or examples drawn per step.
        seed: a non-negative int; task ``t`` draws its batches and noise from ``derive(seed, t)``.
        include: ``include(name, param) -> bool`` picks the masked parameters (default
            :func:`~modscope.masks.selection.default_masked_names`).
        progress: ``progress("masks", step, steps, {"loss": {task: float}, "kept": {task: fraction}})``
            (:mod:`modscope.progress`) after each step; ``kept`` is the read-out's fraction (``logit > 0``).
        checkpoint: a file; saved every ``checkpoint_every`` (a positive int, default 100) steps and at the
            end (atomically), and resumed from when it exists. The resumed run equals the uninterrupted one
            when each source yields the same batch sequence when iterated afresh (always with
            ``batch_size``).
        max_grad_norm: per-task gradient-norm clip (finite, > 0; default 1.0) or ``None`` (no clipping).
        method: ``"vmap"`` (all groups as one vmapped call), ``"loop"`` (one call per group) or ``"auto"``:
            vmap unless the model has recurrent layers or vmap fails on the first step (Hugging Face models
            given a 2-d ``attention_mask``; :mod:`~modscope.masks.forward`).
        gate: the gate distribution (:mod:`modscope.masks.gates`; default
            :class:`~modscope.masks.gates.GumbelSigmoid`).
        penalty: the sparsity penalty (:mod:`modscope.masks.penalty`; default ``LogitPenalty(beta)``).
        granularity: ``"weight"`` (default), ``"unit"``, ``"channel"``, ``"head"`` or a mapping
            ``param -> group ids`` (:func:`~modscope.masks.grouping.groupings`): one logit per group, sampled
            per group by ``gate`` and expanded to its weights; the penalty is that of the expanded logits, so
            ``beta`` means the same at every granularity (:mod:`modscope.masks.grouped`). A mapping's keys are
            the masked parameters (``include`` must then be None).
        fallback: the granularity of parameters ``granularity`` has no rule for (default: an error).

    Returns:
        A :class:`~modscope.masks.maskset.MaskSet` of the final logits (mask = ``logit > 0``); its
        ``hparams`` record every setting above (the gate's and the penalty's included) and ``method``.

    Raises:
        ValueError: bad arguments, checked before any work (naming the parameter and the value), an include
            selecting nothing, a non-finite loss, a checkpoint of another run.
    """
    check_mask_arguments(
        tasks=tasks, loss_fn=loss_fn, steps=steps, lr=lr, samples=samples, init=init, batch_size=batch_size,
        seed=seed, checkpoint_every=checkpoint_every, max_grad_norm=max_grad_norm, method=method, gate=gate,
        penalty=penalty, beta=beta,
    )  # fmt: skip
    if checkpoint is not None:  # before any work: a typo must not cost the run
        check_writable(checkpoint, name="checkpoint")
    gate = GumbelSigmoid() if gate is None else gate
    penalty = LogitPenalty(beta) if penalty is None else penalty  # type: ignore[arg-type]
    if isinstance(granularity, Mapping) and include is not None:
        raise ValueError("give include or a mapping as granularity, not both")
    selected = None if isinstance(granularity, Mapping) else select_parameters(model, include)
    task_names = list(tasks)
    mm = MaskedModel(model, granularity=granularity, names=selected, fallback=fallback, tasks=task_names,
                     samples=samples, init=init, penalty=penalty, gate=gate, seed=seed,
                     method=method)  # fmt: skip
    config = {
        "tasks": task_names,
        "params": list(mm.names),
        "shapes": [list(s) for s in mm.shapes],
        **penalty.config(),
        "lr": float(lr),
        "samples": samples,
        "init": float(init),
        "batch_size": batch_size,
        "seed": seed,
        "max_grad_norm": max_grad_norm,
        "fingerprint": model_fingerprint(model, mm.names),
        "layout": "flat-2d-transposed",
        **gate.config(),
    }
    if mm.grouping is not None:
        config.update(mm.grouping.config(), fallback=fallback)
    logits, generators = mm.logits, list(mm.generators.values())
    streams = [TaskBatches(t, tasks[t], batch_size, g) for t, g in zip(task_names, generators, strict=True)]
    try:  # one fused kernel instead of about ten passes over the logits (the same update, elementwise)
        optimizer = torch.optim.Adam([logits], lr=lr, fused=True)
    except (RuntimeError, ValueError):  # a device or dtype without the fused kernel
        optimizer = torch.optim.Adam([logits], lr=lr)
    checkpointer = Checkpointer(checkpoint, checkpoint_every, config, format=CHECKPOINT_FORMAT)
    start = _resume(checkpointer, steps, logits, optimizer, generators, streams)

    device = logits.device
    aux, _ = mm.gate.precompute(logits)
    for step in range(start, steps):
        batches = [(x.to(device), y.to(device)) for x, y in (next(stream) for stream in streams)]
        task_losses = mm.task_losses(batches, loss_fn, aux=aux)
        (grad,) = torch.autograd.grad(task_losses.sum(), logits)
        batch_sizes = torch.tensor([len(y) for _, y in batches], dtype=logits.dtype, device=device)
        values = mask_update(logits, grad, task_losses.detach(), optimizer, penalty=mm.penalty_fn,
                             batch_sizes=batch_sizes, max_grad_norm=max_grad_norm, tasks=task_names,
                             step=step)  # fmt: skip
        aux, kept = mm.gate.precompute(logits)
        done = step + 1
        if checkpointer.due(done) or (checkpoint is not None and done == steps):
            checkpointer.save({"step": done, "logits": logits.detach().cpu().clone(),
                               "optimizer": optimizer.state_dict(),
                               "rng": [g.get_state() for g in generators]})  # fmt: skip
        if progress is not None:
            fractions = [c / mm.n_weights for c in kept.tolist()]
            info = {"loss": dict(zip(task_names, values, strict=True)),
                    "kept": dict(zip(task_names, fractions, strict=True))}  # fmt: skip
            notify(progress, "masks", done, steps, info)
        if done % 1000 == 0 or done == steps:
            log.debug("mask step %d/%d loss %s", done, steps, values)

    hparams = {k: v for k, v in config.items() if k not in _LAYOUT_KEYS}
    hparams.update(steps=steps, method=mm.method)
    return mm.masks(hparams)


def _resume(
    checkpointer: Checkpointer,
    steps: int,
    logits: Tensor,
    optimizer: torch.optim.Optimizer,
    generators: list[torch.Generator],
    streams: list[TaskBatches],
) -> int:
    """Restore the run from its checkpoint, if there is one; the step to continue from."""
    state = checkpointer.load()
    if state is None:
        return 0
    if state["step"] > steps:
        raise ValueError(f"checkpoint is at step {state['step']}, beyond steps={steps}")
    with torch.no_grad():
        logits.copy_(state["logits"])
    optimizer.load_state_dict(state["optimizer"])
    for g, s in zip(generators, state["rng"], strict=True):
        g.set_state(s)
    for stream in streams:  # replay the data streams to where the run stopped
        stream.skip(state["step"])
    log.info("resumed mask training from %s at step %d", checkpointer.path, state["step"])
    return state["step"]
