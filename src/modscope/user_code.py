"""A function from a Python file the user names (``path/to/file.py:NAME``): imported once per file.

This RUNS the file's code, by design: the command line says so wherever it takes such a source. The module
is registered in ``sys.modules`` under a name derived from the file's resolved path (dataclasses and
pickling look a module up by name), so a file named by several sources is imported once.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from hashlib import sha256
from pathlib import Path
from typing import Any

__all__ = ["first_line", "user_function"]


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (or its type), for one-line errors."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def user_function(file: Path, name: str, *, where: str) -> Callable[..., Any]:
    """``NAME`` from ``file``; ``where`` starts every error (``FileNotFoundError`` for a missing file,
    ``ValueError`` when the import fails or the file defines no such function, listing those it has)."""
    file = Path(file)
    if not file.is_file():
        raise FileNotFoundError(f"{where}: no Python file '{file}'")
    resolved = file.resolve()
    module_name = "modscope_user_" + sha256(str(resolved).encode()).hexdigest()[:12]
    module = sys.modules.get(module_name)
    if module is None:
        spec = importlib.util.spec_from_file_location(module_name, resolved)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[module_name]
            reason = f"{type(exc).__name__}: {first_line(exc)}"
            raise ValueError(f"{where}: importing {file} failed ({reason})") from exc
    fn = getattr(module, name, None)
    if not callable(fn):
        found = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_"))
        raise ValueError(f"{where}: {file} defines no function '{name}' (callables in it: {found})")
    return fn
