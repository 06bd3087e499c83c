"""Which parameters get a mask.

SPEC §2.1: by default the weights of linear, convolutional, recurrent and attention-projection layers; biases,
normalization parameters and embeddings are left unmasked (Csordás et al. mask biases only optionally).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

__all__ = ["Include", "default_masked_names", "select_parameters"]

Include = Callable[[str, Tensor], bool]

_ATTENTION_WEIGHTS = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")


def default_masked_names(model: nn.Module) -> frozenset[str]:
    """Names (as in ``model.named_parameters()``) of the parameters masked by default.

    ``Linear.weight`` (which covers ``MultiheadAttention.out_proj``), ``Conv*.weight``, the ``weight_ih*`` /
    ``weight_hh*`` of ``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU`` and ``MultiheadAttention``'s input projections.
    """
    names: set[str] = set()
    for prefix, module in model.named_modules():
        dot = f"{prefix}." if prefix else ""
        for local, param in module.named_parameters(recurse=False):
            if param is None:
                continue
            if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)) and local == "weight":
                names.add(dot + local)
            elif isinstance(module, nn.RNNBase) and local.startswith(("weight_ih", "weight_hh")):
                names.add(dot + local)
            elif isinstance(module, nn.MultiheadAttention) and local in _ATTENTION_WEIGHTS:
                names.add(dot + local)
    return frozenset(names)


def select_parameters(model: nn.Module, include: Include | None = None) -> tuple[str, ...]:
    """Masked parameter names in ``model.named_parameters()`` order (the model's layer order).

    ``include(name, param) -> bool`` overrides the default choice. Raises ``ValueError`` when nothing is
    selected, since a mask over no weights cannot answer any question.
    """
    default = default_masked_names(model) if include is None else None
    names = tuple(
        name
        for name, param in model.named_parameters()
        if (name in default if default is not None else bool(include(name, param)))
    )
    if not names:
        what = (
            "the default include (no Linear/Conv/RNN/attention weights)" if include is None else repr(include)
        )
        raise ValueError(
            f"no parameter of {type(model).__name__} was selected for masking by {what}; "
            f"parameters are {[n for n, _ in model.named_parameters()][:10]}"
        )
    return names
