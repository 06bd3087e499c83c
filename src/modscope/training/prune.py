"""Magnitude pruning with a polynomial sparsity schedule (Filan et al., arXiv:2103.03386, §4).

Filan et al. make networks more clusterable by pruning after normal training: 20 further epochs during which
each layer's sparsity follows the polynomial schedule of Zhu & Gupta (2017, "To prune, or not to prune",
arXiv:1710.01878) from 50% to 90%, the smallest-magnitude weights of each layer being removed, with the
masks updated every 10 steps (TensorFlow Model Optimization's ``PolynomialDecay``). Here the masks are
:mod:`torch.nn.utils.prune` masks (``l1_unstructured`` per layer); they only ever grow, and at the end
they are made permanent with ``prune.remove`` (pruned weights become exact zeros).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from torch import nn
from torch.nn.utils import prune as torch_prune

from modscope.graph.blocks import weight_modules

__all__ = ["PruneSchedule", "Pruner", "layer_sparsity"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PruneSchedule:
    """Per-layer target sparsity ``s_t`` at optimizer step ``t`` (steps counted from the start of the run).

    ``s_t = final + (initial - final) * (1 - (t - begin_step) / (end_step - begin_step)) ** power`` for
    ``begin_step <= t <= end_step``; no pruning before ``begin_step``; ``final`` after ``end_step``. The
    masks are updated at ``t = begin_step, begin_step + frequency, ...`` up to ``end_step`` and also at
    ``end_step`` itself, so the final sparsity is always reached when the run lasts past ``end_step``.
    An update at step ``t`` happens before the ``t + 1``-th optimizer update.

    Attributes:
        initial: sparsity at ``begin_step`` (default 0.5, Filan et al.).
        final: sparsity at and after ``end_step`` (default 0.9).
        begin_step: first update (default 0).
        end_step: last update; ``None`` (default) = the last step of the training run it is given to.
        frequency: steps between updates (default 10).
        power: exponent of the polynomial (default 3).
        layers: module paths of the layers to prune; ``None`` (default) = every Linear/Conv layer,
            output layer included (as TensorFlow's ``prune_low_magnitude`` on a whole model).
    """

    initial: float = 0.5
    final: float = 0.9
    begin_step: int = 0
    end_step: int | None = None
    frequency: int = 10
    power: float = 3
    layers: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("initial", "final"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 <= v < 1:
                raise ValueError(f"PruneSchedule.{name} must be a sparsity in [0, 1), got {v!r}")
        if self.final < self.initial:
            raise ValueError(f"PruneSchedule.final ({self.final}) must be >= initial ({self.initial})")
        _int(self.begin_step, "begin_step", 0)
        _int(self.frequency, "frequency", 1)
        if self.end_step is not None:
            _int(self.end_step, "end_step", 0)
            if self.end_step < self.begin_step:
                raise ValueError(f"PruneSchedule.end_step ({self.end_step}) < begin_step ({self.begin_step})")
        if not isinstance(self.power, (int, float)) or isinstance(self.power, bool) or self.power <= 0:
            raise ValueError(f"PruneSchedule.power must be positive, got {self.power!r}")
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(str(n) for n in self.layers))

    def resolved(self, total_steps: int) -> PruneSchedule:
        """This schedule with ``end_step`` filled in as ``total_steps - 1`` when it is ``None``."""
        if self.end_step is not None:
            return self
        return replace(self, end_step=max(self.begin_step, total_steps - 1))

    def sparsity(self, step: int) -> float:
        """Target sparsity at ``step`` (0 before ``begin_step``); needs ``end_step`` (:meth:`resolved`)."""
        if self.end_step is None:
            raise ValueError("PruneSchedule.sparsity needs end_step; call resolved(total_steps) first")
        if step < self.begin_step:
            return 0.0
        if step >= self.end_step or self.end_step == self.begin_step:
            return float(self.final)
        frac = (step - self.begin_step) / (self.end_step - self.begin_step)
        return float(self.final + (self.initial - self.final) * (1 - frac) ** self.power)

    def is_update(self, step: int) -> bool:
        """Whether the masks are updated at ``step``."""
        if self.end_step is None:
            raise ValueError("PruneSchedule.is_update needs end_step; call resolved(total_steps) first")
        if not self.begin_step <= step <= self.end_step:
            return False
        return (step - self.begin_step) % self.frequency == 0 or step == self.end_step

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["layers"] = None if self.layers is None else list(self.layers)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PruneSchedule:
        d = dict(d)
        if d.get("layers") is not None:
            d["layers"] = tuple(d["layers"])
        return cls(**d)


def _int(v: Any, name: str, lo: int) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ValueError(f"PruneSchedule.{name} must be an int >= {lo}, got {v!r}")


def _count(n: int, sparsity: float) -> int:
    # round() of a float product: 0.9 * 10 = 9.000000000000002 must give 9, not ceil's 10
    return min(n, math.floor(sparsity * n + 0.5))


class Pruner:
    """Applies a :class:`PruneSchedule` to a model during training (used by :func:`~modscope.training.train`).

    :meth:`attach` puts an all-ones ``torch.nn.utils.prune`` mask on every selected layer (``weight`` becomes
    ``weight_orig * weight_mask``; the ``weight_orig`` parameter is the same object the optimizer holds), so
    the state dict has the same keys at every step and a checkpoint can be restored into it.
    :meth:`update` prunes the smallest-magnitude surviving weights of each layer until it has
    ``round(s_t * n)`` zeros; :meth:`finish` makes the masks permanent.
    """

    def __init__(self, model: nn.Module, schedule: PruneSchedule, total_steps: int):
        self.schedule = schedule.resolved(total_steps)
        if self.schedule.end_step >= total_steps:
            log.warning(
                "prune end_step %d is not before the end of the run (%d steps): the final sparsity %.2f "
                "is not reached",
                self.schedule.end_step,
                total_steps,
                self.schedule.final,
            )
        self.model = model
        self.layers = weight_modules(model, schedule.layers)

    def attach(self) -> None:
        for _, module in self.layers:
            if not torch_prune.is_pruned(module):
                torch_prune.identity(module, "weight")

    def update(self, step: int) -> bool:
        """Prune to the schedule's sparsity if ``step`` is an update step; returns whether it was."""
        if not self.schedule.is_update(step):
            return False
        target = self.schedule.sparsity(step)
        for _, module in self.layers:
            mask = module.weight_mask
            want = _count(mask.numel(), target)
            have = mask.numel() - int(mask.sum())
            if want > have:
                # Scores from the current weights: the module's ``weight`` attribute is only refreshed by
                # the next forward, so it still holds the values from before the last optimizer step.
                scores = module.weight_orig.detach() * mask
                torch_prune.l1_unstructured(module, "weight", amount=want - have, importance_scores=scores)
        return True

    def mask_sparsity(self) -> dict[str, float]:
        """Fraction of masked-out weights per pruned layer."""
        return {
            n: (m.weight_mask.numel() - int(m.weight_mask.sum())) / m.weight_mask.numel()
            for n, m in self.layers
        }

    def finish(self) -> dict[str, float]:
        """Make the masks permanent (``prune.remove``); returns the per-layer sparsity (exact zeros)."""
        for _, module in self.layers:
            if torch_prune.is_pruned(module):
                torch_prune.remove(module, "weight")
        return layer_sparsity(self.model, [n for n, _ in self.layers])


def layer_sparsity(model: nn.Module, layers: list[str] | tuple[str, ...] | None = None) -> dict[str, float]:
    """Fraction of exactly-zero weights of each Linear/Conv layer (``layers``: module paths; default all)."""
    out = {}
    for name, module in weight_modules(model, layers):
        w = module.weight.detach()
        out[name] = float((w == 0).sum()) / w.numel()
    return out

