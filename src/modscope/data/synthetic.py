"""Synthetic sets of the clusterability papers (Filan et al., "Clusterability in Neural Networks",
arXiv:2103.03386, §4; earlier "Neural Networks are Surprisingly Modular", arXiv:2003.04881).

The papers describe these sets in a sentence each; the exact generation below is modscope's and is
documented per function so that results can be reproduced and compared across runs. Every generator takes
an explicit ``seed`` (``numpy.random.default_rng``) and never touches global random state.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from modscope.data.views import dataset_labels
from modscope.seeding import check_seed

__all__ = ["POLYNOMIALS", "halves", "line", "poly"]


def line(n: int, size: int = 28, seed: int = 0, max_lines: int = 9) -> TensorDataset:
    """Images of vertical lines; the label is the number of lines (the papers' LINES set).

    Generation, per image, with ``rng = numpy.random.default_rng(seed)``:

    1. the number of lines ``k`` is drawn uniformly from ``{0, 1, ..., max_lines}``;
    2. ``k`` columns are drawn uniformly among the column sets with no two lines adjacent (``k`` distinct
       slots out of ``size - k + 1``, sorted, slot ``i`` moved right by ``i``), so every line stays a
       separate line and ``k`` can be counted from the image;
    3. each chosen column is set to 1.0 over the full height; all other pixels are 0.0.

    Parameters
    ----------
    n : number of images.
    size : image height and width in pixels (default 28, MNIST's size).
    seed : random seed (default 0).
    max_lines : largest number of lines (default 9, giving 10 classes 0..9); needs
        ``size >= 2 * max_lines - 1``.

    Returns
    -------
    ``TensorDataset(x, y)``: ``x`` float32 ``(n, 1, size, size)`` in {0, 1}; ``y`` long ``(n,)`` in
    ``[0, max_lines]``, the number of lines.
    """
    if n < 0 or size < 1 or max_lines < 0:
        raise ValueError("n, size and max_lines must be non-negative (size >= 1)")
    if size < 2 * max_lines - 1:
        raise ValueError(f"size={size} cannot hold {max_lines} non-adjacent lines")
    rng = np.random.default_rng(check_seed(seed, "seed"))
    counts = rng.integers(0, max_lines + 1, size=n)
    x = np.zeros((n, 1, size, size), dtype=np.float32)
    for i, k in enumerate(counts):
        slots = np.sort(rng.choice(size - k + 1, size=k, replace=False))
        x[i, 0, :, slots + np.arange(k)] = 1.0
    return TensorDataset(torch.from_numpy(x), torch.from_numpy(counts.astype(np.int64)))


#: The fixed polynomials of :func:`poly`, as ``{(i, j): coefficient}`` for the terms ``x1**i * x2**j``.
POLYNOMIALS: tuple[dict[tuple[int, int], float], ...] = (
    {(1, 0): 1.0, (0, 1): 1.0},  # x1 + x2
    {(1, 1): 1.0},  # x1 * x2
    {(2, 0): 1.0, (0, 2): -1.0},  # x1^2 - x2^2
    {(3, 0): 1.0, (1, 2): -3.0},  # x1^3 - 3 x1 x2^2  (Re (x1 + i x2)^3)
)


def poly(n: int, seed: int = 0, noise: float = 0.0) -> TensorDataset:
    """Regression of a few fixed polynomials of two inputs (the papers' POLY set).

    Inputs ``x = (x1, x2)`` are drawn i.i.d. uniform on ``[-1, 1]^2``; target ``j`` is
    ``POLYNOMIALS[j]`` evaluated at ``x``: ``x1 + x2``, ``x1 * x2``, ``x1^2 - x2^2``, ``x1^3 - 3 x1 x2^2``
    (P = 4 outputs, each in [-2, 2]), plus optional Gaussian noise of standard deviation ``noise``.

    Returns
    -------
    ``TensorDataset(x, y)``: ``x`` float32 ``(n, 2)``; ``y`` float32 ``(n, 4)`` regression targets.
    """
    if n < 0 or noise < 0:
        raise ValueError("n and noise must be non-negative")
    rng = np.random.default_rng(check_seed(seed, "seed"))
    x = rng.uniform(-1.0, 1.0, size=(n, 2))
    y = np.stack(
        [sum(c * x[:, 0] ** i * x[:, 1] ** j for (i, j), c in p.items()) for p in POLYNOMIALS], axis=1
    )
    if noise > 0:
        y = y + rng.normal(0.0, noise, size=y.shape)
    return TensorDataset(torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.float32)))


def _half_size(x: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W)`` -> ``(N, C, H/2, W/2)`` by 2x2 average pooling."""
    return torch.nn.functional.avg_pool2d(x, kernel_size=2)


def halves(
    base_dataset: Dataset, n: int, rule: str = "same", seed: int = 0, p_same: float | None = 0.5
) -> TensorDataset:
    """Two half-size images side by side (the papers' HALVES-SAME and HALVES-MOD sets).

    Generation, with ``rng = numpy.random.default_rng(seed)``: for each of ``n`` examples, two images i and
    j of ``base_dataset`` are drawn; each is shrunk to ``(C, H/2, W/2)`` by 2x2 average pooling; the
    example is an ``(C, H, W)`` canvas of zeros with image i in the left half and image j in the right half
    of the middle rows ``[H/4, H/4 + H/2)``, so the input has the base's shape (784 pixels for MNIST).

    * ``rule="same"``: label 1 if the two images have the same class, else 0. With ``p_same`` (default
      0.5) a share ``p_same`` of the examples are drawn as same-class pairs (j uniform among images of i's
      class) and the rest as different-class pairs, so the classes are balanced; ``p_same=None`` draws i
      and j independently and uniformly (about 10% positives for 10 classes).
    * ``rule="sum"``: label ``(class_i + class_j) mod 10``; i and j are independent and uniform
      (``p_same`` is ignored).

    Parameters
    ----------
    base_dataset : examples ``(x, y)`` with ``x`` ``(C, H, W)`` float (H and W even) and integer labels in
        [0, 10), e.g. ``load_images("mnist")``.
    n : number of examples.
    rule : ``"same"`` or ``"sum"``.
    seed : random seed.

    Returns
    -------
    ``TensorDataset(x, y)``: ``x`` float32 ``(n, C, H, W)`` (values in the base's range); ``y`` long ``(n,)``
    in {0, 1} (``"same"``) or [0, 10) (``"sum"``).
    """
    if rule not in ("same", "sum"):
        raise ValueError(f"rule must be 'same' or 'sum', got {rule!r}")
    if p_same is not None and not 0.0 <= p_same <= 1.0:
        raise ValueError(f"p_same must be in [0, 1] or None, got {p_same}")
    tensors = getattr(base_dataset, "tensors", None)
    if tensors is not None:
        images = tensors[0]
    else:
        images = torch.stack([torch.as_tensor(base_dataset[i][0]) for i in range(len(base_dataset))])  # type: ignore[arg-type]
    labels = dataset_labels(base_dataset).numpy()
    if images.ndim != 4 or images.shape[2] % 2 or images.shape[3] % 2:
        raise ValueError(
            f"halves needs base images (N, C, H, W) with even H and W, got {tuple(images.shape)}"
        )
    rng = np.random.default_rng(check_seed(seed, "seed"))
    n_base = len(labels)
    i = rng.integers(0, n_base, size=n)
    if rule == "same" and p_same is not None:
        # images sorted by class: class c occupies order[first[c] : first[c] + count[c]]
        classes, inverse, count = np.unique(labels, return_inverse=True, return_counts=True)
        if len(classes) < 2:
            raise ValueError("halves(rule='same') needs at least two classes in the base set")
        order = np.argsort(inverse, kind="stable")
        first = np.concatenate([[0], np.cumsum(count)[:-1]])
        ci = inverse[i]
        want_same = rng.random(n) < p_same
        u = rng.random(n)
        same_pos = first[ci] + np.floor(u * count[ci]).astype(np.int64)
        # a uniform image of another class: a uniform position outside class ci's block
        r = np.floor(u * (n_base - count[ci])).astype(np.int64)
        other_pos = np.where(r < first[ci], r, r + count[ci])
        j = order[np.where(want_same, same_pos, other_pos)]
    else:
        j = rng.integers(0, n_base, size=n)
    it, jt = torch.from_numpy(i), torch.from_numpy(j)
    left, right = _half_size(images[it].float()), _half_size(images[jt].float())
    _, c, h, w = images.shape
    x = torch.zeros(n, c, h, w)
    top = h // 4
    x[:, :, top : top + h // 2, : w // 2] = left
    x[:, :, top : top + h // 2, w // 2 :] = right
    yi, yj = labels[i], labels[j]
    y = (yi == yj).astype(np.int64) if rule == "same" else (yi + yj) % 10
    return TensorDataset(x, torch.from_numpy(np.asarray(y, dtype=np.int64)))
