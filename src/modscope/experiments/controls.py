"""Sanity controls in the mask experiments: the same masks and measures where there is nothing to find.

Beside the real masks, each network's masks are trained again (with the same tasks, seed and mask settings)
on a random-weight copy of the network and on the network with every task's labels shuffled
(:mod:`modscope.masks.controls`), analysed by the experiment's own analysis on the *real* evaluation data,
and reported next to the real masks in one table (:func:`controls_section`): kept weights, the accuracy of
each task under its own mask, and the experiment's modularity scores. A claim of specialization means
something only where the real masks differ from the controls.

Config keys: ``controls`` (true / false) turns them on or off; ``control_share`` (the arithmetic
experiments, in (0, 1]) is the controls' number of mask steps as a share of ``mask_steps``. Below 1 the
controls' mask learning rate is raised by the inverse share, keeping the mask budget ``lr x steps`` of the
real masks (the argument of :mod:`modscope.experiments.addmul`: kept-weight curves at different learning
rates lie close to one curve over ``lr x steps``); the quick settings use this to keep the run short.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from modscope.experiments.arithmetic import mask_tasks
from modscope.experiments.checks import check_fields, check_fraction
from modscope.experiments.run import Run
from modscope.masks import CONTROLS, MaskEvalTable, MaskSet, control_setups
from modscope.results import table

__all__ = [
    "LABELS", "arithmetic_controls", "budget_note", "check_controls_config", "check_controls_unit",
    "control_budget", "controls_section",
]  # fmt: skip

#: How reports name the real masks and each control.
LABELS = {"real": "real network", "random_weights": "random weights", "shuffled_labels": "shuffled labels"}


def check_controls_config(config: Mapping[str, Any]) -> bool:
    """Validate ``controls`` (a bool) and, when the config has it, ``control_share`` (a number in (0, 1]);
    returns whether the controls are on. A config without ``controls`` (a run made before they existed) has
    them off."""
    on = config.get("controls", False)
    if not isinstance(on, bool):
        raise ValueError(f"controls must be true or false, got {on!r}")
    if "control_share" in config:
        check_fraction(config, "control_share", high="closed")
    return on


def control_budget(config: Mapping[str, Any]) -> tuple[int, float]:
    """The controls' mask ``(steps, lr)``: ``control_share`` (default 1) of ``mask_steps``, rounded, at least
    one, and ``mask_lr`` scaled by ``mask_steps / steps`` (the real masks' ``lr x steps``)."""
    steps = max(1, round(config["mask_steps"] * config.get("control_share", 1.0)))
    return steps, config["mask_lr"] * config["mask_steps"] / steps


def budget_note(config: Mapping[str, Any]) -> str:
    """How a report states the controls' mask steps and learning rate against the real masks'."""
    steps, lr = control_budget(config)
    return (
        f"Controls' masks: {steps} steps at lr {lr:g} (the real masks: {config['mask_steps']} at "
        f"{config['mask_lr']:g}, the same lr x steps)."
    )


def arithmetic_controls(
    run: Run,
    prefix: str,
    model,
    tasks: Mapping[str, Any],
    seed: int,
    config: Mapping[str, Any],
    analyze: Callable[[Any, MaskSet], Mapping[str, Any]],
) -> dict[str, dict[str, Any]]:
    """Each control's unit fields, ``name -> doc``, for the arithmetic experiments: the masks trained one
    task after another like the real ones (:func:`~.arithmetic.mask_tasks`, with :func:`control_budget`),
    checkpointed under ``{prefix}.{name}``; ``doc`` is the experiment's ``analyze(network, masks)`` (with its
    evaluation ``table``) and the kept count of every task's mask per layer."""
    steps, lr = control_budget(config)
    out = {}
    for name, setup in control_setups(model, tasks, seed=seed).items():
        masks, _ = mask_tasks(run, f"{prefix}.{name}", setup.model, setup.tasks, seed, config, steps=steps,
                              lr=lr, label=LABELS[name])  # fmt: skip
        out[name] = {**analyze(setup.model, masks), "kept": {t: masks[t].kept() for t in masks.tasks}}
    return out


def check_controls_unit(doc: Mapping[str, Any], tasks: Sequence[str], fields: Mapping[str, Any]) -> None:
    """Check the ``controls`` of a unit file read back, when it has them: every control with its evaluation
    table, its kept counts of ``tasks`` and the experiment's ``fields``."""
    if "controls" not in doc:
        return
    check_fields(doc["controls"], dict.fromkeys(CONTROLS, dict), "controls")
    for name in CONTROLS:
        d = doc["controls"][name]
        check_fields(d, {"table": dict, "kept": dict.fromkeys(tasks, dict), **fields}, f"controls.{name}")
        MaskEvalTable.from_dict(d["table"])


def _row(network: str, name: str, doc: Mapping[str, Any], tasks: Sequence[str], extra) -> list[Any]:
    tab = MaskEvalTable.from_dict(doc["table"])
    kept = [sum(doc["kept"][t].values()) for t in tasks]
    return [network, LABELS[name], *kept, *(tab.score("mask", t, t) for t in tasks), *extra(doc)]


def controls_section(
    title: str,
    units: Sequence[tuple[str, Mapping[str, Any]]],
    tasks: Sequence[str],
    extra_columns: Sequence[str],
    extra: Callable[[Mapping[str, Any]], Sequence[Any]],
    note: str = "",
    names: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A ``"table"`` section: per network (``(name, unit doc)`` in ``units``) the real masks and each of its
    controls (``doc["controls"]``): kept weights of each task's mask, the accuracy of task ``t`` under mask
    ``t`` on evaluation set ``t``, and ``extra(doc)`` (``extra_columns``), read from the unit doc and from
    each control's doc alike; ``names`` shows a task under another name in the columns."""
    rows = []
    for network, doc in units:
        rows.append(_row(network, "real", doc, tasks, extra))
        rows += [_row(network, name, doc["controls"][name], tasks, extra) for name in CONTROLS]
    shown = [(names or {}).get(t, t) for t in tasks]
    columns = ["network", "masks trained on", *(f"kept {t}" for t in shown),
               *(f"acc. {t} under mask {t}" for t in shown), *extra_columns]  # fmt: skip
    base = (
        "The same masks where there is nothing to find: trained on a copy of the network with re-drawn "
        "weights (normal, each tensor's own mean and std, pruned zeros kept) and on the network with each "
        "task's labels shuffled, with the real masks' tasks, seed and settings; every accuracy on the real "
        "evaluation data. Specialization claimed from the real masks means something where they differ "
        "from both controls."
    )
    return table(title, columns, rows, note=f"{base} {note}".strip())
