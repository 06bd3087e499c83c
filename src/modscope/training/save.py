"""Save a trained network as a modscope model file, with its training settings and metrics."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from modscope.atomic import finite
from modscope.models import save_model
from modscope.training.result import TrainResult

__all__ = ["TRAINING_FORMAT", "save_trained"]

TRAINING_FORMAT = "modscope.training/1"


def save_trained(
    model: nn.Module,
    spec: str | Mapping[str, Any],
    path: str | os.PathLike,
    config: Mapping[str, Any] | None = None,
    result: TrainResult | None = None,
) -> Path:
    """Write ``model`` with :func:`modscope.models.save_model`, the CLI's and the structural lens' format.

    The file's ``extra_metadata`` (read back with :func:`modscope.models.read_metadata`) is::

        {"format": "modscope.training/1",
         "training": config,            # default: result.config (the settings train() used)
         "metrics": result.summary(),   # steps, epochs, losses, accuracies, seconds, sparsity
         "history": [...]}              # one dict per epoch (see EpochRecord)

    Extra JSON-able keys in ``config`` (data set name, dropout, init, ...) are kept as given. Non-finite
    numbers become ``null``. ``spec`` must describe ``model``. The write is atomic. Returns the path.

    Raises:
        ValueError: ``spec`` does not fit the model (a pruned model must be finished, i.e. masks removed,
            which :func:`~modscope.training.train` does), or ``config`` is not JSON-able.
    """
    if config is None:
        config = result.config if result is not None else {}
    meta: dict[str, Any] = {"format": TRAINING_FORMAT, "training": dict(config)}
    if result is not None:
        meta["metrics"] = result.summary()
        meta["history"] = result.to_dict()["history"]
    return save_model(model, spec, path, extra_metadata=finite(meta))
