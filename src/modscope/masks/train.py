"""Training differentiable weight masks for several sub-tasks at once on a frozen network.

Csordás, van Steenkiste, Schmidhuber, "Are Neural Nets Modular? Inspecting Functional Modularity Through
Differentiable Weight Masks", ICLR 2021 (arXiv:2010.02066), §2; SPEC §2.1.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Literal

import torch
from torch import Tensor, nn

from modscope.atomic import check_writable
from modscope.checkpoint import load_checkpoint, save_checkpoint
from modscope.masks.forward import grouped_forward, vmap_supported
from modscope.masks.maskset import MaskSet, model_fingerprint
from modscope.masks.sampling import from_flat, keep_probabilities, masked_weight_list, noise_keys, to_flat
from modscope.masks.selection import Include, select_parameters

__all__ = ["Progress", "train_masks"]

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "modscope.masks.checkpoint/1"

Progress = Callable[[int, int, dict[str, Any]], None]
Batch = tuple[Any, Tensor]


@contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """Eval mode, no parameter gradients and no attention fast path inside; everything restored on exit.

    The fused ``MultiheadAttention`` / ``TransformerEncoderLayer`` fast path is taken when it sees no
    ``requires_grad`` (which vmap hides) and has no derivative, so it is switched off while training.
    """
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    fastpath = torch.backends.mha.get_fastpath_enabled()
    try:
        model.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        torch.backends.mha.set_fastpath_enabled(False)
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        for p, flag in flags:
            p.requires_grad_(flag)
        for m, mode in modes:
            m.training = mode


def task_seed(seed: int, task: str) -> int:
    """Seed of one task's generator: a task's masks do not depend on which other tasks train beside it."""
    return int.from_bytes(hashlib.sha256(f"{seed}\0{task}".encode()).digest()[:8], "little") >> 1


def _as_args(inputs: Any) -> tuple[Tensor, ...]:
    return tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)


class _Batches:
    """An endless stream of ``(args, targets)`` for one task.

    ``batch_size=None``: cycle through the re-iterable ``source``, re-iterating at each epoch.
    ``batch_size=n``: ``source`` is ``(inputs, targets)`` tensors; draw ``n`` examples with replacement from
    the task's generator (whose state is checkpointed, so a resumed run draws the same batches).
    """

    def __init__(self, task: str, source: Any, batch_size: int | None, generator: torch.Generator):
        self.task, self.source, self.batch_size, self.generator = task, source, batch_size, generator
        if batch_size is None:
            if not isinstance(source, Iterable):
                raise ValueError(
                    f"task {task!r}: expected an iterable of (inputs, targets), got {type(source)}"
                )
            if iter(source) is source:
                raise ValueError(
                    f"task {task!r}: the source is a one-shot iterator ({type(source).__name__}); pass a "
                    "re-iterable such as a list of batches or a DataLoader"
                )
            self._it: Iterator[Batch] | None = None
        else:
            if not (isinstance(source, (tuple, list)) and len(source) == 2):
                raise ValueError(
                    f"task {task!r}: with batch_size, pass (inputs, targets) tensors, got {type(source)}"
                )
            self.args = _as_args(source[0])
            self.targets = source[1]
            self.n = len(self.targets)
            if self.n == 0 or any(len(a) != self.n for a in self.args):
                raise ValueError(f"task {task!r}: inputs and targets must have the same, nonzero length")

    def __next__(self) -> tuple[tuple[Tensor, ...], Tensor]:
        if self.batch_size is not None:
            idx = torch.randint(self.n, (self.batch_size,), generator=self.generator)
            return tuple(a[idx] for a in self.args), self.targets[idx]
        for fresh in (False, True):
            if self._it is None or fresh:
                self._it = iter(self.source)
            try:
                batch = next(self._it)
            except StopIteration:
                continue
            try:
                inputs, targets = batch
            except (TypeError, ValueError):
                raise ValueError(
                    f"task {self.task!r}: a batch must be (inputs, targets), got {type(batch)}"
                ) from None
            return _as_args(inputs), targets
        raise ValueError(f"task {self.task!r}: the source yields no batches")


def _validate(tasks: Any, steps: Any, beta: Any, lr: Any, samples: Any, batch_size: Any, method: Any) -> None:
    if not isinstance(tasks, Mapping) or not tasks:
        raise ValueError(f"tasks must be a non-empty mapping name -> batches, got {tasks!r}")
    if not all(isinstance(t, str) for t in tasks):
        raise ValueError(f"task names must be strings, got {list(tasks)!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples <= 0:
        raise ValueError(f"samples must be a positive int, got {samples!r}")
    if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta >= 0):
        raise ValueError(f"beta must be a finite number >= 0, got {beta!r}")
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ValueError(f"lr must be > 0, got {lr!r}")
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size <= 0):
        raise ValueError(f"batch_size must be None or a positive int, got {batch_size!r}")
    if method not in ("auto", "vmap", "loop"):
        raise ValueError(f"method must be 'auto', 'vmap' or 'loop', got {method!r}")


def train_masks(
    model: nn.Module,
    tasks: Mapping[str, Any],
    loss_fn: Callable[[Any, Tensor], Tensor],
    *,
    steps: int,
    beta: float,
    lr: float = 1e-2,
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
) -> MaskSet:
    """Learn one binary weight mask per sub-task on a frozen ``model``, all tasks in one vectorized loop.

    Each masked weight gets a real logit (initialized to ``init``; 2.0 keeps about 88%). Per step and task,
    the batch is split into ``samples`` contiguous groups; group ``s`` runs with its own hard Gumbel-sigmoid
    sample of the mask in every layer (straight-through gradient). The loss of task ``t`` is
    ``loss_fn(outputs_t, targets_t) + beta * sum(logits_t) / B_t``; Adam (``lr``) updates the logits only,
    after clipping each task's gradient to norm ``max_grad_norm``. The papers use beta 1e-4 (arithmetic FNN),
    batch 128 and 20k steps. Tasks never interact: each has its own generator (from ``seed`` and its name),
    its own gradient clipping, and Adam is element-wise.

    Args:
        model: any ``nn.Module`` called as ``model(*inputs)``; inputs and outputs batch-first. It is put in
            eval mode with gradients off during training; its parameters, buffers, mode and ``requires_grad``
            flags are left exactly as they were.
        tasks: ``name -> source``. A source is a re-iterable of ``(inputs, targets)`` batches (a list, a
            DataLoader; cycled), or with ``batch_size`` an ``(inputs, targets)`` pair of tensors to draw from.
            ``inputs`` is a tensor or a tuple of tensors.
        loss_fn: ``loss_fn(outputs, targets) -> scalar tensor`` (mean over the batch).
        steps: number of optimizer steps (> 0).
        beta: weight of the sparsity term (>= 0).
        samples: mask samples per step; the batch is split into that many groups.
        include: ``include(name, param) -> bool`` picks the masked parameters (default
            :func:`~modscope.masks.selection.default_masked_names`).
        progress: called as ``progress(step, steps, {"loss": {task: float}, "kept": {task: fraction}})`` after
            each step.
        checkpoint: a file; saved every ``checkpoint_every`` steps and at the end (atomically), and resumed
            from when it exists. The resumed run equals the uninterrupted one when each source yields the
            same batch sequence when iterated afresh (always true with ``batch_size``).
        method: ``"vmap"`` (all groups as one vmapped call), ``"loop"`` (one call per group) or ``"auto"``:
            vmap unless the model has recurrent layers or vmap fails on the first step.

    Returns:
        A :class:`~modscope.masks.maskset.MaskSet` of the final logits (mask = ``logit > 0``).

    Raises:
        ValueError: bad arguments, an include selecting nothing, a non-finite loss, a checkpoint of another
            run.
    """
    _validate(tasks, steps, beta, lr, samples, batch_size, method)
    if checkpoint is not None:  # before any work: a typo must not cost the run
        check_writable(checkpoint, name="checkpoint")
    names = select_parameters(model, include)
    params = dict(model.named_parameters())
    shapes = [tuple(params[n].shape) for n in names]
    sizes = [params[n].numel() for n in names]
    # flat layout of the logits, noise and weights: sampling.to_flat (2-d parameters stored transposed)
    weight = torch.cat([to_flat(params[n].detach(), s) for n, s in zip(names, shapes, strict=True)])
    if not weight.is_floating_point():
        raise ValueError(f"masked parameters must be floating point, got {weight.dtype}")
    device, dtype = weight.device, weight.dtype
    finite = bool(torch.isfinite(weight).all())
    task_names = list(tasks)
    n_tasks, n_weights = len(task_names), weight.numel()
    fingerprint = model_fingerprint(model, names)
    config = {
        "tasks": task_names,
        "params": list(names),
        "shapes": [list(s) for s in shapes],
        "beta": float(beta),
        "lr": float(lr),
        "samples": samples,
        "init": float(init),
        "batch_size": batch_size,
        "seed": seed,
        "max_grad_norm": max_grad_norm,
        "fingerprint": fingerprint,
        "layout": "flat-2d-transposed",
        # the noise generator (sampling.noise_keys / noise_bits); a checkpoint of another generator would
        # resume with different noise, so it is rejected as another run
        "noise": "hash32-v1",
    }

    generators = [torch.Generator().manual_seed(task_seed(seed, t)) for t in task_names]
    streams = [_Batches(t, tasks[t], batch_size, g) for t, g in zip(task_names, generators, strict=True)]
    logits = torch.full((n_tasks, n_weights), float(init), dtype=dtype, device=device, requires_grad=True)
    try:  # one fused kernel instead of about ten passes over the logits (the same update, elementwise)
        optimizer = torch.optim.Adam([logits], lr=lr, fused=True)
    except (RuntimeError, ValueError):  # a device or dtype without the fused kernel
        optimizer = torch.optim.Adam([logits], lr=lr)
    start = 0
    if checkpoint is not None:
        state = load_checkpoint(checkpoint, format=CHECKPOINT_FORMAT)
        if state is not None:
            if state["config"] != config:
                diff = sorted(k for k in config if state["config"].get(k) != config[k])
                raise ValueError(
                    f"checkpoint {os.fspath(checkpoint)!r} belongs to another run (differs in {diff})"
                )
            if state["step"] > steps:
                raise ValueError(f"checkpoint is at step {state['step']}, beyond steps={steps}")
            start = state["step"]
            with torch.no_grad():
                logits.copy_(state["logits"])
            optimizer.load_state_dict(state["optimizer"])
            for g, s in zip(generators, state["rng"], strict=True):
                g.set_state(s)
            if batch_size is None:  # replay the data streams to where the run stopped
                for stream in streams:
                    for _ in range(start):
                        next(stream)
            log.info("resumed mask training from %s at step %d", os.fspath(checkpoint), start)

    use = method
    if method == "auto":
        use = "vmap" if vmap_supported(model) else "loop"

    def save(step: int) -> None:
        save_checkpoint(
            checkpoint,
            {
                "config": config,
                "step": step,
                "logits": logits.detach().cpu().clone(),
                "optimizer": optimizer.state_dict(),
                "rng": [g.get_state() for g in generators],
            },
            format=CHECKPOINT_FORMAT,
        )

    def loss_of(batches: list[tuple[tuple[Tensor, ...], Tensor]], keys: Tensor, how: str):
        sampled = masked_weight_list(logits, keys, weight, shapes, finite, probs)
        substituted = dict(zip(names, sampled, strict=True))
        outputs = grouped_forward(model, substituted, [args for args, _ in batches], samples, how)
        task_losses = []
        for t, (out, (_, targets)) in enumerate(zip(outputs, batches, strict=True)):
            loss = loss_fn(out, targets)
            if not isinstance(loss, Tensor) or loss.numel() != 1:
                raise ValueError(
                    f"loss_fn must return a scalar tensor, got {loss!r} for task {task_names[t]!r}"
                )
            task_losses.append(loss.reshape(()))
        task_losses = torch.stack(task_losses)
        return task_losses.sum(), task_losses.detach()

    probs, _ = keep_probabilities(logits)
    with frozen(model):
        for step in range(start, steps):
            batches = []
            for stream in streams:
                args, targets = next(stream)
                batches.append((tuple(a.to(device) for a in args), targets.to(device)))
            keys = torch.stack([noise_keys(samples, g) for g in generators]).to(device)
            if method == "auto" and step == start and use == "vmap":
                try:
                    total, task_losses = loss_of(batches, keys, "vmap")
                    (grad,) = torch.autograd.grad(total, logits)
                except (RuntimeError, NotImplementedError) as exc:
                    log.warning("vmap failed on %s (%s); using the per-group loop", type(model).__name__, exc)
                    use = "loop"
                    total, task_losses = loss_of(batches, keys, "loop")
                    (grad,) = torch.autograd.grad(total, logits)
            else:
                total, task_losses = loss_of(batches, keys, use)
                (grad,) = torch.autograd.grad(total, logits)
            # the sparsity term beta * sum(logits_t) / B_t has the constant gradient beta / B_t: added here,
            # not through autograd (which would sum the logits and add a (T, N) gradient in two more passes)
            if beta:
                batch_sizes = torch.tensor([len(tg) for _, tg in batches], dtype=dtype, device=device)
                grad.add_((beta / batch_sizes).unsqueeze(1))
            values = task_losses.tolist()
            bad = [(t, v) for t, v in zip(task_names, values, strict=True) if not math.isfinite(v)]
            if bad:
                raise ValueError(
                    f"loss of task {bad[0][0]!r} is {bad[0][1]} at step {step}; masks not updated"
                )
            if max_grad_norm is not None:
                # Per task, unlike clip_grad_norm_: a joint norm would let one task's gradient shrink
                # another's.
                norms = torch.linalg.vector_norm(grad, dim=1, keepdim=True)
                grad.mul_((max_grad_norm / (norms + 1e-6)).clamp(max=1.0))
            logits.grad = grad
            optimizer.step()
            logits.grad = None
            probs, kept = keep_probabilities(logits)
            done = step + 1
            if checkpoint is not None and (done % checkpoint_every == 0 or done == steps):
                save(done)
            if progress is not None:
                fractions = [c / n_weights for c in kept.tolist()]
                progress(
                    done,
                    steps,
                    {
                        "loss": dict(zip(task_names, values, strict=True)),
                        "kept": dict(zip(task_names, fractions, strict=True)),
                    },
                )
            if done % 1000 == 0 or done == steps:
                log.debug("mask step %d/%d loss %s", done, steps, values)

    final = logits.detach()
    per_task = {
        t: {
            n: from_flat(v, s).clone(memory_format=torch.contiguous_format)
            for n, v, s in zip(names, final[i].split(sizes), shapes, strict=True)
        }
        for i, t in enumerate(task_names)
    }
    hparams = {
        k: v
        for k, v in config.items()
        if k not in ("tasks", "params", "shapes", "fingerprint", "layout", "noise")
    }
    hparams.update(steps=steps, method=use)
    return MaskSet.from_logits(per_task, hparams=hparams, fingerprint=fingerprint)
