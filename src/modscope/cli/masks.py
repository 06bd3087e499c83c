"""``modscope masks``: compare and plot trained weight masks (safetensors files from ``MaskSet.save``);
``masks train`` lives in :mod:`modscope.cli.masks_train`."""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

from modscope.masks import MaskSet, iomin, iou, sharing
from modscope.masks.mask import Mask

__all__ = ["compare_table", "register"]


def _load(text: str) -> MaskSet:
    """``MaskSet.load``, with a clear error for a folder or a model file given instead of a mask file."""
    path = Path(text)
    if path.is_dir():
        found = sorted(p.name for p in path.glob("*.safetensors"))
        inside = f"it holds {', '.join(found[:5])}{', ...' if len(found) > 5 else ''}" if found else ""
        raise ValueError(
            f"{text!r} is a folder, not a mask file ({inside or 'no .safetensors in it'}); "
            f"give the files, e.g. {text}/*.safetensors"
        )
    try:
        return MaskSet.load(path)
    except ValueError:
        if _is_model_file(path):
            raise ValueError(
                f"{text!r} is a modscope model file, not a mask file (mask files are written by MaskSet.save)"
            ) from None
        raise


def _is_model_file(path: Path) -> bool:
    from safetensors import safe_open

    from modscope.models import FORMAT, FORMAT_KEY

    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get(FORMAT_KEY) == FORMAT
    except Exception:  # not safetensors at all: MaskSet.load's message stands
        return False


def _load_all(paths: list[str]) -> dict[str, Mask]:
    """``label -> mask``: ``task`` for one file, ``file:task`` for several."""
    out: dict[str, Mask] = {}
    sets = [(Path(p), _load(p)) for p in paths]
    shapes = sets[0][1].shapes
    for path, ms in sets:
        if ms.shapes != shapes:
            raise ValueError(f"{str(path)!r} masks other parameters or shapes than {paths[0]!r}")
        for task in ms.tasks:
            out[task if len(sets) == 1 else f"{path.stem}:{task}"] = ms[task]
    return out


def compare_table(paths: list[str]) -> dict:
    """Per-layer kept counts, pairwise IoU / IoMin and sharing of every mask in the files (JSON-ready)."""
    masks = _load_all(paths)
    first = next(iter(masks.values()))
    layers = [*first, "total"]
    kept = {label: {**m.kept(), "total": m.total_kept} for label, m in masks.items()}
    sizes = {**first.sizes(), "total": first.total_size}
    pairs = {}
    for a, b in itertools.combinations(masks, 2):
        o, m = iou(masks[a], masks[b]), iomin(masks[a], masks[b])
        pairs[f"{a} vs {b}"] = {
            "iou": {**o.per_layer, "total": o.total},
            "iomin": {**m.per_layer, "total": m.total},
        }
    shared = {}
    if len(masks) > 1:
        for label, o in sharing(MaskSet(masks)).items():
            shared[label] = {**o.per_layer, "total": o.total}
    return {"layers": layers, "size": sizes, "kept": kept, "pairs": pairs, "sharing": shared}


def _format(table: dict) -> str:
    layers = table["layers"]
    rows = [["layer", "size", *[f"kept {k}" for k in table["kept"]]]]
    rows += [
        [layer, str(table["size"][layer]), *[str(v[layer]) for v in table["kept"].values()]]
        for layer in layers
    ]
    for pair, metrics in table["pairs"].items():
        rows[0] += [f"IoU {pair}", f"IoMin {pair}"]
        for i, layer in enumerate(layers, start=1):
            rows[i] += [f"{metrics['iou'][layer]:.3f}", f"{metrics['iomin'][layer]:.3f}"]
    for label, values in table["sharing"].items():
        rows[0].append(f"sharing {label}")
        for i, layer in enumerate(layers, start=1):
            rows[i].append(f"{values[layer]:.3f}")
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def _compare(args: argparse.Namespace) -> int:
    table = compare_table(args.files)
    print(json.dumps(table, indent=2) if args.json else _format(table))
    return 0


def _plot(args: argparse.Namespace) -> int:
    import matplotlib

    from modscope.atomic import atomic_path
    from modscope.cli import check_output

    check_output(args.out, name="--out", image=True)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = compare_table(args.files)
    layers = table["layers"][:-1]
    n_axes = 2 if table["pairs"] else 1
    fig, axes = plt.subplots(n_axes, 1, figsize=(max(6, 1.2 * len(layers)), 3.5 * n_axes), squeeze=False)
    width = 0.8 / max(len(table["kept"]), 1)
    for i, (label, kept) in enumerate(table["kept"].items()):
        xs = [j + i * width for j in range(len(layers))]
        axes[0][0].bar(xs, [kept[layer] / table["size"][layer] for layer in layers], width, label=label)
    axes[0][0].set_ylabel("fraction of weights kept")
    axes[0][0].set_ylim(0, 1)
    if table["pairs"]:
        width = 0.8 / len(table["pairs"])
        for i, (pair, metrics) in enumerate(table["pairs"].items()):
            xs = [j + i * width for j in range(len(layers))]
            axes[1][0].bar(xs, [metrics["iou"][layer] for layer in layers], width, label=pair)
        axes[1][0].set_ylabel("IoU")
        axes[1][0].set_ylim(0, 1)
    for ax in axes[:, 0]:
        ax.set_xticks(
            [j + 0.4 - width / 2 for j in range(len(layers))], layers, rotation=30, ha="right", fontsize=8
        )
        ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(args.out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=120, format=out.suffix.lstrip(".").lower() or "png")
    plt.close(fig)
    print(f"wrote {out}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``masks compare``, ``masks plot`` and ``masks train`` (:mod:`~modscope.cli.masks_train`)."""
    parser = subparsers.add_parser(
        "masks",
        help="train, compare and plot weight masks",
        description="Train weight masks per task, and compare and plot weight masks saved by MaskSet.save.",
    )
    sub = parser.add_subparsers(dest="masks_command", required=True, metavar="ACTION")
    compare = sub.add_parser("compare", help="per-layer kept weights, IoU, IoMin and sharing")
    compare.add_argument("files", nargs="+", help="mask files (.safetensors)")
    compare.add_argument("--json", action="store_true", help="print JSON instead of a table")
    compare.set_defaults(func=_compare)
    plot = sub.add_parser("plot", help="bar chart of kept weights and IoU per layer")
    plot.add_argument("files", nargs="+", help="mask files (.safetensors)")
    plot.add_argument("--out", required=True, help="image file to write (e.g. fig.png)")
    plot.set_defaults(func=_plot)
    from modscope.cli.masks_train import add_parser

    add_parser(sub)
