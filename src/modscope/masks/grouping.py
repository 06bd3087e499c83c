"""Which weights share one mask logit: the grouping of the masked parameters' entries at a granularity.

A :class:`Grouping` gives every entry of every masked parameter an integer *group id* in ``0 .. G-1``; mask
training (:func:`~modscope.masks.train_masks`, :class:`~modscope.masks.MaskedModel`) then learns one logit
per group and expands it to the entries by indexing (``logits[..., ids]``), so one sample keeps or drops a
whole group. Ids are global across parameters: a group may span several parameters (an attention head is
its query/key/value rows *and* its columns of the output projection; an LSTM unit is its rows in
``weight_ih`` *and* ``weight_hh`` of one layer and direction). Granularities (:func:`groupings`):

* ``"weight"``: every entry its own group (Csordás et al. 2021, arXiv:2010.02066).
* ``"unit"``: the rows of a ``Linear`` weight (output units; also ``MultiheadAttention.in_proj_weight``,
  whose rows are the q/k/v projections' units); for ``nn.RNN``/``nn.LSTM``/``nn.GRU`` the hidden unit ``j``
  across all gates, in ``weight_ih_l<k>`` and ``weight_hh_l<k>`` of its layer and direction.
* ``"channel"``: the output channels of a convolution (dim 0 of ``Conv*d.weight``, dim 1 per group of
  ``ConvTranspose*d.weight``).
* ``"head"``: for ``nn.MultiheadAttention``, head ``h``'s rows of q, k and v in ``in_proj_weight`` (or
  ``q/k/v_proj_weight``) and its columns of ``out_proj.weight``; for a Hugging Face BERT-style
  self-attention (a module with ``Linear`` children ``query``/``key``/``value``, heads from its
  ``num_attention_heads`` or ``model.config``), head ``h``'s rows of query/key/value and its columns of the
  sibling ``output.dense`` (the layout :mod:`modscope.graph.views` reads); likewise ``q_proj/k_proj/v_proj``
  with ``o_proj``/``out_proj`` (LLaMA, OPT, BART; grouped-query attention has no head partition: an error).

A head's output-projection columns are in its group (the read-out, the :class:`~modscope.masks.MaskSet`)
but *implied* (:attr:`Grouping.implied`): the sampler leaves them as they are, since with the head's value
rows dropped they multiply zeros, so the forward pass is the same; gating them too would make the head's
output quadratic in its gate, whose straight-through gradient vanishes whenever the head is dropped (a
dropped head could never come back).

A parameter the granularity has no rule for is an error naming it, unless ``fallback`` names the
granularity to use for such parameters (``fallback="unit"`` for the ``Linear`` head of a CNN masked by
channel, ``fallback="weight"`` for anything).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from modscope.masks.grouping_rules import OUTPUTS, RULES, Ids
from modscope.masks.layout import to_flat
from modscope.masks.mask import Mask
from modscope.masks.selection import select_parameters

__all__ = ["GRANULARITIES", "Grouping", "groupings", "masked_names"]

GRANULARITIES = ("weight", "unit", "channel", "head")



@dataclass(frozen=True, eq=False)
class Grouping:
    """``ids[name]``: an int64 tensor of the parameter's shape, each entry's group in ``0 .. n_groups-1``
    (every id used); ``names`` in the model's parameter order; ``granularity`` what built it (``"custom"``
    for user-supplied ids); ``implied`` the parameters whose entries the sampler does not gate (module
    docstring: an attention head's output projection)."""

    granularity: str
    ids: Mapping[str, Tensor]
    n_groups: int
    implied: frozenset[str] = frozenset()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.ids)

    def sizes(self) -> Tensor:
        """``(G,)`` int64: the number of entries of each group (over all parameters)."""
        return torch.bincount(torch.cat([i.reshape(-1) for i in self.ids.values()]), minlength=self.n_groups)

    def flat_index(self) -> Tensor:
        """``(N,)``: the group of each entry in the flat layout of the logits (:func:`~.layout.to_flat`)."""
        return torch.cat([to_flat(i, tuple(i.shape)) for i in self.ids.values()])

    def kept_groups(self, mask: Mask) -> Tensor:
        """``(G,)`` bool: the groups all of whose entries ``mask`` keeps (a structured mask keeps a group
        whole or not at all)."""
        ids = torch.cat([i.reshape(-1) for i in self.ids.values()])
        kept = torch.cat([mask[n].reshape(-1).to(torch.int64) for n in self.ids])
        return torch.bincount(ids, weights=kept, minlength=self.n_groups) == self.sizes()

    def collapse(self, mask: Mask) -> Mask:
        """Per parameter, one bool per group it holds (ascending id), kept iff all the group's entries are:
        :func:`~modscope.masks.iou` of two collapsed masks is the IoU per group, while that of the masks
        themselves weighs each group by its size."""
        kept = self.kept_groups(mask)
        return Mask({n: kept[torch.unique(i)] for n, i in self.ids.items()})

    def config(self) -> dict[str, object]:
        return {"granularity": self.granularity, "groups": self.n_groups}


