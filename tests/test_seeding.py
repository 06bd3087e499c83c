"""modscope.seeding: one derivation for every random stream."""

import hashlib

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from modscope.seeding import check_seed, derive, numpy_rng, torch_generator


def test_derive_matches_the_written_formula():
    text = "7\0masks\0" + "3"
    expected = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1
    assert derive(7, "masks", 3) == expected


@given(st.integers(0, 2**63 - 1), st.lists(st.one_of(st.text(max_size=5), st.integers(0, 99)), max_size=3))
def test_derive_is_a_valid_seed_and_pure(seed, purpose):
    s = derive(seed, *purpose)
    assert 0 <= s < 2**63 and s == derive(seed, *purpose)
    torch.Generator().manual_seed(s)
    np.random.default_rng(s)


def test_streams_differ_by_seed_and_purpose():
    seeds = {derive(s, p, j) for s in range(5) for p in ("a", "b") for j in range(5)}
    assert len(seeds) == 50


@pytest.mark.parametrize("bad", [-1, None, 1.5, True, "3", 2**63])
def test_bad_seeds_name_the_parameter(bad):
    with pytest.raises(ValueError, match="n_seed must be a non-negative int"):
        check_seed(bad, "n_seed")
    with pytest.raises(ValueError, match="seed"):
        derive(bad, "x")


def test_generators():
    a, b = torch_generator(1, "x"), torch_generator(1, "x")
    assert torch.equal(torch.rand(3, generator=a), torch.rand(3, generator=b))
    assert numpy_rng(4).integers(1000) == np.random.default_rng(4).integers(1000)
    assert numpy_rng(4, "x").integers(10**9) == np.random.default_rng(derive(4, "x")).integers(10**9)
