"""Atomic file writes: a reader (or a crash, or Ctrl-C) never sees half a file.

Everything modscope writes -- results, models, masks, checkpoints -- goes to a temporary file in the same
folder and is moved over the target with ``os.replace``, which is atomic on POSIX and Windows.

The temporary file is ``.NAME.PID@HOST.XXXXXXXX.tmp`` (``HOST`` a hash of the host name). A process killed
mid-write (SIGKILL, power loss) cannot remove its own; :func:`remove_stale_temps` does, later, for files
whose writer is no longer running -- which the pid and host in the name tell without guessing from ages.
:func:`check_writable` lets a long computation refuse an unwritable output path before it starts.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_path",
    "check_writable",
    "finite",
    "remove_stale_temps",
    "write_json_atomic",
    "write_text_atomic",
]

_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
# Temp files of versions before the pid was in the name: judged by age against this process's start.
_STARTED = time.time()
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)@(?P<host>[0-9a-f]{8})\.[a-z0-9_]{8}\.tmp$")
_LEGACY_TEMP = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp$")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``, on error it is removed.

    Missing parent folders are created. The file gets the permissions a plain ``open`` would give.
    Temporary files of earlier writes of ``path`` whose writer was killed are removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent, target=path.name)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}@{_HOST}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)  # mkstemp makes the file 0600; read the umask to undo that
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_temps(
    folder: str | os.PathLike, *, target: str | None = None, recursive: bool = False
) -> list[Path]:
    """Delete the temporary files that killed :func:`atomic_path` writes left in ``folder``.

    Only files named as :func:`atomic_path` names them are considered (of ``target`` alone when given;
    in subfolders too with ``recursive``). One is stale when its writer -- the pid in its name, on this
    host -- no longer runs; a file from another host is left alone, as is one whose pid runs (a concurrent
    writer, or a reused pid: it is removed on a later call). On Windows, where a pid cannot be probed
    safely, and for files of versions without the pid in the name, a file older than the start of this
    process is stale. Returns the paths removed; files that vanish or cannot be removed meanwhile are
    skipped.
    """
    folder = Path(folder)
    pattern = "**/.*.tmp" if recursive else ".*.tmp"
    removed = []
    try:
        candidates = list(folder.glob(pattern))
    except OSError:
        return removed
    for path in candidates:
        if _is_stale(path, target) and _unlink(path):
            removed.append(path)
    return removed


def _is_stale(path: Path, target: str | None) -> bool:
    m = _TEMP.match(path.name)
    if m is not None:
        if target is not None and m["name"] != target:
            return False
        if m["host"] != _HOST:
            return False
        if os.name != "nt":
            return not _running(int(m["pid"]))
    else:
        m = _LEGACY_TEMP.match(path.name)
        if m is None or (target is not None and m["name"] != target):
            return False
    try:
        return path.stat().st_mtime < _STARTED
    except OSError:
        return False


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # exists under another user, or cannot tell: keep the file
    return True


def _unlink(path: Path) -> bool:
    try:
        path.unlink()
    except OSError:
        return False
    return True


def check_writable(path: str | os.PathLike, *, name: str, folder: bool = False) -> Path:
    """``path`` as a ``Path`` if a file can be written there, else a one-line error naming ``name``.

    Call it before a long computation whose result goes to ``path``: the folder must exist or be
    creatable (its nearest existing ancestor a writable folder) and ``path`` must not be a folder -- or,
    with ``folder=True``, ``path`` is the folder to write into and must not be a file. Nothing is created.

    Raises:
        IsADirectoryError: ``path`` is an existing folder (``folder=False``).
        NotADirectoryError: ``path`` (``folder=True``) or a component of its folder is a file.
        PermissionError: the folder (or the ancestor it would be created in) is not writable.
        ValueError: an empty path.
    """
    if os.fspath(path) == "":
        raise ValueError(f"{name}: empty path")
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{name} '{path}' is a file, not a folder")
    if not folder and path.is_dir():
        raise IsADirectoryError(f"{name} '{path}' is a folder; give a file path")
    where = path.absolute() if folder else path.absolute().parent
    existing = where
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(f"{name} '{path}': '{existing}' is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        created = "" if existing == where else " (where its folder would be created)"
        raise PermissionError(f"{name} '{path}': folder '{existing}'{created} is not writable")
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | os.PathLike, doc: Any) -> None:
    """``doc`` as indented JSON; NaN and infinities (which JSON lacks) become ``null``."""
    write_text_atomic(path, json.dumps(finite(doc), indent=1, allow_nan=False) + "\n")


def finite(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by ``None`` (recursively through dicts and lists)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj
