"""``modscope train RECIPE``: train one of the papers' base networks and save it as a modscope model file.

Example::

    modscope train clusterability-mlp --dataset fashion-mnist --dropout 0.5 --prune --out mlp.safetensors
    modscope cluster mlp.safetensors --shuffles 50 --shuffle layer_nonzero

The file (safetensors) holds the weights, the model spec, the training settings and the metrics
(:func:`modscope.training.save_trained`); ``modscope cluster`` and :func:`modscope.models.load_model`
read it without unpickling anything.
"""

from __future__ import annotations

import argparse

from modscope.cli import check_output
from modscope.cli.progress import bars


def register(subparsers: argparse._SubParsersAction) -> None:
    from modscope.training.recipes import RECIPES

    listing = "; ".join(
        f"{r.name}: {r.description} (data: {', '.join(r.datasets)})" for r in RECIPES.values()
    )
    p = subparsers.add_parser(
        "train",
        help="train a base network of the papers and save it",
        description=f"Train a recipe's network and save it as a modscope model file. Recipes: {listing}.",
    )
    p.add_argument("recipe", choices=sorted(RECIPES), metavar="RECIPE", help=f"one of {sorted(RECIPES)}")
    p.add_argument("--dataset", help="data set (default: the recipe's)")
    p.add_argument("--data-root", metavar="DIR", help="folder with the data set's files")
    p.add_argument("--dropout", type=float, help="dropout after each hidden layer (MLP recipes)")
    p.add_argument("--prune", action="store_true", help="then prune 50%% -> 90%% per layer (20 more epochs)")
    p.add_argument("--l1", type=float, default=0.0, help="L1 weight penalty (Filan et al.: 5e-5)")
    p.add_argument("--l2", type=float, default=0.0, help="L2 weight penalty (Filan et al.: 5e-5)")
    p.add_argument(
        "--clusterable-init", action="store_true", help="plant 10 modules (x4.6 inside, x0.6 across)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of init, data order, dropout (default: 0)")
    p.add_argument(
        "--init", choices=("glorot", "torch"), default="glorot",
        help="Glorot-uniform (default) or PyTorch's default initialization (Csordás et al.'s code)",
    )  # fmt: skip
    p.add_argument("--clip", type=float, help="clip each update's gradient norm (Csordás et al.: 1.0)")
    p.add_argument(
        "--heldout", type=float, default=0.1,
        help="arithmetic tasks: share of (a, b) pairs held out (default 0.1; 0: every input, as the authors)",
    )  # fmt: skip
    length = p.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=int, help="override the recipe's number of epochs")
    length.add_argument("--steps", type=int, help="override the recipe's number of steps")
    p.add_argument(
        "--checkpoint", metavar="PREFIX", help="checkpoint to PREFIX.<phase>.pt and resume from it"
    )
    p.add_argument("--out", required=True, metavar="PATH", help="the model file to write (.safetensors)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from modscope.models import spec_to_string
    from modscope.seeding import check_seed
    from modscope.training import save_trained
    from modscope.training.recipes import run_recipe

    check_output(args.out, name="--out")
    if args.checkpoint:
        check_output(f"{args.checkpoint}.train.pt", name="--checkpoint")
    check_seed(args.seed, "--seed")
    with bars(disable=args.no_progress) as progress:
        model, spec, results, config = run_recipe(
            args.recipe, dataset=args.dataset, dropout=args.dropout, prune=args.prune, l1=args.l1,
            l2=args.l2, clusterable=args.clusterable_init, seed=args.seed, epochs=args.epochs,
            steps=args.steps, data_root=args.data_root, progress=progress, checkpoint=args.checkpoint,
            init=args.init, clip_grad_norm=args.clip, heldout=args.heldout,
        )  # fmt: skip
    for label, r in zip(("trained", "pruned"), results):
        acc = "n/a" if r.eval_accuracy is None else f"{r.eval_accuracy:.4f}"
        sparsity = ""
        if r.sparsity:
            sparsity = f", sparsity {min(r.sparsity.values()):.2f}-{max(r.sparsity.values()):.2f}"
        print(f"{label:8s} {r.steps} steps ({r.epochs:.1f} epochs) in {r.seconds:.1f} s: "
              f"test accuracy {acc}, test loss {r.eval_loss:.4f}{sparsity}")  # fmt: skip
    save_trained(model, spec, args.out, config, results[-1])
    print(f"model    {spec_to_string(spec)}")
    print(f"wrote    {args.out}")
    return 0
