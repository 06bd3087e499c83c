"""The data of one mask-training task as an endless, resumable stream of batches."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor

__all__ = ["TaskBatches"]

Batch = tuple[tuple[Tensor, ...], Tensor]


def _as_args(inputs: Any) -> tuple[Tensor, ...]:
    return tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)


class TaskBatches:
    """An endless stream of ``(args, targets)`` for one task (``args``: the model's positional inputs).

    ``batch_size=None``: cycle through the re-iterable ``source``, re-iterating at each epoch.
    ``batch_size=n``: ``source`` is ``(inputs, targets)`` tensors; draw ``n`` examples with replacement from
    the task's ``generator`` (whose state is checkpointed, so a resumed run draws the same batches).
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
            self._it: Iterator[Any] | None = None
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

    def __next__(self) -> Batch:
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

    def skip(self, n: int) -> None:
        """Replay ``n`` batches of an iterable source (a resumed run continues where the stream stood); a
        source drawn with ``batch_size`` needs nothing: its generator's state is restored instead."""
        if self.batch_size is None:
            for _ in range(n):
                next(self)
