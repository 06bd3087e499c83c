"""The ``modscope`` command. Each sub-command lives in its own module and registers itself here."""

from __future__ import annotations

import argparse
import logging
import sys

from modscope import __version__

# (module, attribute) of each sub-command's ``register(subparsers)``; imported lazily so that
# ``modscope --help`` stays fast.
_COMMANDS = (
    "modscope.cli.cluster",
    "modscope.cli.masks",
    "modscope.cli.train",
    "modscope.cli.reproduce",
    "modscope.cli.report",
)


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def check_output(path: str | None, *, name: str, image: bool = False, folder: bool = False) -> None:
    """Refuse, before any work, an output path of option ``name`` that could not be written at the end.

    ``image``: also a file suffix matplotlib cannot write (``.png``, ``.pdf``, ``.svg``, ... ; none: PNG).
    ``folder``: ``path`` is a folder to write into (see :func:`modscope.atomic.check_writable`).
    """
    from pathlib import Path

    from modscope.atomic import check_writable

    if path is None:
        return
    check_writable(path, name=name, folder=folder)
    suffix = Path(path).suffix.lstrip(".").lower()
    if image and suffix and not folder:
        from matplotlib.backend_bases import FigureCanvasBase

        formats = FigureCanvasBase.get_supported_filetypes()
        if suffix not in formats:
            raise CLIError(f"{name} '{path}': matplotlib cannot write .{suffix} images ({sorted(formats)})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modscope",
        description="Is a trained neural network modular, where, and how sure are we?",
    )
    parser.add_argument("--version", action="version", version=f"modscope {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the library does")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    import importlib

    for name in _COMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (CLIError, ValueError, FileNotFoundError, OSError) as exc:
        if args.verbose:
            raise
        print(f"modscope: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
