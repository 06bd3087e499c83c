"""The rules of :func:`~modscope.masks.grouping.groupings`: which entries of which module's parameters form
one group at each granularity (the module docstring of :mod:`modscope.masks.grouping` states them).

Each rule walks the model's modules, takes the parameters in ``wanted`` it knows, and gives their entries
group ids drawn from a shared :class:`Ids` counter, so ids are global and a group may span parameters.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = ["OUTPUTS", "RULES", "Ids", "Rule"]

_MHA_IN = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")
#: the output projections of the head rule (of a head's own attention module)
OUTPUTS = ("out_proj.weight", "o_proj.weight", "output.dense.weight")


class Ids:
    """Allocates consecutive group ids while the rules walk the model."""

    def __init__(self) -> None:
        self.next = 0

    def take(self, n: int) -> int:
        base, self.next = self.next, self.next + n
        return base


Rule = Callable[[nn.Module, set[str], Ids], dict[str, Tensor]]


def _weight_rule(model: nn.Module, wanted: set[str], ids: Ids) -> dict[str, Tensor]:
    params = dict(model.named_parameters())
    out = {}
    for n in [n for n in params if n in wanted]:
        p = params[n]
        out[n] = torch.arange(p.numel()).reshape(p.shape) + ids.take(p.numel())
    return out


def _rows(shape: torch.Size, row_ids: Tensor) -> Tensor:
    return row_ids.reshape(-1, *([1] * (len(shape) - 1))).expand(shape).clone()


def _unit_rule(model: nn.Module, wanted: set[str], ids: Ids) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for prefix, m in model.named_modules():
        dot = f"{prefix}." if prefix else ""
        locals_ = {f"{dot}{k}": p for k, p in m.named_parameters(recurse=False) if f"{dot}{k}" in wanted}
        if isinstance(m, nn.Linear) and f"{dot}weight" in locals_:
            w = locals_[f"{dot}weight"]
            out[f"{dot}weight"] = _rows(w.shape, torch.arange(w.shape[0]) + ids.take(w.shape[0]))
        elif isinstance(m, nn.MultiheadAttention):
            for n in (f"{dot}{k}" for k in _MHA_IN):
                if n in locals_:
                    rows = locals_[n].shape[0]
                    out[n] = _rows(locals_[n].shape, torch.arange(rows) + ids.take(rows))
        elif isinstance(m, nn.RNNBase):
            hidden, bases = m.hidden_size, {}
            for n, w in locals_.items():
                local = n[len(dot) :]
                if not local.startswith(("weight_ih_l", "weight_hh_l")):
                    continue
                layer = local[len("weight_ih_") :]  # "l0", "l1_reverse": one unit set per layer and direction
                if layer not in bases:
                    bases[layer] = ids.take(hidden)
                out[n] = _rows(w.shape, torch.arange(w.shape[0]) % hidden + bases[layer])
    return out


def _channel_rule(model: nn.Module, wanted: set[str], ids: Ids) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for prefix, m in model.named_modules():
        n = f"{prefix}.weight" if prefix else "weight"
        if not (isinstance(m, nn.modules.conv._ConvNd) and n in wanted):
            continue
        w = m.weight
        base = ids.take(m.out_channels)
        if m.transposed:  # (in, out / groups, *k): input channel i feeds the outputs of its group
            per_in, per_out = m.in_channels // m.groups, m.out_channels // m.groups
            channel = (torch.arange(w.shape[0]) // per_in)[:, None] * per_out + torch.arange(w.shape[1])
            out[n] = channel.reshape(*channel.shape, *([1] * (w.ndim - 2))).expand(w.shape).clone() + base
        else:
            out[n] = _rows(w.shape, torch.arange(w.shape[0]) + base)
    return out


def _heads_of(model: nn.Module, m: nn.Module, prefix: str, width: int) -> int:
    heads = next((h for h in (getattr(m, "num_attention_heads", None), getattr(m, "num_heads", None),
                              getattr(getattr(m, "config", None), "num_attention_heads", None),
                              getattr(getattr(model, "config", None), "num_attention_heads", None))
                  if isinstance(h, int) and h > 0), None)  # fmt: skip
    if heads is None or width % heads:
        raise ValueError(f"{prefix!r}: the number of attention heads could not be read (got {heads!r})")
    return heads


def _hf_attention(prefix: str, m: nn.Module) -> tuple[list[str], str] | None:
    """A Hugging Face attention module's projection weights (q, k, v) and its output projection's weight:
    BERT's ``query/key/value`` with the sibling ``output.dense``, or ``q_proj/k_proj/v_proj`` with
    ``o_proj``/``out_proj`` (LLaMA, OPT, BART, ...)."""
    dot = f"{prefix}." if prefix else ""
    for inputs in (("query", "key", "value"), ("q_proj", "k_proj", "v_proj")):
        if not all(isinstance(getattr(m, k, None), nn.Linear) for k in inputs):
            continue
        if inputs[0] == "query":
            parent = prefix.rsplit(".", 1)[0] if "." in prefix else ""
            output = f"{parent}.output.dense.weight" if parent else "output.dense.weight"
        else:
            output = next((f"{dot}{k}.weight" for k in ("o_proj", "out_proj")
                           if isinstance(getattr(m, k, None), nn.Linear)), "")  # fmt: skip
        widths = {getattr(m, k).out_features for k in inputs}
        if len(widths) > 1:
            raise ValueError(f"{prefix!r}: query, key and value of different widths {sorted(widths)} "
                             "(grouped-query attention) have no partition into heads")  # fmt: skip
        return [f"{dot}{k}.weight" for k in inputs], output
    return None


def _head_rule(model: nn.Module, wanted: set[str], ids: Ids) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    params = dict(model.named_parameters())
    for prefix, m in model.named_modules():
        dot = f"{prefix}." if prefix else ""
        if isinstance(m, nn.MultiheadAttention):
            heads, e = m.num_heads, m.embed_dim
            head = torch.arange(e) // m.head_dim
            targets = [n for n in (f"{dot}{k}" for k in (*_MHA_IN, "out_proj.weight")) if n in wanted]
            if not targets:
                continue
            base = ids.take(heads)
            for n in targets:
                w = params[n]
                if n.endswith("out_proj.weight"):
                    out[n] = head.expand(w.shape).clone() + base
                else:  # in_proj rows are q, k, v stacked, each e rows in head order
                    out[n] = _rows(w.shape, head.repeat(w.shape[0] // e) + base)
            continue
        found = _hf_attention(prefix, m)
        if found is None or not any(n in wanted for n in (*found[0], found[1])):
            continue
        inputs, output = found
        width = params[inputs[0]].shape[0]
        heads = _heads_of(model, m, prefix, width)
        base = ids.take(heads)
        for n in [n for n in inputs if n in wanted]:
            out[n] = _rows(params[n].shape, torch.arange(width) // (width // heads) + base)
        if output in wanted and params[output].shape[1] == width:
            column = torch.arange(width) // (width // heads)
            out[output] = column.expand(params[output].shape).clone() + base
    return out


RULES: dict[str, Rule] = {"weight": _weight_rule, "unit": _unit_rule, "channel": _channel_rule,
                           "head": _head_rule}  # fmt: skip
