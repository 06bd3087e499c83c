"""Two-digit arithmetic tasks of Csordás et al. (ICLR 2021, arXiv:2010.02066, §3 and appendix).

Both tasks are enumerated, not sampled: only 10,000 ordered pairs (a, b) with a, b in [0, 100) exist, so an
honest test split holds out a seeded set of *pairs*. The held-out pairs are the same for every operation and
for both positions of the double-addition task, and never appear in a training split.

Digit encoding (shared by both tasks): a number x in [0, 100) is two one-hot blocks of 10, tens digit
first (``x // 10``) then ones digit (``x % 10``). Targets are digit classes (``long``), tens first, for a
per-digit cross-entropy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import TensorDataset

from modscope.seeding import check_seed

__all__ = [
    "ADDMUL_INPUT_DIM",
    "DOUBLE_ADDITION_INPUT_DIM",
    "IGNORE_INDEX",
    "OPS",
    "addmul",
    "decode_addmul",
    "double_addition",
    "heldout_pairs",
]

#: The operations of :func:`addmul`, in the order of their one-hot code (input dims 40 and 41).
OPS: tuple[str, ...] = ("+", "*")
#: Width of the :func:`addmul` input: 4 digits x 10 + 2 operation flags.
ADDMUL_INPUT_DIM = 42
#: Width of the :func:`double_addition` input: 2 pairs x 4 digits x 10.
DOUBLE_ADDITION_INPUT_DIM = 80
#: Target value of digits that must not be scored (PyTorch's default ``ignore_index`` of cross-entropy).
IGNORE_INDEX = -100

_N_PAIRS = 100 * 100


def _check_split(split: str) -> None:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")


def heldout_pairs(test_fraction: float = 0.1, seed: int = 0) -> np.ndarray:
    """The held-out (test) pairs: a boolean array ``(100, 100)``, ``True`` at ``[a, b]`` for a test pair.

    ``round(test_fraction * 10000)`` of the 10,000 ordered pairs, drawn without replacement by
    ``numpy.random.default_rng(seed)``. :func:`addmul` and :func:`double_addition` use this set, so that the
    same seed holds out the same pairs in both tasks.
    """
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    n_test = round(test_fraction * _N_PAIRS)
    rng = np.random.default_rng(check_seed(seed, "seed"))
    mask = np.zeros(_N_PAIRS, dtype=bool)
    mask[rng.choice(_N_PAIRS, size=n_test, replace=False)] = True
    return mask.reshape(100, 100)


def _split_pairs(split: str, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) of the split as two int64 arrays, in lexicographic order of (a, b)."""
    _check_split(split)
    held = heldout_pairs(test_fraction, seed)
    a, b = np.nonzero(held if split == "test" else ~held)
    return a.astype(np.int64), b.astype(np.int64)


