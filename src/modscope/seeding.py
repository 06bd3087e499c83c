"""One home for random seeds: every random choice in modscope flows from an explicit ``seed`` through here.

A user-facing ``seed`` is a non-negative int. Each independent random stream inside a computation (the
initialization, the data order, dropout, the k-means restarts, the j-th shuffle, a task's mask samples...)
gets its own seed ``derive(seed, *purpose)``, a pure function of the seed and a purpose path:

    derive(seed, *purpose) = int.from_bytes(sha256("\\0".join(map(str, (seed, *purpose))))[:8], "little") >> 1

63 bits, so it is a valid seed of ``torch.Generator``, ``numpy.random.default_rng`` and ``random.Random``.
Streams are therefore independent of each other and of how many other streams exist or in which order
(or in which worker process) they are drawn -- the property behind "same seed, same result, any worker
count". Equal purposes give equal seeds, so a task's masks do not depend on which tasks train beside it.

The seeds of whole runs in a sweep stay plain and visible (network ``i`` of a reproduction trains with
``seed + i``), so that any one network of a sweep is the single run ``modscope train --seed seed+i``.

One exception remains, kept on purpose for now: a training run's plain ``seed`` seeds both the network's
initialization (``models.build_model``) and the order of its examples (``training.train``), two torch
generators started from the same integer. Giving the order its own stream changes every trained network,
so it lands together with the rerun of the published arithmetic sweeps (results/addmul-widths,
results/double-addition-quick), whose numbers the code must keep reproducing until then.
"""

from __future__ import annotations

import hashlib
import numbers
from typing import Any

import numpy as np

__all__ = ["check_seed", "derive", "numpy_rng", "torch_generator"]

MAX_SEED = 2**63 - 1


def check_seed(seed: Any, name: str = "seed") -> int:
    """``seed`` as an int, or a ValueError that names the parameter (``None``, negatives, floats, bools)."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(f"{name} must be a non-negative int, got {seed!r}")
    if seed < 0:
        raise ValueError(f"{name} must be a non-negative int, got {seed!r}")
    if seed > MAX_SEED:
        raise ValueError(f"{name} must be a non-negative int below 2**63, got {seed!r}")
    return int(seed)


def derive(seed: int, *purpose: str | int) -> int:
    """The seed of the stream named ``purpose`` under ``seed`` (63-bit, see the module docstring).

    >>> derive(0, "dropout") == derive(0, "dropout") != derive(1, "dropout")
    True
    """
    seed = check_seed(seed)
    for p in purpose:
        if not isinstance(p, (str, numbers.Integral)) or isinstance(p, bool):
            raise TypeError(f"seed purposes are str or int, got {p!r}")
    text = "\0".join(str(int(p)) if isinstance(p, numbers.Integral) else p for p in (seed, *purpose))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def numpy_rng(seed: int, *purpose: str | int) -> np.random.Generator:
    """``numpy.random.default_rng(derive(seed, *purpose))`` (the plain ``seed`` when no purpose is given)."""
    return np.random.default_rng(derive(seed, *purpose) if purpose else check_seed(seed))


def torch_generator(seed: int, *purpose: str | int, device: Any = "cpu") -> Any:
    """A ``torch.Generator`` on ``device`` seeded with ``derive(seed, *purpose)`` (or ``seed`` alone)."""
    import torch  # here, so that structural-lens workers that import this module stay free of torch

    return torch.Generator(device=device).manual_seed(derive(seed, *purpose) if purpose else check_seed(seed))
