"""Training data as two in-memory tensors, and the batches drawn from them."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["as_tensors", "on_device"]


def as_tensors(dataset: Any, what: str = "dataset") -> tuple[Tensor, Tensor]:
    """``(inputs, targets)`` tensors, first dimension ``N`` = number of examples, for ``dataset``.

    Accepted: a pair ``(inputs, targets)`` of tensors or NumPy arrays; a ``TensorDataset`` of two tensors;
    any map-style dataset (``len`` and ``__getitem__`` returning ``(input, target)``), whose examples are
    stacked into memory (fine for the small sets modscope trains on). Integer targets become ``int64``.

    Raises:
        ValueError / TypeError: naming ``what``, for anything else, empty data or mismatched lengths.
    """
    if isinstance(dataset, (tuple, list)) and len(dataset) == 2:
        x, y = dataset
    elif isinstance(dataset, torch.utils.data.TensorDataset):
        if len(dataset.tensors) != 2:
            raise ValueError(
                f"{what}: a TensorDataset of (inputs, targets), got {len(dataset.tensors)} tensors"
            )
        x, y = dataset.tensors
    elif hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__"):
        items = [dataset[i] for i in range(len(dataset))]
        if not items:
            raise ValueError(f"{what} is empty")
        x = torch.stack([torch.as_tensor(it[0]) for it in items])
        y = torch.stack([torch.as_tensor(it[1]) for it in items])
    else:
        raise TypeError(
            f"{what} must be a pair (inputs, targets) of tensors or arrays, or a torch Dataset; "
            f"got {type(dataset).__name__}"
        )
    x, y = _tensor(x, what, "inputs"), _tensor(y, what, "targets")
    if x.ndim == 0 or y.ndim == 0:
        raise ValueError(f"{what}: inputs and targets need a first (example) dimension")
    if len(x) != len(y):
        raise ValueError(f"{what}: {len(x)} inputs but {len(y)} targets")
    if len(x) == 0:
        raise ValueError(f"{what} is empty")
    if not (y.is_floating_point() or y.is_complex()) and y.dtype != torch.bool:
        y = y.long()
    return x, y


def on_device(data: tuple[Tensor, Tensor], device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """``(inputs, targets)`` moved to ``device``; floating-point inputs cast to ``dtype`` (the model's)."""
    x, y = data
    x = x.to(device, dtype) if x.is_floating_point() else x.to(device)
    return x, y.to(device)


def _tensor(a: Any, what: str, part: str) -> Tensor:
    if isinstance(a, Tensor):
        return a.detach()
    if isinstance(a, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(a))
    try:
        return torch.as_tensor(a)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(f"{what}: {part} must be a tensor or an array, got {type(a).__name__}") from exc
