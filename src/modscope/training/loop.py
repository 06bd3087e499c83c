"""The training loop: seeded, deterministic on CPU, checkpointed and resumable.

:func:`train` is the driver: it checks the arguments, restores or starts a :class:`LoopState`, folds
:func:`~modscope.training.step.train_step` over the batches, evaluates at the ends of epochs, and hands
snapshots to a :class:`~modscope.checkpoint.Checkpointer`.

Used to make the base networks modscope analyses: the MLPs of Filan et al. ("Clusterability in Neural
Networks", arXiv:2103.03386; Adam 1e-3, batch 128, 20 epochs, optional dropout, L1/L2 penalties,
pruning, clusterable init) and the arithmetic FNNs of Csordás et al. ("Are Neural Nets Modular?",
arXiv:2010.02066; Adam 1e-3, batch 128, 20k steps, per-digit cross-entropy).
"""

from __future__ import annotations

import logging
import math
import os
import time
from typing import Any

import torch
from torch import nn

from modscope.atomic import check_writable
from modscope.checkpoint import Checkpointer
from modscope.progress import Progress, notify
from modscope.seeding import derive
from modscope.training.checkpoint import CHECKPOINT_FORMAT
from modscope.training.checks import check_regularizer, check_train_arguments
from modscope.training.data import as_tensors, on_device
from modscope.training.evaluation import evaluate, evaluate_tensors
from modscope.training.losses import LossFn, resolve_loss
from modscope.training.prune import Pruner, PruneSchedule
from modscope.training.result import TrainResult
from modscope.training.state import LoopState
from modscope.training.step import OPTIMIZERS, Regularizer, make_optimizer, train_step

__all__ = ["OPTIMIZERS", "Regularizer", "evaluate", "train"]

log = logging.getLogger(__name__)


