"""Image classification sets: MNIST, Fashion-MNIST, CIFAR-10 from local files, and scikit-learn's 8x8 digits.

Where files are looked for (first folder holding all the files wins):

1. ``root`` when given: ``root``, ``root/<name>``, and torchvision's layouts below them (``MNIST/raw``,
   ``FashionMNIST/raw``, ``cifar-10-batches-py``);
2. otherwise ``$MODSCOPE_DATA/<name>`` (when the variable is set), the system folders of the Debian package
   ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``, also under ``sys.prefix`` and
   ``/usr/local``; Fashion-MNIST only), and the download cache ``$XDG_CACHE_HOME/modscope/<name>``
   (default ``~/.cache/modscope/<name>``).

The files are the standard ones: IDX files ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte`` (each optionally ``.gz``) for (Fashion-)MNIST, and
the python batches ``data_batch_1`` ... ``data_batch_5``, ``test_batch`` for CIFAR-10 (read by a restricted
unpickler, see :mod:`modscope.data.cifar`). Nothing here reaches the network unless ``download=True``, which
delegates to torchvision when it is installed.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
from os import PathLike
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from modscope.data.cifar import read_cifar_batch
from modscope.data.idx import read_idx
from modscope.seeding import check_seed

__all__ = ["IMAGE_SETS", "image_search_paths", "load_images"]

logger = logging.getLogger(__name__)

#: Names accepted by :func:`load_images`, with the shape of one image ``(C, H, W)``.
IMAGE_SETS: dict[str, tuple[int, int, int]] = {
    "mnist": (1, 28, 28),
    "fashion-mnist": (1, 28, 28),
    "cifar10": (3, 32, 32),
    "digits": (1, 8, 8),
}

_IDX_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_CIFAR_FILES = {True: tuple(f"data_batch_{i}" for i in range(1, 6)), False: ("test_batch",)}
_TORCHVISION_DIR = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
_DEBIAN_FOLDERS = (
    Path("/usr/share/datasets/fashion-mnist"),
    Path(sys.prefix) / "share" / "datasets" / "fashion-mnist",
    Path("/usr/local/share/datasets/fashion-mnist"),
)
_HOW_TO_GET = {
    "mnist": (
        "download train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and "
        "t10k-labels-idx1-ubyte.gz (http://yann.lecun.com/exdb/mnist/, mirror "
        "https://ossci-datasets.s3.amazonaws.com/mnist/) into one of these folders"
    ),
    "fashion-mnist": (
        "on Debian/Ubuntu run `apt-get install dataset-fashion-mnist` (installs the IDX files into "
        "/usr/share/datasets/fashion-mnist), or download the four *-ubyte.gz files from "
        "https://github.com/zalandoresearch/fashion-mnist (folder data/fashion) into one of these folders"
    ),
    "cifar10": (
        "download cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html and extract it "
        "(it creates cifar-10-batches-py/) into one of these folders"
    ),
}


def _cache_dir(name: str) -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "modscope" / name


def _bases(name: str, root: str | PathLike[str] | None) -> list[Path]:
    if root is not None:
        return [Path(root), Path(root) / name]
    bases = []
    env = os.environ.get("MODSCOPE_DATA")
    if env:
        bases.append(Path(env) / name)
    if name == "fashion-mnist":
        bases.extend(_DEBIAN_FOLDERS)
    bases.append(_cache_dir(name))
    return bases


def image_search_paths(name: str, root: str | PathLike[str] | None = None) -> list[Path]:
    """The folders :func:`load_images` looks in for ``name``, in order (see the module docstring)."""
    _check_name(name)
    if name == "digits":
        return []
    folders: list[Path] = []
    for base in _bases(name, root):
        if name == "cifar10":
            cands = [base, base / "cifar-10-batches-py"]
        else:
            cands = [base, base / "raw", base / _TORCHVISION_DIR[name] / "raw"]
        folders.extend(c for c in cands if c not in folders)
    return folders


def _check_name(name: str) -> None:
    if name not in IMAGE_SETS:
        raise ValueError(f"unknown image set {name!r}; choose one of {sorted(IMAGE_SETS)}")


def _find_file(folder: Path, stem: str, gz: bool = True) -> Path | None:
    for cand in (folder / stem, folder / f"{stem}.gz") if gz else (folder / stem,):
        if cand.is_file():
            return cand
    return None


def _locate(name: str, root: str | PathLike[str] | None, train: bool) -> list[Path] | None:
    stems = _CIFAR_FILES[train] if name == "cifar10" else _IDX_FILES[train]
    for folder in image_search_paths(name, root):
        found = [_find_file(folder, s, gz=name != "cifar10") for s in stems]
        if all(f is not None for f in found):
            return found  # type: ignore[return-value]
    return None


def _missing_error(name: str, root: str | PathLike[str] | None, train: bool, extra: str = "") -> Exception:
    stems = _CIFAR_FILES[train] if name == "cifar10" else _IDX_FILES[train]
    looked = "\n".join(f"  - {p}" for p in image_search_paths(name, root))
    return FileNotFoundError(
        f"{name} ({'train' if train else 'test'} split): files {', '.join(stems)}"
        f"{'' if name == 'cifar10' else ' (optionally .gz)'} not found. "
        f"Looked in:\n{looked}\nTo get them: {_HOW_TO_GET[name]}; or pass root=<folder>, or set "
        f"MODSCOPE_DATA=<folder> (files in <folder>/{name}), or use download=True with torchvision "
        f"installed.{extra}"
    )


def _download(name: str, root: str | PathLike[str] | None, train: bool) -> None:
    try:
        import torchvision.datasets as tvd  # type: ignore[import-not-found]
    except ImportError:
        raise _missing_error(
            name,
            root,
            train,
            "\ndownload=True needs torchvision, which is not installed (pip install torchvision).",
        ) from None
    env = os.environ.get("MODSCOPE_DATA")
    if root is not None:
        target = Path(root)
    else:
        target = Path(env) / name if env else _cache_dir(name)
    cls = {"mnist": tvd.MNIST, "fashion-mnist": tvd.FashionMNIST, "cifar10": tvd.CIFAR10}[name]
    logger.info("downloading %s into %s with torchvision", name, target)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):  # torchvision prints progress; the library never prints
        cls(str(target), train=train, download=True)
    if out.getvalue():
        logger.info("%s", out.getvalue().strip())


def _to_dataset(images: np.ndarray, labels: np.ndarray) -> TensorDataset:
    x = torch.from_numpy(images.astype(np.float32) / 255.0)
    return TensorDataset(x, torch.from_numpy(labels.astype(np.int64)))


def _load_idx_pair(images_path: Path, labels_path: Path) -> TensorDataset:
    images = read_idx(images_path, ndim=3)
    labels = read_idx(labels_path, ndim=1)
    if images.dtype != np.uint8 or labels.dtype != np.uint8:
        raise ValueError(f"{images_path}, {labels_path}: expected unsigned-byte IDX files (type 0x08)")
    if len(images) != len(labels):
        raise ValueError(
            f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels; "
            "the files do not belong together"
        )
    if labels.size and labels.max() > 9:
        raise ValueError(f"{labels_path}: labels must lie in [0, 10), found {int(labels.max())}")
    return _to_dataset(images[:, None, :, :], labels)


def _load_digits(train: bool, seed: int, test_fraction: float) -> TensorDataset:
    from sklearn.datasets import load_digits

    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    bunch = load_digits()
    x = np.asarray(bunch.data, dtype=np.float32).reshape(-1, 1, 8, 8) / 16.0
    y = np.asarray(bunch.target, dtype=np.int64)
    perm = np.random.default_rng(check_seed(seed, "seed")).permutation(len(y))
    n_test = round(test_fraction * len(y))
    idx = np.sort(perm[n_test:] if train else perm[:n_test])
    return TensorDataset(torch.from_numpy(x[idx]), torch.from_numpy(y[idx]))


def load_images(
    name: str,
    root: str | PathLike[str] | None = None,
    train: bool = True,
    download: bool = False,
    *,
    seed: int = 0,
    test_fraction: float = 0.2,
) -> TensorDataset:
    """Load an image classification set as tensors.

    Parameters
    ----------
    name : ``"mnist"`` (LeCun et al. 1998), ``"fashion-mnist"`` (Xiao et al. 2017, arXiv:1708.07747),
        ``"cifar10"`` (Krizhevsky 2009) or ``"digits"`` (scikit-learn's copy of the UCI 8x8 handwritten
        digits, 1,797 images, shipped with scikit-learn so always available).
    root : folder holding the files (see the module docstring for the layouts accepted and the folders
        searched when ``None``). Ignored for ``"digits"``.
    train : training split (60,000 / 60,000 / 50,000 images) or test split (10,000 each).
    download : if the files are not found, fetch them with torchvision (into ``root``, else
        ``$MODSCOPE_DATA/<name>``, else ``~/.cache/modscope/<name>``). Without torchvision this raises
        ``FileNotFoundError`` saying how to get the files.
    seed, test_fraction : ``"digits"`` only: the train/test split is a ``numpy.random.default_rng(seed)``
        permutation with ``round(test_fraction * 1797)`` test images (default 0.2 -> 359), so the same
        seed always gives the same split and the two splits are disjoint.

    Returns
    -------
    ``TensorDataset(x, y)``: ``x`` float32 ``(N, C, H, W)`` with pixel values in [0, 1] (bytes / 255; digits
    / 16), ``C, H, W = IMAGE_SETS[name]`` (``(1, 28, 28)``, ``(1, 28, 28)``, ``(3, 32, 32)``, ``(1, 8, 8)``);
    ``y`` long ``(N,)`` class labels in [0, 10). File order is kept.

    Raises
    ------
    ValueError : unknown ``name``, or a corrupt, truncated or mismatched file (the message names it).
    FileNotFoundError : files missing; the message lists the folders searched and how to get the files.
    """
    _check_name(name)
    if name == "digits":
        return _load_digits(train, seed, test_fraction)
    files = _locate(name, root, train)
    if files is None:
        if not download:
            raise _missing_error(name, root, train)
        _download(name, root, train)
        files = _locate(name, root, train)
        if files is None:
            raise _missing_error(name, root, train, "\ntorchvision's download did not leave the files here.")
    logger.debug("loading %s from %s", name, files[0].parent)
    if name == "cifar10":
        parts = [read_cifar_batch(f) for f in files]
        return _to_dataset(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    return _load_idx_pair(files[0], files[1])
