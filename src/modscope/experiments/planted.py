"""Planted-module benchmark: where each lens can be trusted, as cross-talk between two known modules grows.

Each network (:mod:`~modscope.experiments.planted_nets`: MLP, CNN, LSTM, small transformer) is built with
two modules known by construction -- the first half of every group of units is module A, the second half
module B -- and trained on two tasks with disjoint inputs and disjoint outputs
(:mod:`~modscope.experiments.planted_tasks`: task A reads A's input features and writes A's outputs, labels
from a seeded teacher; no download). The cross-talk knob ``c`` in [0, 1] scales every weight joining A and
B, at initialization and throughout training (``c = 0``: two separate networks side by side; ``c = 1``: a
plain dense network). Both lenses then try to find the modules again
(:mod:`~modscope.experiments.planted_measure`): the structural lens by spectral clustering into ``k = 2``
(ARI against the planted halves), the functional lens by one mask per task (IoU and share inside the task's
planted module, P_specialize, ARI of the masks' unit assignment), and the lens bridge (ARI of clusters
against mask units). At ``c = 0`` the structural answer is known: the graph is two components, ARI 1.

Every score is a curve over ``c`` for each network: the mean over ``replicates`` networks and a 95%
Student-t confidence interval of that mean (``mean +- t_{0.975, n-1} * sd / sqrt(n)``, scipy), clipped to
the score's range; none with one replicate. Undefined values (P_specialize of a network at chance, an ARI
over no units) are left out. Replicate ``r`` of a network uses the seeds ``derive(seed, "planted", family,
r)`` at every ``c``, so a curve compares the same initialization and data across cross-talk.

Settings: ``quick`` (MLP and CNN, c in {0, 0.25, 0.5, 1}, 3 replicates, 16 units per module, 400
training and 400 mask steps: about 2 min, 98-121 s on a shared 2-core VM; the LSTM alone adds 77 s);
``paper`` (all four networks, 6 values of c, 10 replicates, 32 units per module, 1600 steps each: 240
units, about 2.6 h on the same VM, from one unit per network at c = 0.5 -- MLP 11 s, CNN 39 s, LSTM 46 s,
transformer 62 s). Any subset: ``--set networks='["mlp","lstm"]'``.

What the quick setting shows: the structural lens recovers the modules exactly up to c = 0.25 and nearly
at 0.5 (ARI 0.95-1), and not at all in a dense network (c = 1, ARI about 0); the masks stay inside their
module at c = 0 (share 1.00, unit ARI 1.00) and leave it progressively as c grows (unit ARI about 0.65 at
0.25, 0.2 at 0.5; the LSTM's masks hold on longer: 0.92 at 0.25, 0.35 at 0.5). The bridge's ARI
stands on the units one task alone uses, fewer as c grows (their share of the used units: 1 at c = 0,
0.14-0.26 at c = 1), so there it says little. P_specialize stays near 0.9 at every c: a dense network's
masks specialize too, so P_specialize says that the tasks use separable weights, not that those are the
planted modules. IoU is bounded by the mask's sparsity (a mask keeps a fraction of its module); the share
inside the module is the cleaner recovery score.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from modscope.experiments.checks import NUMBER, check_fields, check_int, check_number
from modscope.experiments.planted_measure import SCORES
from modscope.experiments.planted_nets import FAMILIES
from modscope.experiments.run import Run
from modscope.progress import labelled
from modscope.results import RunResult, lines_section, table
from modscope.seeding import derive
from modscope.versions import versions

TITLE = "Planted modules: recovery by each lens against cross-talk between two known modules"

_COMMON = {"features": 4, "classes": 4, "length": 6, "lr": 3e-3, "beta": 1e-2, "mask_lr": 3e-2,
           "mask_init": 1.0}  # fmt: skip
SETTINGS: dict[str, dict[str, Any]] = {
    "quick": {"seed": 0, "networks": ["mlp", "cnn"], "crosstalk": [0.0, 0.25, 0.5, 1.0], "replicates": 3,
              "hidden": 16, "n_train": 2048, "n_test": 1024, "steps": 400, "mask_steps": 400, **_COMMON},
    "paper": {"seed": 0, "networks": list(FAMILIES), "crosstalk": [0.0, 0.1, 0.25, 0.5, 0.75, 1.0],
              "replicates": 10, "hidden": 32, "n_train": 8192, "n_test": 2048, "steps": 1600,
              "mask_steps": 1600, **_COMMON},
}  # fmt: skip

#: lens -> (score, name in the report, the score's range) drawn as curves and tabled.
CURVES = {
    "structural": (("ari", "ARI of the 2 clusters vs the planted modules", (-0.5, 1.0)),),
    "functional": (
        ("iou", "IoU of each task's mask with its module", (0.0, 1.0)),
        ("inside", "share of each mask inside its module", (0.0, 1.0)),
        ("p_specialize", "P_specialize (both ways, mean)", (-1.0, 1.0)),
        ("ari_units", "ARI of the masks' unit assignment vs the modules", (-0.5, 1.0)),
    ),
    "connected": (
        ("ari_bridge", "ARI of the clusters vs the masks' one-task units (bridge)", (-0.5, 1.0)),
        ("one_task", "share of the used units used by one task only", (0.0, 1.0)),
    ),
}
_NAMES = {"mlp": "MLP", "cnn": "CNN", "lstm": "LSTM", "transformer": "Transformer"}


def check_config(config: Mapping[str, Any]) -> None:
    """Validate ``config`` (ValueError naming the key)."""
    nets = config["networks"]
    ok = isinstance(nets, list) and nets and all(isinstance(n, str) and n in FAMILIES for n in nets)
    if not ok or len(set(nets)) != len(nets):
        raise ValueError(f"networks must be a non-empty list of distinct names from {list(FAMILIES)}, "
                         f"got {nets!r}")  # fmt: skip
    cs = config["crosstalk"]
    ok = isinstance(cs, list) and cs and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1 for v in cs
    )
    if not ok or len(set(cs)) != len(cs):
        raise ValueError(f"crosstalk must be a non-empty list of distinct numbers in [0, 1], got {cs!r}")
    lows = {"seed": 0, "replicates": 1, "features": 1, "hidden": 1, "classes": 2, "length": 1, "n_train": 2,
            "n_test": 1, "steps": 1, "mask_steps": 1}  # fmt: skip
    for key, low in lows.items():
        check_int(config, key, low)
    for key in ("lr", "mask_lr"):
        check_number(config, key, positive=True)
    for key in ("beta", "mask_init"):  # mask_init >= 0: every mask starts keeping its weights
        check_number(config, key, positive=False)


def mean_ci(values: Sequence[float | None], level: float = 0.95) -> tuple[float | None, float | None,
                                                                          float | None, int]:  # fmt: skip
    """``(mean, low, high, n)`` over the defined values: Student-t interval of the mean at ``level``; low
    and high ``None`` with fewer than two values, everything ``None`` with none."""
    from scipy.stats import t

    xs = [float(v) for v in values if v is not None and math.isfinite(v)]
    n = len(xs)
    if n == 0:
        return None, None, None, 0
    mean = sum(xs) / n
    if n < 2:
        return mean, None, None, 1
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = float(t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return mean, mean - half, mean + half, n


def unit_key(family: str, c: float, replicate: int) -> str:
    return f"{family}-c{c:g}-r{replicate}"


def check_planted_unit(doc: Mapping[str, Any]) -> None:
    """ValueError unless ``doc`` is what :func:`~.planted_measure.measure` returns (a unit read back)."""
    check_fields(doc, {"family": str, "c": (int, float), "accuracy": {"A": NUMBER, "B": NUMBER},
                       **{lens: dict.fromkeys(names, NUMBER) for lens, names in SCORES.items()}})  # fmt: skip


def reproduce(run: Run, config: dict) -> RunResult:
    from modscope.experiments.planted_measure import measure

    check_config(config)
    units: dict[str, dict] = {}
    jobs = [(f, float(c), r) for f in config["networks"] for c in config["crosstalk"]
            for r in range(config["replicates"])]  # fmt: skip
    run.report("planted", 0, len(jobs))
    for i, (family, c, r) in enumerate(jobs):
        key = unit_key(family, c, r)
        seed = derive(config["seed"], "planted", family, r)
        progress = labelled(run.report, key)

        def compute(family=family, c=c, seed=seed, progress=progress) -> dict:
            return measure(family, c, config, seed, progress=progress)

        units[key] = run.unit(key, compute, check=check_planted_unit)
        run.report("planted", i + 1, len(jobs), {"unit": key})
    return _result(run, config, units)


def _curve(units: Mapping[str, dict], config: Mapping[str, Any], family: str, lens: str, score: str,
           bounds: tuple[float, float]) -> list:  # fmt: skip
    """``[(c, mean, low, high, n)]`` over the config's cross-talk values, the interval clipped to the
    score's range ``bounds`` (a t interval of a few bounded values can reach past it)."""
    out = []
    for c in config["crosstalk"]:
        values = [units[unit_key(family, float(c), r)][lens][score] for r in range(config["replicates"])]
        mean, low, high, n = mean_ci(values)
        if low is not None:
            low, high = max(low, bounds[0]), min(high, bounds[1])
        out.append((float(c), mean, low, high, n))
    return out


