"""The planted-module networks: two modules by construction, joined by weights scaled by a cross-talk ``c``.

Every network has two halves, module A and module B. The rule is one for all families: in every group of
units (input features, hidden units, channels, LSTM hidden units, attention heads' query/key/value units,
the residual stream, the outputs) the first half of the units belongs to A and the second half to B, so
every group size is even (:func:`node_modules` reads the rule off a weight graph). A weight joining a unit
of A and a unit of B is a *cross* weight; with stacked gates (LSTM: 4 blocks of rows; attention's input
projection: q, k, v) the rule applies to each block's rows.

**Cross-talk.** :class:`CrossTalk` trains the network with every cross weight equal to ``c`` times a free
parameter, at initialization and throughout training (the effective weight is ``theta * S`` with ``S = 1``
inside a module and ``c`` across; Adam moves ``theta`` the same way for every ``c``, so the cross weights
move ``c`` times as far). ``c = 0``: two separate networks side by side (they share no weight); ``c = 1``:
a plain dense network. :meth:`CrossTalk.bake` writes ``theta * S`` into the network, which is then an
ordinary module for both lenses. Biases and normalization parameters belong to one unit: never cross.
The transformer's LayerNorm is the one coupling the rule cannot remove: its mean and variance run over
all units of the stream, so even at ``c = 0`` module A's activations depend on module B's inputs.

Families (:func:`build`; ``m`` input features, ``h`` hidden units and ``C`` classes per module):
``mlp`` 2m -> 2h -> 2h -> 2C (ReLU); ``cnn`` Conv1d 2m -> 2h -> 2h channels (kernel 3, ReLU) over ``T``
positions, average-pooled, Linear -> 2C; ``lstm`` one LSTM of 2h units over ``T`` steps, its last output
read by Linear -> 2C; ``transformer`` Linear 2m -> 2h per token, one ``nn.TransformerEncoderLayer`` (2h
wide, 2 heads -- head 0 is module A's, head 1 module B's -- feed-forward 4h, no dropout), mean over
tokens, Linear -> 2C.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call

__all__ = ["FAMILIES", "CrossTalk", "build", "input_shape", "module_weights", "node_modules"]

FAMILIES = ("mlp", "cnn", "lstm", "transformer")

# Row blocks of stacked parameters: each block's rows are one group of units.
_GATES = {nn.LSTM: 4, nn.GRU: 3, nn.RNN: 1}


class _Sequence(nn.Module):
    """LSTM or transformer over ``(batch, T, 2m)`` tokens, then a Linear head on the last step / the mean."""

    def __init__(self, family: str, m: int, h: int, classes: int):
        super().__init__()
        self.family = family
        if family == "lstm":
            self.lstm = nn.LSTM(2 * m, 2 * h, batch_first=True)
        else:
            self.embed = nn.Linear(2 * m, 2 * h)
            self.encoder = nn.TransformerEncoder(
                nn.TransformerEncoderLayer(2 * h, 2, dim_feedforward=4 * h, dropout=0.0, batch_first=True),
                num_layers=1, enable_nested_tensor=False,
            )  # fmt: skip
        self.head = nn.Linear(2 * h, 2 * classes)

    def forward(self, x: Tensor) -> Tensor:
        if self.family == "lstm":
            out, _ = self.lstm(x)
            return self.head(out[:, -1])
        return self.head(self.encoder(self.embed(x)).mean(dim=1))


def build(family: str, *, features: int, hidden: int, classes: int) -> nn.Module:
    """A network of ``family`` with two planted modules of ``features`` inputs, ``hidden`` units per group
    and ``classes`` outputs each (initialized from torch's global RNG: seed it first)."""
    m, h, c = features, hidden, classes
    if family == "mlp":
        return nn.Sequential(nn.Linear(2 * m, 2 * h), nn.ReLU(), nn.Linear(2 * h, 2 * h), nn.ReLU(),
                             nn.Linear(2 * h, 2 * c))  # fmt: skip
    if family == "cnn":
        return nn.Sequential(
            nn.Conv1d(2 * m, 2 * h, 3, padding=1), nn.ReLU(),
            nn.Conv1d(2 * h, 2 * h, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(),
            nn.Linear(2 * h, 2 * c),
        )  # fmt: skip
    if family in ("lstm", "transformer"):
        return _Sequence(family, m, h, c)
    raise ValueError(f"network family must be one of {list(FAMILIES)}, got {family!r}")


def input_shape(family: str, *, features: int, length: int) -> tuple[int, ...]:
    """Shape of one example: ``(2m,)`` for the MLP, ``(2m, T)`` channels first for the CNN, ``(T, 2m)``."""
    if family == "mlp":
        return (2 * features,)
    return (2 * features, length) if family == "cnn" else (length, 2 * features)


def _halves(model: nn.Module) -> dict[str, tuple[Tensor, Tensor | None]]:
    """Per parameter: whether each row's unit is in module B, and each column's (None for 1-d)."""
    out = {}
    for prefix, module in model.named_modules():
        for local, p in module.named_parameters(recurse=False):
            blocks = 1
            if isinstance(module, nn.RNNBase):
                blocks = _GATES[type(module)]
            elif isinstance(module, nn.MultiheadAttention) and local.startswith("in_proj"):
                blocks = 3
            size = p.shape[0] // blocks
            rows = torch.arange(p.shape[0]) % size >= size / 2
            cols = torch.arange(p.shape[1]) >= p.shape[1] / 2 if p.dim() >= 2 else None
            out[f"{prefix}.{local}" if prefix else local] = (rows, cols)
    return out


def _expand(t: Tensor, p: Tensor) -> Tensor:
    return t.reshape(t.shape + (1,) * (p.dim() - t.dim())).expand(p.shape)


def cross_scales(model: nn.Module, c: float) -> dict[str, Tensor]:
    """``S`` per weight of two or more dimensions: 1 inside a module, ``c`` across (same shape)."""
    params = dict(model.named_parameters())
    out = {}
    for name, (rows, cols) in _halves(model).items():
        if cols is not None:
            cross = _expand(rows[:, None] != cols[None, :], params[name])
            out[name] = torch.where(cross, float(c), 1.0).to(params[name].dtype)
    return out


def module_weights(model: nn.Module, names: list[str] | tuple[str, ...]) -> dict[str, dict[str, Tensor]]:
    """The planted modules as weight masks over parameters ``names``: ``{"A": {name: bool}, "B": ...}``;
    a weight is in a module when both its units are (a 1-d parameter: when its unit is)."""
    halves, params = _halves(model), dict(model.named_parameters())
    out: dict[str, dict[str, Tensor]] = {"A": {}, "B": {}}
    for name in names:
        rows, cols = halves[name]
        p = params[name]
        for module, side in (("A", False), ("B", True)):
            inside = rows == side if cols is None else (rows[:, None] == side) & (cols[None, :] == side)
            out[module][name] = _expand(inside, p).clone()
    return out


def node_modules(layer_sizes: tuple[int, ...] | list[int]) -> np.ndarray:
    """The planted module of every graph node (0 = A, 1 = B): the second half of each group is B."""
    parts = []
    for size in layer_sizes:
        if size % 2:
            raise ValueError(f"planted groups must have an even size, got a group of {size} units")
        parts.append(np.arange(size) >= size // 2)
    return np.concatenate(parts).astype(np.int64)


class CrossTalk(nn.Module):
    """``net`` run with every cross weight scaled by ``c`` (module docstring); train it, then :meth:`bake`."""

    def __init__(self, net: nn.Module, c: float):
        super().__init__()
        self.net = net
        self.c = float(c)
        # theta is the network's own (initialized) parameter: the effective cross weights start at c * init
        self._scales: Mapping[str, Tensor] = cross_scales(net, c)

    def forward(self, *inputs: Tensor) -> Tensor:
        params = dict(self.net.named_parameters())
        scaled = {name: params[name] * s for name, s in self._scales.items()}
        return functional_call(self.net, scaled, inputs)

    def bake(self) -> nn.Module:
        """The network with its effective weights ``theta * S`` written in (this wrapper is then spent)."""
        with torch.no_grad():
            params = dict(self.net.named_parameters())
            for name, s in self._scales.items():
                params[name].mul_(s)
        return self.net
