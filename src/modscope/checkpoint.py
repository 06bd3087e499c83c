"""Checkpoints of long runs (training, mask training): torch state written atomically, read safely.

A checkpoint is a dict of tensors and plain containers saved with ``torch.save`` under a format tag.
It is written through :func:`modscope.atomic.atomic_path` (an interrupted write keeps the previous
checkpoint) and read with ``torch.load(weights_only=True)``, which refuses anything but tensors and plain
containers: loading a checkpoint never runs code.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from modscope.atomic import atomic_path

__all__ = ["load_checkpoint", "save_checkpoint"]


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any], *, format: str) -> Path:
    """Write ``{"format": format, **state}`` to ``path`` atomically (fsynced before it replaces the old)."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save({"format": format, **state}, f)
        f.flush()
        os.fsync(f.fileno())
    return path


def load_checkpoint(path: str | os.PathLike, *, format: str) -> dict[str, Any] | None:
    """The state saved at ``path``; ``None`` when there is no file yet.

    Raises:
        ValueError: an unreadable file, or one that is not a checkpoint of this ``format``.
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several unrelated types for a corrupt or foreign file
        raise ValueError(f"checkpoint '{path}' cannot be read: {exc}") from exc
    if not isinstance(state, dict) or state.get("format") != format:
        raise ValueError(f"'{path}' is not a modscope checkpoint of format {format!r}")
    return state
