"""The training loop: seeded, deterministic on CPU, checkpointed and resumable.

Used to make the base networks modscope analyses: the MLPs of Filan et al. ("Clusterability in Neural
Networks", arXiv:2103.03386; Adam 1e-3, batch 128, 20 epochs, optional dropout, L1/L2 penalties,
pruning, clusterable init) and the arithmetic FNNs of Csordás et al. ("Are Neural Nets Modular?",
arXiv:2010.02066; Adam 1e-3, batch 128, 20k steps, per-digit cross-entropy).
"""

from __future__ import annotations

import hashlib
import logging
import math
import numbers
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import torch
from torch import Tensor, nn

from modscope.atomic import check_writable
from modscope.training.checkpoint import load_checkpoint, save_checkpoint
from modscope.training.data import as_tensors
from modscope.training.losses import LossFn, correct, resolve_loss
from modscope.training.prune import Pruner, PruneSchedule
from modscope.training.regularizer import weight_penalty
from modscope.training.result import EpochRecord, Evaluation, TrainResult

__all__ = ["OPTIMIZERS", "Progress", "Regularizer", "evaluate", "train"]

log = logging.getLogger(__name__)

Progress = Callable[[int, int, dict[str, Any]], None]
Regularizer = tuple[Callable[[nn.Module], Tensor], float]
OPTIMIZERS = ("adam", "sgd")


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
        seed: seeds shuffling and dropout.
        eval_set: evaluated (eval mode) at the end of every epoch; same forms as ``dataset``.
        eval_batch_size: batch size of evaluation (default 1024).
        progress: ``progress(step, total_steps, info)`` after every update; ``info`` has ``epoch``,
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
        ValueError: invalid arguments (the message names the value), a non-finite loss (naming the step),
            a checkpoint from a run with other settings.
    """
    _check(epochs, steps, batch_size, optimizer, lr, momentum, l1, l2, clip_grad_norm, seed, eval_batch_size)
    _positive_int(checkpoint_every, "checkpoint_every")
    if checkpoint is not None:  # before any work: a typo must not cost the run
        check_writable(checkpoint, name="checkpoint")
    if prune is not None and not isinstance(prune, PruneSchedule):
        raise TypeError(f"prune must be a PruneSchedule, got {type(prune).__name__}")
    reg_fn, reg_weight = _check_regularizer(regularizer)
    loss_name, loss_fn = resolve_loss(loss)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    device, dtype = params[0].device, params[0].dtype
    x, y = _to(as_tensors(dataset, "dataset"), device, dtype)
    evaluation = _to(as_tensors(eval_set, "eval_set"), device, dtype) if eval_set is not None else None
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
        "regularizer": None if reg_fn is None else {"penalty": _name(reg_fn), "weight": float(reg_weight)},
    }

    if optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(params, lr=lr)
    else:
        opt = torch.optim.SGD(params, lr=lr, momentum=momentum)
    pruner = Pruner(model, prune, total) if prune is not None else None
    if pruner is not None:
        pruner.attach()  # after the optimizer: the same Parameter objects, moved to ``weight_orig``

    gen = torch.Generator().manual_seed(int(seed))
    state = load_checkpoint(checkpoint) if checkpoint is not None else None
    if state is not None:
        _same_config(state["config"], config, checkpoint)
        if state["finished"]:
            if pruner is not None:
                pruner.finish()
            model.load_state_dict(state["model"])
            model.eval()
            log.info("checkpoint '%s' holds a finished run: returning its result", checkpoint)
            return TrainResult.from_dict(state["result"])
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        log.info("resuming training from '%s' at step %d/%d", checkpoint, state["step"], total)

    step = state["step"] if state else 0
    epoch = state["epoch"] if state else 0  # epochs completed
    batch = state["batch"] if state else 0  # batches done in the current epoch
    perm = state["perm"] if state else None
    loss_sum, hits, seen, scored = state["sums"] if state else (0.0, 0, 0, 0)
    history = [EpochRecord(**r) for r in state["history"]] if state else []
    before = state["seconds"] if state else 0.0
    resumed_from = state["step"] if state else None
    start = time.perf_counter()
    sparsity = pruner.mask_sparsity() if pruner is not None else None

    def snapshot(finished: bool, result: TrainResult | None = None) -> dict[str, Any]:
        return {
            "config": config,
            "finished": finished,
            "result": None if result is None else result.to_dict(),
            "step": step,
            "epoch": epoch,
            "batch": batch,
            "perm": perm,
            "sums": [loss_sum, hits, seen, scored],
            "history": [asdict(r) for r in history],
            "seconds": before + time.perf_counter() - start,
            "model": model.state_dict(),
            "optimizer": None if finished else opt.state_dict(),
            "generator": gen.get_state(),
            "rng": torch.get_rng_state(),
        }

    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        if state is None:
            torch.manual_seed(_derived_seed(int(seed), "dropout"))
        else:
            torch.set_rng_state(state["rng"])
        while step < total:
            if batch == 0:
                perm = torch.randperm(n, generator=gen)
                loss_sum, hits, seen, scored = 0.0, 0, 0, 0
            if pruner is not None and pruner.update(step):
                sparsity = pruner.mask_sparsity()
            idx = perm[batch * batch_size : (batch + 1) * batch_size].to(device)
            xb, yb = x[idx], y[idx]
            model.train()
            out = model(xb)
            task = loss_fn(out, yb)
            penalty = weight_penalty(model, l1, l2) if (l1 or l2) else None
            if reg_fn is not None:
                reg = reg_weight * reg_fn(model)
                penalty = reg if penalty is None else penalty + reg
            total_loss = task if penalty is None else task + penalty
            value = float(task.detach())
            if not math.isfinite(value) or not bool(torch.isfinite(total_loss.detach())):
                raise ValueError(
                    f"training diverged: loss is {value} (with penalties {float(total_loss.detach())}) at "
                    f"step {step + 1}; lower lr or enable clip_grad_norm"
                )
            opt.zero_grad(set_to_none=True)
            total_loss.backward()
            if clip_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, clip_grad_norm)
            opt.step()
            step += 1
            batch += 1
            k = len(idx)
            loss_sum += value * k
            seen += k
            with torch.no_grad():
                hit = correct(out.detach(), yb)
            if hit is not None:
                hits += int(hit.sum())
                scored += k
            info: dict[str, Any] = {"epoch": epoch + 1, "loss": value}
            info["penalty"] = 0.0 if penalty is None else float(penalty.detach())
            if sparsity is not None:
                info["sparsity"] = dict(sparsity)
            if batch == per_epoch or step == total:
                ev = _evaluate(model, *evaluation, loss_fn, eval_batch_size) if evaluation else None
                record = EpochRecord(
                    epoch=epoch + 1,
                    step=step,
                    batches=batch,
                    train_loss=loss_sum / seen,
                    train_accuracy=hits / scored if scored else None,
                    eval_loss=None if ev is None else ev.loss,
                    eval_accuracy=None if ev is None else ev.accuracy,
                    sparsity=None if sparsity is None else dict(sparsity),
                    seconds=before + time.perf_counter() - start,
                )
                history.append(record)
                info.update(
                    epoch_end=True,
                    train_loss=record.train_loss,
                    train_accuracy=record.train_accuracy,
                    eval_loss=record.eval_loss,
                    eval_accuracy=record.eval_accuracy,
                )
                log.debug("epoch %d step %d/%d: %s", epoch + 1, step, total, record)
                if batch == per_epoch:
                    epoch += 1
                    batch = 0
            if checkpoint is not None and step % checkpoint_every == 0 and step < total:
                save_checkpoint(checkpoint, snapshot(False))
                log.debug("checkpoint at step %d written to '%s'", step, checkpoint)
            if progress is not None:
                progress(step, total, info)

        final_sparsity = pruner.finish() if pruner is not None else None
        model.eval()
        last = history[-1]
        result = TrainResult(
            steps=total,
            epochs=total / per_epoch,
            batches_per_epoch=per_epoch,
            train_loss=last.train_loss,
            train_accuracy=last.train_accuracy,
            eval_loss=last.eval_loss,
            eval_accuracy=last.eval_accuracy,
            history=tuple(history),
            seconds=before + time.perf_counter() - start,
            sparsity=final_sparsity,
            config=config,
            resumed_from=resumed_from,
        )
        if checkpoint is not None:
            save_checkpoint(checkpoint, snapshot(True, result))
    log.info(
        "trained %d steps (%.2f epochs) in %.1f s: train loss %.4g, eval accuracy %s",
        total,
        result.epochs,
        result.seconds,
        result.train_loss,
        result.eval_accuracy,
    )
    return result


def evaluate(
    model: nn.Module, dataset: Any, *, loss: str | LossFn = "cross_entropy", batch_size: int = 1024
) -> Evaluation:
    """Mean loss and accuracy of ``model`` on ``dataset`` in eval mode, without gradients.

    ``dataset`` and ``loss`` as in :func:`train`. The model's training/eval mode is restored afterwards.
    """
    _positive_int(batch_size, "batch_size")
    _, loss_fn = resolve_loss(loss)
    p = next(model.parameters())
    x, y = _to(as_tensors(dataset, "dataset"), p.device, p.dtype)
    return _evaluate(model, x, y, loss_fn, batch_size)


def _evaluate(model: nn.Module, x: Tensor, y: Tensor, loss_fn: LossFn, batch_size: int) -> Evaluation:
    was_training = model.training
    model.eval()
    total, hits, scored = 0.0, 0, 0
    try:
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                xb, yb = x[i : i + batch_size], y[i : i + batch_size]
                out = model(xb)
                total += float(loss_fn(out, yb)) * len(xb)
                hit = correct(out, yb)
                if hit is not None:
                    hits += int(hit.sum())
                    scored += len(xb)
    finally:
        model.train(was_training)
    return Evaluation(loss=total / len(x), accuracy=hits / scored if scored else None, n=len(x))


# ---------------------------------------------------------------------------------------------- helpers
def _to(data: tuple[Tensor, Tensor], device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    x, y = data
    x = x.to(device, dtype) if x.is_floating_point() else x.to(device)
    return x, y.to(device)


def _derived_seed(seed: int, purpose: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}\0{purpose}".encode()).digest()[:8], "little") >> 1


def _name(fn: Any) -> str:
    inner = getattr(fn, "func", fn)  # functools.partial
    return getattr(inner, "__qualname__", type(inner).__name__)


def _positive_int(v: Any, name: str) -> None:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
        raise ValueError(f"{name} must be a positive int, got {v!r}")


def _number(v: Any, name: str, *, positive: bool = False) -> None:
    ok = isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)
    if not ok or (v <= 0 if positive else v < 0):
        want = "a positive" if positive else "a non-negative"
        raise ValueError(f"{name} must be {want} finite number, got {v!r}")


def _check(epochs, steps, batch_size, optimizer, lr, momentum, l1, l2, clip, seed, eval_batch_size) -> None:
    if epochs is not None and steps is not None:
        raise ValueError(f"give epochs or steps, not both (got epochs={epochs!r}, steps={steps!r})")
    if epochs is None and steps is None:
        raise ValueError("give the length of the run: epochs=... or steps=...")
    if epochs is not None:
        _positive_int(epochs, "epochs")
    if steps is not None:
        _positive_int(steps, "steps")
    _positive_int(batch_size, "batch_size")
    _positive_int(eval_batch_size, "eval_batch_size")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {OPTIMIZERS}")
    _number(lr, "lr", positive=True)
    _number(momentum, "momentum")
    if momentum >= 1:
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
    if momentum and optimizer != "sgd":
        raise ValueError(f"momentum={momentum!r} is for optimizer='sgd', not {optimizer!r}")
    _number(l1, "l1")
    _number(l2, "l2")
    if clip is not None:
        _number(clip, "clip_grad_norm", positive=True)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")


def _check_regularizer(regularizer: Any) -> tuple[Callable[[nn.Module], Tensor] | None, float]:
    if regularizer is None:
        return None, 0.0
    if not (isinstance(regularizer, (tuple, list)) and len(regularizer) == 2 and callable(regularizer[0])):
        raise ValueError(f"regularizer must be a pair (penalty_fn, weight), got {regularizer!r}")
    _number(regularizer[1], "regularizer weight")
    return regularizer[0], float(regularizer[1])


def _same_config(saved: dict[str, Any], now: dict[str, Any], path: Any) -> None:
    diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    if diff:
        shown = "; ".join(f"{k}: checkpoint {saved.get(k)!r}, now {now.get(k)!r}" for k in diff)
        raise ValueError(f"checkpoint '{path}' is from a run with other settings ({shown})")
