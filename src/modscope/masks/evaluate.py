"""The mask-application tests of SPEC §2.2 (Csordás et al. 2021, §3): every evaluation set under the full
model, each task's mask, its inverted mask and its half-masks, with per-class accuracy and confusion matrices
(collected in a :class:`~modscope.masks.table.MaskEvalTable`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

import torch
from torch import Tensor, nn

from modscope.masks.apply import masked_call
from modscope.masks.batches import as_batch
from modscope.masks.mask import Mask
from modscope.masks.maskset import MaskSet
from modscope.masks.table import Condition, EvalResult, MaskEvalTable
from modscope.progress import Progress, notify

__all__ = ["Condition", "EvalResult", "MaskEvalTable", "evaluate_masks"]

Metric = Literal["accuracy"] | Callable[[Any, Tensor], Tensor]


def _run(model: nn.Module, mask: Mask | None, batches: Iterable, metric: Metric, name: str) -> tuple:
    total, n = 0.0, 0
    confusion: Tensor | None = None
    for batch in batches:
        inputs, targets = as_batch(batch, f"evaluation set {name!r}")
        out = masked_call(model, mask, *inputs.args, **inputs.kwargs) if mask is not None else inputs(model)
        b = len(targets)
        if metric == "accuracy":
            if not isinstance(out, Tensor) or out.shape[:-1] != targets.shape:
                raise ValueError(
                    f"eval set {name!r}: accuracy needs outputs (..., classes) matching targets, got outputs "
                    f"{getattr(out, 'shape', type(out))} and targets {tuple(targets.shape)}"
                )
            pred = out.argmax(-1)
            total += float((pred == targets).reshape(b, -1).all(1).sum())
            c = out.shape[-1]
            counts = torch.bincount((targets.reshape(-1) * c + pred.reshape(-1)).long(), minlength=c * c)
            confusion = counts.reshape(c, c) if confusion is None else confusion + counts.reshape(c, c)
        else:
            s = metric(out, targets)
            s = torch.as_tensor(s, dtype=torch.float64)
            total += float(s.sum()) if s.ndim else float(s) * b
        n += b
    if n == 0:
        raise ValueError(f"evaluation set {name!r} yields no examples")
    per_class = conf = None
    if confusion is not None:
        rows = confusion.sum(1)
        per_class = tuple(float(confusion[i, i] / rows[i]) if rows[i] else math.nan for i in range(len(rows)))
        conf = tuple(tuple(int(v) for v in row) for row in confusion.tolist())
    return total / n, n, per_class, conf


def evaluate_masks(
    model: nn.Module,
    masks: MaskSet,
    eval_sets: Mapping[str, Iterable],
    *,
    metric: Metric = "accuracy",
    tasks: Iterable[str] | None = None,
    split: int | None = None,
    progress: Progress | None = None,
) -> MaskEvalTable:
    """Evaluate every condition (full, mask X, inverted X, X on early layers, X on late layers) on every set.

    Args:
        model: the frozen model the masks were trained on (evaluated in eval mode, restored afterwards;
            never modified: masks are applied functionally).
        masks: the trained masks (binary read-out, deterministic).
        eval_sets: ``name -> re-iterable of batches``: ``(inputs, targets)`` or mappings with ``"labels"``
            (:mod:`~modscope.masks.batches`; ``inputs`` a tensor, a tuple, or a mapping passed as
            ``model(**inputs)``).
        metric: ``"accuracy"``: outputs ``(B, ..., C)`` logits, targets ``(B, ...)`` class indices; an example
            is correct when every position is; per-class accuracy and the ``C x C`` confusion matrix count
            positions. Or ``metric(outputs, targets)`` returning per-example scores ``(B,)`` (or their mean);
            ``outputs`` is what the model returns (e.g. a Hugging Face ``ModelOutput``).
        tasks: the masks to test (default all).
        split: the first ``split`` masked layers (model order) are "early", the rest "late"; default half,
            rounded up.
        progress: ``progress(label, done, total, info)``, called as ``("conditions", done, total, {})``
            after each condition (all evaluation sets).

    Returns:
        A :class:`~modscope.masks.table.MaskEvalTable` recording the metric, tasks and layer split.
    """
    if not eval_sets:
        raise ValueError(f"eval_sets must be a non-empty mapping name -> batches, got {eval_sets!r}")
    if metric != "accuracy" and not callable(metric):
        raise ValueError(f"metric must be 'accuracy' or a callable, got {metric!r}")
    tasks = tuple(masks.tasks if tasks is None else tasks)
    unknown = [t for t in tasks if t not in masks]
    if unknown:
        raise ValueError(f"unknown tasks {unknown}; the masks have {list(masks.tasks)}")
    masks.check_model(model)
    layers = masks.param_names
    split = (len(layers) + 1) // 2 if split is None else split
    if not 0 <= split <= len(layers):
        raise ValueError(f"split must be in [0, {len(layers)}], got {split}")
    early, late = layers[:split], layers[split:]
    conditions: list[tuple[Condition, Mask | None]] = [(Condition("full"), None)]
    for t in tasks:
        m = masks[t]
        conditions += [
            (Condition("mask", t), m),
            (Condition("inverted", t), ~m),
            (Condition("early", t), m.restrict(early)),
            (Condition("late", t), m.restrict(late)),
        ]
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    results = []
    notify(progress, "conditions", 0, len(conditions))
    try:
        with torch.no_grad():
            for i, (cond, mask) in enumerate(conditions):
                for name, batches in eval_sets.items():
                    score, n, per_class, conf = _run(model, mask, batches, metric, name)
                    results.append(EvalResult(cond, name, score, n, per_class, conf))
                notify(progress, "conditions", i + 1, len(conditions))
    finally:
        for m, mode in modes:
            m.training = mode
    metric_name = metric if isinstance(metric, str) else getattr(metric, "__qualname__", repr(metric))
    return MaskEvalTable(tuple(results), tasks, tuple(eval_sets), early, late, metric=metric_name)
