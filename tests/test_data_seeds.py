"""Every data generator refuses a bad seed with a message naming it: ``None`` must not mean OS entropy."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

from modscope.data import addmul, double_addition, halves, line, load_images, permuted, poly, scan_split
from modscope.data.arithmetic import heldout_pairs

BASE = TensorDataset(torch.zeros(4, 1, 4, 4), torch.arange(4))
GENERATORS = {
    "heldout_pairs": lambda seed: heldout_pairs(seed=seed),
    "addmul": lambda seed: addmul(seed=seed),
    "double_addition": lambda seed: double_addition(seed=seed),
    "line": lambda seed: line(2, size=8, max_lines=2, seed=seed),
    "poly": lambda seed: poly(2, seed=seed),
    "halves": lambda seed: halves(BASE, 2, seed=seed),
    "permuted": lambda seed: permuted(BASE, 1, seed=seed),
    "digits": lambda seed: load_images("digits", seed=seed),
    "scan_split": lambda seed: scan_split("simple", seed=seed),
}


@pytest.mark.parametrize("seed", [-1, None, 2.0, 2**63])
@pytest.mark.parametrize("name", GENERATORS)
def test_bad_seed_is_named(name, seed):
    with pytest.raises(ValueError, match=r"^seed must be a non-negative int"):
        GENERATORS[name](seed)


@pytest.mark.parametrize("name", GENERATORS)
def test_a_numpy_integer_seed_still_works(name):
    import numpy as np

    GENERATORS[name](np.int64(3))
