"""``modscope masks train``: learn one weight mask per task on a frozen model, save the MaskSet, compare.

Example::

    modscope masks train model.safetensors --task low=digits:0-4 --task high=digits:5-9 --out m.safetensors
    modscope masks train arith.safetensors --task add=addmul:+ --task mul=addmul:* --out m.safetensors
    modscope masks train my_model.py:make --task a=my_data.py:task_a --task b=my_data.py:task_b --out m.st

MODEL is any source :func:`modscope.models.load_any` resolves. A built-in spec (``mlp:64-128x2-10``) is
randomly initialized: masks of an untrained network say little about it, so a warning is printed.

Each ``--task NAME=SPEC`` names one task and its training data; SPEC is one of

- ``digits:CLASSES``: scikit-learn's 8x8 digits (training split of ``load_images("digits")``, seed 0), the
  images of the listed classes with their labels; CLASSES is a list of classes and ranges, e.g. ``0-4``,
  ``5-9`` or ``0,2,4-6``. Inputs ``(N, 1, 8, 8)``, cross-entropy on the model's 10 logits.
- ``addmul:OPS``: the addition / multiplication task of Csordás et al. (ICLR 2021), training split of
  :func:`modscope.data.arithmetic.addmul` with the operations OPS (``+``, ``*`` or ``+*``). Inputs
  ``(N, 42)``, targets two digits; per-digit cross-entropy on ``(N, 20)`` logits.
- ``path/to/file.py:FUNCTION``: imports the file and calls ``FUNCTION()`` -- this RUNS the file's code, so
  only for code you trust. It returns the task's data, or a pair ``(data, loss_fn)``. ``data`` is an
  ``(inputs, targets)`` pair of tensors (or a 2-tensor ``TensorDataset``), drawn from ``--batch-size``
  examples a step; or a re-iterable of ``(inputs, targets)`` batches (a list, a DataLoader), cycled, in which
  case every task must be one (``--batch-size`` is then unused). ``loss_fn(outputs, targets) -> scalar``
  defaults to :func:`modscope.training.cross_entropy`; each task trains with its own.

Written: the MaskSet (``--out``, :meth:`MaskSet.save`), checked writable before any work, and printed: the
comparison table of ``modscope masks compare`` (kept weights per layer, pairwise IoU and IoMin, sharing).
``--json PATH`` (written atomically) has ``format`` (``"modscope.masks.train/1"``), ``model`` (the
description of ``load_any``), ``tasks`` (name -> SPEC), ``settings`` (as given), ``hparams``
(``MaskSet.hparams``: every setting, gate and penalty included), ``kept`` (task -> fraction of the masked
weights kept), ``table`` (:func:`modscope.cli.masks.compare_table`), ``out``, ``versions``, ``elapsed_s``.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path
from typing import Any

from modscope.user_code import first_line, user_function

JSON_FORMAT = "modscope.masks.train/1"
_FACTORY = re.compile(r"(?P<file>.+\.py):(?P<name>[A-Za-z_]\w*)")
_CLASSES = re.compile(r"\d(-\d)?(,\d(-\d)?)*")

__all__ = ["JSON_FORMAT", "add_parser", "parse_task", "task_data"]


def parse_task(text: str) -> tuple[str, str]:
    """``"low=digits:0-4"`` -> ``("low", "digits:0-4")``; a one-line ``ValueError`` naming ``text`` if the
    form is wrong (the data is not loaded here)."""
    name, sep, spec = text.partition("=")
    name = name.strip()
    if not sep or not name or not spec:
        raise ValueError(f"--task {text!r}: expected NAME=SPEC, e.g. low=digits:0-4")
    kind, _, arg = spec.partition(":")
    if _FACTORY.fullmatch(spec):
        return name, spec
    if kind == "digits":
        if not _CLASSES.fullmatch(arg) or any(a > b for a, b in _ranges(arg)):
            raise ValueError(f"--task {text!r}: digits classes must be classes 0-9 and ascending ranges, "
                             "e.g. digits:0-4 or digits:0,2,4-6")  # fmt: skip
        return name, spec
    if kind == "addmul":
        if not arg or any(c not in "+*" for c in arg) or len(set(arg)) != len(arg):
            raise ValueError(f"--task {text!r}: addmul operations must be +, * or +*, e.g. addmul:+")
        return name, spec
    raise ValueError(
        f"--task {text!r}: unknown SPEC {spec!r}; expected digits:CLASSES (digits:0-4), addmul:OPS "
        "(addmul:+) or path/to/file.py:FUNCTION"
    )


def _ranges(arg: str) -> list[tuple[int, int]]:
    parts = [p.partition("-") for p in arg.split(",")]
    return [(int(a), int(b) if b else int(a)) for a, _, b in parts]


def task_data(name: str, spec: str) -> tuple[Any, Any]:
    """``(data, loss_fn)`` of a SPEC checked by :func:`parse_task` (runs a factory's code); ``loss_fn`` is
    ``None`` for the default, :func:`modscope.training.cross_entropy` (per digit for ``(N, D)`` targets)."""
    import torch

    kind, _, arg = spec.partition(":")
    factory = _FACTORY.fullmatch(spec)
    if factory:
        return _call_factory(name, spec, Path(factory["file"]), factory["name"])
    if kind == "digits":
        from modscope.data import load_images

        x, y = load_images("digits", train=True).tensors
        classes = sorted({c for a, b in _ranges(arg) for c in range(a, b + 1)})
        keep = torch.isin(y, torch.tensor(classes))
        return (x[keep], y[keep]), None
    from modscope.data.arithmetic import addmul

    return tuple(addmul("train", ops=tuple(arg)).tensors), None


def _call_factory(task: str, spec: str, file: Path, name: str) -> tuple[Any, Any]:
    import torch

    where = f"--task {f'{task}={spec}'!r}"
    fn = user_function(file, name, where=where)
    try:
        out = fn()
    except Exception as exc:
        raise ValueError(f"{where}: {name}() failed ({type(exc).__name__}: {first_line(exc)})") from exc
    loss = None
    if isinstance(out, tuple) and len(out) == 2 and callable(out[1]) and not isinstance(out[1], torch.Tensor):
        out, loss = out
    out = getattr(out, "tensors", out)  # a TensorDataset
    if isinstance(out, (tuple, list)) and len(out) == 2 and all(isinstance(t, torch.Tensor) for t in out):
        out = tuple(out)  # the pair of tensors; batches are (inputs, targets) tuples, never a bare tensor
    if isinstance(out, (str, bytes)) or not hasattr(out, "__iter__"):
        raise ValueError(f"{where}: {name}() returned a {type(out).__name__}, not (inputs, targets) tensors, "
                         "batches, or (data, loss_fn)")  # fmt: skip
    return out, loss


def _is_pair(data: Any) -> bool:
    """An ``(inputs, targets)`` pair of tensors to draw batches from (else: an iterable of batches)."""
    import torch

    return isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data)



def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``masks train`` to the ``modscope masks`` sub-commands."""
    from modscope.masks.grouping import GRANULARITIES

    p = sub.add_parser(
        "train",
        help="train one weight mask per task on a frozen model, save them and compare them",
        description="Train one differentiable binary weight mask per task on a frozen model (Csordás et "
        "al., ICLR 2021), save the MaskSet and print the comparison of 'modscope masks compare'.",
        epilog="SPEC: digits:CLASSES (scikit-learn digits of those classes, e.g. digits:0-4 or "
        "digits:0,2,4-6), addmul:OPS (Csordás et al.'s addition/multiplication, addmul:+, addmul:* or "
        "addmul:+*), or "
        "path/to/file.py:FUNCTION, which imports and RUNS that file (only for code you trust); FUNCTION() "
        "returns the data -- (inputs, targets) tensors or a re-iterable of (inputs, targets) batches -- or "
        "(data, loss_fn); the default loss is cross-entropy.",
    )
    p.add_argument("model", metavar="MODEL", help="a model source, as for 'modscope cluster' (a model file, "
                   "built-in spec (random init), .pt2, Hugging Face folder, or file.py:FUNCTION, which RUNS "
                   "that file)")  # fmt: skip
    p.add_argument("--task", metavar="NAME=SPEC", action="append", required=True,
                   help="a task and its data (see SPEC below); repeat for several")  # fmt: skip
    p.add_argument("--out", required=True, help="the MaskSet file to write (.safetensors)")
    p.add_argument("--arch", metavar="SPEC", help="architecture of a weights-only model file")
    p.add_argument("--factory-arg", metavar="NAME=VALUE", action="append", default=[],
                   help="keyword argument of a file.py:FUNCTION MODEL (a Python literal, else a string)")
    p.add_argument("--steps", type=int, default=1000, help="optimizer steps (default: 1000)")
    p.add_argument("--beta", type=float, default=1e-4, help="sparsity penalty weight (default: 1e-4)")
    p.add_argument("--lr", type=float, default=3e-2, help="Adam learning rate of the logits (default: 3e-2)")
    p.add_argument("--init", type=float, default=2.0, help="initial logit of every weight (default: 2.0)")
    p.add_argument("--samples", type=int, default=4, help="mask samples per step (default: 4)")
    p.add_argument("--batch-size", type=int, default=128,
                   help="examples drawn per step from tensor data (default: 128)")  # fmt: skip
    p.add_argument("--granularity", choices=GRANULARITIES, default="weight",
                   help="one gate per weight (default), unit, conv channel or attention head")  # fmt: skip
    p.add_argument("--fallback", choices=GRANULARITIES,
                   help="granularity of parameters --granularity has no rule for (default: an error)")
    p.add_argument("--seed", type=int, default=0, help="seed of the batches and gate noise (default: 0)")
    p.add_argument("--init-seed", type=int, default=0, help="seed of a built-in spec's init (default: 0)")
    p.add_argument("--checkpoint", metavar="PATH", help="save every 100 steps; resume from it when it exists")
    p.add_argument("--json", metavar="PATH", help="write settings, kept fractions and the table as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)



def _tasks(items: list[str]) -> dict[str, str]:
    tasks: dict[str, str] = {}
    for text in items:
        name, spec = parse_task(text)
        if name in tasks:
            raise ValueError(f"--task {text!r}: task {name!r} given twice")
        tasks[name] = spec
    return tasks


def _load_data(tasks: dict[str, str]) -> tuple[dict[str, Any], dict[str, Any], bool]:
    """``(name -> data, name -> loss_fn, tensor pairs?)``: all data of one kind."""
    from modscope.training import cross_entropy

    data, losses = {}, {}
    for name, spec in tasks.items():
        data[name], loss = task_data(name, spec)
        losses[name] = cross_entropy if loss is None else loss
    pairs = {name: _is_pair(d) for name, d in data.items()}
    if len(set(pairs.values())) > 1:
        raise ValueError(
            f"tasks {[n for n, p in pairs.items() if p]} give (inputs, targets) tensors but "
            f"{[n for n, p in pairs.items() if not p]} give batches; give all tasks in one form"
        )
    return data, losses, all(pairs.values())


def run(args: argparse.Namespace) -> int:
    from modscope.atomic import write_json_atomic
    from modscope.cli import check_output
    from modscope.cli.masks import _format, compare_table
    from modscope.cli.progress import bars
    from modscope.masks import train_masks
    from modscope.models import load_any, parse_factory_args
    from modscope.seeding import check_seed
    from modscope.versions import versions

    for path, name in ((args.out, "--out"), (args.json, "--json"), (args.checkpoint, "--checkpoint")):
        check_output(path, name=name)
    check_seed(args.seed, "--seed")
    tasks = _tasks(args.task)
    model, described = load_any(args.model, arch=args.arch, seed=args.init_seed,
                                factory_args=parse_factory_args(args.factory_arg))  # fmt: skip
    print(f"model       {described['label']}")
    if described["random_init"]:
        print("modscope: warning: the model is randomly initialized; masks of an untrained network say "
              "little about it", file=sys.stderr)  # fmt: skip
    data, losses, pairs = _load_data(tasks)
    settings = {"steps": args.steps, "beta": args.beta, "lr": args.lr, "init": args.init,
                "samples": args.samples, "batch_size": args.batch_size if pairs else None, "seed": args.seed,
                "granularity": args.granularity, "fallback": args.fallback}  # fmt: skip
    start = time.perf_counter()
    with bars(disable=args.no_progress, unit="step") as update:
        masks = train_masks(model, data, losses, progress=update, checkpoint=args.checkpoint, **settings)
    elapsed = time.perf_counter() - start
    masks.save(args.out)
    table = compare_table([args.out])
    print(_format(table))
    kept = {t: masks[t].total_kept / masks[t].total_size for t in masks.tasks}
    print("kept        " + ", ".join(f"{t} {f:.1%}" for t, f in kept.items()))
    print(f"time        {elapsed:.1f} s")
    print(f"wrote       {args.out}")
    if args.json:
        doc = {"format": JSON_FORMAT, "model": described, "tasks": tasks, "settings": settings,
               "hparams": dict(masks.hparams), "kept": kept, "table": table, "out": str(args.out),
               "versions": versions(), "elapsed_s": round(elapsed, 3)}  # fmt: skip
        write_json_atomic(args.json, doc)
        print(f"wrote       {args.json}")
    return 0
