"""Evaluating a model with a binary mask applied (SPEC §2.2, the mask-application tests)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from modscope.masks.mask import Mask
from modscope.masks.maskset import check_model

__all__ = ["masked", "masked_call", "masked_parameters"]


def masked_parameters(model: nn.Module, mask: Mask) -> dict[str, Tensor]:
    """``name -> weight * mask`` for the masked parameters of ``model`` (detached, new tensors)."""
    check_model(model, mask.shapes)
    params = dict(model.named_parameters())
    # where(), not multiplication: a dropped weight is exactly 0 even if it were inf or NaN.
    return {n: torch.where(m.to(params[n].device), params[n].detach(), 0.0) for n, m in mask.items()}


def masked_call(model: nn.Module, mask: Mask, *args: Any, **kwargs: Any) -> Any:
    """``model(*args, **kwargs)`` with only the kept weights of the masked parameters, without touching the
    model (functional view via ``torch.func.functional_call``; parameters outside ``mask`` as they are).

    Use ``~mask`` for the inverted test. Deterministic: the binary read-out is used, no sampling.
    """
    return functional_call(model, masked_parameters(model, mask), args, kwargs)


@contextmanager
def masked(model: nn.Module, mask: Mask) -> Iterator[nn.Module]:
    """Context manager: inside, ``model``'s masked weights are zeroed where ``mask`` is False.

    On exit, also after an exception, every masked parameter is restored bit for bit from a copy; parameters
    outside ``mask`` are never written. Prefer :func:`masked_call` where the model is shared between threads.
    """
    check_model(model, mask.shapes)
    params = dict(model.named_parameters())
    saved = {n: params[n].detach().clone() for n in mask}
    try:
        with torch.no_grad():
            for n, m in mask.items():
                params[n].masked_fill_(~m.to(params[n].device), 0.0)
        yield model
    finally:
        with torch.no_grad():
            for n, original in saved.items():
                params[n].copy_(original)
