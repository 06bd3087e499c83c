"""Traceable stand-ins for modules ``torch.fx`` cannot trace: PyTorch's transformer encoder and BERT-style
Hugging Face encoders.

``nn.TransformerEncoderLayer`` / ``nn.TransformerEncoder`` are opaque to ``torch.fx`` (torch's tracer
keeps every ``torch.nn`` module as one call, and their ``forward`` branches on a fused fast path), and
``transformers`` (5.x) models no longer trace at all. :func:`traceable` returns a model in which each such
module is replaced by a *view*: a module holding the very same submodules under the same names (so every
path -- ``layers.0.self_attn``, ``encoder.layer.3.attention.self.query`` -- is the path in the user's model,
where lesions put their hooks) whose ``forward`` spells out the computation in plain calls of those
submodules. The user's model is never changed: the modules on the way to a replaced one are shallow copies
with their own ``_modules`` dict.

What a view computes (eval mode; masks change the attention pattern's values, never which unit feeds which,
so a view ignores them):

* ``TransformerEncoderLayer``: ``x + sa(norm1(x))``, ``x + ff(norm2(x))`` with ``norm_first``, else
  ``norm1(x + sa(x))``, ``norm2(x + ff(x))``; ``sa`` is the ``self_attn`` call (an ``nn.MultiheadAttention``,
  whose rule is :mod:`modscope.graph.attention`), ``ff = linear2(dropout(activation(linear1(x))))``;
* ``TransformerEncoder``: its layers in order, then ``norm`` when it has one;
* a BERT-layout encoder (``BertModel``, ``RobertaModel``, ... : ``embeddings`` with ``word_embeddings`` /
  ``position_embeddings`` / ``token_type_embeddings`` / ``LayerNorm``, and ``encoder.layer[i]`` with
  ``attention.self.{query,key,value}``, ``attention.output.{dense,LayerNorm}``, ``intermediate.dense``,
  ``output.{dense,LayerNorm}``), given as the model itself: ``forward(input_ids, attention_mask=None,
  token_type_ids=None)`` returns the last hidden state (the pooler, unused by sentence embeddings, is left
  out; inside a model, an output whose ``[0]`` and ``.last_hidden_state`` are that state); each
  self-attention is :func:`attend` of its query, key and value projections. Refused: relative
  position embeddings and cross-attention (they join units a view does not spell out).
"""

from __future__ import annotations

import copy
import inspect

import torch
import torch.nn.functional as F
from torch import fx, nn

from modscope.graph.layer import GraphError

__all__ = ["attend", "has_attention", "symbolic_trace", "traceable"]


def attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, heads: int) -> torch.Tensor:
    """Multi-head scaled dot-product attention of projected ``(..., L, heads * d)`` tensors, no mask.

    The marker the tracer recognizes (kept as one call by ``torch.fx.wrap``): the result's feature ``j``
    is a mix over positions of ``value``'s feature ``j`` (:mod:`modscope.graph.attention`)."""

    def split(t: torch.Tensor) -> torch.Tensor:
        return t.unflatten(-1, (heads, -1)).transpose(-2, -3)

    out = F.scaled_dot_product_attention(split(query), split(key), split(value))
    return out.transpose(-2, -3).flatten(-2)


fx.wrap("attend")


class EncoderLayerView(nn.Module):
    """``nn.TransformerEncoderLayer`` as plain calls of its own submodules (module docstring)."""

    def __init__(self, layer: nn.TransformerEncoderLayer):
        super().__init__()
        self._modules = dict(layer._modules)
        self.norm_first = layer.norm_first
        if not isinstance(layer.activation, nn.Module):
            self.act = layer.activation  # a function such as F.relu: traced as a call of it

    def _activation(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(x) if "activation" in self._modules else self.act(x)

    def _sa(self, x: torch.Tensor, mask, padding) -> torch.Tensor:
        out = self.self_attn(x, x, x, attn_mask=mask, key_padding_mask=padding, need_weights=False)[0]
        return self.dropout1(out)

    def _ff(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout2(self.linear2(self.dropout(self._activation(self.linear1(x)))))

    def forward(self, src, src_mask=None, src_key_padding_mask=None, is_causal=False):
        x = src
        if self.norm_first:
            x = x + self._sa(self.norm1(x), src_mask, src_key_padding_mask)
            return x + self._ff(self.norm2(x))
        x = self.norm1(x + self._sa(x, src_mask, src_key_padding_mask))
        return self.norm2(x + self._ff(x))


class EncoderView(nn.Module):
    """``nn.TransformerEncoder``: its layers (as views), then its final norm."""

    def __init__(self, encoder: nn.TransformerEncoder):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayerView(layer) for layer in encoder.layers)
        self.norm = encoder.norm

    def forward(self, src, mask=None, src_key_padding_mask=None, is_causal=None):
        x = src
        for layer in self.layers:
            x = layer(x, mask, src_key_padding_mask)
        return x if self.norm is None else self.norm(x)


class _BertEmbeddingsView(nn.Module):
    def __init__(self, embeddings: nn.Module):
        super().__init__()
        self._modules = dict(embeddings._modules)

    def forward(self, input_ids, token_type_ids=None):
        n = input_ids.size(-1)
        x = self.word_embeddings(input_ids)
        # The positions (and, when not given, the token types) are indices made inside the model: each
        # embedding reading them is joined to an input group of its own (modscope.graph.attention).
        x = x + self.position_embeddings(torch.arange(n))
        types = torch.zeros(n, dtype=torch.long) if token_type_ids is None else token_type_ids
        x = x + self.token_type_embeddings(types)
        return self.dropout(self.LayerNorm(x))


class _BertLayerView(nn.Module):
    def __init__(self, layer: nn.Module, heads: int):
        super().__init__()
        self._modules = dict(layer._modules)
        self.heads = heads

    def forward(self, x):
        sa, out = self.attention.self, self.attention.output
        context = attend(sa.query(x), sa.key(x), sa.value(x), self.heads)
        x = out.LayerNorm(out.dropout(out.dense(context)) + x)
        hidden = self.intermediate.intermediate_act_fn(self.intermediate.dense(x))
        return self.output.LayerNorm(self.output.dropout(self.output.dense(hidden)) + x)


class EncoderOutput(tuple):
    """What a BERT view nested in a model returns: ``out[0]`` and ``out.last_hidden_state`` are the last
    hidden state, as on a ``transformers`` model output."""

    @property
    def last_hidden_state(self):
        return self[0]


class _BertView(nn.Module):
    def __init__(self, model: nn.Module, root: bool):
        super().__init__()
        self.root = root
        self._modules = dict(model._modules)
        self._modules.pop("pooler", None)
        heads = _bert_heads(model)
        encoder = copy.copy(model.encoder)
        encoder._modules = dict(encoder._modules)
        views = [_BertLayerView(layer, heads) for layer in model.encoder.layer]
        encoder._modules["layer"] = nn.ModuleList(views)
        self._modules["encoder"] = encoder
        self._modules["embeddings"] = _BertEmbeddingsView(model.embeddings)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, **unused):
        x = self.embeddings(input_ids, token_type_ids)
        for layer in self.encoder.layer:
            x = layer(x)
        return x if self.root else EncoderOutput((x,))


