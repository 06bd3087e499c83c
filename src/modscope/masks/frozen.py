"""The frozen model of mask training: eval mode, no parameter gradients, all restored on exit."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["frozen"]


@contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """Eval mode, no parameter gradients and no attention fast path inside; everything restored on exit.

    The fused ``MultiheadAttention`` / ``TransformerEncoderLayer`` fast path is taken when it sees no
    ``requires_grad`` (which vmap hides) and has no derivative, so it is switched off while training.
    """
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    fastpath = torch.backends.mha.get_fastpath_enabled()
    try:
        model.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        torch.backends.mha.set_fastpath_enabled(False)
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        for p, flag in flags:
            p.requires_grad_(flag)
        for m, mode in modes:
            m.training = mode
