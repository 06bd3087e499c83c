"""An activation while tracing: the groups of units it is made of, and what the next layer must scale.

Used by :mod:`modscope.graph.trace`; the rules are written there.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from torch import fx, nn

from modscope.graph.blocks import BATCHNORM
from modscope.graph.groups import Groups
from modscope.graph.layer import GraphError
from modscope.graph.ops import where


@dataclass(frozen=True)
class Units:
    """What flows along the graph: an activation, as the groups of units it is made of (in order)."""

    groups: tuple[int, ...]
    channels: bool | None  # a feature map; False: a feature vector; None: the still-unknown input
    flat: bool = False  # channels flattened into one feature vector (channel-major)
    producer: int | None = None  # weight layer whose rows a norm here scales (nothing but identities since)
    col_norms: tuple[nn.Module, ...] = ()  # norms after a nonlinearity: scale the next layers' columns
    joined: bool = False  # the result of an add or cat, nothing but identities and norms since

    def passed(self) -> Units:
        """These units after an operation that is neither an identity nor a norm: no layer's rows left for a
        norm to scale, and no longer the plain result of a join."""
        return replace(self, producer=None, joined=False)


def norm_units(node: fx.Node, module: nn.Module, units: Units, gm: fx.GraphModule) -> int:
    """Units a norm scales; refuses a norm that is not a per-unit scale (module doc of blocks)."""
    if isinstance(module, BATCHNORM):
        if module.running_var is None:
            raise GraphError(
                f"{where(node, gm)} has no running statistics (track_running_stats=False), "
                "so it cannot be folded into the weights"
            )
        return module.num_features
    if isinstance(module, nn.GroupNorm):
        return module.num_channels
    shape = tuple(module.normalized_shape)
    if len(shape) != 1 or units.channels:
        raise GraphError(
            f"{where(node, gm)} normalizes over {shape} of a "
            f"{'feature map' if units.channels else 'feature vector'}; only a norm over the features of a "
            "feature vector is a per-unit scale"
        )
    return shape[0]


def cat(node: fx.Node, gm: fx.GraphModule, state: dict, groups: Groups, join) -> Units:
    seq = node.args[0] if node.args else node.kwargs.get("tensors")
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    if not isinstance(seq, (list, tuple)) or not all(isinstance(t, fx.Node) and t in state for t in seq):
        raise GraphError(f"{where(node, gm)} concatenates something other than activations of the model")
    parts = [state[t] for t in seq]
    vector = all(p.channels is False for p in parts)
    if dim not in ((1, -1) if vector else (1,)):
        raise GraphError(
            f"{where(node, gm)} concatenates along dim {dim}; only the channel (feature) dimension 1 "
            "is supported"
        )
    if any(p.channels is None for p in parts):
        raise GraphError(f"{where(node, gm)} concatenates the model's input before any weight layer")
    merged = join(node, list(seq))
    return replace(merged, groups=tuple(g for p in parts for g in p.groups))


def flatten(units: Units) -> Units:
    if not units.channels or units.flat:
        return units
    return replace(units, flat=True)


def fix_input(units: Units, size: int, channels: bool, groups: Groups) -> Units:
    """Fix the size and kind of the model's input at its first consumer."""
    if units.channels is None and len(units.groups) == 1 and groups.size(units.groups[0]) < 0:
        groups.set_size(units.groups[0], size)
    if units.channels is None:
        return replace(units, channels=channels)
    return units


def layer_inputs(
    node: fx.Node, gm: fx.GraphModule, module: nn.Module, units: Units, groups: Groups
) -> tuple[Units, int, int]:
    """The activation a weight layer reads (input fixed), its input units and the flattened positions per
    unit (``spatial``, 1 unless a Linear follows a flatten); refuses what does not fit."""
    spatial = 1
    before = groups.layers[groups.find(units.groups[-1])].name
    if isinstance(module, nn.Linear):
        if units.channels and not units.flat:
            raise GraphError(
                f"{where(node, gm)} is applied to a {groups.total(units.groups)}-channel feature map "
                "without a flatten; only Linear on feature vectors (or after a flatten) is supported"
            )
        units = fix_input(units, module.in_features, False, groups)
        n_in = groups.total(units.groups)
        if units.flat and units.channels:
            if module.in_features % n_in:
                raise GraphError(
                    f"{where(node, gm)} has {module.in_features} inputs, not a multiple of the "
                    f"{n_in} channels flattened into it"
                )
            spatial = module.in_features // n_in
        elif n_in != module.in_features:
            raise GraphError(
                f"{where(node, gm)} expects {module.in_features} inputs but the previous layer "
                f"'{before}' has {n_in} units"
            )
        return units, n_in, spatial
    if units.flat:
        raise GraphError(f"{where(node, gm)} follows a flatten; convolutions need a feature map")
    units = fix_input(units, module.in_channels, True, groups)
    n_in = groups.total(units.groups)
    if n_in != module.in_channels:
        raise GraphError(
            f"{where(node, gm)} expects {module.in_channels} input channels but the previous layer "
            f"'{before}' has {n_in}"
        )
    return units, n_in, spatial
