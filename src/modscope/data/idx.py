"""Reader for IDX files, the format of MNIST and Fashion-MNIST (LeCun et al., http://yann.lecun.com/exdb/mnist/).

An IDX file is a 4-byte magic number ``0x00 0x00 <type> <ndim>``, then ``ndim`` big-endian uint32 sizes, then
the data in C order, big-endian. Files may be gzip-compressed (``.gz``, or recognised by the gzip magic).
Everything is checked: magic, type, dimensions, and that the data has exactly the announced size; any
problem raises ``ValueError`` naming the file.
"""

from __future__ import annotations

import gzip
import zlib
from os import PathLike
from pathlib import Path

import numpy as np

__all__ = ["read_idx"]

# IDX type code -> big-endian numpy dtype.
_TYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] != _GZIP_MAGIC:
        if path.suffix == ".gz":
            raise ValueError(f"{path}: not a gzip file although it ends in .gz (corrupt download?)")
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"{path}: corrupt or truncated gzip data ({exc}); fetch the file again") from exc


def read_idx(path: str | PathLike[str], ndim: int | None = None) -> np.ndarray:
    """Read one IDX file (optionally gzipped) into a numpy array of its native dtype and shape.

    Parameters
    ----------
    path : the file, e.g. ``train-images-idx3-ubyte`` or ``train-images-idx3-ubyte.gz``.
    ndim : if given, the number of dimensions the file must have (3 for images, 1 for labels).

    Returns
    -------
    ``np.ndarray`` of shape ``(d0, ..., d_{ndim-1})`` from the header, in native byte order (uint8 for the
    MNIST files: images ``(N, 28, 28)``, labels ``(N,)``).

    Raises
    ------
    FileNotFoundError : the file does not exist.
    ValueError : bad magic number, unknown type code, unexpected ``ndim``, or data shorter or longer than
        the header announces (truncated or corrupt file); the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file not found: {path}")
    data = _read_bytes(path)
    if len(data) < 4:
        raise ValueError(f"{path}: too short for an IDX header ({len(data)} bytes); the file is truncated")
    zero0, zero1, type_code, n_dims = data[0], data[1], data[2], data[3]
    if zero0 != 0 or zero1 != 0 or type_code not in _TYPES or n_dims == 0:
        raise ValueError(
            f"{path}: not an IDX file (magic number 0x{int.from_bytes(data[:4], 'big'):08x}; expected "
            f"0x0000TTDD with type TT in {{08, 09, 0b, 0c, 0d, 0e}} and DD dimensions)"
        )
    if ndim is not None and n_dims != ndim:
        raise ValueError(f"{path}: IDX file has {n_dims} dimensions, expected {ndim}")
    header = 4 + 4 * n_dims
    if len(data) < header:
        raise ValueError(f"{path}: IDX header truncated ({len(data)} bytes, need {header})")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=n_dims, offset=4))
    dtype = _TYPES[type_code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    actual = len(data) - header
    if actual != expected:
        what = "truncated" if actual < expected else "has trailing bytes"
        raise ValueError(
            f"{path}: IDX data {what}: header announces shape {dims} ({expected} bytes of {dtype.name}), "
            f"found {actual} bytes; fetch the file again"
        )
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=True)
