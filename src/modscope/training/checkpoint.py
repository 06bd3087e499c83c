"""Checkpoints of a training run: model, optimizer, RNG states, position (see :mod:`modscope.checkpoint`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from modscope import checkpoint

__all__ = ["CHECKPOINT_FORMAT", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_FORMAT = "modscope.training.checkpoint/1"


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    return checkpoint.save_checkpoint(path, state, format=CHECKPOINT_FORMAT)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any] | None:
    """The state saved at ``path`` (``None`` when there is no file); ``ValueError`` if it is not one."""
    return checkpoint.load_checkpoint(path, format=CHECKPOINT_FORMAT)
