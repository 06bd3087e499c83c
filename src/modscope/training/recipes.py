"""Training recipes: the base networks of the papers, each a model spec, a data set and a schedule.

Filan et al. (arXiv:2103.03386): MLP 784-256x4-10 (ReLU) and a small CNN on (Fashion-)MNIST, pixels in
[0, 1], Adam lr 1e-3, batch 128, 20 epochs; dropout 0.5 after each hidden layer; "pruned" = 20 further
epochs of magnitude pruning from 50% to 90% sparsity per layer, updated every 10 steps; L1/L2 5e-5;
clusterable init with 10 modules, within-module weights x4.6, across x0.6.
Csordás et al. (arXiv:2010.02066): the addition/multiplication FNN and LSTM, the double-addition FNN and
the CIFAR-10 CNN, Adam 1e-3, batch 128, 20k steps; LSTM and transformer sequence-to-sequence on SCAN.

:func:`run_recipe` trains one network; ``modscope train`` is its command line.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from modscope.models import build_model, normalize_spec, parse_spec
from modscope.progress import Progress
from modscope.seeding import derive
from modscope.training.init import clusterable_init
from modscope.training.loop import train
from modscope.training.prune import PruneSchedule
from modscope.training.result import TrainResult

IMAGE_SETS = ("fashion-mnist", "mnist", "cifar10", "digits", "line", "halves")
SCAN_SPLITS = ("simple", "length", "addprim_jump", "addprim_turn_left")


@dataclass(frozen=True)
class Recipe:
    """A base network: ``spec`` (``{in}``/``{out}`` filled from the data), data set, schedule."""

    name: str
    description: str
    spec: str
    dataset: str
    datasets: tuple[str, ...]
    epochs: int | None = None
    steps: int | None = None
    batch_size: int = 128
    lr: float = 1e-3
    prune_epochs: int = 20
    supports_dropout: bool = False


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe("clusterability-mlp", "Filan et al.'s MLP, 4 hidden layers of 256 ReLU units",
               "mlp:{in}-256x4-{out}", "fashion-mnist", IMAGE_SETS, epochs=20, supports_dropout=True),
        Recipe("small-cnn", "Filan et al.'s small CNN (3 conv layers, 1 dense)",
               "cnn:{shape}:c16-M-c32-M-c64-M-f128-f{out}", "fashion-mnist",
               ("fashion-mnist", "mnist", "line", "halves"), epochs=20),
        Recipe("addmul-fnn", "Csordás et al.'s addition/multiplication FNN, 4 hidden layers of 800",
               "mlp:42-800x4-20", "addmul", ("addmul",), steps=20000, supports_dropout=True),
        Recipe("addmul-lstm", "Csordás et al.'s 2x256 LSTM reading the input for 3 steps",
               "lstm:42-256x2-20:steps=3", "addmul", ("addmul",), steps=20000),
        Recipe("double-addition-fnn", "Csordás et al.'s double-addition FNN (one pair at a time)",
               "mlp:80-800x4-40", "double-addition", ("double-addition",), steps=20000,
               supports_dropout=True),
        Recipe("cifar-cnn", "Csordás et al.'s CIFAR-10 CNN (4 conv, global pooling, linear)",
               "cifar-cnn", "cifar10", ("cifar10",), epochs=20),
        Recipe("scan-lstm", "LSTM encoder-decoder on SCAN",
               "seq2seq-lstm:src_vocab={src}:tgt_vocab={tgt}", "scan-simple",
               tuple(f"scan-{s}" for s in SCAN_SPLITS), steps=20000),
        Recipe("scan-transformer", "Transformer encoder-decoder on SCAN",
               "seq2seq-transformer:src_vocab={src}:tgt_vocab={tgt}", "scan-simple",
               tuple(f"scan-{s}" for s in SCAN_SPLITS), steps=20000, lr=5e-4),
    )
}  # fmt: skip


class TeacherForcing(nn.Module):
    """A sequence-to-sequence model as a one-input classifier for :func:`train`.

    Input ``(N, Ls + Lt)``: the source tokens then the decoder input (``bos`` + target); output
    ``(N, Lt * V)``, read by the training loss as ``Lt`` classifications per example (pad targets are
    ``-100`` and ignored), so the reported accuracy is the teacher-forced sequence accuracy.
    """

    def __init__(self, model: nn.Module, src_len: int):
        super().__init__()
        self.model = model
        self.src_len = src_len

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x[:, : self.src_len], x[:, self.src_len :]).flatten(1)


@dataclass(frozen=True)
class TaskData:
    train: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]
    fill: dict[str, Any]  # values for the recipe's spec template
    wrap: Callable[[nn.Module], nn.Module] | None = None


@functools.lru_cache(maxsize=4)
def load_task_data(dataset: str, seed: int = 0, root: str | None = None, heldout: float = 0.1) -> TaskData:
    """Train and test tensors of a data set name, and the sizes the model spec needs.

    ``heldout``: the share of (a, b) pairs the arithmetic tasks hold out
    (:func:`modscope.data.heldout_pairs`). With 0 every input is trained on and the test set is the
    training set, as in Csordás et al.'s code, whose validation samples are fresh draws of the same inputs.

    Cached (the last 4 calls): a study trains many networks on one data set, and decoding Fashion-MNIST
    takes seconds. The tensors are therefore shared between callers: never modify them in place.
    """
    from modscope import data

    if dataset in ("fashion-mnist", "mnist", "cifar10", "digits"):
        tr = data.load_images(dataset, root=root, train=True, seed=seed)
        te = data.load_images(dataset, root=root, train=False, seed=seed)
    elif dataset == "line":
        tr, te = data.line(20000, seed=seed), data.line(4000, seed=derive(seed, "test"))
    elif dataset == "halves":
        base_tr = data.load_images("fashion-mnist", root=root, train=True)
        base_te = data.load_images("fashion-mnist", root=root, train=False)
        tr = data.halves(base_tr, 60000, seed=seed)
        te = data.halves(base_te, 10000, seed=derive(seed, "test"))
    elif dataset == "addmul":
        tr = data.addmul("train", test_fraction=heldout, seed=seed)
        te = data.addmul("test", test_fraction=heldout, seed=seed) if heldout else tr
    elif dataset == "double-addition":
        # The network sees one pair at a time, the other zeroed (its target digits ignored).
        tr = _concat(data.double_addition("train", heldout, seed, pair=p) for p in (0, 1))
        te = _concat(data.double_addition("test", heldout, seed, pair=p) for p in (0, 1)) if heldout else tr
    elif dataset.startswith("scan-") and dataset[5:] in SCAN_SPLITS:
        return _scan(dataset[5:], seed)
    else:
        raise ValueError(f"unknown data set {dataset!r}")
    train_t, test_t = _tensors(tr), _tensors(te)
    x, y = train_t
    n_out = int(y.max()) + 1 if y.ndim == 1 else None
    shape = "x".join(str(s) for s in x.shape[1:])
    return TaskData(train_t, test_t, {"in": int(x[0].numel()), "out": n_out, "shape": shape})


def _tensors(ds: Any) -> tuple[torch.Tensor, torch.Tensor]:
    return tuple(ds.tensors) if hasattr(ds, "tensors") else (ds[0], ds[1])


def _concat(parts) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*(_tensors(p) for p in parts))
    return torch.cat(xs), torch.cat(ys)


def _scan(split: str, seed: int) -> TaskData:
    from modscope import data

    train_pairs, test_pairs = data.scan_split(split, seed=seed)
    src_vocab, tgt_vocab = data.scan_vocabs()
    # One padded length for train and test, so one model input layout serves both.
    src_len = max(len(c.split()) for c, _ in train_pairs + test_pairs) + 1
    tgt_len = max(len(a.split()) for _, a in train_pairs + test_pairs) + 2

    def encode(pairs):
        src, _, tgt, _ = data.encode_pairs(pairs, src_vocab, tgt_vocab, src_len, tgt_len).tensors
        tgt_in, tgt_out = tgt[:, :-1], tgt[:, 1:].clone()
        tgt_out[tgt_out == tgt_vocab.pad_id] = -100  # ignored by the loss and by the accuracy
        return torch.cat([src, tgt_in], dim=1), tgt_out

    fill = {"src": len(src_vocab), "tgt": len(tgt_vocab)}
    return TaskData(encode(train_pairs), encode(test_pairs), fill, lambda m: TeacherForcing(m, src_len))


def run_recipe(
    name: str,
    *,
    dataset: str | None = None,
    dropout: float | None = None,
    prune: bool = False,
    l1: float = 0.0,
    l2: float = 0.0,
    clusterable: bool = False,
    seed: int = 0,
    epochs: int | None = None,
    steps: int | None = None,
    spec: str | None = None,
    data_root: str | None = None,
    heldout: float = 0.1,
    init: str = "glorot",
    clip_grad_norm: float | None = None,
    progress: Progress | None = None,
    checkpoint: str | None = None,
) -> tuple[nn.Module, dict[str, Any], list[TrainResult], dict[str, Any]]:
    """Train the network of recipe ``name``.

    Returns ``(model, spec, results, config)``: the trained (and pruned) model, its spec dict, one
    :class:`TrainResult` per phase (training, then pruning when ``prune``), and the settings as JSON.
    ``epochs``/``steps`` override the recipe's length (one of them); ``progress(label, step, total,
    info)`` is called after every update (label ``"train"``, then ``"prune"``); ``spec`` replaces the
    recipe's model spec template (same fields, e.g. ``"mlp:{in}-64x4-{out}"`` for a smaller network);
    ``heldout`` the share of pairs the arithmetic tasks hold out (:func:`load_task_data`); ``init`` the
    initialization (:func:`~modscope.models.build_model`); ``clip_grad_norm`` clips the gradient norm of
    every update (Csordás et al.: 1.0); ``checkpoint`` is a path prefix: each phase checkpoints to
    ``{checkpoint}.{phase}.pt`` and resumes from it.
    """
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {sorted(RECIPES)}")
    recipe = RECIPES[name]
    dataset = dataset or recipe.dataset
    if dataset not in recipe.datasets:
        raise ValueError(f"recipe {name!r} trains on {list(recipe.datasets)}, not {dataset!r}")
    if dropout and not recipe.supports_dropout:
        raise ValueError(f"recipe {name!r} has no dropout option")
    if epochs is not None or steps is not None:
        recipe = replace(recipe, epochs=epochs, steps=steps)
    task = load_task_data(dataset, seed=seed, root=data_root, heldout=heldout)
    if spec is not None:
        recipe = replace(recipe, spec=spec)
    try:
        spec = parse_spec(recipe.spec.format(**task.fill))
    except KeyError as exc:
        raise ValueError(f"spec {recipe.spec!r} uses {exc}, which data set {dataset!r} lacks") from None
    if dropout:
        spec = normalize_spec({**spec, "dropout": float(dropout)})
    model = build_model(spec, seed=seed, init=init)
    assignment = clusterable_init(model, seed=seed) if clusterable else None
    trained = task.wrap(model) if task.wrap else model

    common = dict(
        batch_size=recipe.batch_size, lr=recipe.lr, l1=l1, l2=l2, seed=seed, eval_set=task.test,
        clip_grad_norm=clip_grad_norm,
    )  # fmt: skip
    results = [
        train(trained, task.train, epochs=recipe.epochs, steps=recipe.steps, progress=progress,
              checkpoint=f"{checkpoint}.train.pt" if checkpoint else None, **common)
    ]  # fmt: skip
    if prune:
        prune_length = {"epochs": recipe.prune_epochs} if recipe.epochs else {"steps": recipe.steps}
        results.append(
            train(trained, task.train, prune=PruneSchedule(), progress=progress,
                  checkpoint=f"{checkpoint}.prune.pt" if checkpoint else None, **prune_length,
                  **common)
        )  # fmt: skip
    config = {
        "recipe": name,
        "spec": recipe.spec,
        "dataset": dataset,
        "dropout": dropout or 0.0,
        "prune": prune,
        "l1": l1,
        "l2": l2,
        "clusterable_init": None if assignment is None else {"n_modules": 10, "inside": 4.6, "across": 0.6},
        "seed": seed,
        "init": init,
        "heldout": heldout,
        "phases": [r.config for r in results],
    }
    return model, spec, results, config
