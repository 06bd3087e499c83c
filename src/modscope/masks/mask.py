"""A binary weight mask: parameter name -> bool tensor, with set algebra.

The read-out of a trained mask is ``logit > 0`` (SPEC §2.1). Set operations act weight by weight on masks over
the same parameters; ``~mask`` is the *inverted* mask of the mask-application test (every masked weight except
the kept ones), parameters outside the mask are never touched.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

import torch
from torch import Tensor

__all__ = ["Mask"]


class Mask(Mapping[str, Tensor]):
    """An immutable mapping ``param name -> bool tensor`` (same shape as the parameter).

    Supports ``a & b`` (intersection), ``a | b`` (union), ``a - b`` (difference), ``a ^ b`` and ``~a``
    (complement within the masked parameters) for masks over the same parameters and shapes. Iteration follows
    the order given at construction (the model's parameter order).
    """

    __slots__ = ("_tensors",)

    def __init__(self, tensors: Mapping[str, Tensor] | Iterable[tuple[str, Tensor]]):
        items = dict(tensors)
        for name, t in items.items():
            if not isinstance(t, Tensor) or t.dtype != torch.bool:
                raise ValueError(
                    f"mask for {name!r} must be a bool tensor, got {getattr(t, 'dtype', type(t))}"
                )
        # Clone so the caller can't mutate what is meant to be a value.
        self._tensors = {name: t.detach().clone() for name, t in items.items()}

    @classmethod
    def ones_like(cls, params: Mapping[str, Tensor]) -> Mask:
        """Keep-everything mask for the given ``name -> tensor`` (e.g. ``dict(model.named_parameters())``)."""
        return cls({n: torch.ones(p.shape, dtype=torch.bool) for n, p in params.items()})

    # Mapping protocol
    def __getitem__(self, name: str) -> Tensor:
        try:
            return self._tensors[name]
        except KeyError:
            raise KeyError(f"{name!r} is not masked; masked parameters are {list(self._tensors)}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    # Counting
    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {n: tuple(t.shape) for n, t in self._tensors.items()}

    def kept(self) -> dict[str, int]:
        """Number of kept weights per parameter."""
        return {n: int(t.sum()) for n, t in self._tensors.items()}

    def sizes(self) -> dict[str, int]:
        """Number of weights per parameter."""
        return {n: t.numel() for n, t in self._tensors.items()}

    @property
    def total_kept(self) -> int:
        return sum(self.kept().values())

    @property
    def total_size(self) -> int:
        return sum(self.sizes().values())

    def restrict(self, names: Iterable[str]) -> Mask:
        """The mask over a subset of parameters only (the others become unmasked, e.g. half-masks)."""
        return Mask({n: self[n] for n in names})

    # Set algebra
    def _check_compatible(self, other: object, op: str) -> Mask:
        if not isinstance(other, Mask):
            raise TypeError(f"unsupported operand for {op}: Mask and {type(other).__name__}")
        if list(self.shapes.items()) != list(other.shapes.items()):
            mine, theirs = self.shapes, other.shapes
            diff = sorted(set(mine.items()) ^ set(theirs.items()))
            raise ValueError(
                f"masks over different parameters or shapes cannot be combined with {op}: {diff[:5]}"
            )
        return other

    def _combine(self, other: object, op: str, fn) -> Mask:
        other = self._check_compatible(other, op)
        return Mask({n: fn(t, other._tensors[n]) for n, t in self._tensors.items()})

    def __and__(self, other: Mask) -> Mask:
        return self._combine(other, "&", torch.logical_and)

    def __or__(self, other: Mask) -> Mask:
        return self._combine(other, "|", torch.logical_or)

    def __xor__(self, other: Mask) -> Mask:
        return self._combine(other, "^", torch.logical_xor)

    def __sub__(self, other: Mask) -> Mask:
        return self._combine(other, "-", lambda a, b: a & ~b)

    def __invert__(self) -> Mask:
        return Mask({n: ~t for n, t in self._tensors.items()})

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mask):
            return NotImplemented
        return self.shapes == other.shapes and all(torch.equal(t, other._tensors[n]) for n, t in self.items())

    __hash__ = None  # type: ignore[assignment]  # mutable-looking tensors inside; equality is by value

    def __repr__(self) -> str:
        return f"Mask({len(self)} params, kept {self.total_kept}/{self.total_size})"
