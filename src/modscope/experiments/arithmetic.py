"""What the two arithmetic mask experiments share: the protocol, config checks, training and masking.

Csordás, van Steenkiste, Schmidhuber, "Are Neural Nets Modular? Inspecting Functional Modularity Through
Differentiable Weight Masks", ICLR 2021 (arXiv:2010.02066); their code is github.com/RobertCsordas/modules.

**Protocols** (config key ``protocol``):

``"authors"`` (default), as their code does it: every one of the 10,000 (a, b) pairs is trained on (their
training set is 1M i.i.d. draws of the same inputs, sampled with replacement; we cycle through the inputs
in a seeded order); accuracies are measured on every input (their validation set is 10k fresh draws of
those inputs, an estimate of the same number); base networks start from PyTorch's default initialization
and clip every update's gradient norm to 1.0 (``init="torch"``, ``clip=1.0``).

``"heldout"``: a share ``heldout`` of the (a, b) pairs (:func:`modscope.data.heldout_pairs`, from the
network's seed) is never trained on, by the network or its masks, and every accuracy is measured on those
pairs: does the network *compute* the operation rather than recall a table?

Either way the reference accuracy that drops are measured from is set by ``reference``: ``"control"``
(default, as the authors' figures: the network under the control mask, trained on every task) or ``"full"``
(the unmasked network).

**Masks** are trained one task after another (the authors' stages), each from its own logits at 2.0 on the
frozen network; a task's mask does not depend on the others (:func:`modscope.masks.train_masks` gives each
task its own generator). Sequential training is also the faster way on a CPU once the per-sample weights
stop fitting in cache: a 42-1024x4-20 network takes 77 ms per mask step alone and 443 ms for three masks in
one vectorized step (2-core EPYC, measured). The kept-weight fraction of each mask is recorded about 100
times per run (``curves``) so that a reader can see whether the masks have stopped moving.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from statistics import fmean
from typing import Any

from torch import Tensor

from modscope.atomic import write_json_atomic
from modscope.experiments.checks import NUMBER, check_choice, check_fields, check_int, check_number
from modscope.experiments.run import Run
from modscope.masks import MaskEvalTable, MaskSet, evaluate_masks, reference_score, train_masks
from modscope.models import INITS
from modscope.results import lines_section, masks_section
from modscope.training import cross_entropy, save_trained
from modscope.training.losses import correct
from modscope.training.recipes import run_recipe

__all__ = [
    "AUTHORS_PROTOCOL",
    "CHANCE",
    "PAPER",
    "PROTOCOLS",
    "REFERENCES",
    "SETTLED",
    "above_chance",
    "check_masks_config",
    "check_unit",
    "convergence",
    "curves_section",
    "evaluate",
    "exact_match",
    "fmt",
    "mean",
    "mean_masks_section",
    "reference_label",
    "reference_mask",
    "split_of",
    "task_data",
    "train_and_mask",
]

PAPER = "Csordás et al. 2021 (arXiv:2010.02066)"
#: Accuracy of a uniform guess of both digits of a 2-digit answer.
CHANCE = 0.01
PROTOCOLS = ("authors", "heldout")
#: The protocol keys of every setting of both experiments: the authors' by default.
AUTHORS_PROTOCOL = {
    "protocol": "authors",
    "heldout": 0.0,
    "reference": "control",
    "init": "torch",
    "clip": 1.0,
}
#: What relative drops are measured from: the control mask's accuracy, or the unmasked network's.
REFERENCES = ("control", "full")
#: Change of a mask's kept count over the last fifth of its steps, relative to the final count, below which
#: the report calls the mask settled. With the linear penalty the counts keep falling slowly for as long as
#: masks were trained here, so the report states the change rather than hiding it.
SETTLED = 0.02


def check_masks_config(config: Mapping[str, Any]) -> None:
    """Validate the keys the mask experiments share: protocol, networks, seeds, lengths, mask settings."""
    protocol = check_choice(config, "protocol", PROTOCOLS)
    heldout = check_number(config, "heldout", positive=False)
    if heldout >= 1:
        raise ValueError(f"heldout must be a share of the pairs in [0, 1), got {heldout!r}")
    if protocol == "authors" and heldout:
        raise ValueError(
            f"protocol 'authors' trains and evaluates on every input, so heldout must be 0 (got {heldout}); "
            "set protocol=heldout to hold pairs out"
        )
    if protocol == "heldout" and not heldout:
        raise ValueError("protocol 'heldout' needs the share of pairs to hold out, e.g. heldout=0.1")
    check_choice(config, "reference", REFERENCES)
    check_choice(config, "init", INITS)
    check_number(config, "clip", positive=False)
    for key, low in (("networks", 1), ("seed", 0), ("train_steps", 1), ("mask_steps", 1), ("samples", 1)):
        check_int(config, key, low)
    if check_int(config, "mask_batch", 1) < config["samples"]:
        raise ValueError(
            f"mask_batch ({config['mask_batch']}) must be at least samples ({config['samples']}): each "
            "mask sample sees its own share of the batch"
        )
    check_number(config, "beta", positive=False)
    check_number(config, "mask_lr", positive=True)


#: What the reports read from a unit file, of the fields :func:`train_and_mask` writes.
_UNIT = {
    "seed": int, "layers": list, "tasks": list, "sizes": dict, "kept": dict, "curves": dict,
    "still_moving": dict, "table": dict, "iou": {"total": NUMBER, "per_layer": dict},
    "iomin": {"total": NUMBER, "per_layer": dict}, "network": int,
}  # fmt: skip


def check_unit(doc: Mapping[str, Any], fields: Mapping[str, Any]) -> None:
    """Check a mask experiment's unit file read back: the shared fields, its own ``fields``
    (:func:`modscope.experiments.checks.check_fields`) and its evaluation table."""
    check_fields(doc, {**_UNIT, **fields})
    MaskEvalTable.from_dict(doc["table"])
    layers = {n: int for n in doc["layers"]}
    check_fields(doc["sizes"], layers, "sizes")
    for task in doc["tasks"]:
        check_fields(doc["kept"], {task: layers}, "kept")
        check_fields(doc["curves"], {task: list}, "curves")
    for name in ("iou", "iomin"):
        check_fields(doc[name]["per_layer"], dict.fromkeys(doc["layers"], NUMBER), f"{name}.per_layer")


def split_of(config: Mapping[str, Any]) -> tuple[str, str]:
    """The data splits ``(train, eval)`` of the protocol: the same split, every input, without held-out
    pairs; the training pairs and the held-out pairs with them."""
    return ("train", "train") if not config["heldout"] else ("train", "test")


def reference_mask(reference: str) -> str | None:
    """The mask drops are measured from (``"control"``), or ``None`` for the full network (``"full"``)."""
    if reference not in REFERENCES:
        raise ValueError(f"reference must be one of {list(REFERENCES)}, got {reference!r}")
    return "control" if reference == "control" else None


def reference_label(config: Mapping[str, Any]) -> str:
    """How a report names the reference: ``"control mask"`` or ``"full network"``."""
    return "control mask" if config["reference"] == "control" else "full network"


def exact_match(outputs: Tensor, targets: Tensor) -> Tensor:
    """Per example ``(B,)``: every digit right (targets ``(B, D)`` digit classes, outputs ``(B, D * 10)``).

    Digits marked ``-100`` (the other pair of double addition) are not scored."""
    hit = correct(outputs, targets)
    if hit is None:
        raise ValueError(f"expected digit-class targets (B, D), got {tuple(targets.shape)} {targets.dtype}")
    return hit


def mean(values: Sequence[float | None]) -> float | None:
    """Mean of the defined values, ``None`` when there is none."""
    defined = [v for v in values if v is not None]
    return fmean(defined) if defined else None


def fmt(v: float | None) -> str:
    """``v`` with two decimals; ``None`` (a network at chance, empty masks) reads "undefined"."""
    return "undefined" if v is None else f"{v:.2f}"


def above_chance(tab: MaskEvalTable, eval_sets: Sequence[str], reference: str | None) -> bool:
    """Whether the reference (the full network, or mask ``reference``) beats :data:`CHANCE` on every set:
    relative drops are undefined otherwise."""
    return all(reference_score(tab, s, reference=reference) > CHANCE for s in eval_sets)


def evaluate(model, masks: MaskSet, eval_sets: Mapping[str, tuple[Tensor, Tensor]]) -> MaskEvalTable:
    """:func:`modscope.masks.evaluate_masks` with :func:`exact_match`, each set as one batch."""
    return evaluate_masks(model, masks, {name: [xy] for name, xy in eval_sets.items()}, metric=exact_match)


def convergence(curve: Sequence[Sequence[float]]) -> float | None:
    """How much a mask was still moving: ``|k(end) - k(0.8 end)| / k(end)`` for its kept-fraction curve
    ``[[step, fraction], ...]`` (``None`` with fewer than two points or an empty mask)."""
    if len(curve) < 2 or not curve[-1][1]:
        return None
    last_step, last = curve[-1]
    before = min(curve, key=lambda p: abs(p[0] - 0.8 * last_step))[1]
    return abs(last - before) / last


class _Curve:
    """The kept fraction of one mask every ``steps // 100`` steps, kept in a file beside the checkpoint so
    that a resumed run still has the points from before the interruption."""

    def __init__(self, path: str, steps: int):
        self.path, self.every = path, max(1, steps // 100)
        try:
            with open(path) as f:
                self.points = {int(s): v for s, v in json.load(f)}
        except (OSError, ValueError):
            self.points = {}

    def __call__(self, done: int, total: int, info: Mapping[str, Any]) -> None:
        if done % self.every == 0 or done == total:
            (fraction,) = info["kept"].values()
            self.points[done] = fraction
            write_json_atomic(self.path, sorted(self.points.items()))

    def series(self) -> list[list[float]]:
        return [[s, v] for s, v in sorted(self.points.items())]


def train_and_mask(
    run: Run,
    key: str,
    recipe: str,
    spec: str,
    seed: int,
    config: Mapping[str, Any],
    tasks: Mapping[str, tuple[Tensor, Tensor]],
):
    """Train network ``key`` (checkpointed, saved) under ``config``'s protocol, then one mask per task, one
    task after another (checkpointed, saved).

    Returns ``(model, masks, doc)``: the trained network, the :class:`MaskSet` (tasks in ``tasks``' order)
    and the unit's JSON fields shared by the mask experiments (kept counts, curves, convergence).
    """
    prefix = run.checkpoint_prefix(key)
    model, spec_dict, results, train_config = run_recipe(
        recipe, spec=spec, steps=config["train_steps"], seed=seed, checkpoint=prefix,
        heldout=config["heldout"], init=config["init"], clip_grad_norm=config["clip"] or None,
        progress=run.report,
    )  # fmt: skip
    model_path = save_trained(model, spec_dict, run.model_path(key), train_config, results[-1])
    masks, curves = mask_tasks(run, prefix, model, tasks, seed, config)
    mask_path = run.out / "masks" / f"{key}.safetensors"
    masks.save(mask_path)
    first = masks[masks.tasks[0]]
    doc = {
        "seed": seed,
        "spec": spec_dict,
        "model": run.relative(model_path),
        "masks": run.relative(mask_path),
        "test_accuracy": results[-1].eval_accuracy,
        # unit documents are stored with sorted keys: keep the model's layer and task order explicitly
        "layers": list(masks.param_names),
        "tasks": list(masks.tasks),
        "sizes": first.sizes(),
        "kept": {t: masks[t].kept() for t in masks.tasks},
        "curves": curves,
        "still_moving": {t: convergence(c) for t, c in curves.items()},
    }
    return model, masks, doc


def mask_tasks(
    run: Run,
    prefix: str,
    model,
    tasks: Mapping[str, Any],
    seed: int,
    config: Mapping[str, Any],
    *,
    steps: int | None = None,
    lr: float | None = None,
    label: str = "",
) -> tuple[MaskSet, dict[str, list[list[float]]]]:
    """One mask per task on the frozen ``model``, one task after another, each checkpointed to
    ``{prefix}.mask{n}.pt`` with its kept-fraction curve beside it; ``config``'s mask settings, ``steps`` and
    ``lr`` (default ``mask_steps`` and ``mask_lr``) replaced when given. Returns the :class:`MaskSet` (tasks
    in ``tasks``' order) and the curves; progress goes to ``run.report`` with ``label`` in its info."""
    steps = config["mask_steps"] if steps is None else steps
    lr = config["mask_lr"] if lr is None else lr
    logits, curves, hparams = {}, {}, {}
    for n, (task, source) in enumerate(tasks.items()):
        curve = _Curve(f"{prefix}.mask{n}.curve.json", steps)

        def progress(name: str, done: int, total: int, info: dict, task=task, curve=curve) -> None:
            curve(done, total, info)
            run.report(name, done, total, {"mask": f"{label} {task}".strip(), **info})

        one = train_masks(
            model, {task: source}, cross_entropy, steps=steps, beta=config["beta"], lr=lr,
            samples=config["samples"], batch_size=config["mask_batch"], seed=seed,
            checkpoint=f"{prefix}.mask{n}.pt", progress=progress,
        )  # fmt: skip
        logits[task] = one.logits[task]
        curves[task] = curve.series()
        hparams = {k: v for k, v in one.hparams.items() if k != "tasks"}
    masks = MaskSet.from_logits(logits, hparams={**hparams, "order": "one task after another"},
                                fingerprint=one.fingerprint)  # fmt: skip
    return masks, curves


def task_data(config: Mapping[str, Any], make, views: Mapping[str, Any], seed: int, *, evaluation: bool):
    """``name -> (inputs, targets)`` of each view on the protocol's training split, or with ``evaluation``
    on its evaluation split (:func:`split_of`); ``make(split, view, test_fraction, seed)`` builds one."""
    split = split_of(config)[1 if evaluation else 0]
    return {name: make(split, v, config["heldout"], seed) for name, v in views.items()}


def mean_masks_section(
    title: str,
    units: Sequence[Mapping[str, Any]],
    pair: tuple[str, str],
    accuracy: Mapping[str, Any],
) -> dict[str, Any]:
    """A ``"masks"`` section (:func:`modscope.results.masks_section`) averaged over ``units``.

    ``kept`` is the mean count over the networks, rounded; ``iou`` / ``iomin`` the per-layer means."""
    layers, tasks = units[0]["layers"], units[0]["tasks"]

    def per_layer(field: str) -> dict[str, float | None]:
        return {n: mean([u[field]["per_layer"][n] for u in units]) for n in layers}

    return masks_section(
        title, layers=layers, sizes={n: units[0]["sizes"][n] for n in layers},
        kept={t: {n: round(fmean(u["kept"][t][n] for u in units)) for n in layers} for t in tasks},
        iou=per_layer("iou"), iomin=per_layer("iomin"), pair=pair, accuracy=accuracy,
    )  # fmt: skip


def curves_section(title: str, units: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """A ``"lines"`` section: each mask's kept fraction over its training steps, per unit."""
    series = {f"{key}: {task}": curve for key, u in units.items() for task, curve in u["curves"].items()}
    moving = [f"{key} {t}: {fmt(100 * v)}%" for key, u in units.items() for t, v in u["still_moving"].items()
              if v is not None]  # fmt: skip
    return lines_section(
        title, xlabel="mask training step", ylabel="kept weights / masked weights", series=series,
        note="Share of the masked weights each mask keeps (logit > 0) as it trains. Change over the last "
        f"fifth of the steps, relative to the final count (settled below {100 * SETTLED:.0f}%): "
        + ("; ".join(moving) or "none recorded") + ".",
    )  # fmt: skip

