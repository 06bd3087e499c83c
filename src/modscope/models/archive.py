"""Is a ``torch.export`` archive (``.pt2``) safe to hand to ``torch.export.load``? (:func:`check_archive`)

``torch.export.load`` is not safe on untrusted files by itself (its own docstring says so): it unpickles
tensor-subclass weights and opaque constants with ``pickle``, falls back to ``torch.load(weights_only=False)``
when the sample inputs do not load with ``weights_only=True``, loads AOTInductor shared libraries, parses
symbolic shape expressions with ``sympy.sympify`` (which evaluates Python), resolves operator names by
``getattr`` from the ``torch`` module, and ``ExportedProgram.module()`` compiles the archive's
``guards_code``. torch offers no ``weights_only``-style flag for any of it, so :func:`check_archive` reads
the zip and its JSON first and refuses, naming the entry, anything but: the current archive format; weights
and constants stored as raw tensor bytes (no pickled payload, no custom or opaque objects); sample inputs
that load with ``torch.load(weights_only=True)``; operators from ``torch.ops`` (and a few ``operator``
functions); shape expressions made of numbers, arithmetic, symbol names, capitalized sympy functions and
``Symbol('s0', positive=True, integer=True)`` (what a dynamic batch size exports as); no guard code.
Only then is ``torch.export.load`` called, and ``module()`` never is.
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["check_archive"]

_ALLOWED_ENTRIES = re.compile(
    r"(archive_format|archive_version|byteorder|\.data/.*|models/[^/]+\.json|extra/.*"
    r"|data/weights/[^/]+|data/constants/[^/]+|data/sample_inputs/[^/]+\.pt)"
)
_OPERATOR_TARGETS = {f"_operator.{n}" for n in ("getitem", "add", "sub", "mul", "truediv", "floordiv", "neg")}
_EXPR_CHARS = re.compile(r"[\w\s+\-*/%().,<>=!]*")
_EXPR_NAMES = re.compile(r"[A-Za-z_]\w*")
_LOWER_NAMES = re.compile(r"[a-z]+\d+|oo|zoo|nan|floor|ceiling|sqrt|true|false")
# Symbol('s77', positive=True, integer=True): a quoted symbol name and sympy assumptions are allowed.
_QUOTED_SYMBOL = re.compile(r"'[a-z]+\d+'")
_ASSUMPTIONS = re.compile(
    r"\b(positive|negative|nonnegative|nonpositive|integer|real|finite|zero|nonzero|even|odd)\s*="
)


def check_archive(path: Path) -> None:
    """Refuse (``ValueError`` naming ``path`` and the entry) a ``.pt2`` that loading could run code from."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            roots = {n.split("/", 1)[0] for n in names}
            if len(roots) != 1 or any("/" not in n for n in names):
                raise ValueError(f"'{path}' is not a torch.export archive (one top folder expected)")
            root = roots.pop() + "/"
            entries = {n[len(root) :]: n for n in names}
            if "archive_format" not in entries or z.read(entries["archive_format"]) != b"pt2":
                raise ValueError(
                    f"'{path}' is not a current torch.export archive (no 'archive_format' pt2 entry; "
                    "older formats pickle their weights and are not loaded)"
                )
            for entry in entries:
                if not _ALLOWED_ENTRIES.fullmatch(entry):
                    raise ValueError(f"'{path}' holds '{entry}', which modscope does not load (only "
                                     "the exported program, raw tensor weights and constants)")  # fmt: skip
                if entry.startswith(("data/weights/", "data/constants/")) and entry.endswith(".pt"):
                    raise ValueError(f"'{path}' stores '{entry}' as a pickle (legacy format): not loaded")
                if entry.endswith("_config.json"):
                    _check_payloads(path, entry, _json(path, entry, z.read(entries[entry])))
                elif entry.startswith("models/"):
                    _check_program(path, entry, _json(path, entry, z.read(entries[entry])))
                elif entry.startswith("data/sample_inputs/"):
                    _check_sample_inputs(path, entry, z.read(entries[entry]))
    except zipfile.BadZipFile as exc:
        raise ValueError(f"'{path}' is not a torch.export archive (not a zip file: {exc})") from exc


def _json(path: Path, entry: str, data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise ValueError(f"'{path}' has a damaged '{entry}' ({exc})") from None


def _check_payloads(path: Path, entry: str, config: dict) -> None:
    for name, payload in (config.get("config") or {}).items():
        raw = str(payload.get("path_name", "")).startswith(("weight_", "tensor_"))
        if payload.get("use_pickle") or not raw:
            raise ValueError(
                f"'{path}' stores '{name}' ({entry}) as a pickled object, not raw tensor bytes: not loaded"
            )


def _check_program(path: Path, entry: str, program: dict) -> None:
    if program.get("guards_code"):
        raise ValueError(f"'{path}' ({entry}) carries guard code, which loading would run: not loaded")

    def walk(obj: Any) -> None:
        if isinstance(obj, dict):
            target = obj.get("target")
            if isinstance(target, str) and "inputs" in obj and not _safe_target(target):
                raise ValueError(f"'{path}' ({entry}) calls '{target}', not a torch operator: not loaded")
            expr = obj.get("expr_str")
            if isinstance(expr, str) and not _safe_expr(expr):
                raise ValueError(f"'{path}' ({entry}) has the shape expression {expr!r}: not loaded")
            for key, value in obj.items():
                if key != "metadata":  # stack traces and module names: text, never evaluated
                    walk(value)
        elif isinstance(obj, list):
            for value in obj:
                walk(value)

    walk(program)


def _safe_target(target: str) -> bool:
    if target in _OPERATOR_TARGETS:
        return True
    parts = target.split(".")
    if len(parts) < 4 or parts[:2] != ["torch", "ops"]:
        return False
    op: Any = torch.ops
    for part in parts[2:]:
        op = getattr(op, part, None)
        if op is None:
            return False
    return isinstance(op, torch._ops.OpOverload)


def _safe_expr(expr: str) -> bool:
    expr = _ASSUMPTIONS.sub("=", _QUOTED_SYMBOL.sub("s0", expr))
    if not _EXPR_CHARS.fullmatch(expr) or "__" in expr:
        return False
    return all(n[0].isupper() or _LOWER_NAMES.fullmatch(n) for n in _EXPR_NAMES.findall(expr))


def _check_sample_inputs(path: Path, entry: str, data: bytes) -> None:
    if not data:
        return
    import io

    try:
        torch.load(io.BytesIO(data), weights_only=True)
    except Exception as exc:
        raise ValueError(
            f"'{path}' has sample inputs ({entry}) that are not plain tensors, which torch would unpickle: "
            f"not loaded ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
        ) from None
