"""IDX and CIFAR-10 readers, safe unpickling, and load_images on small files written by the tests."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from modscope.data import (
    IMAGE_SETS,
    UnsafePickleError,
    image_search_paths,
    load_images,
    read_cifar_batch,
    read_idx,
    safe_unpickle,
)

# ------------------------------------------------------------------------------------------------ helpers


def idx_bytes(arr: np.ndarray, type_code: int = 0x08) -> bytes:
    header = bytes([0, 0, type_code, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def write_idx_set(folder: Path, n_train: int = 7, n_test: int = 3, gz: bool = False, seed: int = 0) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        for stem, arr in ((f"{prefix}-images-idx3-ubyte", images), (f"{prefix}-labels-idx1-ubyte", labels)):
            data = idx_bytes(arr)
            if gz:
                (folder / f"{stem}.gz").write_bytes(gzip.compress(data))
            else:
                (folder / stem).write_bytes(data)
        out[prefix] = (images, labels)
    return out


class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes every str/bytes as a Python 2 ``str`` (BINSTRING), like the original CIFAR-10 files."""

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def _save_py2_str(self, obj):
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[str] = _save_py2_str
    dispatch[bytes] = _save_py2_str


def py2_pickle(obj) -> bytes:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    # the original files name numpy 1's module
    return buf.getvalue().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")


def cifar_batch(n: int, seed: int) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8), rng.integers(0, 10, size=n).tolist()


def write_cifar(folder: Path, n: int = 4, py2: bool = True) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for k, name in enumerate([*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]):
        data, labels = cifar_batch(n, k)
        obj = {
            "batch_label": name,
            "labels": labels,
            "data": data,
            "filenames": [f"f{i}.png" for i in range(n)],
        }
        payload = (
            py2_pickle(obj) if py2 else pickle.dumps({k.encode(): v for k, v in obj.items()}, protocol=4)
        )
        (folder / name).write_bytes(payload)
        out[name] = (data, labels)
    return out


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch):
    # never pick up a real cache or $MODSCOPE_DATA of the machine running the tests
    monkeypatch.delenv("MODSCOPE_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


# ---------------------------------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_roundtrip(tmp_path, gz):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / ("a.idx.gz" if gz else "a.idx")
    path.write_bytes(gzip.compress(idx_bytes(arr)) if gz else idx_bytes(arr))
    out = read_idx(path, ndim=3)
    assert out.dtype == np.uint8 and np.array_equal(out, arr)


def test_read_idx_other_types(tmp_path):
    arr = np.array([[1.5, -2.0], [3.25, 4.0]], dtype=np.float32)
    (tmp_path / "f").write_bytes(idx_bytes(arr, 0x0D))
    out = read_idx(tmp_path / "f")
    assert out.dtype == np.float32 and np.array_equal(out, arr)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda b: b[:-5], "truncated"),
        (lambda b: b + b"\x00", "trailing bytes"),
        (lambda b: b"\x08\x03" + b[2:], "not an IDX file"),
        (lambda b: b[:2] + b"\x07" + b[3:], "not an IDX file"),
        (lambda b: b[:6], "header truncated"),
        (lambda b: b[:2], "too short"),
    ],
)
def test_read_idx_corrupt_files_name_the_file(tmp_path, mutate, message):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(mutate(idx_bytes(np.zeros((2, 4, 4), np.uint8))))
    with pytest.raises(ValueError, match=message) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_bad_gzip_and_wrong_ndim(tmp_path):
    good = gzip.compress(idx_bytes(np.zeros((2, 4, 4), np.uint8)))
    trunc = tmp_path / "x-idx3-ubyte.gz"
    trunc.write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match="gzip") as info:
        read_idx(trunc)
    assert str(trunc) in str(info.value)
    fake = tmp_path / "y.gz"
    fake.write_bytes(b"plain text, not gzip")
    with pytest.raises(ValueError, match="not a gzip"):
        read_idx(fake)
    (tmp_path / "z").write_bytes(idx_bytes(np.zeros(3, np.uint8)))
    with pytest.raises(ValueError, match="expected 3"):
        read_idx(tmp_path / "z", ndim=3)
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "missing")


# ------------------------------------------------------------------------------------------- load_images


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_load_idx_sets_from_root(tmp_path, gz, name):
    written = write_idx_set(tmp_path / "files", gz=gz)
    for train, prefix in ((True, "train"), (False, "t10k")):
        ds = load_images(name, root=tmp_path / "files", train=train)
        x, y = ds.tensors
        images, labels = written[prefix]
        assert x.dtype == torch.float32 and x.shape == (len(images), 1, 28, 28)
        assert y.dtype == torch.long and torch.equal(y, torch.from_numpy(labels.astype(np.int64)))
        assert torch.allclose(x[:, 0], torch.from_numpy(images.astype(np.float32) / 255))
        assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0


def test_load_images_finds_torchvision_layout_and_env_folder(tmp_path, monkeypatch):
    write_idx_set(tmp_path / "tv" / "MNIST" / "raw")
    assert len(load_images("mnist", root=tmp_path / "tv")) == 7
    write_idx_set(tmp_path / "data" / "mnist", n_train=5, gz=True)
    monkeypatch.setenv("MODSCOPE_DATA", str(tmp_path / "data"))
    assert len(load_images("mnist")) == 5
    assert image_search_paths("mnist")[0] == tmp_path / "data" / "mnist"