def _digits_onehot(x: torch.Tensor) -> torch.Tensor:
    """``(N,)`` ints in [0, 100) -> ``(N, 20)`` float32: one-hot tens digit then one-hot ones digit."""
    out = torch.zeros(len(x), 20)
    rows = torch.arange(len(x))
    out[rows, x // 10] = 1.0
    out[rows, 10 + x % 10] = 1.0
    return out


def _digits(x: torch.Tensor) -> torch.Tensor:
    """``(N,)`` ints in [0, 100) -> ``(N, 2)`` long: tens digit, ones digit."""
    return torch.stack([x // 10, x % 10], dim=1)


def addmul(
    split: str = "train",
    ops: Sequence[str] = OPS,
    test_fraction: float = 0.1,
    seed: int = 0,
) -> TensorDataset:
    """Addition / multiplication modulo 100 (Csordás et al., ICLR 2021, §3 "addition/multiplication").

    Every ordered pair (a, b), a, b in [0, 100), of the split is combined with every operation in ``ops``;
    the target is ``(a op b) mod 100`` as two digits.

    Parameters
    ----------
    split : ``"train"`` or ``"test"``. The test split is the pairs of :func:`heldout_pairs` (same pairs for
        both operations); the training split is every other pair. Default ``"train"``.
    ops : the operations to include, a subset of ``("+", "*")``. ``("+",)`` or ``("*",)`` give the per-op
        views used to train and evaluate the "+" and "*" masks; the input layout does not change.
    test_fraction : share of the 10,000 pairs held out (default 0.1, i.e. 1,000 pairs).
    seed : seed of the held-out set (default 0).

    Returns
    -------
    ``TensorDataset(x, y)``, ordered by operation, then a, then b:

    * ``x``: float32 ``(N, 42)``, one-hot: ``[0:10]`` tens digit of a, ``[10:20]`` ones digit of a,
      ``[20:30]`` tens digit of b, ``[30:40]`` ones digit of b, ``[40:42]`` operation (40 = "+", 41 = "*");
    * ``y``: long ``(N, 2)``: tens digit and ones digit of ``(a op b) mod 100``.

    ``N = len(ops) * n_pairs`` with ``n_pairs = 10000 - round(10000 * test_fraction)`` for ``"train"`` and
    ``round(10000 * test_fraction)`` for ``"test"``. :func:`decode_addmul` inverts the input encoding.
    """
    ops = tuple(ops)
    if not ops or any(op not in OPS for op in ops) or len(set(ops)) != len(ops):
        raise ValueError(f"ops must be a non-empty subset of {OPS} without repeats, got {ops!r}")
    a_np, b_np = _split_pairs(split, test_fraction, seed)
    a, b = torch.from_numpy(a_np), torch.from_numpy(b_np)
    xs, ys = [], []
    for op in ops:
        code = torch.zeros(len(a), 2)
        code[:, OPS.index(op)] = 1.0
        xs.append(torch.cat([_digits_onehot(a), _digits_onehot(b), code], dim=1))
        result = (a + b) % 100 if op == "+" else (a * b) % 100
        ys.append(_digits(result))
    return TensorDataset(torch.cat(xs), torch.cat(ys))


def decode_addmul(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Invert the :func:`addmul` input encoding: ``(N, 42)`` -> (a ``(N,)`` long, b ``(N,)`` long, ops)."""
    if x.ndim != 2 or x.shape[1] != ADDMUL_INPUT_DIM:
        raise ValueError(f"expected inputs of shape (N, {ADDMUL_INPUT_DIM}), got {tuple(x.shape)}")
    d = [x[:, 10 * i : 10 * (i + 1)].argmax(dim=1) for i in range(4)]
    ops = [OPS[i] for i in x[:, 40:42].argmax(dim=1).tolist()]
    return 10 * d[0] + d[1], 10 * d[2] + d[3], ops


def double_addition(
    split: str = "train",
    test_fraction: float = 0.1,
    seed: int = 0,
    pair: int | None = None,
) -> TensorDataset:
    """Double addition (Csordás et al., ICLR 2021, §3 "double addition"; the P_reuse experiment).

    Two pairs (a, b) and (c, d) of numbers in [0, 100); the targets are ``(a + b) mod 100`` and
    ``(c + d) mod 100``, two digits each. The network has an input and output block per pair; the paper's
    FNN sees one pair at a time with the other pair's input zeroed, which ``pair=0`` / ``pair=1`` give.

    Parameters
    ----------
    split : ``"train"`` or ``"test"``. Both pairs of a training example come from the training pairs, both
        pairs of a test example from :func:`heldout_pairs` (the same pairs as :func:`addmul` for the same
        ``test_fraction`` and ``seed``), so a held-out pair is never seen in training in either position.
    test_fraction : share of the 10,000 (x, y) pairs held out (default 0.1).
    seed : seed of the held-out set and of the pairing used by ``pair=None`` (default 0).
    pair : ``0`` or ``1``: the per-pair view, one example per split pair (x, y) placed in that position with
        the other position zeroed; ``None`` (default): both positions filled, the i-th split pair in position
        0 joined with a seeded permutation of the split pairs in position 1 (one example per split pair).

    Returns
    -------
    ``TensorDataset(x, y)``:

    * ``x``: float32 ``(N, 80)``: ``[0:40]`` pair 0 and ``[40:80]`` pair 1, each 4 one-hot digit blocks of
      10 in the order tens(a), ones(a), tens(b), ones(b) (as in :func:`addmul`, without operation flags);
      a zeroed pair is all zeros;
    * ``y``: long ``(N, 4)``: tens and ones digit of ``(a + b) mod 100``, then of ``(c + d) mod 100``.
      In a per-pair view the two digits of the zeroed pair are :data:`IGNORE_INDEX` (-100), the default
      ``ignore_index`` of ``torch.nn.functional.cross_entropy``, so they are not scored.

    ``N`` is the number of pairs in the split (9,000 train / 1,000 test with the defaults).
    """
    if pair not in (None, 0, 1):
        raise ValueError(f"pair must be 0, 1 or None, got {pair!r}")
    a_np, b_np = _split_pairs(split, test_fraction, seed)
    a, b = torch.from_numpy(a_np), torch.from_numpy(b_np)
    n = len(a)
    enc = torch.cat([_digits_onehot(a), _digits_onehot(b)], dim=1)
    tgt = _digits((a + b) % 100)
    if pair is None:
        perm = torch.from_numpy(np.random.default_rng([check_seed(seed, "seed"), 1]).permutation(n))
        x = torch.cat([enc, enc[perm]], dim=1)
        y = torch.cat([tgt, tgt[perm]], dim=1)
        return TensorDataset(x, y)
    zeros_x = torch.zeros(n, 40)
    ignored = torch.full((n, 2), IGNORE_INDEX, dtype=torch.long)
    if pair == 0:
        return TensorDataset(torch.cat([enc, zeros_x], dim=1), torch.cat([tgt, ignored], dim=1))
    return TensorDataset(torch.cat([zeros_x, enc], dim=1), torch.cat([ignored, tgt], dim=1))
