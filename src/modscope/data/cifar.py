"""Safe reader for the CIFAR-10 "python version" batches (Krizhevsky 2009, https://www.cs.toronto.edu/~kriz/cifar.html).

The batches (``cifar-10-batches-py/data_batch_1`` ... ``data_batch_5``, ``test_batch``) are pickles of a
dict ``{b"data": uint8 array (10000, 3072), b"labels": list of 10000 ints in [0, 10), ...}``. A pickle can run
any code on loading, so they are read with a restricted unpickler that resolves only the few globals needed
to rebuild numpy arrays (``numpy ndarray/dtype`` and their reconstructors) and latin-1 byte strings; any
other global (``os.system``, ``builtins.eval``, a user class, ...) is refused with ``ValueError`` before it
is called. The result is then validated (keys, dtype, shape, label range).
"""

from __future__ import annotations

import importlib
import io
import pickle
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["UnsafePickleError", "read_cifar_batch", "safe_unpickle"]


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asked for a global that the safe unpickler does not allow."""


def _numpy_attr(modules: tuple[str, ...], name: str) -> Any:
    for mod in modules:
        try:
            return getattr(importlib.import_module(mod), name)
        except (ImportError, AttributeError):
            continue
    raise UnsafePickleError(f"numpy has no {name} in {modules}")  # pragma: no cover - numpy layout changed


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    # Python 3 pickles ``bytes`` with protocol <= 2 as ``_codecs.encode(str, "latin1")``; allow only that.
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError("_codecs.encode is allowed only as (str, 'latin1')")
    return text.encode("latin1")


_MULTIARRAY = ("numpy._core.multiarray", "numpy.core.multiarray")
_NUMERIC = ("numpy._core.numeric", "numpy.core.numeric")
_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}
for _mod in _MULTIARRAY:
    _ALLOWED[(_mod, "_reconstruct")] = None  # resolved lazily (numpy 1 vs 2 module names)
for _mod in _NUMERIC:
    _ALLOWED[(_mod, "_frombuffer")] = None


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise UnsafePickleError(f"refused to load global {module}.{name}: only numpy arrays are allowed")
        obj = _ALLOWED[(module, name)]
        if obj is None:
            obj = _numpy_attr(_MULTIARRAY if name == "_reconstruct" else _NUMERIC, name)
        return obj

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("refused persistent id in pickle")


def safe_unpickle(data: bytes, *, encoding: str = "latin1") -> Any:
    """Unpickle ``data`` allowing only plain containers, scalars, strings/bytes and numpy arrays.

    ``encoding="latin1"`` (default) reads Python 2 ``str`` objects (the CIFAR-10 files were written by
    Python 2) as ``str``, which numpy needs to rebuild Python 2 arrays; keys then are ``str``.
    Raises :class:`UnsafePickleError` (a ``pickle.UnpicklingError``) on any other global, without calling it.
    """
    return _SafeUnpickler(io.BytesIO(data), encoding=encoding).load()


def _key(d: dict, name: str) -> Any:
    for k in (name.encode(), name):
        if k in d:
            return d[k]
    raise KeyError(name)


def read_cifar_batch(path: str | PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 python batch safely.

    Returns
    -------
    ``(images, labels)``: ``images`` uint8 ``(N, 3, 32, 32)`` (channels R, G, B), ``labels`` int64 ``(N,)``
    in [0, 10).

    Raises
    ------
    FileNotFoundError : the file does not exist.
    ValueError : the file is not a valid pickle, asks for a disallowed global (a possibly malicious file;
        nothing in it is executed), or does not hold ``data`` (uint8, ``(N, 3072)``) and ``labels``
        (``N`` ints in [0, 10)); the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR-10 batch not found: {path}")
    try:
        obj = safe_unpickle(path.read_bytes())
    except UnsafePickleError as exc:
        raise ValueError(
            f"{path}: refused to unpickle ({exc}); this is not a genuine CIFAR-10 batch"
        ) from exc
    except Exception as exc:  # any parse failure of a corrupt/truncated pickle
        raise ValueError(
            f"{path}: corrupt or truncated CIFAR-10 batch ({type(exc).__name__}: {exc}); fetch it again"
        ) from exc
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict in a CIFAR-10 batch, found {type(obj).__name__}")
    try:
        data, labels = _key(obj, "data"), _key(obj, "labels")
    except KeyError as exc:
        raise ValueError(f"{path}: CIFAR-10 batch has no {exc.args[0]!r} entry") from exc
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise ValueError(f"{path}: CIFAR-10 'data' must be a uint8 array of shape (N, 3072), found {desc}")
    if not isinstance(labels, (list, np.ndarray)):
        raise ValueError(f"{path}: CIFAR-10 'labels' must be a list of ints, found {type(labels).__name__}")
    try:
        labels_arr = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: CIFAR-10 'labels' must be a list of ints ({exc})") from exc
    if labels_arr.shape != (data.shape[0],):
        raise ValueError(
            f"{path}: CIFAR-10 batch has {data.shape[0]} images but labels of shape {labels_arr.shape}"
        )
    if labels_arr.size and (labels_arr.min() < 0 or labels_arr.max() > 9):
        raise ValueError(f"{path}: CIFAR-10 labels must lie in [0, 10)")
    return data.reshape(-1, 3, 32, 32).copy(), labels_arr
