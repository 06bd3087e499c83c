"""Sanity controls for weight masks: what the method finds where there is nothing to find.

A claim that masks specialize (Csordás, van Steenkiste, Schmidhuber, "Are Neural Nets Modular?", ICLR 2021,
arXiv:2010.02066) is only as strong as the contrast with masks trained the same way where no function can
be found:

* ``"random_weights"``: the tasks on a copy of the network with re-drawn weights
  (:func:`random_weight_copy`): whatever a mask reaches there, it found in random features, not in what
  training put into the network;
* ``"shuffled_labels"``: the network itself, every task's labels permuted within its data
  (:func:`shuffled_labels`): the inputs and the label frequencies are kept, the function is gone.

:func:`control_setups` gives the network and data of each control; :func:`control_masks` trains their masks
with :func:`~modscope.masks.train_masks` under the real masks' settings and returns :class:`Control`\\ s whose
:class:`~modscope.masks.MaskSet` takes the same metrics (:func:`~modscope.masks.evaluate_masks` with
``control.model``, :func:`~modscope.masks.iou`, :func:`~modscope.masks.p_specialize`...). Evaluate every
control on the *real* evaluation data: the question is whether the control's masks do the real tasks.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from modscope.masks.maskset import MaskSet
from modscope.masks.train import train_masks
from modscope.progress import Progress, labelled
from modscope.seeding import check_seed, derive, torch_generator

__all__ = ["CONTROLS", "Control", "control_masks", "control_setups", "random_weight_copy", "shuffled_labels"]

#: The controls, in the order reports list them.
CONTROLS = ("random_weights", "shuffled_labels")


@dataclass(frozen=True)
class Control:
    """One control: ``model`` and ``tasks`` (name -> data, as :func:`~modscope.masks.train_masks` takes them)
    its masks are trained on, and the ``masks`` (``None`` until trained). Evaluate the masks on
    ``model``: for ``"random_weights"`` it is the random copy, for ``"shuffled_labels"`` the network."""

    name: str
    model: nn.Module
    tasks: Mapping[str, Any]
    masks: MaskSet | None = None


def random_weight_copy(model: nn.Module, *, seed: int) -> nn.Module:
    """A deep copy of ``model`` with every floating-point parameter re-drawn at the original's scale.

    Each parameter tensor ``W`` is replaced by i.i.d. normal draws with the mean and standard deviation of
    ``W``'s non-zero entries (a tensor with one non-zero entry keeps it; the std of a constant is 0); entries
    that are exactly zero (pruned weights) stay zero, so a pruned network's copy has the same sparsity
    pattern and its masks choose among as many weights. Matched scale rather than the layer's own
    initializer, because it applies to any module (also ones without ``reset_parameters``) and keeps the
    activations at the trained network's magnitudes. Buffers (e.g. batch-norm statistics), mode and
    ``requires_grad`` flags are copied unchanged. ``model`` is not touched.

    Parameter ``name`` draws from ``torch_generator(seed, "random_weights", name)`` (:mod:`modscope.seeding`),
    on the CPU in float64, then cast: the same ``seed`` gives the same copy on any device.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    seed = check_seed(seed)
    out = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in out.named_parameters():
            if not p.is_floating_point() or p.numel() == 0:
                continue
            nonzero = p != 0
            values = p[nonzero].double()
            if values.numel() == 0:
                continue
            mean = float(values.mean())
            std = float(values.std()) if values.numel() > 1 else 0.0
            g = torch_generator(seed, "random_weights", name)
            draw = torch.randn(p.shape, generator=g, dtype=torch.float64) * std + mean
            p.copy_(torch.where(nonzero.cpu(), draw, torch.zeros((), dtype=torch.float64)).to(p.dtype))
    return out


def _permute(targets: Tensor, seed: int) -> Tensor:
    perm = torch.randperm(len(targets), generator=torch_generator(seed)).to(targets.device)
    return targets[perm]


