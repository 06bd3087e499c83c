"""The checks :func:`~modscope.masks.train_masks` runs on its arguments before any work."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from modscope.checks import check_finite, check_positive_int, check_real
from modscope.masks.gates import Gate
from modscope.masks.penalty import Penalty
from modscope.seeding import check_seed

__all__ = ["METHODS", "check_mask_arguments"]

METHODS = ("auto", "vmap", "loop")


def check_mask_arguments(
    *,
    tasks: Any,
    loss_fn: Any,
    steps: Any,
    lr: Any,
    samples: Any,
    init: Any,
    batch_size: Any,
    seed: Any,
    checkpoint_every: Any,
    max_grad_norm: Any,
    method: Any,
    gate: Any,
    penalty: Any,
    beta: Any,
) -> None:
    """ValueError (TypeError for a wrong kind of object) naming the parameter and its value.

    Every number must be finite: ``lr`` and ``max_grad_norm`` > 0 (a negative clip would turn descent into
    ascent), ``beta`` >= 0, ``init`` any finite logit (NaN would keep nothing); counts positive ints.
    """
    if not isinstance(tasks, Mapping) or not tasks:
        raise ValueError(f"tasks must be a non-empty mapping name -> batches, got {tasks!r}")
    if not all(isinstance(t, str) for t in tasks):
        raise ValueError(f"task names must be strings, got {list(tasks)!r}")
    if isinstance(loss_fn, Mapping):
        if set(loss_fn) != set(tasks):
            raise ValueError(f"loss_fn: one loss function per task {list(tasks)}, got {list(loss_fn)}")
        bad = [t for t, f in loss_fn.items() if not callable(f)]
        if bad:
            raise TypeError(f"loss_fn[{bad[0]!r}] must be callable, got {type(loss_fn[bad[0]]).__name__}")
    elif not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    check_positive_int(steps, "steps")
    check_positive_int(samples, "samples")
    check_positive_int(checkpoint_every, "checkpoint_every")
    check_real(lr, "lr", positive=True)
    check_finite(init, "init")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                   or batch_size <= 0):  # fmt: skip
        raise ValueError(f"batch_size must be None or a positive int, got {batch_size!r}")
    check_seed(seed)
    if max_grad_norm is not None:
        check_real(max_grad_norm, "max_grad_norm", positive=True)
    if method not in METHODS:
        raise ValueError(f"method must be 'auto', 'vmap' or 'loop', got {method!r}")
    if gate is not None and not isinstance(gate, Gate):
        raise TypeError(f"gate must be a modscope.masks.Gate (e.g. GumbelSigmoid()), got {gate!r}")
    if penalty is None:
        if beta is None:
            raise ValueError("give the sparsity penalty: beta=... (or penalty=...)")
        check_real(beta, "beta")
    elif not isinstance(penalty, Penalty):
        raise TypeError(f"penalty must be a modscope.masks.Penalty (e.g. LogitPenalty(beta)), got {penalty}")
    elif beta is not None:
        raise ValueError(f"give beta or penalty, not both (got beta={beta!r}, penalty={penalty!r})")
