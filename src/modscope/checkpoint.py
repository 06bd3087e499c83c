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

__all__ = ["Checkpointer", "load_checkpoint", "save_checkpoint"]


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


class Checkpointer:
    """Where and how often a loop checkpoints, and the check that a checkpoint belongs to this run.

    ``path`` ``None`` turns checkpointing off (every method is then a no-op). ``config`` holds every setting
    that determines the run's result: a checkpoint saved under other settings is refused, naming each
    difference, so that a resumed run can never silently mix two runs.
    """

    def __init__(self, path: str | os.PathLike | None, every: int, config: dict[str, Any], *, format: str):
        self.path = None if path is None else Path(path)
        self.every, self.config, self.format = every, config, format

    def load(self) -> dict[str, Any] | None:
        """The saved state (``None`` without a path or a file); ValueError if it is from another run."""
        if self.path is None:
            return None
        state = load_checkpoint(self.path, format=self.format)
        if state is not None:
            saved = state.get("config")
            saved = saved if isinstance(saved, dict) else {}
            diff = sorted(k for k in set(saved) | set(self.config) if saved.get(k) != self.config.get(k))
            if diff:
                now = self.config
                shown = "; ".join(f"{k}: checkpoint {saved.get(k)!r}, now {now.get(k)!r}" for k in diff)
                raise ValueError(f"checkpoint '{self.path}' is from a run with other settings ({shown})")
        return state

    def due(self, step: int) -> bool:
        """Whether to save after ``step`` steps (every ``every`` steps)."""
        return self.path is not None and step % self.every == 0

    def save(self, state: dict[str, Any]) -> None:
        """Write ``{"config": config, **state}`` atomically (nothing without a path)."""
        if self.path is not None:
            save_checkpoint(self.path, {"config": self.config, **state}, format=self.format)