def _cell(mean: float | None, low: float | None, high: float | None) -> str | None:
    if mean is None:
        return None
    return f"{mean:.2f}" if low is None else f"{mean:.2f} [{low:.2f}, {high:.2f}]"


def _result(run: Run, config: dict, units: dict[str, dict]) -> RunResult:
    cs = [f"c = {float(c):g}" for c in config["crosstalk"]]
    rows, sections = [], []
    for family in config["networks"]:
        name = _NAMES[family]
        for lens, curves in CURVES.items():
            series, bands = {}, {}
            for score, label, bounds in curves:
                points = _curve(units, config, family, lens, score, bounds)
                rows.append([name, lens, label, *(_cell(*p[1:4]) for p in points)])
                series[label] = [[c, m] for c, m, *_ in points if m is not None]
                bands[label] = [[c, lo, hi] for c, _, lo, hi, _ in points if lo is not None]
            sections.append(lines_section(
                f"{name}: {lens} lens", xlabel="cross-talk c (scale of the weights joining the modules)",
                ylabel="recovery score", series=series, bands=bands,
                note=f"Mean over {config['replicates']} replicates; shaded: 95% Student-t interval "
                "(clipped to the score's range).",
            ))  # fmt: skip
    summary = table(
        "Recovery of the planted modules against cross-talk", ["network", "lens", "score", *cs], rows,
        note=f"Mean over {config['replicates']} replicates [95% Student-t interval, clipped to the score's "
        "range]. c = 0: two separate modules; c = 1: a plain dense network. ARI 1 = the modules found "
        "exactly, 0 = chance.",
    )  # fmt: skip
    reps = range(config["replicates"])
    acc_rows = [
        [_NAMES[f], t, *(_cell(*mean_ci([units[unit_key(f, float(c), r)]["accuracy"][t] for r in reps])[:3])
                         for c in config["crosstalk"])]
        for f in config["networks"] for t in ("A", "B")
    ]  # fmt: skip
    sections.insert(0, table(
        "Test accuracy of the trained networks", ["network", "task", *cs], acc_rows,
        note=f"Chance is {1 / config['classes']:.2f} per task.",
    ))  # fmt: skip
    return RunResult(
        "planted", TITLE, run.setting, summary, _claims(config, units), tuple(sections), dict(config),
        versions(), run.seconds(), units,
    )  # fmt: skip


def _claims(config: Mapping[str, Any], units: Mapping[str, dict]) -> tuple[dict, ...]:
    """The known answers at ``c = 0`` (when the config has it)."""
    if 0 not in [float(c) for c in config["crosstalk"]]:
        return ()
    at0 = [units[unit_key(f, 0.0, r)] for f in config["networks"] for r in range(config["replicates"])]
    aris = [u["structural"]["ari"] for u in at0]
    inside = [u["functional"]["inside"] for u in at0 if u["functional"]["inside"] is not None]
    return (
        {"paper": "by construction", "claim": "at c = 0 the weight graph is the two modules, apart: the "
         "structural lens finds them exactly (ARI 1)", "ours": f"ARI {min(aris):.3f} to {max(aris):.3f} "
         f"over {len(aris)} networks", "agrees": bool(min(aris) > 1 - 1e-9)},
        {"paper": "by construction", "claim": "at c = 0 a task's mask needs no weight of the other module "
         "(share of the mask inside its module near 1; LayerNorm couples a transformer's modules)",
         "ours": f"share inside {min(inside):.3f} to {max(inside):.3f}" if inside else "no mask kept any",
         "agrees": bool(inside) and min(inside) >= 0.9},
    )  # fmt: skip
