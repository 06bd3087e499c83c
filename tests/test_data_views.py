"""Permuted views and class subsets."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from modscope.data import PermutedView, class_subset, line, permuted


@pytest.fixture
def images() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.rand(12, 2, 4, 5, generator=g), torch.arange(12) % 4)


class _ListDataset(Dataset):
    def __init__(self, base: TensorDataset) -> None:
        self.items = [base[i] for i in range(len(base))]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_permuted_views_shapes_identity_and_shared_permutation(images):
    views = permuted(images, 3, seed=7)
    assert len(views) == 3 and all(isinstance(v, PermutedView) for v in views)
    assert torch.equal(views[0].permutation, torch.arange(20))
    assert torch.equal(views[0].tensors[0], images.tensors[0])
    x0, y0 = images.tensors
    for v in views[1:]:
        perm = v.permutation
        assert sorted(perm.tolist()) == list(range(20)) and not torch.equal(perm, torch.arange(20))
        xp, yp = v.tensors
        assert xp.shape == x0.shape and xp.dtype == x0.dtype and torch.equal(yp, y0)
        # same permutation of pixel positions for every example and every channel
        assert torch.equal(xp.flatten(-2), x0.flatten(-2)[..., perm])
        xi, yi = v[5]
        assert torch.equal(xi, xp[5]) and int(yi) == int(y0[5])
    assert not torch.equal(views[1].permutation, views[2].permutation)


def test_permuted_is_seeded_and_prefix_stable(images):
    a, b = permuted(images, 3, seed=1), permuted(images, 5, seed=1)
    for va, vb in zip(a, b[:3]):
        assert torch.equal(va.permutation, vb.permutation)
    c = permuted(images, 3, seed=2)
    assert not torch.equal(a[1].permutation, c[1].permutation)
    no_id = permuted(images, 2, seed=1, include_identity=False)
    assert not torch.equal(no_id[0].permutation, torch.arange(20))


def test_permuted_flat_inputs_generic_datasets_and_dataloader(images):
    flat = TensorDataset(images.tensors[0].flatten(1), images.tensors[1])
    v = permuted(flat, 2, seed=0)[1]
    assert torch.equal(v.tensors[0], flat.tensors[0][:, v.permutation])
    generic = permuted(_ListDataset(images), 2, seed=0)[1]
    ref = permuted(images, 2, seed=0)[1]
    assert torch.equal(generic[3][0], ref[3][0])
    xb, yb = next(iter(DataLoader(ref, batch_size=4)))
    assert torch.equal(xb, ref.tensors[0][:4]) and torch.equal(yb, images.tensors[1][:4])
    assert torch.equal(ref[torch.tensor([1, 2])][0], ref.tensors[0][1:3])
    with pytest.raises(TypeError):
        _ = generic.tensors
    with pytest.raises(ValueError):
        permuted(images, 0)


def test_class_subset_drop_and_keep(images):
    kept = class_subset(images, keep=[1, 3])
    assert isinstance(kept, TensorDataset) and set(kept.tensors[1].tolist()) == {1, 3} and len(kept) == 6
    dropped = class_subset(images, drop=[0])
    assert 0 not in dropped.tensors[1].tolist() and len(dropped) == 9
    # rows kept in order, labels unchanged
    mask = images.tensors[1] != 0
    assert torch.equal(dropped.tensors[0], images.tensors[0][mask])
    sub = class_subset(_ListDataset(images), keep=[2])
    assert isinstance(sub, Subset) and [int(sub[i][1]) for i in range(len(sub))] == [2, 2, 2]
    with pytest.raises(ValueError):
        class_subset(images)
    with pytest.raises(ValueError):
        class_subset(images, drop=[1], keep=[2])
    with pytest.raises(ValueError, match="no examples"):
        class_subset(images, keep=[9])


def test_views_compose_with_synthetic_sets():
    ds = line(20, seed=0)
    v = permuted(class_subset(ds, drop=[0]), 2, seed=0)[1]
    assert v.tensors[0].shape[1:] == (1, 28, 28)
    # a permutation keeps the number of lit pixels
    assert torch.equal(
        v.tensors[0].sum(dim=(1, 2, 3)), class_subset(ds, drop=[0]).tensors[0].sum(dim=(1, 2, 3))
    )
