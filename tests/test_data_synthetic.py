"""Synthetic sets of the clusterability papers: line, poly, halves."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from modscope.data import POLYNOMIALS, halves, line, poly


def _count_lines(img: torch.Tensor) -> int:
    cols = (img[0] > 0).all(dim=0).to(torch.int8)
    # count runs of lit columns
    return int(((cols[1:] == 1) & (cols[:-1] == 0)).sum() + cols[0])


def test_line_shapes_labels_and_generation():
    x, y = line(200, seed=0).tensors
    assert x.shape == (200, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.long
    assert set(x.unique().tolist()) <= {0.0, 1.0}
    assert set(y.tolist()) == set(range(10))
    for img, label in zip(x, y):
        # full-height vertical lines only, each a separate run
        assert torch.equal(img[0], img[0][:1].expand(28, 28))
        assert _count_lines(img) == int(label) == int(img[0, 0].sum())


def test_line_seeding_and_size():
    a, b = line(30, size=12, seed=4, max_lines=5), line(30, size=12, seed=4, max_lines=5)
    assert torch.equal(a.tensors[0], b.tensors[0]) and torch.equal(a.tensors[1], b.tensors[1])
    assert a.tensors[0].shape == (30, 1, 12, 12) and int(a.tensors[1].max()) <= 5
    assert not torch.equal(a.tensors[0], line(30, size=12, seed=5, max_lines=5).tensors[0])
    with pytest.raises(ValueError):
        line(5, size=8, max_lines=9)


def test_poly_values():
    x, y = poly(100, seed=0).tensors
    assert x.shape == (100, 2) and y.shape == (100, len(POLYNOMIALS)) and y.dtype == torch.float32
    assert float(x.abs().max()) <= 1.0
    x1, x2 = x[:, 0].double(), x[:, 1].double()
    expected = torch.stack([x1 + x2, x1 * x2, x1**2 - x2**2, x1**3 - 3 * x1 * x2**2], dim=1)
    assert torch.allclose(y.double(), expected, atol=1e-6)
    assert torch.equal(poly(10, seed=3).tensors[1], poly(10, seed=3).tensors[1])
    noisy = poly(100, seed=0, noise=0.1).tensors[1]
    assert not torch.allclose(noisy, y)


@pytest.fixture
def base() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.rand(50, 1, 8, 8, generator=g), torch.arange(50) % 10)


def _find_source(half: torch.Tensor, pooled: torch.Tensor) -> int:
    d = (pooled - half).abs().flatten(1).sum(dim=1)
    return int(d.argmin())


@pytest.mark.parametrize("rule", ["same", "sum"])
def test_halves_layout_and_label_rule(base, rule):
    x, y = halves(base, 40, rule=rule, seed=1).tensors
    assert x.shape == (40, 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.long
    pooled = torch.nn.functional.avg_pool2d(base.tensors[0], 2)
    labels = base.tensors[1]
    # rows outside the middle band are empty
    assert torch.all(x[:, :, :2] == 0) and torch.all(x[:, :, 6:] == 0)
    for img, label in zip(x, y):
        i = _find_source(img[:, 2:6, :4], pooled)
        j = _find_source(img[:, 2:6, 4:], pooled)
        assert torch.allclose(img[:, 2:6, :4], pooled[i]) and torch.allclose(img[:, 2:6, 4:], pooled[j])
        ci, cj = int(labels[i]), int(labels[j])
        assert int(label) == (int(ci == cj) if rule == "same" else (ci + cj) % 10)


def test_halves_same_is_balanced_and_seeded(base):
    y = halves(base, 400, rule="same", seed=0).tensors[1].numpy()
    assert 0.4 < y.mean() < 0.6
    y_raw = halves(base, 400, rule="same", seed=0, p_same=None).tensors[1].numpy()
    assert y_raw.mean() < 0.25
    a, b = halves(base, 20, rule="sum", seed=3), halves(base, 20, rule="sum", seed=3)
    assert torch.equal(a.tensors[0], b.tensors[0]) and torch.equal(a.tensors[1], b.tensors[1])
    assert np.unique(halves(base, 400, rule="sum", seed=0).tensors[1].numpy()).size == 10
    with pytest.raises(ValueError):
        halves(base, 5, rule="xor")


def test_halves_p_same_extremes(base):
    assert torch.all(halves(base, 100, rule="same", seed=0, p_same=1.0).tensors[1] == 1)
    assert torch.all(halves(base, 100, rule="same", seed=0, p_same=0.0).tensors[1] == 0)
