"""The data of one mask-training task as an endless, resumable stream of batches, and the batch convention.

A batch is ``(inputs, targets)``: ``targets`` a batch-first tensor handed to the loss function, ``inputs``
what the model is called with: a tensor ``x`` (``model(x)``), a tuple or list (``model(*inputs)``), or a
mapping such as a ``dict`` or a Hugging Face ``BatchEncoding`` (``model(**inputs)``). A batch may also be a
single mapping holding the targets under ``"labels"`` (the Hugging Face data collators' layout): the other
entries are the keyword inputs. Every tensor among the inputs is batch-first (split per example group along
dim 0); other values (``return_dict=True``, a string) are passed unchanged to every call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import Tensor, nn

__all__ = ["LABELS", "Batch", "ModelInputs", "TaskBatches", "as_batch"]

#: the key of the targets in a batch given as one mapping (Hugging Face's name)
LABELS = "labels"


@dataclass(frozen=True)
class ModelInputs:
    """``model(*args, **kwargs)``: the inputs of one batch, every tensor (at any depth) batch-first."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]

    @classmethod
    def of(cls, inputs: Any) -> ModelInputs:
        """A tensor, a tuple / list (positional) or a mapping (keyword, e.g. a ``BatchEncoding``)."""
        if isinstance(inputs, ModelInputs):
            return inputs
        if isinstance(inputs, Mapping):
            if not all(isinstance(k, str) for k in inputs):
                raise ValueError(f"keyword inputs need string keys, got {list(inputs)!r}")
            return cls((), dict(inputs))
        return cls(tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,), {})

    def flatten(self) -> tuple[list[Tensor], Callable[[list[Tensor]], ModelInputs]]:
        """The tensors (in a fixed order) and a function rebuilding the inputs from replacements of them."""
        leaves, spec = pytree.tree_flatten((self.args, self.kwargs))
        where = [i for i, v in enumerate(leaves) if isinstance(v, Tensor)]

        def rebuild(tensors: list[Tensor]) -> ModelInputs:
            new = list(leaves)
            for i, t in zip(where, tensors, strict=True):
                new[i] = t
            args, kwargs = pytree.tree_unflatten(new, spec)
            return ModelInputs(args, kwargs)

        return [leaves[i] for i in where], rebuild

    def structure(self) -> tuple[Any, ...]:
        """What must agree for two inputs to be stacked: the tree, the non-tensor values, the tensor shapes
        and dtypes."""
        leaves, spec = pytree.tree_flatten((self.args, self.kwargs))
        return (str(spec), tuple((tuple(v.shape), v.dtype) if isinstance(v, Tensor) else ("value", repr(v))
                                 for v in leaves))  # fmt: skip

    @property
    def batch_size(self) -> int:
        """The examples along dim 0 of the first batch-first tensor (ValueError when there is none)."""
        for t in self.flatten()[0]:
            if t.ndim > 0:
                return int(t.shape[0])
        raise ValueError("no batch-first tensor among the inputs")

    def map(self, fn: Callable[[Tensor], Tensor]) -> ModelInputs:
        tensors, rebuild = self.flatten()
        return rebuild([fn(t) for t in tensors])

    def to(self, device: torch.device) -> ModelInputs:
        return self.map(lambda t: t.to(device))

    def split(self, samples: int) -> list[ModelInputs]:
        """``samples`` contiguous groups of examples, ``torch.tensor_split`` of every tensor along dim 0."""
        tensors, rebuild = self.flatten()
        parts = [torch.tensor_split(t, samples) for t in tensors]
        return [rebuild([p[s] for p in parts]) for s in range(samples)]

    def check(self, batch: int, where: str) -> None:
        """ValueError unless there is a tensor and every tensor has ``batch`` examples along dim 0 (naming the
        input)."""
        leaves, _ = pytree.tree_flatten_with_path((self.args, self.kwargs))
        if not any(isinstance(v, Tensor) for _, v in leaves):
            raise ValueError(f"{where}: the inputs hold no tensor to split per example group")
        for path, v in leaves:
            if isinstance(v, Tensor) and (v.ndim == 0 or v.shape[0] != batch):
                name = pytree.keystr(path[1:])
                raise ValueError(
                    f"{where}: every input tensor must be batch-first with the targets' {batch} examples; "
                    f"{'positional' if path[0].idx == 0 else 'keyword'} input {name} has shape "
                    f"{tuple(v.shape)}"
                )

    def __call__(self, model: nn.Module) -> Any:
        return model(*self.args, **self.kwargs)


Batch = tuple[ModelInputs, Tensor]


def as_batch(batch: Any, where: str) -> Batch:
    """``(inputs, targets)`` or a mapping with ``"labels"`` as :class:`ModelInputs` and targets, checked;
    ``where`` (e.g. ``"task 'a'"``) starts the error messages."""
    if isinstance(batch, Mapping):
        if LABELS not in batch:
            raise ValueError(
                f"{where}: a batch given as a mapping must hold its targets under {LABELS!r}, got keys "
                f"{list(batch)}; or pass (inputs, targets)"
            )
        inputs, targets = {k: v for k, v in batch.items() if k != LABELS}, batch[LABELS]
    else:
        try:
            inputs, targets = batch
        except (TypeError, ValueError):
            raise ValueError(f"{where}: a batch must be (inputs, targets), got {type(batch)}") from None
    if not isinstance(targets, Tensor) or targets.ndim == 0:
        raise ValueError(f"{where}: targets must be a batch-first tensor, got {type(targets).__name__}")
    model_inputs = ModelInputs.of(inputs)
    model_inputs.check(len(targets), where)
    return model_inputs, targets


class TaskBatches:
    """An endless stream of :class:`ModelInputs` and targets for one task (the convention of the module).

    ``batch_size=None``: cycle through the re-iterable ``source``, re-iterating at each epoch.
    ``batch_size=n``: ``source`` is one batch of tensors (``(inputs, targets)`` or a mapping with
    ``"labels"``); draw ``n`` examples with replacement from the task's ``generator`` (whose state is
    checkpointed, so a resumed run draws the same batches).
    """

    def __init__(self, task: str, source: Any, batch_size: int | None, generator: torch.Generator):
        self.task, self.source, self.batch_size, self.generator = task, source, batch_size, generator
        if batch_size is None:
            if not isinstance(source, Iterable) or isinstance(source, Mapping):
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
            if not (isinstance(source, Mapping) or (isinstance(source, (tuple, list)) and len(source) == 2)):
                raise ValueError(
                    f"task {task!r}: with batch_size, pass (inputs, targets) tensors, got {type(source)}"
                )
            self.inputs, self.targets = as_batch(source, f"task {task!r}")
            self.n = len(self.targets)
            if self.n == 0:
                raise ValueError(f"task {task!r}: inputs and targets must have the same, nonzero length")

    def __next__(self) -> Batch:
        if self.batch_size is not None:
            idx = torch.randint(self.n, (self.batch_size,), generator=self.generator)
            return self.inputs.map(lambda t: t[idx.to(t.device)]), self.targets[idx.to(self.targets.device)]
        for fresh in (False, True):
            if self._it is None or fresh:
                self._it = iter(self.source)
            try:
                batch = next(self._it)
            except StopIteration:
                continue
            return as_batch(batch, f"task {self.task!r}")
        raise ValueError(f"task {self.task!r}: the source yields no batches")

    def skip(self, n: int) -> None:
        """Replay ``n`` batches of an iterable source (a resumed run continues where the stream stood); a
        source drawn with ``batch_size`` needs nothing: its generator's state is restored instead."""
        if self.batch_size is None:
            for _ in range(n):
                next(self)