def train(
    model: nn.Module,
    dataset: Any,
    *,
    epochs: int | None = None,
    steps: int | None = None,
    batch_size: int = 128,
    optimizer: str = "adam",
    lr: float = 1e-3,
    momentum: float = 0.0,
    l1: float = 0.0,
    l2: float = 0.0,
    clip_grad_norm: float | None = None,
    loss: str | LossFn = "cross_entropy",
    seed: int = 0,
    eval_set: Any = None,
    eval_batch_size: int = 1024,
    progress: Progress | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 1000,
    prune: PruneSchedule | None = None,
    regularizer: Regularizer | None = None,
) -> TrainResult:
    """Train ``model`` in place on ``dataset`` for ``epochs`` passes or ``steps`` optimizer updates.

    Each epoch visits the ``N`` examples once in an order drawn from a ``torch.Generator`` seeded with
    ``seed``, in ``ceil(N / batch_size)`` batches (the last one smaller). Per batch, in training mode (dropout
    on, as the model defines it): ``loss(model(x), y) + l1 * sum|W| + l2 * sum W**2 (+ weight *
    penalty_fn(model))``, one backward pass, optional gradient-norm clipping, one optimizer update.
    Penalties apply to weight matrices and kernels (Linear, Conv, recurrent, ...), not to biases or norm
    parameters (:func:`weight_penalty`). The model is left in eval mode.

    **Targets.** ``(N,)`` class ids with ``(N, C)`` outputs; ``(N, D)`` class ids (``D`` digits per example,
    the arithmetic tasks) with outputs ``(N, D * C)`` read as ``(N, D, C)``, cross-entropy averaged over
    examples and digits, an example correct when all its digits are (:mod:`modscope.training.losses`);
    float targets with ``loss="mse"``.

    **Determinism.** Same seed, data and arguments give bit-identical weights on CPU (same PyTorch build and
    thread count). Dropout draws from the global RNG, so the loop runs inside ``torch.random.fork_rng``,
    seeded from ``seed``: the caller's global RNG state is the same before and after.

    **Checkpoints.** With ``checkpoint`` (a file path), the full state -- model, optimizer, shuffling and
    dropout RNG states, position in the epoch, history -- is written atomically every ``checkpoint_every``
    steps and at the end. If the file exists when ``train`` starts, the run resumes from it (the settings
    must match; the model's current weights are replaced) and ends with the same weights, bit for bit,
    as if it had never stopped. A finished checkpoint gives back the final weights and result at once.

    **Pruning.** With ``prune``, this call is the pruning phase (Filan et al. prune for 20 further epochs
    after normal training): every selected layer gets a ``torch.nn.utils.prune`` mask that follows the
    schedule (steps counted from the start of this call) and is made permanent at the end
    (:mod:`modscope.training.prune`).

    Args:
        model: any ``nn.Module`` taking a batch of inputs; modified in place.
        dataset: ``(inputs, targets)`` tensors/arrays, a ``TensorDataset`` or a map-style dataset of pairs
            (held in memory). Float inputs are cast to the model's dtype and moved to its device.
        epochs / steps: the length of the run; exactly one (a positive int).
        batch_size: examples per update (default 128).
        optimizer: ``"adam"`` (default; betas 0.9/0.999, eps 1e-8) or ``"sgd"`` (with ``momentum``).
        lr: learning rate (default 1e-3).
        momentum: SGD momentum in [0, 1); must be 0 with Adam.
        l1, l2: weight penalties (Keras convention, default 0; Filan et al. use 5e-5).
        clip_grad_norm: clip the global gradient norm to this value (default off).
        loss: ``"cross_entropy"`` (default), ``"mse"``, or ``loss(outputs, targets) -> scalar`` (batch mean).
        seed: seeds shuffling (``seed`` itself) and dropout (``derive(seed, "dropout")``).
        eval_set: evaluated (eval mode) at the end of every epoch; same forms as ``dataset``.
        eval_batch_size: batch size of evaluation (default 1024).
        progress: ``progress(label, step, total_steps, info)`` (:mod:`modscope.progress`) after every
            update, ``label`` ``"train"`` (``"prune"`` for a pruning phase); ``info`` has ``epoch``,
            ``loss`` (the batch's task loss), ``penalty`` (the batch's total penalty), ``sparsity`` (per
            pruned layer) when pruning, and at the end of an epoch ``epoch_end: True`` with
            ``train_loss``, ``train_accuracy``, ``eval_loss``, ``eval_accuracy``.
        checkpoint: checkpoint file (``None``: no checkpoints).
        checkpoint_every: steps between checkpoints (default 1000).
        prune: a :class:`~modscope.training.PruneSchedule` to run this call as a pruning phase.
        regularizer: ``(penalty_fn, weight)``: adds ``weight * penalty_fn(model)`` to the loss, e.g.
            ``(functools.partial(clusterability_penalty, n_eigs=3), 1e-2)``.

    Returns:
        A :class:`~modscope.training.TrainResult`.

    Raises:
        ValueError: invalid arguments, checked before any work (the message names the parameter and the
            value: every number must be finite and in range), a non-finite loss (naming the step),
            a checkpoint from a run with other settings.
    """
    check_train_arguments(
        epochs=epochs, steps=steps, batch_size=batch_size, optimizer=optimizer, lr=lr, momentum=momentum,
        l1=l1, l2=l2, clip_grad_norm=clip_grad_norm, seed=seed, eval_batch_size=eval_batch_size,
        checkpoint_every=checkpoint_every, prune=prune,
    )  # fmt: skip
    if checkpoint is not None:  # before any work: a typo must not cost the run
        check_writable(checkpoint, name="checkpoint")
    reg = check_regularizer(regularizer)
    loss_name, loss_fn = resolve_loss(loss)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    device, dtype = params[0].device, params[0].dtype
    x, y = on_device(as_tensors(dataset, "dataset"), device, dtype)
    evaluation = on_device(as_tensors(eval_set, "eval_set"), device, dtype) if eval_set is not None else None
    n = len(x)
    per_epoch = math.ceil(n / batch_size)
    total = steps if steps is not None else epochs * per_epoch
    config = {
        "epochs": epochs,
        "steps": total,
        "batch_size": batch_size,
        "optimizer": optimizer,
        "lr": float(lr),
        "momentum": float(momentum),
        "l1": float(l1),
        "l2": float(l2),
        "clip_grad_norm": None if clip_grad_norm is None else float(clip_grad_norm),
        "loss": loss_name,
        "seed": int(seed),
        "n_train": n,
        "n_eval": None if evaluation is None else len(evaluation[0]),
        "prune": None if prune is None else prune.resolved(total).to_dict(),
        "regularizer": None if reg is None else {"penalty": _name(reg[0]), "weight": reg[1]},
    }
    label = "train" if prune is None else "prune"

    opt = make_optimizer(params, optimizer, lr, momentum)
    pruner = Pruner(model, prune, total) if prune is not None else None
    if pruner is not None:
        pruner.attach()  # after the optimizer: the same Parameter objects, moved to ``weight_orig``
    gen = torch.Generator().manual_seed(int(seed))  # the order of the examples
    checkpointer = Checkpointer(checkpoint, checkpoint_every, config, format=CHECKPOINT_FORMAT)
    saved = checkpointer.load()
    if saved is not None and saved["finished"]:
        if pruner is not None:
            pruner.finish()
        model.load_state_dict(saved["model"])
        model.eval()
        log.info("checkpoint '%s' holds a finished run: returning its result", checkpoint)
        return TrainResult.from_dict(saved["result"])
    if saved is not None:
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        gen.set_state(saved["generator"])
        log.info("resuming training from '%s' at step %d/%d", checkpoint, saved["step"], total)
    state = LoopState() if saved is None else LoopState.from_dict(saved)
    before = saved["seconds"] if saved else 0.0
    start = time.perf_counter()
    sparsity = pruner.mask_sparsity() if pruner is not None else None

    def seconds() -> float:
        return before + time.perf_counter() - start

    def snapshot(result: TrainResult | None = None) -> dict[str, Any]:
        return {
            "finished": result is not None,
            "result": None if result is None else result.to_dict(),
            **state.to_dict(),
            "seconds": seconds(),
            "model": model.state_dict(),
            "optimizer": None if result is not None else opt.state_dict(),
            "generator": gen.get_state(),
            "rng": torch.get_rng_state(),
        }

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        if saved is None:  # dropout draws from the global RNG, forked here and seeded from ``seed``
            torch.manual_seed(derive(int(seed), "dropout"))
        else:
            torch.set_rng_state(saved["rng"])
        while state.step < total:
            if state.batch == 0:
                state.start_epoch(torch.randperm(n, generator=gen))
            if pruner is not None and pruner.update(state.step):
                sparsity = pruner.mask_sparsity()
            idx = state.batch_indices(batch_size).to(device)
            xb, yb = x[idx], y[idx]
            out = train_step(model, opt, loss_fn, xb, yb, params=params, l1=l1, l2=l2, regularizer=reg,
                             clip_grad_norm=clip_grad_norm, step=state.step)  # fmt: skip
            state.count(out.loss, out.outputs, yb)
            info: dict[str, Any] = {"epoch": state.epoch + 1, "loss": out.loss, "penalty": out.penalty}
            if sparsity is not None:
                info["sparsity"] = dict(sparsity)
            if state.batch == per_epoch or state.step == total:
                ev = evaluate_tensors(model, *evaluation, loss_fn, eval_batch_size) if evaluation else None
                record = state.end_epoch(per_epoch, ev, sparsity, seconds())
                info.update(epoch_end=True, train_loss=record.train_loss,
                            train_accuracy=record.train_accuracy, eval_loss=record.eval_loss,
                            eval_accuracy=record.eval_accuracy)  # fmt: skip
                log.debug("epoch %d step %d/%d: %s", record.epoch, state.step, total, record)
            if checkpointer.due(state.step) and state.step < total:
                checkpointer.save(snapshot())
                log.debug("checkpoint at step %d written to '%s'", state.step, checkpoint)
            notify(progress, label, state.step, total, info)

        final_sparsity = pruner.finish() if pruner is not None else None
        model.eval()
        last = state.history[-1]
        result = TrainResult(
            steps=total,
            epochs=total / per_epoch,
            batches_per_epoch=per_epoch,
            train_loss=last.train_loss,
            train_accuracy=last.train_accuracy,
            eval_loss=last.eval_loss,
            eval_accuracy=last.eval_accuracy,
            history=tuple(state.history),
            seconds=seconds(),
            sparsity=final_sparsity,
            config=config,
            resumed_from=None if saved is None else saved["step"],
        )
        checkpointer.save(snapshot(result))
    log.info("trained %d steps (%.2f epochs) in %.1f s: train loss %.4g, eval accuracy %s",
             total, result.epochs, result.seconds, result.train_loss, result.eval_accuracy)  # fmt: skip
    return result


def _name(fn: Any) -> str:
    inner = getattr(fn, "func", fn)  # functools.partial
    return getattr(inner, "__qualname__", type(inner).__name__)