def test_fashion_mnist_searches_debian_folder():
    assert Path("/usr/share/datasets/fashion-mnist") in image_search_paths("fashion-mnist")


@pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz").is_file(),
    reason="Debian package dataset-fashion-mnist not installed",
)
def test_fashion_mnist_from_debian_package():
    x, y = load_images("fashion-mnist", train=False).tensors
    assert x.shape == (10_000, 1, 28, 28) and torch.equal(y.bincount(), torch.full((10,), 1000))


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "cifar10"])
def test_missing_files_error_lists_folders_and_how_to_get_them(tmp_path, name):
    with pytest.raises(FileNotFoundError) as info:
        load_images(name, root=tmp_path)
    msg = str(info.value)
    assert str(tmp_path) in msg and "To get them" in msg
    assert {
        "mnist": "yann.lecun.com",
        "fashion-mnist": "apt-get install dataset-fashion-mnist",
        "cifar10": "cifar-10-python.tar.gz",
    }[name] in msg


def test_download_without_torchvision_says_how_to_get_files(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_torchvision(name, *args, **kwargs):
        if name.startswith("torchvision"):
            raise ImportError("no torchvision")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torchvision)
    with pytest.raises(FileNotFoundError, match="torchvision"):
        load_images("mnist", root=tmp_path, download=True)


def test_load_images_mismatched_and_corrupt_files(tmp_path):
    write_idx_set(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(4, np.uint8)))
    with pytest.raises(ValueError, match="do not belong together"):
        load_images("mnist", root=tmp_path)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.full(7, 12, np.uint8)))
    with pytest.raises(ValueError, match="labels must lie"):
        load_images("mnist", root=tmp_path)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03garbage")
    with pytest.raises(ValueError, match="train-images-idx3-ubyte"):
        load_images("mnist", root=tmp_path)


def test_unknown_name():
    with pytest.raises(ValueError, match="unknown image set"):
        load_images("imagenet")


def test_digits_split_is_seeded_and_disjoint():
    tr, te = load_images("digits", train=True), load_images("digits", train=False)
    assert tr.tensors[0].shape[1:] == IMAGE_SETS["digits"] and len(tr) + len(te) == 1797
    assert tr.tensors[0].dtype == torch.float32 and tr.tensors[1].dtype == torch.long
    assert 0.0 <= float(tr.tensors[0].min()) and float(tr.tensors[0].max()) == 1.0
    flat_tr = {tuple(r) for r in tr.tensors[0].flatten(1).tolist()}
    flat_te = {tuple(r) for r in te.tensors[0].flatten(1).tolist()}
    assert len(flat_te - flat_tr) > 0.9 * len(flat_te)  # (a few digits images are exact duplicates)
    again = load_images("digits", train=False, seed=0)
    assert torch.equal(again.tensors[0], te.tensors[0])
    assert not torch.equal(load_images("digits", train=False, seed=1).tensors[1], te.tensors[1])


# ---------------------------------------------------------------------------------------------- CIFAR-10


@pytest.mark.parametrize("py2", [True, False])
def test_load_cifar10(tmp_path, py2):
    written = write_cifar(tmp_path / "cifar-10-batches-py", py2=py2)
    x, y = load_images("cifar10", root=tmp_path).tensors
    assert x.shape == (20, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.long
    data = np.concatenate([written[f"data_batch_{i}"][0] for i in range(1, 6)])
    assert torch.allclose(x, torch.from_numpy(data.reshape(-1, 3, 32, 32).astype(np.float32) / 255))
    assert y.tolist() == [label for i in range(1, 6) for label in written[f"data_batch_{i}"][1]]
    xt, yt = load_images("cifar10", root=tmp_path / "cifar-10-batches-py", train=False).tensors
    assert xt.shape == (4, 3, 32, 32) and yt.tolist() == written["test_batch"][1]


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    evil = pickle.dumps({b"data": _Evil(marker), b"labels": [0]})
    path = tmp_path / "data_batch_1"
    path.write_bytes(evil)
    with pytest.raises(ValueError, match="refused") as info:
        read_cifar_batch(path)
    assert str(path) in str(info.value)
    assert not marker.exists()
    with pytest.raises(UnsafePickleError):
        safe_unpickle(evil)
    assert not marker.exists()
    # also refused: builtins.eval and arbitrary classes
    with pytest.raises(UnsafePickleError):
        safe_unpickle(pickle.dumps(eval))
    with pytest.raises(UnsafePickleError):
        safe_unpickle(pickle.dumps(_Evil))


@pytest.mark.parametrize(
    "obj, message",
    [
        ({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, "shape"),
        ({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, "uint8"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "labels"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, r"\[0, 10\)"),
        ({b"labels": [0]}, "no 'data'"),
        ([1, 2], "expected a dict"),
    ],
)
def test_cifar_batch_validation(tmp_path, obj, message):
    path = tmp_path / "test_batch"
    path.write_bytes(pickle.dumps(obj, protocol=2))
    with pytest.raises(ValueError, match=message):
        read_cifar_batch(path)


def test_cifar_truncated_file(tmp_path):
    write_cifar(tmp_path)
    path = tmp_path / "test_batch"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="corrupt or truncated") as info:
        load_images("cifar10", root=tmp_path, train=False)
    assert str(path) in str(info.value)