_BERT_LAYER = (
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "attention.output.LayerNorm",
    "intermediate.dense",
    "output.dense",
    "output.LayerNorm",
)
_BERT_EMBEDDINGS = ("word_embeddings", "position_embeddings", "token_type_embeddings", "LayerNorm")


def _is_bert(model: nn.Module) -> bool:
    emb, layers = getattr(model, "embeddings", None), getattr(getattr(model, "encoder", None), "layer", None)
    if not isinstance(emb, nn.Module) or not isinstance(layers, nn.ModuleList) or not len(layers):
        return False
    names = dict(layers[0].named_modules())
    return all(hasattr(emb, n) for n in _BERT_EMBEDDINGS) and all(n in names for n in _BERT_LAYER)


def _bert_heads(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    kind = getattr(config, "position_embedding_type", "absolute")
    if kind != "absolute":
        raise GraphError(
            f"{type(model).__name__} uses position_embedding_type={kind!r}: relative position terms join "
            "query and key positions, not units; only absolute position embeddings are supported"
        )
    if getattr(config, "add_cross_attention", False):
        raise GraphError(f"{type(model).__name__} has cross-attention (a decoder); not supported")
    heads = getattr(config, "num_attention_heads", None)
    if not isinstance(heads, int):
        heads = getattr(model.encoder.layer[0].attention.self, "num_attention_heads", None)
    if not isinstance(heads, int) or heads <= 0:
        raise GraphError(f"{type(model).__name__}: the number of attention heads could not be read")
    return heads


def has_attention(model: nn.Module) -> bool:
    """Whether ``model`` contains attention (a ``MultiheadAttention``, a transformer layer, a BERT-layout
    encoder)."""
    return any(isinstance(m, nn.MultiheadAttention) or _is_bert(m) for m in model.modules())


def traceable(model: nn.Module, *, root: bool = True) -> nn.Module:
    """``model`` with every transformer encoder (layer) and BERT-layout encoder replaced by its view
    (module docstring); ``model`` itself when it has none. Paths and parameters are the model's own."""
    if _is_bert(model):
        return _BertView(model, root)
    if isinstance(model, nn.TransformerEncoder):
        return EncoderView(model)
    if isinstance(model, nn.TransformerEncoderLayer):
        return EncoderLayerView(model)
    children = {n: traceable(c, root=False) for n, c in model._modules.items() if c is not None}
    if all(children[name] is model._modules[name] for name in children):
        return model
    clone = copy.copy(model)
    clone._modules = {**model._modules, **children}
    return clone


def symbolic_trace(model: nn.Module, example_inputs: tuple | dict | None = None) -> fx.GraphModule:
    """``torch.fx`` trace of :func:`traceable` ``(model)``, with every ``forward`` argument the example
    inputs leave out fixed to its default (an optional ``attention_mask=None`` is then not a traced input)."""
    model = traceable(model)
    given: set[str] | None = None
    params = list(inspect.signature(model.forward).parameters.values())
    if isinstance(example_inputs, dict):
        given = set(example_inputs)
    elif isinstance(example_inputs, tuple):
        given = {p.name for p in params[: len(example_inputs)]}
    concrete = {}
    if given is not None:
        kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        concrete = {
            p.name: p.default
            for p in params
            if p.name not in given and p.kind in kinds and p.default is not inspect.Parameter.empty
        }
    graph = fx.Tracer().trace(model, concrete_args=concrete or None)
    for node in list(graph.nodes):  # fx's checks that a fixed argument keeps its value
        if node.op == "call_function" and getattr(node.target, "__name__", "") == "_assert_is_none":
            graph.erase_node(node)
    return fx.GraphModule(model, graph, class_name=type(model).__name__)
