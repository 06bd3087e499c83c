"""``modscope reproduce NAME`` and ``modscope demo``: the papers' experiments end to end, with a report.

Examples::

    modscope demo                                   # both lenses on built-in data, a few minutes
    modscope reproduce clusterability --quick       # minutes on a 2-core CPU
    modscope reproduce addmul --paper --out runs/addmul
    modscope reproduce clusterability --set networks=2 --set shuffles=20

The run folder keeps every finished network: run the same command again after Ctrl-C and it resumes
(``--fresh`` starts over). It ends with ``results.json`` (every number, the config with its seeds, library
versions) and ``report.html`` (self-contained; ``modscope report results.json`` rebuilds it).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from modscope.cli.progress import bars


def _assignment(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw  # a bare string such as dataset=digits
    return key.strip(), value


def register(subparsers: argparse._SubParsersAction) -> None:
    from modscope.experiments import EXPERIMENTS

    names = sorted(n for n in EXPERIMENTS if n != "demo")
    p = subparsers.add_parser(
        "reproduce",
        help="reproduce a paper's experiment and write results.json and an HTML report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", choices=names, metavar="NAME", help=f"one of: {', '.join(names)}")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", dest="setting", action="store_const", const="quick",
                      help="minutes on a 2-core CPU (default)")  # fmt: skip
    size.add_argument("--paper", dest="setting", action="store_const", const="paper",
                      help="the papers' sizes (hours on a CPU)")  # fmt: skip
    p.set_defaults(setting="quick")
    _common(p, default_out=None)
    p.set_defaults(func=run)

    d = subparsers.add_parser(
        "demo",
        help="train a small network on built-in data, run both lenses and lesions, write a report",
        description="The main job on built-in data (scikit-learn's 8x8 digits; no downloads): an MLP is "
        "trained and pruned, clustered against shuffles, lesioned, and masked per half of the classes. "
        "A few minutes on 2 cores; ends with the path of the HTML report.",
    )
    _common(d, default_out="modscope-demo")
    d.set_defaults(func=run, name="demo", setting="quick")


def _common(p: argparse.ArgumentParser, default_out: str | None) -> None:
    p.add_argument("--set", dest="overrides", action="append", type=_assignment, default=[],
                   metavar="KEY=VALUE", help="change one setting (repeatable; see --show-config)")
    p.add_argument("--show-config", action="store_true", help="print the config and exit")
    p.add_argument("--out", metavar="DIR", default=default_out,
                   help="run folder (default: runs/NAME-SETTING)" if default_out is None
                   else f"run folder (default: {default_out})")  # fmt: skip
    p.add_argument("--fresh", action="store_true", help="delete what an earlier run left in the folder")
    p.add_argument("--no-report", action="store_true", help="skip the HTML report")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from modscope.cli import check_output
    from modscope.experiments import experiment_config, reproduce

    overrides = dict(args.overrides)
    if args.show_config:
        print(json.dumps(experiment_config(args.name, args.setting, overrides), indent=1))
        return 0
    label = args.setting if not overrides else "custom"
    out = Path(args.out or f"runs/{args.name}-{label}")
    check_output(str(out), name="--out", folder=True)
    with bars(disable=args.no_progress) as progress:
        try:
            result = reproduce(args.name, out, setting=args.setting, overrides=overrides, fresh=args.fresh,
                               progress=progress)  # fmt: skip
        except KeyboardInterrupt:
            print(f"finished work is kept in {out}; run the same command to resume", file=sys.stderr)
            raise
    print(f"{result.title} ({result.setting}, {result.seconds:.0f} s)\n")
    print(format_table(result.summary))
    for claim in result.claims:
        verdict = {True: "agrees", False: "DISAGREES", None: "undetermined"}[claim.get("agrees")]
        print(f"\n[{verdict}] {claim['paper']}: {claim['claim']}\n    ours: {claim['ours']}")
    print(f"\nresults  {out / 'results.json'}")
    if not args.no_report:
        from modscope.report import write_report

        print(f"report   {write_report(out / 'results.json')}")
    return 0


def format_table(section: dict) -> str:
    """A ``"table"`` section as aligned plain text."""
    from modscope.report.html import format_cell

    rows = [[str(c) for c in section["columns"]]] + [[format_cell(v) for v in r] for r in section["rows"]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if section.get("note"):
        lines.append(section["note"])
    return "\n".join(lines)
