"""What a training run reports: frozen dataclasses, JSON round-trip via ``to_dict`` / ``from_dict``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

__all__ = ["EpochRecord", "Evaluation", "TrainResult"]


@dataclass(frozen=True)
class Evaluation:
    """Loss and accuracy of a model on a data set, in eval mode.

    ``accuracy`` is the fraction of examples whose class (every digit, for ``(N, D)`` targets) is right,
    ``None`` for regression targets. ``n`` is the number of examples.
    """

    loss: float
    accuracy: float | None
    n: int


@dataclass(frozen=True)
class EpochRecord:
    """One pass over the training data (the last one may be partial: ``batches`` < batches per epoch).

    ``train_loss`` / ``train_accuracy`` are running means over the epoch's batches, in training mode (with
    dropout, before each update), of the task loss alone (no penalties). ``eval_*`` come from the
    evaluation set at the end of the epoch (``None`` without one). ``sparsity`` is each pruned layer's mask
    sparsity (``None`` when not pruning). ``step`` counts optimizer updates from the start of the run.
    """

    epoch: int
    step: int
    batches: int
    train_loss: float
    train_accuracy: float | None
    eval_loss: float | None = None
    eval_accuracy: float | None = None
    sparsity: dict[str, float] | None = None
    seconds: float = 0.0


@dataclass(frozen=True)
class TrainResult:
    """The outcome of :func:`~modscope.training.train`.

    Attributes:
        steps: optimizer updates done.
        epochs: passes over the data (``steps / batches_per_epoch``; fractional when trained by steps).
        batches_per_epoch: ``ceil(N / batch_size)``.
        train_loss, train_accuracy: those of the last (possibly partial) epoch, see :class:`EpochRecord`.
        eval_loss, eval_accuracy: final evaluation on ``eval_set`` (``None`` without one).
        history: one :class:`EpochRecord` per epoch.
        seconds: wall time, summed over resumed segments.
        sparsity: per-layer fraction of zero weights after pruning (``None`` when not pruned).
        config: the training settings, JSON-able (what :func:`~modscope.training.save_trained` stores).
        resumed_from: the step the run was resumed from a checkpoint at, else ``None``.
    """

    steps: int
    epochs: float
    batches_per_epoch: int
    train_loss: float
    train_accuracy: float | None
    eval_loss: float | None
    eval_accuracy: float | None
    history: tuple[EpochRecord, ...]
    seconds: float
    sparsity: dict[str, float] | None = None
    config: dict[str, Any] = field(default_factory=dict)
    resumed_from: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["history"] = [asdict(r) for r in self.history]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainResult:
        d = dict(d)
        d["history"] = tuple(EpochRecord(**r) for r in d.get("history", ()))
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def summary(self) -> dict[str, Any]:
        """The scalar metrics (no history, no config)."""
        return {k: v for k, v in self.to_dict().items() if k not in ("history", "config")}
