"""A training run that keeps its network every few steps, for analyses of how modularity develops.

:func:`train_with_snapshots` runs :func:`~modscope.training.train` (seeded, checkpointed, resumable) and saves
the network as a modscope model file (:func:`~modscope.models.save_model`, readable by
:func:`~modscope.models.load_model` and every ``modscope`` command) before the first update and every
``every`` updates, and after the last.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from modscope.atomic import finite
from modscope.models import save_model
from modscope.progress import Progress, notify
from modscope.training.checkpoint import load_checkpoint
from modscope.training.loop import train
from modscope.training.result import TrainResult

__all__ = ["SNAPSHOT_FORMAT", "snapshot_path", "snapshot_steps", "train_with_snapshots"]

SNAPSHOT_FORMAT = "modscope.snapshot/1"


def snapshot_steps(total: int, every: int) -> list[int]:
    """The steps a run of ``total`` updates keeps: 0, every ``every`` updates, and ``total``."""
    return sorted({*range(0, total, every), total})


def snapshot_path(folder: str | os.PathLike, step: int) -> Path:
    """Where :func:`train_with_snapshots` keeps the network after ``step`` updates."""
    return Path(folder) / f"step-{step:07d}.safetensors"


def train_with_snapshots(
    model: nn.Module,
    spec: Any,
    dataset: Any,
    *,
    every: int,
    folder: str | os.PathLike,
    checkpoint: str | os.PathLike | None = None,
    progress: Progress | None = None,
    **settings: Any,
) -> tuple[TrainResult, list[tuple[int, Path]]]:
    """Train ``model`` in place with :func:`~modscope.training.train` (``settings``: its keyword arguments,
    e.g. ``steps``, ``epochs``, ``lr``, ``seed``, ``eval_set``), keeping it at :func:`snapshot_steps`.

    Each snapshot is ``folder/step-NNNNNNN.safetensors`` (:func:`snapshot_path`), a model file of ``spec``
    (which must describe ``model``) whose metadata holds ``{"format": "modscope.snapshot/1", "step": s}``.
    Training checkpoints to ``checkpoint`` (default ``folder/train.pt``) every ``every`` steps, so an
    interrupted call resumes where it stopped and ends with the same snapshots, bit for bit, as an
    uninterrupted one (:func:`train`'s determinism). ``progress`` is passed on to :func:`train` (label
    ``"train"``).

    Returns ``(result, [(step, path), ...])``, the snapshots in step order.

    Raises:
        ValueError: ``every`` not a positive int, ``settings`` with ``prune`` (a pruning phase's weights are
            only final at its end) or ``checkpoint_every`` (set to ``every``), or what
            :func:`train` refuses.
    """
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"every must be a positive int, got {every!r}")
    taken = sorted({"prune", "checkpoint_every"} & set(settings))
    if taken:
        raise ValueError(f"train_with_snapshots sets or forbids {taken}; leave them out")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    checkpoint = folder / "train.pt" if checkpoint is None else Path(checkpoint)

    def keep(step: int) -> None:
        path = snapshot_path(folder, step)
        if not path.is_file():
            save_model(model, spec, path, extra_metadata=finite({"format": SNAPSHOT_FORMAT, "step": step}))

    saved = load_checkpoint(checkpoint)
    if saved is None:
        keep(0)
    elif not saved["finished"] and not snapshot_path(folder, saved["step"]).is_file():
        # stopped between the checkpoint and the snapshot of the same step: the checkpoint holds its weights
        model.load_state_dict(saved["model"])
        keep(saved["step"])

    def hook(label: str, done: int, total: int, info: Any) -> None:
        if done % every == 0 or done == total:
            keep(done)
        notify(progress, label, done, total, info)

    result = train(model, dataset, checkpoint=checkpoint, checkpoint_every=every, progress=hook, **settings)
    steps = snapshot_steps(result.steps, every)
    missing = [s for s in steps if not snapshot_path(folder, s).is_file()]
    if missing:  # a finished checkpoint from a folder whose snapshots were deleted
        raise ValueError(f"{folder} lacks the snapshots of steps {missing}; delete {checkpoint} to retrain")
    return result, [(s, snapshot_path(folder, s)) for s in steps]
