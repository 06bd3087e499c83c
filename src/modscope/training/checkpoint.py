"""Checkpoints of a training run: model, optimizer, RNG states and position, written atomically."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from modscope.atomic import atomic_path

__all__ = ["CHECKPOINT_FORMAT", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_FORMAT = "modscope.training.checkpoint/1"


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """``torch.save`` ``state`` (tensors and plain containers only) to ``path`` atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            torch.save({"format": CHECKPOINT_FORMAT, **state}, f)
            f.flush()
            os.fsync(f.fileno())
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any] | None:
    """The state saved at ``path``; ``None`` when there is no file. Read with ``weights_only=True``.

    Raises:
        ValueError: an unreadable file or one that is not a modscope training checkpoint.
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several unrelated types for a corrupt or foreign file
        raise ValueError(f"training checkpoint '{path}' cannot be read: {exc}") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"'{path}' is not a modscope training checkpoint ({CHECKPOINT_FORMAT})")
    return state