def _custom(model: nn.Module, given: Mapping[str, Tensor]) -> Grouping:
    params = dict(model.named_parameters())
    unknown = [n for n in given if n not in params]
    if unknown:
        raise ValueError(f"granularity: parameters {unknown[:5]} are not in {type(model).__name__}")
    ids = {}
    for n in [n for n in params if n in given]:
        t = given[n]
        if not isinstance(t, Tensor) or t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise ValueError(f"granularity[{n!r}] must be an integer tensor of group ids, got {t!r}")
        if tuple(t.shape) != tuple(params[n].shape):
            raise ValueError(
                f"granularity[{n!r}] has shape {tuple(t.shape)}, the parameter {tuple(params[n].shape)}"
            )
        ids[n] = t.detach().to("cpu", torch.int64).clone()
    if not ids:
        raise ValueError("granularity: an empty mapping groups no parameter")
    flat = torch.cat([i.reshape(-1) for i in ids.values()])
    if int(flat.min()) < 0:
        raise ValueError(f"granularity: group ids must be >= 0, got {int(flat.min())}")
    n_groups = int(flat.max()) + 1
    unused = (torch.bincount(flat, minlength=n_groups) == 0).nonzero().flatten()
    if len(unused):
        raise ValueError(
            f"granularity: group ids must be 0 .. G-1 with every id used; unused: {unused[:5].tolist()}"
        )
    return Grouping("custom", ids, n_groups)


def groupings(
    model: nn.Module,
    granularity: str | Mapping[str, Tensor] = "weight",
    *,
    names: Iterable[str] | None = None,
    fallback: str | None = None,
) -> Grouping:
    """The :class:`Grouping` of the parameters ``names`` of ``model`` at ``granularity``.

    Args:
        model: any ``nn.Module`` (not modified).
        granularity: ``"weight"``, ``"unit"``, ``"channel"``, ``"head"`` (module docstring), or a mapping
            ``param name -> integer tensor of the parameter's shape`` giving each entry its group id
            (ids global across the mapping, ``0 .. G-1``, every id used); the mapping's keys are then the
            masked parameters and ``names``/``fallback`` must be None.
        names: the masked parameters (default :func:`~modscope.masks.select_parameters`).
        fallback: the granularity of the parameters ``granularity`` has no rule for (default None: those
            are a ValueError naming them).
    """
    if isinstance(granularity, Mapping):
        if names is not None or fallback is not None:
            raise ValueError("with a mapping as granularity, names and fallback must be None")
        return _custom(model, granularity)
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES} or a mapping, got {granularity!r}")
    if fallback is not None and fallback not in GRANULARITIES:
        raise ValueError(f"fallback must be None or one of {GRANULARITIES}, got {fallback!r}")
    params = dict(model.named_parameters())
    wanted = set(masked_names(model, names))
    counter = Ids()
    ids = RULES[granularity](model, wanted, counter)
    rest = wanted - set(ids)
    if rest and fallback is not None:
        ids.update(RULES[fallback](model, rest, counter))
        rest = wanted - set(ids)
    if rest:
        left = [n for n in params if n in rest]
        raise ValueError(
            f"granularity={granularity!r} has no rule for parameters {left[:5]}"
            + (f" (nor fallback={fallback!r})" if fallback else "; pass fallback='weight' or 'unit' for them")
        )
    return Grouping(granularity, {n: ids[n] for n in params if n in wanted}, counter.next, _implied(ids))


def masked_names(model: nn.Module, names: Iterable[str] | None = None) -> tuple[str, ...]:
    """``names`` (default :func:`~modscope.masks.select_parameters`) in the model's parameter order;
    ValueError naming any that ``model`` lacks."""
    params = dict(model.named_parameters())
    wanted = set(select_parameters(model) if names is None else names)
    unknown = sorted(wanted - set(params))
    if unknown:
        raise ValueError(f"names: parameters {unknown[:5]} are not in {type(model).__name__}")
    return tuple(n for n in params if n in wanted)


def _implied(ids: Mapping[str, Tensor]) -> frozenset[str]:
    """The output projections whose heads are all gated by their query/key/value rows (module docstring)."""
    outputs = [n for n in ids if n.endswith(OUTPUTS)]
    gated = set(torch.cat([ids[n].reshape(-1) for n in ids if n not in outputs] or [torch.zeros(0)]).tolist())
    return frozenset(n for n in outputs if set(ids[n].unique().tolist()) <= gated)
