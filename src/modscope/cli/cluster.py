"""``modscope cluster``: is a network more clusterable than its shuffled versions? (SPEC §1.3)

Example::

    modscope cluster model.safetensors --k 12 --shuffles 50 --jobs 2 --json out/r.json --plot out/graph.png
    modscope cluster weights.pt --arch mlp:784-256x4-10
    modscope cluster mlp:784-256x4-10 --shuffles 20      # a randomly initialized built-in architecture
    modscope cluster model.pt2                           # a torch.export archive
    modscope cluster my_models.py:make --factory-arg width=64 --input-shape 784

MODEL is any source :func:`modscope.models.load_any` resolves (built-in spec, model file, ``.pt2``,
``torchvision:NAME``, Hugging Face folder, ``file.py:factory``).

The JSON file (written atomically) has the keys

- ``"format"``: ``"modscope.cluster/1"``;
- ``"model"``: the description of :func:`modscope.models.load_any`: ``source`` (the MODEL argument),
  ``kind``, ``spec`` (dict) and ``spec_string`` (``null`` unless a built-in architecture), ``random_init``,
  ``init_seed`` (``null`` unless randomly initialized), ``input_shape``, ``model_class``, ``factory_args``,
  ``token_inputs``, ``label``;
- ``"graph"``: ``layers`` (list of ``{"name", "size", "kind"}``), ``n_nodes``, ``n_edges``;
- ``"settings"``: ``k``, ``n_shuffles``, ``shuffle``, ``seed``, ``jobs`` (as given), ``workers`` (the
  processes used: ``jobs`` capped at the CPUs and the shuffles), ``solver``, ``n_init``, ``patience``,
  ``channel_norm``, ``residual`` (the rule used: ``"auto"`` resolved), ``include_inputs``,
  ``include_outputs``, ``input_shape``;
- ``"result"``: :meth:`ClusterabilityResult.to_dict` (``ClusterabilityResult.from_dict(d["result"])``
  reads it back);
- ``"verdict"``: the one-line summary printed;
- ``"versions"``: ``modscope``, ``torch``, ``numpy``, ``scipy``, ``sklearn``, ``python``;
- ``"elapsed_s"``: wall-clock seconds of the clustering.
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

from modscope.atomic import write_json_atomic
from modscope.cli.progress import bars
from modscope.versions import versions

JSON_FORMAT = "modscope.cluster/1"


def register(subparsers: argparse._SubParsersAction) -> None:
    from modscope.cluster import SOLVERS
    from modscope.cluster.spectral import N_INIT, PATIENCE
    from modscope.graph import CHANNEL_NORMS, SHUFFLES

    p = subparsers.add_parser(
        "cluster",
        help="n-cut of a network's spectral clustering against shuffled networks",
        description=(
            "Partition the network's weight graph (neurons / conv channels as nodes, |weights| as edges) by "
            "spectral clustering, and test its n-cut against networks with each layer's weights shuffled."
        ),
    )
    p.add_argument(
        "model",
        metavar="MODEL",
        help="a model file (.safetensors saved by modscope; .pt/.pth state dict or bare .safetensors "
        "with --arch), a built-in spec such as mlp:784-256x4-10 (randomly initialized), a torch.export "
        "archive (.pt2), torchvision:NAME (randomly initialized), a Hugging Face model folder (read "
        "offline), or path/to/file.py:FUNCTION, which imports and RUNS that file to build the model "
        "(only for code you trust)",
    )
    p.add_argument(
        "--arch", metavar="SPEC", help="architecture of a weights-only file, e.g. mlp:784-256x4-10"
    )
    p.add_argument(
        "--factory-arg", metavar="NAME=VALUE", action="append", default=[],
        help="keyword argument of the FUNCTION of a file.py:FUNCTION model (a Python literal, else a "
        "string); repeat for several",
    )  # fmt: skip
    p.add_argument("--k", type=int, default=12, help="number of clusters (default: 12)")
    p.add_argument(
        "--shuffles", type=int, default=50, help="shuffled networks in the null model (default: 50)"
    )
    p.add_argument(
        "--shuffle",
        choices=SHUFFLES,
        default="layer",
        help="permute all weights of each layer, or only the non-zero ones (default: layer)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="master seed of the clustering and shuffles (default: 0)"
    )
    p.add_argument(
        "--init-seed",
        type=int,
        default=0,
        help="seed of the random initialization of a built-in spec or torchvision model (default: 0)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="worker processes for the shuffles, -1 = one per CPU, at most one per CPU and per shuffle; "
        "the result does not depend on it",
    )
    p.add_argument("--solver", choices=SOLVERS, default="auto", help="eigensolver (default: auto, by size)")
    p.add_argument(
        "--n-init",
        type=int,
        default=N_INIT,
        help=f"minimum k-means restarts per clustering (default: {N_INIT})",
    )
    p.add_argument(
        "--patience",
        type=int,
        default=PATIENCE,
        help="then restart until this many restarts in a row have not lowered the best n-cut; 0 = exactly "
        f"--n-init restarts (default: {PATIENCE})",
    )
    p.add_argument(
        "--input-shape",
        metavar="CxHxW",
        type=_shape,
        help="shape of one input, e.g. 1x28x28 (default: from the model spec)",
    )
    p.add_argument(
        "--channel-norm",
        choices=CHANNEL_NORMS,
        default="l1",
        help="norm of a conv kernel slice as edge weight (default: l1)",
    )
    p.add_argument(
        "--residual",
        choices=("auto", "filan", "merge"),
        default="auto",
        help="residual adds: a copy of the summed units per reader (filan, Filan et al.'s ResNet-50) or one "
        "group per stream (merge); auto: merge for models with attention, else filan (default: auto)",
    )
    p.add_argument("--no-inputs", action="store_true", help="leave the input-feature nodes out of the graph")
    p.add_argument("--no-outputs", action="store_true", help="leave the output-unit nodes out of the graph")
    p.add_argument("--json", metavar="PATH", help="write the result, settings and versions as JSON")
    p.add_argument("--plot", metavar="PATH", help="draw the clustered graph (PNG)")
    p.add_argument(
        "--max-edges", type=int, default=20000, help="strongest edges drawn in --plot (default: 20000)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(d) for d in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected sizes joined by 'x' such as 1x28x28, got {text!r}"
        ) from None
    if not dims or any(d <= 0 for d in dims):
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return dims


def run(args: argparse.Namespace) -> int:
    from modscope.cli import check_output
    from modscope.cluster import clusterability, worker_count
    from modscope.graph import WeightGraph
    from modscope.graph.trace import resolve_residual
    from modscope.models import example_inputs, load_any, parse_factory_args
    from modscope.seeding import check_seed

    check_output(args.json, name="--json")
    check_output(args.plot, name="--plot", image=True)
    check_seed(args.seed, "--seed")
    check_seed(args.init_seed, "--init-seed")
    workers = worker_count(args.jobs, args.shuffles)  # a bad --jobs fails before any work
    factory_args = parse_factory_args(args.factory_arg)
    model, described = load_any(args.model, arch=args.arch, seed=args.init_seed, factory_args=factory_args)
    input_shape = args.input_shape or described["input_shape"]
    example = None if input_shape is not None else example_inputs(described)
    residual = resolve_residual(model, args.residual)
    graph = WeightGraph.from_module(
        model, input_shape, example_inputs=example, channel_norm=args.channel_norm, residual=residual,
        include_inputs=not args.no_inputs, include_outputs=not args.no_outputs,
    )  # fmt: skip
    print(f"model       {described['label']}")
    print(f"graph       {_graph_line(graph)}")

    start = time.perf_counter()
    with bars(disable=args.no_progress, unit="graph") as update:
        result = clusterability(
            graph, k=args.k, n_shuffles=args.shuffles, shuffle=args.shuffle, seed=args.seed,
            n_jobs=args.jobs, progress=update, solver=args.solver, n_init=args.n_init, patience=args.patience,
        )  # fmt: skip
    elapsed = time.perf_counter() - start
    verdict = verdict_line(result)
    for line in summary_lines(result):
        print(line)
    print(f"verdict     {verdict}")
    print(f"time        {elapsed:.1f} s ({workers} worker{'s' if workers != 1 else ''})")

    if args.json:
        doc = {
            "format": JSON_FORMAT,
            "model": described,
            "graph": {
                "layers": [
                    {"name": layer.name, "size": layer.size, "kind": layer.kind} for layer in graph.layers
                ],
                "n_nodes": graph.n_nodes,
                "n_edges": graph.n_edges,
            },
            "settings": {
                "k": args.k,
                "n_shuffles": args.shuffles,
                "shuffle": args.shuffle,
                "seed": args.seed,
                "jobs": args.jobs,
                "workers": workers,
                "solver": args.solver,
                "n_init": args.n_init,
                "patience": args.patience,
                "channel_norm": args.channel_norm,
                "residual": residual,
                "include_inputs": not args.no_inputs,
                "include_outputs": not args.no_outputs,
                "input_shape": None if input_shape is None else list(input_shape),
            },
            "result": result.to_dict(),
            "verdict": verdict,
            "versions": versions(),
            "elapsed_s": round(elapsed, 3),
        }
        write_json_atomic(args.json, doc)
        print(f"wrote       {args.json}")
    if args.plot:
        from modscope.plot import plot_partition

        plot_partition(graph, result.partition, args.plot, max_edges=args.max_edges)
        print(f"wrote       {args.plot}")
    return 0


def _graph_line(graph: Any) -> str:
    sizes = ", ".join(f"{layer.name} {layer.size}" for layer in graph.layers)
    return f"{len(graph.layers)} layers, {graph.n_nodes} nodes, {graph.n_edges} edges ({sizes})"


def summary_lines(result: Any) -> list[str]:
    """The printed summary of a :class:`ClusterabilityResult`, one ``label  value`` per line."""
    isolated = int((result.partition.labels < 0).sum())
    z = f"{result.z:.2f}" if math.isfinite(result.z) else "undefined (all shuffles equal)"
    lines = [
        f"k           {result.k}" + (f"  ({isolated} nodes without edges left out)" if isolated else ""),
        f"n-cut       {result.ncut:.4f}" + _restarts(result.partition),
        f"null        {result.null_mean:.4f} ± {result.null_std:.4f}  "
        f"({result.n_shuffles} '{result.shuffle}' shuffles, min {result.null_ncuts.min():.4f})",
        f"z           {z}",
        f"p           {result.p_value:.4g}  (one-sided: shuffles with n-cut <= the network's)",
        f"below all   {'yes' if result.below_all else 'no'}",
    ]
    return lines


def _restarts(partition: Any) -> str:
    if not partition.n_restarts:
        return ""
    return (
        f"  (best of {partition.n_restarts} k-means restarts; they ranged "
        f"{partition.ncut_restarts.min():.4f}-{partition.ncut_restarts.max():.4f})"
    )


def verdict_line(result: Any, alpha: float = 0.05) -> str:
    """A plain-English reading of the test at level ``alpha``."""
    n = result.n_shuffles
    if result.p_value <= alpha:
        return (
            f"more clusterable than chance: its n-cut is lower than "
            f"{'all' if result.below_all else 'most'} of {n} shuffled networks (p = {result.p_value:.3g})."
        )
    floor = 1.0 / (n + 1)
    if result.below_all and floor > alpha:
        return (
            f"lower n-cut than all {n} shuffles, but {n} shuffles cannot reach p <= {alpha} "
            f"(smallest possible p = {floor:.3g}); run at least {math.ceil(1 / alpha) - 1} shuffles."
        )
    if result.ncut < result.null_mean:
        return f"not significantly more clusterable than its shuffled versions (p = {result.p_value:.3g})."
    return (
        "no more clusterable than its shuffled versions: n-cut at or above the shuffles' mean "
        f"(p = {result.p_value:.3g})."
    )