def shuffled_labels(data: Any, *, seed: int) -> Any:
    """``data`` with its targets permuted across its examples (a seeded permutation; inputs unchanged).

    ``data`` is an ``(inputs, targets)`` pair of tensors (``inputs`` a tensor or a tuple of tensors), as
    :func:`~modscope.masks.train_masks` takes with ``batch_size``, or a list / tuple of such batches: then
    the targets of all batches are permuted together and split back into batches of the same sizes. A
    target row moves as a whole (e.g. both digits of an arithmetic answer). The permutation is
    ``torch.randperm`` from ``torch_generator(seed)`` (:mod:`modscope.seeding`; pass ``derive(seed,
    task)`` for one stream per task). Returns new tensors; ``data`` is not modified.
    """
    seed = check_seed(seed)
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[1], Tensor):
        inputs, targets = data
        lengths = {len(a) for a in (inputs if isinstance(inputs, (tuple, list)) else (inputs,))}
        if lengths != {len(targets)}:
            raise ValueError(f"data: inputs ({sorted(lengths)} rows) and targets ({len(targets)}) differ")
        return inputs, _permute(targets, seed)
    if isinstance(data, (tuple, list)) and data and all(isinstance(b, (tuple, list)) and len(b) == 2
                                                          for b in data):  # fmt: skip
        targets = torch.cat([b[1] for b in data])
        permuted = _permute(targets, seed).split([len(b[1]) for b in data])
        return [(b[0], t) for b, t in zip(data, permuted, strict=True)]
    raise ValueError(
        "data must be (inputs, targets) tensors or a non-empty list of (inputs, targets) batches, got "
        f"{type(data).__name__}"
    )


def _check_controls(controls: Iterable[str]) -> tuple[str, ...]:
    if isinstance(controls, str):
        controls = (controls,)
    controls = tuple(controls)
    unknown = [c for c in controls if c not in CONTROLS]
    if unknown or len(set(controls)) != len(controls):
        raise ValueError(f"controls must be distinct names out of {list(CONTROLS)}, got {list(controls)}")
    return controls


def control_setups(
    model: nn.Module, tasks: Mapping[str, Any], *, controls: Sequence[str] = CONTROLS, seed: int = 0
) -> dict[str, Control]:
    """The network and data each control's masks train on (``name -> Control``, masks ``None``).

    ``random_weights``: :func:`random_weight_copy` with seed ``derive(seed, "random_weights")``, the real
    ``tasks``; ``shuffled_labels``: ``model`` itself, task ``t``'s data through :func:`shuffled_labels` with
    seed ``derive(seed, "shuffled_labels", t)``. ``model`` and ``tasks`` are not modified.
    """
    controls = _check_controls(controls)
    seed = check_seed(seed)
    if not tasks:
        raise ValueError("tasks must name at least one task")
    out: dict[str, Control] = {}
    for name in controls:
        if name == "random_weights":
            copy_ = random_weight_copy(model, seed=derive(seed, "random_weights"))
            out[name] = Control(name, copy_, dict(tasks))
        else:
            shuffled = {t: shuffled_labels(d, seed=derive(seed, name, t)) for t, d in tasks.items()}
            out[name] = Control(name, model, shuffled)
    return out


def control_masks(
    model: nn.Module,
    tasks: Mapping[str, Any],
    loss_fn: Callable[[Any, Tensor], Tensor],
    *,
    controls: Sequence[str] = CONTROLS,
    seed: int = 0,
    checkpoint: str | os.PathLike | None = None,
    progress: Progress | None = None,
    **settings: Any,
) -> dict[str, Control]:
    """Train the masks of each control with :func:`~modscope.masks.train_masks` and the real masks'
    settings: ``name -> Control`` with ``masks`` set.

    ``model``, ``tasks``, ``loss_fn``, ``seed`` and ``settings`` (``steps``, ``beta``, ``lr``,
    ``batch_size``...) are what the real masks were trained with: the controls' networks and data come
    from :func:`control_setups` (seeded from ``seed``), and their masks are trained with the same ``seed``
    and ``settings``, so that the controls differ from the real masks only in what they are trained on.
    ``checkpoint``: a path prefix, control ``c`` checkpoints to ``{checkpoint}.{c}.pt``; ``progress``
    is called with labels prefixed by the control (``"random_weights masks"``). The masks' ``hparams``
    record ``"control": c``.
    """
    out = {}
    for name, control in control_setups(model, tasks, controls=controls, seed=seed).items():
        masks = train_masks(
            control.model, control.tasks, loss_fn, seed=seed, progress=labelled(progress, name),
            checkpoint=None if checkpoint is None else f"{os.fspath(checkpoint)}.{name}.pt", **settings,
        )  # fmt: skip
        masks.hparams["control"] = name
        out[name] = replace(control, masks=masks)
    return out
