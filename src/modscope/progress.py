"""One progress protocol for the whole library: ``progress(label, done, total, info)``.

Every long computation (training, mask training, clustering and its shuffles, lesion studies, whole
reproductions) accepts ``progress: Progress | None`` and calls it after each unit of work with

- ``label``: what is counted (``"train"``, ``"masks"``, ``"shuffles"``, ``"modules"``, ...);
- ``done``, ``total``: units finished so far and in all (``0 <= done <= total``);
- ``info``: a dict of extra numbers for a display (``{"loss": 0.12}``; may be empty).

The library never prints; the CLI turns the calls into tqdm bars (``modscope.cli.progress.bars``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

__all__ = ["Progress", "labelled", "notify"]


class Progress(Protocol):
    def __call__(self, label: str, done: int, total: int, info: Mapping[str, Any]) -> None: ...


def notify(
    progress: Progress | None, label: str, done: int, total: int, info: Mapping[str, Any] | None = None
) -> None:
    """Call ``progress`` if there is one (``info`` defaults to an empty dict)."""
    if progress is not None:
        progress(label, done, total, {} if info is None else info)


def labelled(progress: Progress | None, prefix: str) -> Progress | None:
    """``progress`` with every label prefixed (``"cnn-3 train"``) for nested work; ``None`` stays ``None``."""
    if progress is None:
        return None

    def inner(label: str, done: int, total: int, info: Mapping[str, Any]) -> None:
        progress(f"{prefix} {label}", done, total, info)

    return inner
