"""Where a training run stands: position in the run and the epoch, the epoch's order and running sums, and
the history of finished epochs -- everything besides model, optimizer and RNG states that a checkpoint must
hold for a resumed run to continue bit for bit."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from modscope.training.losses import correct
from modscope.training.result import EpochRecord, Evaluation

__all__ = ["LoopState"]


@dataclass
class LoopState:
    """The position of a run of :func:`~modscope.training.train` (mutable; advanced by the driver).

    ``step``: updates done; ``epoch``: epochs completed; ``batch``: batches done in the current epoch;
    ``perm``: the current epoch's order of the examples; ``loss_sum``/``hits``/``seen``/``scored``: the
    current epoch's summed batch losses (weighted by batch size), correct examples, examples, and examples
    with an accuracy; ``history``: one record per finished (or, at the end, partial) epoch.
    """

    step: int = 0
    epoch: int = 0
    batch: int = 0
    perm: Tensor | None = None
    loss_sum: float = 0.0
    hits: int = 0
    seen: int = 0
    scored: int = 0
    history: list[EpochRecord] = field(default_factory=list)

    def start_epoch(self, perm: Tensor) -> None:
        """Begin an epoch visiting the examples in the order ``perm``."""
        self.perm = perm
        self.loss_sum, self.hits, self.seen, self.scored = 0.0, 0, 0, 0

    def batch_indices(self, batch_size: int) -> Tensor:
        """The indices of the current batch (the last one of an epoch may be smaller)."""
        assert self.perm is not None, "start_epoch first"
        return self.perm[self.batch * batch_size : (self.batch + 1) * batch_size]

    def count(self, loss: float, outputs: Tensor, targets: Tensor) -> None:
        """Account one update on a batch: its task loss, and its accuracy when the targets have one."""
        self.step += 1
        self.batch += 1
        k = len(targets)
        self.loss_sum += loss * k
        self.seen += k
        with torch.no_grad():
            hit = correct(outputs, targets)
        if hit is not None:
            self.hits += int(hit.sum())
            self.scored += k

    def end_epoch(
        self, per_epoch: int, ev: Evaluation | None, sparsity: dict[str, float] | None, seconds: float
    ) -> EpochRecord:
        """Record the epoch (complete, or partial at the end of the run) and move to the next one when it is
        complete."""
        record = EpochRecord(
            epoch=self.epoch + 1,
            step=self.step,
            batches=self.batch,
            train_loss=self.loss_sum / self.seen,
            train_accuracy=self.hits / self.scored if self.scored else None,
            eval_loss=None if ev is None else ev.loss,
            eval_accuracy=None if ev is None else ev.accuracy,
            sparsity=None if sparsity is None else dict(sparsity),
            seconds=seconds,
        )
        self.history.append(record)
        if self.batch == per_epoch:
            self.epoch += 1
            self.batch = 0
        return record

    def to_dict(self) -> dict[str, Any]:
        """The checkpoint fields (``step``, ``epoch``, ``batch``, ``perm``, ``sums``, ``history``)."""
        return {
            "step": self.step,
            "epoch": self.epoch,
            "batch": self.batch,
            "perm": self.perm,
            "sums": [self.loss_sum, self.hits, self.seen, self.scored],
            "history": [asdict(r) for r in self.history],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LoopState:
        loss_sum, hits, seen, scored = d["sums"]
        history = [EpochRecord(**r) for r in d["history"]]
        return cls(d["step"], d["epoch"], d["batch"], d["perm"], loss_sum, hits, seen, scored, history)
