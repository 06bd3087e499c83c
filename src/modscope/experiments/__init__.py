"""The papers' experiments, one function call (or ``modscope reproduce NAME``) each.

Every experiment module defines ``TITLE``, ``SETTINGS`` (``"quick"``: minutes on a 2-core CPU;
``"paper"``: the papers' sizes), ``check_config(config)`` (ValueError naming the key at fault) and
``reproduce(run, config) -> RunResult`` (:mod:`modscope.results`). :func:`reproduce` picks the setting,
applies and checks overrides, opens the run folder (resuming what is there) and writes ``results.json``.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from modscope.experiments.run import Progress, Run
from modscope.results import RunResult

__all__ = ["EXPERIMENTS", "Progress", "Run", "RunResult", "experiment_config", "reproduce"]

#: name -> module implementing it.
EXPERIMENTS: dict[str, str] = {
    "clusterability": "modscope.experiments.clusterability",
    "lesions": "modscope.experiments.lesions",
    "addmul": "modscope.experiments.addmul",
    "double-addition": "modscope.experiments.double_addition",
    "demo": "modscope.experiments.demo",
    "training-dynamics": "modscope.experiments.training_dynamics",
    "planted": "modscope.experiments.planted",
}


def _module(name: str) -> ModuleType:
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; choose one of {sorted(EXPERIMENTS)}")
    return importlib.import_module(EXPERIMENTS[name])


def experiment_config(name: str, setting: str = "quick", overrides: Mapping[str, Any] | None = None) -> dict:
    """The config of experiment ``name`` at ``setting``, with ``overrides`` applied (known keys only,
    values of the same type as the setting's), checked as a whole by the experiment: a ValueError names the
    key at fault. Checks that need the data (``k`` against the network's size) come when the run starts,
    still before anything is written."""
    module = _module(name)
    settings = module.SETTINGS
    if setting not in settings:
        raise ValueError(f"experiment {name!r} has settings {sorted(settings)}, not {setting!r}")
    config = dict(settings[setting])
    for key, value in (overrides or {}).items():
        if key not in config:
            raise ValueError(f"experiment {name!r} has no setting {key!r}; it has {sorted(config)}")
        old = config[key]
        if isinstance(old, bool) or not isinstance(old, (int, float)):
            ok = type(value) is type(old) or (old is None) or (value is None)
        else:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if isinstance(old, int) and isinstance(value, float) and not value.is_integer():
                ok = False
            value = type(old)(value) if ok else value
        if not ok:
            raise ValueError(f"setting {key!r} of {name!r} takes a {type(old).__name__}, got {value!r}")
        config[key] = value
    module.check_config(config)
    return config


def reproduce(
    name: str,
    out: str | os.PathLike,
    *,
    setting: str = "quick",
    overrides: Mapping[str, Any] | None = None,
    fresh: bool = False,
    progress: Progress | None = None,
) -> RunResult:
    """Run (or resume) experiment ``name`` into folder ``out``; returns the result, also written to
    ``out/results.json``.

    ``setting``: ``"quick"`` or ``"paper"``; ``overrides`` change single settings (the run is then labelled
    ``"custom"``); ``fresh`` discards what an earlier run left in ``out``; ``progress(label, done, total,
    info)`` is called as work advances.
    """
    module = _module(name)
    config = experiment_config(name, setting, overrides)
    label = setting if config == module.SETTINGS[setting] else "custom"
    run = Run(out, name, label, config, fresh=fresh, progress=progress)
    result = module.reproduce(run, run.config)
    result.save(Path(out) / "results.json")
    return result
