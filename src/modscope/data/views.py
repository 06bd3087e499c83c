"""Views of an image set: pixel-permuted copies and class subsets.

Used by the transfer-sharing (permuted images) and class-removal experiments of Csordás et al.
(ICLR 2021, arXiv:2010.02066, §4 and §5).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from modscope.seeding import check_seed, numpy_rng

__all__ = ["PermutedView", "class_subset", "dataset_labels", "permuted"]


def _tensors(dataset: Dataset) -> tuple[torch.Tensor, ...] | None:
    tensors = getattr(dataset, "tensors", None)
    if isinstance(tensors, tuple) and len(tensors) >= 2 and all(isinstance(t, torch.Tensor) for t in tensors):
        return tensors
    return None


class PermutedView(Dataset):
    """A dataset whose inputs are ``base``'s inputs with their pixels reordered by one fixed permutation.

    ``permutation`` is a long tensor over the ``H * W`` pixel positions of an image ``(C, H, W)`` (the same
    reordering for every channel) or over the ``D`` features of a flat input ``(D,)``; it is the same for
    every example. Item ``i`` is ``(x_perm, y, ...)`` where ``x_perm.flatten(-2)[..., j] =
    x.flatten(-2)[..., permutation[j]]`` for images and ``x_perm[j] = x[permutation[j]]`` for vectors.
    Nothing is copied until asked: ``tensors`` builds the permuted input tensor of the whole base (for a
    ``TensorDataset`` base) when accessed.
    """

    def __init__(self, base: Dataset, permutation: torch.Tensor) -> None:
        self.base = base
        self.permutation = permutation.to(torch.long)
        tensors = _tensors(base)
        self._example_ndim = tensors[0].ndim - 1 if tensors is not None else torch.as_tensor(base[0][0]).ndim

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def _apply(self, x: torch.Tensor, batched: bool) -> torch.Tensor:
        feature_dims = x.ndim - (1 if batched else 0)
        n = self.permutation.numel()
        if feature_dims == 1:
            if x.shape[-1] != n:
                raise ValueError(f"permutation of {n} features does not fit inputs of shape {tuple(x.shape)}")
            return x[..., self.permutation]
        if feature_dims < 2 or x.shape[-1] * x.shape[-2] != n:
            raise ValueError(f"permutation of {n} pixels does not fit inputs of shape {tuple(x.shape)}")
        flat = x.flatten(-2)
        return flat[..., self.permutation].reshape(x.shape)

    def __getitem__(self, index: Any) -> tuple[Any, ...]:
        x, *rest = self.base[index]
        x = torch.as_tensor(x)
        return (self._apply(x, batched=x.ndim > self._example_ndim), *rest)

    @property
    def tensors(self) -> tuple[torch.Tensor, ...]:
        """``(x_permuted, y, ...)`` for the whole dataset (a ``TensorDataset``-like base only)."""
        tensors = _tensors(self.base)
        if tensors is None:
            raise TypeError("PermutedView.tensors needs a TensorDataset-like base; index the view instead")
        return (self._apply(tensors[0], batched=True), *tensors[1:])


def _feature_count(dataset: Dataset) -> int:
    tensors = _tensors(dataset)
    x = tensors[0][0] if tensors is not None else torch.as_tensor(dataset[0][0])
    if x.ndim == 1:
        return x.shape[0]
    if x.ndim in (2, 3):
        return x.shape[-1] * x.shape[-2]
    raise ValueError(f"inputs must be (D,), (H, W) or (C, H, W) per example, got {tuple(x.shape)}")


def permuted(
    dataset: Dataset, n_permutations: int, seed: int = 0, include_identity: bool = True
) -> list[PermutedView]:
    """A seeded sequence of pixel-permuted views of ``dataset`` ("permuted MNIST").

    Parameters
    ----------
    dataset : examples ``(x, y, ...)`` with ``x`` of shape ``(C, H, W)``, ``(H, W)`` or ``(D,)``.
    n_permutations : number of views returned.
    seed : view ``k`` is permuted by ``modscope.seeding.numpy_rng(seed, "permutation", k)``; the same seed
        gives the same permutations.
    include_identity : if ``True`` (default), view 0 is the unpermuted data (identity permutation), as the
        first task of a permuted-images sequence usually is; views 1.. are random permutations. If
        ``False``, every view is a random permutation.

    Returns
    -------
    ``list[PermutedView]`` of length ``n_permutations``; view ``k`` applies ``views[k].permutation`` (a long
    tensor over the ``H * W`` pixel positions, shared by all channels, or over the ``D`` features) to every
    example. Shapes and dtypes are those of ``dataset``. View ``k``'s permutation depends on ``seed`` and
    ``k`` only, so a longer sequence extends a shorter one with the same seed.
    """
    seed = check_seed(seed, "seed")
    if n_permutations < 1:
        raise ValueError(f"n_permutations must be >= 1, got {n_permutations}")
    n = _feature_count(dataset)
    views = []
    for k in range(n_permutations):
        if k == 0 and include_identity:
            perm = torch.arange(n)
        else:
            perm = torch.from_numpy(numpy_rng(seed, "permutation", k).permutation(n))
        views.append(PermutedView(dataset, perm))
    return views


def dataset_labels(dataset: Dataset) -> torch.Tensor:
    """The labels ``y`` (second element of each example) of ``dataset`` as a long tensor ``(N,)``."""
    tensors = _tensors(dataset)
    if tensors is not None:
        return tensors[1].to(torch.long)
    return torch.as_tensor([int(dataset[i][1]) for i in range(len(dataset))], dtype=torch.long)  # type: ignore[arg-type]


def class_subset(
    dataset: Dataset,
    drop: Iterable[int] | None = None,
    keep: Iterable[int] | None = None,
) -> Dataset:
    """The examples of ``dataset`` whose label is in ``keep``, or not in ``drop`` (give exactly one).

    Labels are not renumbered (a model keeps its output layer; the class-removal experiment of Csordás et
    al. measures the removed class's drop on the full test set). A ``TensorDataset``-like input gives a
    ``TensorDataset`` with the selected rows in their original order; any other dataset gives a
    ``torch.utils.data.Subset``. Raises ``ValueError`` if both or neither of ``drop``/``keep`` are given,
    or if nothing is left.
    """
    if (drop is None) == (keep is None):
        raise ValueError("give exactly one of drop=[...] or keep=[...]")
    labels = dataset_labels(dataset)
    classes = torch.as_tensor(
        sorted({int(c) for c in (keep if keep is not None else drop)}), dtype=torch.long
    )
    inside = torch.isin(labels, classes)
    selected = inside if keep is not None else ~inside
    if not bool(selected.any()):
        raise ValueError(f"no examples left after class_subset(drop={drop!r}, keep={keep!r})")
    tensors = _tensors(dataset)
    if tensors is not None:
        return TensorDataset(*(t[selected] for t in tensors))
    idx: Sequence[int] = torch.nonzero(selected).flatten().tolist()
    return Subset(dataset, idx)
