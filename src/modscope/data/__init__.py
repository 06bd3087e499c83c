"""Datasets for modscope's experiments: generated tasks, image sets from local files, views, SCAN.

Every generator takes an explicit seed (``numpy.random.default_rng``), never global random state, and the
same seed gives identical data. Shapes and dtypes (N examples):

=====================================  ===================================================================
``addmul(split, ops, test_fraction,    x float32 (N, 42): one-hot tens/ones of a, tens/ones of b (4 x 10),
seed)``                                op (2; "+" then "*"); y long (N, 2): tens, ones of (a op b) mod 100.
                                       Held-out (a, b) pairs form the test split (Csordás et al. 2021).
``double_addition(split,               x float32 (N, 80): pair 0 then pair 1, 40 each as in addmul;
test_fraction, seed, pair)``           y long (N, 4): digits of (a + b) % 100, then (c + d) % 100;
                                       pair=0/1 zeroes the other pair's input, its targets are -100.
``load_images(name, root, train,       x float32 (N, C, H, W) in [0, 1]; y long (N,). mnist,
download)``                            fashion-mnist (1, 28, 28), cifar10 (3, 32, 32), digits (1, 8, 8).
``permuted(dataset, n, seed)``         list of n views, same shapes; view 0 is the identity by default.
``class_subset(dataset, drop|keep)``   the selected rows, labels unchanged.
``line(n, size, seed)``                x float32 (n, 1, size, size) in {0, 1}; y long (n,) = number of lines.
``poly(n, seed)``                      x float32 (n, 2) in [-1, 1]; y float32 (n, 4) polynomial values.
``halves(base, n, rule, seed)``        x float32 (n, C, H, W); y long (n,): same class (0/1) or sum mod 10.
``scan_split(split, seed)``            (train, test) lists of (command, actions) strings (Lake & Baroni
                                       2018); ``encode_pairs`` -> src long (N, S), tgt long (N, T), padded
                                       with 0, target with <bos>/<eos>.
=====================================  ===================================================================

Loaders raise ``FileNotFoundError`` (listing the folders searched and how to get the files) when files are
missing and ``ValueError`` naming the file when one is corrupt. Nothing here prints.
"""

from modscope.data.arithmetic import (
    ADDMUL_INPUT_DIM,
    DOUBLE_ADDITION_INPUT_DIM,
    IGNORE_INDEX,
    OPS,
    addmul,
    decode_addmul,
    double_addition,
    heldout_pairs,
)
from modscope.data.cifar import UnsafePickleError, read_cifar_batch, safe_unpickle
from modscope.data.idx import read_idx
from modscope.data.images import IMAGE_SETS, image_search_paths, load_images
from modscope.data.scan import (
    ACTIONS,
    PUBLISHED_PRIMITIVE_COPIES,
    SCAN_SPLITS,
    interpret,
    scan_commands,
    scan_split,
    scan_vocabs,
)
from modscope.data.synthetic import POLYNOMIALS, halves, line, poly
from modscope.data.views import PermutedView, class_subset, dataset_labels, permuted
from modscope.data.vocab import Vocab, encode_pairs

__all__ = [
    "ACTIONS",
    "ADDMUL_INPUT_DIM",
    "DOUBLE_ADDITION_INPUT_DIM",
    "IGNORE_INDEX",
    "IMAGE_SETS",
    "OPS",
    "POLYNOMIALS",
    "PUBLISHED_PRIMITIVE_COPIES",
    "SCAN_SPLITS",
    "PermutedView",
    "UnsafePickleError",
    "Vocab",
    "addmul",
    "class_subset",
    "dataset_labels",
    "decode_addmul",
    "double_addition",
    "encode_pairs",
    "halves",
    "heldout_pairs",
    "image_search_paths",
    "interpret",
    "line",
    "load_images",
    "permuted",
    "poly",
    "read_cifar_batch",
    "read_idx",
    "safe_unpickle",
    "scan_commands",
    "scan_split",
    "scan_vocabs",
]
