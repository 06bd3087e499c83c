"""``modscope report``: render a run's ``results.json`` as one self-contained HTML page.

Example::

    modscope report runs/addmul/results.json                # writes runs/addmul/report.html
    modscope report runs/addmul/results.json --out addmul.html
    modscope report elsewhere/results.json --model runs/clusterability/models/control-pruned-0.safetensors

A results.json names its models relative to its own folder; the report reads none outside that folder
(a copied or edited results.json cannot make it read other files). ``--model`` gives the model to draw
the clustered graph from explicitly, wherever it lies.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "report",
        help="render a results.json as a self-contained HTML report",
        description=(
            "Write one HTML file (figures embedded, no network access needed to view it) from the "
            "results.json of a reproduction. Prints the path written."
        ),
    )
    p.add_argument("results", metavar="RESULTS", help="a results.json written by a reproduction")
    p.add_argument(
        "--out", metavar="PATH", help="where to write the page (default: report.html next to RESULTS)"
    )
    p.add_argument(
        "--model", metavar="PATH",
        help="safetensors model to draw the clustered graph from, instead of the one results.json names "
        "(which must lie in its folder)",
    )  # fmt: skip
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from modscope.cli import check_output
    from modscope.report import write_report

    check_output(args.out, name="--out")
    print(write_report(args.results, args.out, model=args.model))
    return 0
