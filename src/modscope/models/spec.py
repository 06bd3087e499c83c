"""Architecture specs: short strings such as ``mlp:784-256x4-10`` and the JSON-able dicts they stand for.

A spec dict fully describes an architecture (not its weights), so it can be stored next to the weights and
the model rebuilt from it. The kinds, with every key always present after :func:`normalize_spec`:

``{"arch": "mlp", "sizes": [784, 256, 256, 256, 256, 10], "activation": "relu", "dropout": 0.0}``
    Linear layers ``sizes[i] -> sizes[i+1]``, the activation between them (not after the last), dropout
    after each hidden activation when ``dropout > 0``.
``{"arch": "cnn", "input_shape": [1, 28, 28], "layers": ["c16", "M", "c32", "M", "f64", "f10"]}``
    Tokens: ``cN`` 3x3 conv (padding 1) to N channels + ReLU; ``bcN`` the same with BatchNorm2d before the
    ReLU; ``M`` 2x2 max-pool; ``G`` global average pooling (``AdaptiveAvgPool2d(1)``, at most once, after
    the convolutions); ``fN`` Linear to N units + ReLU, after an implicit flatten at the first ``f``.
    The last token is an ``fN``: the output layer, without activation.
``{"arch": "vgg", "depth": 16, "batch_norm": False, "input_shape": [3, 32, 32], "num_classes": 10,
"hidden": 512, "dropout": 0.0}``
    The VGG feature stacks of Simonyan & Zisserman (configurations A, B, D, E = depth 11, 13, 16, 19),
    then a classifier ``flatten -> hidden -> hidden -> num_classes``.
``{"arch": "lstm", "input_size": 42, "hidden": 256, "layers": 2, "num_outputs": 20, "steps": 3}``
    A classifier that feeds its ``(batch, input_size)`` input to a ``layers``-deep LSTM at each of
    ``steps`` time steps and reads ``num_outputs`` logits off the last step (Csordas et al.'s LSTM on the
    addition/multiplication task: 42-d one-hot input, 3 steps, 2x256, 20 logits = 2 digits x 10).
``{"arch": "seq2seq-lstm", "src_vocab": 16, "tgt_vocab": 10, "d_model": 256, "layers": 1,
"bidirectional": True, "dropout": 0.0, "pad": 0, "bos": 1, "eos": 2}``
    LSTM encoder-decoder without attention (:class:`modscope.models.seq.Seq2SeqLSTM`). ``d_model`` is the
    embedding size and the decoder's hidden size; a bidirectional encoder has ``d_model // 2`` units per
    direction (so ``d_model`` must be even), the two directions' final states are concatenated per layer
    to start the decoder.
``{"arch": "seq2seq-transformer", "src_vocab": 16, "tgt_vocab": 10, "d_model": 128, "layers": 3,
"heads": 8, "ff": 512, "dropout": 0.1, "pos": "sin", "max_len": 256, "pad": 0, "bos": 1, "eos": 2}``
    ``nn.Transformer`` encoder-decoder (post-norm, ReLU, ``layers`` encoder and ``layers`` decoder layers,
    feed-forward width ``ff``, default ``4 * d_model``) with sinusoidal (``pos="sin"``) or learned
    (``pos="learned"``, at most ``max_len`` positions) position encodings
    (:class:`modscope.models.seq.Seq2SeqTransformer`).

For both sequence models the defaults fit SCAN: 13 command words + pad/bos/eos = 16 source tokens, 6
actions + pad/bos/eos = 9 <= 10 target tokens; ``pad``, ``bos`` and ``eos`` are token ids in both
vocabularies.

Spec strings (``parse_spec``)::

    mlp:784-256-256-256-256-10   mlp:784-256x4-10   mlp:784-256x4-10:tanh   mlp:784-256x4-10:dropout=0.5
    cnn:1x28x28:c16-M-c32-M-f64-f10 cnn:3x32x32:bc32-M-bc64-M-f128-f10   cnn:3x32x32:c32-M-c64-G-f10
    vgg16   vgg16bn   vgg16:3x32x32   vgg16:3x32x32:10   vgg11:3x224x224:1000:hidden=4096
    cnn-small   cnn-small:1x28x28:10   cifar-cnn   cifar-cnn:3x32x32:100
    lstm:42-256x2-20:steps=3   lstm-addmul   lstm-addmul:42-256x2-20:steps=3
    seq2seq-lstm   seq2seq-lstm:src_vocab=16:tgt_vocab=10:d_model=256:layers=1:bidirectional=true
    seq2seq-transformer   seq2seq-transformer:src_vocab=16:tgt_vocab=10:d_model=128:layers=3:heads=8

Named CNNs (aliases: they parse to ``cnn`` dicts, whose canonical string is the ``cnn:...`` form)::

    cnn-small[:CxHxW[:CLASSES]]  = cnn:1x28x28:c16-M-c32-M-c64-M-f128-f10
    cifar-cnn[:CxHxW[:CLASSES]]  = cnn:3x32x32:c32-M-c64-M-c128-M-c256-G-f10

``cnn-small`` is our reading of the small CNN of the clusterability papers (Filan et al. 2021,
arXiv:2103.03386) for MNIST / Fashion-MNIST: three 3x3 conv layers of 16, 32, 64 channels with ReLU and
2x2 max-pooling after each, one hidden dense layer of 128, 10 outputs. The papers do not pin every size
down in what we could read; this exact choice is ours. ``cifar-cnn`` is the CIFAR-10 CNN of Csordas et al.
(2021, arXiv:2010.02066, appendix): four 3x3 conv layers of 32, 64, 128, 256 channels with ReLU, 2x2
max-pooling between them, global average pooling, one Linear to the classes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "ACTIVATIONS",
    "LSTM_DEFAULTS",
    "MAX_LAYERS",
    "NAMED_CNNS",
    "SEQ2SEQ_LSTM_DEFAULTS",
    "SEQ2SEQ_TRANSFORMER_DEFAULTS",
    "VGG_CONFIGS",
    "SpecError",
    "is_spec_string",
    "normalize_spec",
    "parse_spec",
    "spec_input_shape",
    "spec_to_string",
]

ACTIVATIONS = ("relu", "tanh", "sigmoid", "gelu", "elu", "leaky_relu", "silu")

# Conv channel counts ("M" = 2x2 max-pool) of VGG configurations A, B, D, E (Simonyan & Zisserman 2015,
# Table 1), as in torchvision.
VGG_CONFIGS: dict[int, tuple[int | str, ...]] = {
    11: (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    13: (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    16: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    19: (
        64,
        64,
        "M",
        128,
        128,
        "M",
        256,
        256,
        256,
        256,
        "M",
        512,
        512,
        512,
        512,
        "M",
        512,
        512,
        512,
        512,
        "M",
    ),
}
# CIFAR-sized defaults: the clusterability papers study VGGs trained on CIFAR-10.
VGG_DEFAULTS = {"input_shape": [3, 32, 32], "num_classes": 10, "hidden": 512, "dropout": 0.0}

# Named CNNs: (default input shape, layer tokens with the output width as "{classes}", default classes).
NAMED_CNNS: dict[str, tuple[list[int], str, int]] = {
    "cnn-small": ([1, 28, 28], "c16-M-c32-M-c64-M-f128-f{classes}", 10),
    "cifar-cnn": ([3, 32, 32], "c32-M-c64-M-c128-M-c256-G-f{classes}", 10),
}
LSTM_DEFAULTS = {"input_size": 42, "hidden": 256, "layers": 2, "num_outputs": 20, "steps": 3}
SEQ2SEQ_LSTM_DEFAULTS: dict[str, Any] = {
    "src_vocab": 16,
    "tgt_vocab": 10,
    "d_model": 256,
    "layers": 1,
    "bidirectional": True,
    "dropout": 0.0,
    "pad": 0,
    "bos": 1,
    "eos": 2,
}
SEQ2SEQ_TRANSFORMER_DEFAULTS: dict[str, Any] = {
    "src_vocab": 16,
    "tgt_vocab": 10,
    "d_model": 128,
    "layers": 3,
    "heads": 8,
    "ff": None,  # 4 * d_model
    "dropout": 0.1,
    "pos": "sin",
    "max_len": 256,
    "pad": 0,
    "bos": 1,
    "eos": 2,
}
_SEQ2SEQ_DEFAULTS = {
    "seq2seq-lstm": SEQ2SEQ_LSTM_DEFAULTS,
    "seq2seq-transformer": SEQ2SEQ_TRANSFORMER_DEFAULTS,
}
POSITIONS = ("sin", "learned")

_ARCHES = ("mlp", "cnn", "vgg", "lstm", "seq2seq-lstm", "seq2seq-transformer")
#: The most layers a spec may declare. Far deeper than the papers' networks; a bound because a spec read from
#: a file is untrusted, and even building a model on the meta device takes seconds per thousand layers.
MAX_LAYERS = 1000
_VGG_NAME = re.compile(r"vgg(\d+)(bn)?")
_CNN_TOKEN = re.compile(r"(bc|c|f)(\d+)|M|G")
_INT = re.compile(r"\d+")


class SpecError(ValueError):
    """A spec string or dict that does not describe a buildable model."""


# ---------------------------------------------------------------------------------------------- strings
def is_spec_string(text: str) -> bool:
    """Whether ``text`` names a built-in architecture (it may still be malformed: see :func:`parse_spec`)."""
    head = text.split(":", 1)[0].strip().lower()
    named = ("mlp", "cnn", "lstm", "lstm-addmul", *NAMED_CNNS, *_SEQ2SEQ_DEFAULTS)
    return head in named or _VGG_NAME.fullmatch(head) is not None


def parse_spec(text: str) -> dict[str, Any]:
    """The normalized spec dict of a spec string (grammar in the module docstring).

    Raises :class:`SpecError` (a ``ValueError``) naming the offending part.
    """
    if not isinstance(text, str):
        raise SpecError(f"a spec string is needed, got {type(text).__name__} {text!r}")
    parts = [p.strip() for p in text.strip().split(":")]
    head = parts[0].lower()
    if head == "mlp":
        return _parse_mlp(text, parts[1:])
    if head == "cnn":
        return _parse_cnn(text, parts[1:])
    if head in NAMED_CNNS:
        return _parse_named_cnn(text, head, parts[1:])
    if head in ("lstm", "lstm-addmul"):
        return _parse_lstm(text, parts[1:])
    if head in _SEQ2SEQ_DEFAULTS:
        return _parse_seq2seq(text, head, parts[1:])
    m = _VGG_NAME.fullmatch(head)
    if m:
        return _parse_vgg(text, int(m.group(1)), bool(m.group(2)), parts[1:])
    raise SpecError(
        f"unknown architecture {parts[0]!r} in spec {text!r}: expected mlp:..., cnn:..., "
        f"one of {', '.join(f'vgg{d}' for d in VGG_CONFIGS)} (with 'bn' for batch norm), "
        f"{', '.join(NAMED_CNNS)}, lstm:..., lstm-addmul, {', '.join(_SEQ2SEQ_DEFAULTS)}"
    )


def _parse_mlp(text: str, rest: list[str]) -> dict[str, Any]:
    if not rest or not rest[0]:
        raise SpecError(f"spec {text!r} has no layer sizes: expected e.g. mlp:784-256x4-10")
    sizes: list[int] = []
    for part in rest[0].split("-"):
        m = re.fullmatch(r"(\d+)(?:x(\d+))?", part.strip())
        if not m:
            raise SpecError(f"bad layer size {part!r} in spec {text!r}: expected N or NxREPEAT (e.g. 256x4)")
        size, repeat = int(m.group(1)), int(m.group(2) or 1)
        if repeat < 1:
            raise SpecError(f"bad repeat in {part!r} of spec {text!r}: must be at least 1")
        _layer_count(len(sizes) + repeat - 1, f"spec {text!r}")
        sizes += [size] * repeat
    spec: dict[str, Any] = {"arch": "mlp", "sizes": sizes}
    for opt in rest[1:]:
        key, value = _option(text, opt)
        if key is None:
            spec["activation"] = value
        elif key == "dropout":
            spec["dropout"] = _float(text, opt, value)
        else:
            raise SpecError(f"unknown option {opt!r} in spec {text!r}: mlp takes an activation and dropout=P")
    return normalize_spec(spec)


def _parse_cnn(text: str, rest: list[str]) -> dict[str, Any]:
    if len(rest) < 2:
        raise SpecError(
            f"spec {text!r} needs an input shape and layers: e.g. cnn:1x28x28:c16-M-c32-M-f64-f10"
        )
    if len(rest) > 2:
        raise SpecError(f"unexpected {':'.join(rest[2:])!r} at the end of spec {text!r}")
    return normalize_spec(
        {
            "arch": "cnn",
            "input_shape": _shape(text, rest[0]),
            "layers": [t.strip() for t in rest[1].split("-")],
        }
    )


def _parse_named_cnn(text: str, name: str, rest: list[str]) -> dict[str, Any]:
    shape, template, classes = NAMED_CNNS[name]
    if len(rest) > 2:
        raise SpecError(f"too many parts in spec {text!r}: expected {name}[:CxHxW[:CLASSES]]")
    if rest:
        shape = _shape(text, rest[0])
    if len(rest) == 2:
        if not _INT.fullmatch(rest[1]) or int(rest[1]) < 1:
            raise SpecError(f"bad number of classes {rest[1]!r} in spec {text!r}")
        classes = int(rest[1])
    return normalize_spec(
        {"arch": "cnn", "input_shape": list(shape), "layers": template.format(classes=classes).split("-")}
    )


def _parse_lstm(text: str, rest: list[str]) -> dict[str, Any]:
    spec: dict[str, Any] = {"arch": "lstm"}
    positional = [p for p in rest if "=" not in p]
    if len(positional) > 1:
        raise SpecError(f"too many parts in spec {text!r}: expected lstm:IN-HIDDENxLAYERS-OUT[:steps=N]")
    if positional:
        sizes: list[int] = []
        for part in positional[0].split("-"):
            m = re.fullmatch(r"(\d+)(?:x(\d+))?", part.strip())
            if not m or int(m.group(2) or 1) < 1:
                raise SpecError(f"bad size {part!r} in spec {text!r}: expected N or NxLAYERS (e.g. 256x2)")
            _layer_count(len(sizes) + int(m.group(2) or 1) - 1, f"spec {text!r}")
            sizes += [int(m.group(1))] * int(m.group(2) or 1)
        hidden = sizes[1:-1]
        if len(sizes) < 3 or len(set(hidden)) != 1:
            raise SpecError(
                f"bad sizes {positional[0]!r} in spec {text!r}: expected IN-HIDDENxLAYERS-OUT with one "
                "hidden width (e.g. 42-256x2-20)"
            )
        spec.update(input_size=sizes[0], hidden=hidden[0], layers=len(hidden), num_outputs=sizes[-1])
    for opt in rest:
        if "=" not in opt:
            continue
        key, value = _option(text, opt)
        if key != "steps":
            raise SpecError(f"unknown option {opt!r} in spec {text!r}: lstm takes steps=N")
        if not _INT.fullmatch(value):
            raise SpecError(f"bad number of steps {opt!r} in spec {text!r}")
        spec["steps"] = int(value)
    return normalize_spec(spec)


def _parse_seq2seq(text: str, arch: str, rest: list[str]) -> dict[str, Any]:
    defaults = _SEQ2SEQ_DEFAULTS[arch]
    spec: dict[str, Any] = {"arch": arch}
    for opt in rest:
        key, value = _option(text, opt)
        if key is None or key not in defaults:
            raise SpecError(
                f"unknown option {opt!r} in spec {text!r}: {arch} takes KEY=VALUE options, keys "
                f"{', '.join(defaults)}"
            )
        if key == "dropout":
            spec[key] = _float(text, opt, value)
        elif key == "pos":
            spec[key] = value.lower()
        elif key == "bidirectional":
            flag = value.lower()
            if flag not in ("true", "false", "1", "0", "yes", "no"):
                raise SpecError(f"bad value in option {opt!r} of spec {text!r}: expected true or false")
            spec[key] = flag in ("true", "1", "yes")
        else:
            if not _INT.fullmatch(value):
                raise SpecError(f"bad integer in option {opt!r} of spec {text!r}")
            spec[key] = int(value)
    return normalize_spec(spec)


def _parse_vgg(text: str, depth: int, batch_norm: bool, rest: list[str]) -> dict[str, Any]:
    if depth not in VGG_CONFIGS:
        raise SpecError(
            f"unknown architecture 'vgg{depth}' in spec {text!r}: VGG depths are {tuple(VGG_CONFIGS)}"
        )
    spec: dict[str, Any] = {"arch": "vgg", "depth": depth, "batch_norm": batch_norm}
    positional = [p for p in rest if "=" not in p]
    if len(positional) > 2:
        raise SpecError(
            f"too many parts in spec {text!r}: expected vggD[:CxHxW[:CLASSES]][:hidden=N][:dropout=P]"
        )
    if positional:
        spec["input_shape"] = _shape(text, positional[0])
    if len(positional) == 2:
        if not _INT.fullmatch(positional[1]):
            raise SpecError(f"bad number of classes {positional[1]!r} in spec {text!r}")
        spec["num_classes"] = int(positional[1])
    for opt in rest:
        if "=" not in opt:
            continue
        key, value = _option(text, opt)
        if key == "hidden":
            if not _INT.fullmatch(value):
                raise SpecError(f"bad hidden width {opt!r} in spec {text!r}")
            spec["hidden"] = int(value)
        elif key == "dropout":
            spec["dropout"] = _float(text, opt, value)
        else:
            raise SpecError(f"unknown option {opt!r} in spec {text!r}: vgg takes hidden=N and dropout=P")
    return normalize_spec(spec)


def _option(text: str, opt: str) -> tuple[str | None, str]:
    if "=" not in opt:
        return None, opt.lower()
    key, _, value = opt.partition("=")
    if not value:
        raise SpecError(f"option {opt!r} in spec {text!r} has no value")
    return key.strip().lower(), value.strip()


def _float(text: str, opt: str, value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise SpecError(f"bad number in option {opt!r} of spec {text!r}") from None


def _shape(text: str, part: str) -> list[int]:
    dims = part.lower().split("x")
    if len(dims) != 3 or not all(_INT.fullmatch(d) for d in dims):
        raise SpecError(f"bad input shape {part!r} in spec {text!r}: expected CxHxW, e.g. 3x32x32")
    return [int(d) for d in dims]


# ---------------------------------------------------------------------------------------------- dicts
def normalize_spec(spec: Mapping[str, Any] | str) -> dict[str, Any]:
    """A validated copy of ``spec`` with every default filled in (a string is parsed first).

    Raises :class:`SpecError` naming the bad key or value.
    """
    if isinstance(spec, str):
        return parse_spec(spec)
    if not isinstance(spec, Mapping):
        raise SpecError(f"a model spec must be a string or a dict, got {type(spec).__name__}")
    arch = spec.get("arch")
    if arch not in _ARCHES:
        raise SpecError(f"spec 'arch' must be one of {_ARCHES}, got {arch!r}")
    checker = {
        "mlp": _normalize_mlp,
        "cnn": _normalize_cnn,
        "vgg": _normalize_vgg,
        "lstm": _normalize_lstm,
        "seq2seq-lstm": _normalize_seq2seq,
        "seq2seq-transformer": _normalize_seq2seq,
    }[arch]
    return checker(dict(spec))


def _check_keys(spec: dict[str, Any], allowed: Sequence[str]) -> None:
    extra = sorted(set(spec) - set(allowed) - {"arch"})
    if extra:
        raise SpecError(f"unknown key(s) {extra} in {spec['arch']} spec; allowed: {sorted(allowed)}")


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SpecError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def _layer_count(n: int, what: str) -> int:
    if n > MAX_LAYERS:
        raise SpecError(f"{what} declares {n} layers; at most {MAX_LAYERS} are supported")
    return n


def _dropout(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise SpecError(f"dropout must be a number in [0, 1), got {value!r}")
    return float(value)


def _input_shape(value: Any) -> list[int]:
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        raise SpecError(f"input_shape must be [channels, height, width], got {value!r}")
    return [_positive_int(v, "each input_shape entry") for v in value]


def _normalize_mlp(spec: dict[str, Any]) -> dict[str, Any]:
    _check_keys(spec, ("sizes", "activation", "dropout"))
    sizes = spec.get("sizes")
    if not isinstance(sizes, (list, tuple)) or len(sizes) < 2:
        raise SpecError(f"mlp 'sizes' must list at least an input and an output size, got {sizes!r}")
    _layer_count(len(sizes) - 1, "mlp 'sizes'")
    sizes = [_positive_int(s, f"mlp layer size #{i}") for i, s in enumerate(sizes)]
    activation = spec.get("activation", "relu")
    if activation not in ACTIVATIONS:
        raise SpecError(f"unknown activation {activation!r}: expected one of {ACTIVATIONS}")
    return {
        "arch": "mlp",
        "sizes": sizes,
        "activation": activation,
        "dropout": _dropout(spec.get("dropout", 0.0)),
    }


def _normalize_cnn(spec: dict[str, Any]) -> dict[str, Any]:
    _check_keys(spec, ("input_shape", "layers"))
    shape = _input_shape(spec.get("input_shape"))
    tokens = spec.get("layers")
    if not isinstance(tokens, (list, tuple)) or not tokens:
        raise SpecError(f"cnn 'layers' must be a non-empty list of tokens, got {tokens!r}")
    _layer_count(len(tokens), "cnn 'layers'")
    _, h, w = shape
    dense = pooled = False
    for i, token in enumerate(tokens):
        m = _CNN_TOKEN.fullmatch(str(token))
        where = f"cnn layer token #{i} {token!r}"
        if not m:
            raise SpecError(
                f"bad {where}: expected cN (conv), bcN (conv+BatchNorm), M (max-pool), G (global average "
                "pool) or fN (dense)"
            )
        if m.group(2) is not None and int(m.group(2)) < 1:
            raise SpecError(f"bad {where}: the width must be at least 1")
        if token == "G":
            if dense or pooled:
                raise SpecError(f"bad {where}: global pooling must come once, before the dense layers")
            pooled = True
            h = w = 1
        elif pooled and m.group(1) != "f":
            raise SpecError(f"bad {where}: only dense layers may follow the global pooling G")
        elif token == "M":
            if dense:
                raise SpecError(f"bad {where}: max-pool after a dense layer")
            if h < 2 or w < 2:
                raise SpecError(f"bad {where}: max-pool of a {h}x{w} feature map")
            h, w = h // 2, w // 2
        elif m.group(1) == "f":
            dense = True
        elif dense:
            raise SpecError(f"bad {where}: convolution after a dense layer")
    if not str(tokens[-1]).startswith("f"):
        raise SpecError(f"the last cnn layer token must be fN (the output layer), got {tokens[-1]!r}")
    return {"arch": "cnn", "input_shape": shape, "layers": [str(t) for t in tokens]}


def _normalize_vgg(spec: dict[str, Any]) -> dict[str, Any]:
    _check_keys(spec, ("depth", "batch_norm", "input_shape", "num_classes", "hidden", "dropout"))
    depth = spec.get("depth")
    if depth not in VGG_CONFIGS:
        raise SpecError(f"vgg depth must be one of {tuple(VGG_CONFIGS)}, got {depth!r}")
    batch_norm = spec.get("batch_norm", False)
    if not isinstance(batch_norm, bool):
        raise SpecError(f"vgg batch_norm must be true or false, got {batch_norm!r}")
    shape = _input_shape(spec.get("input_shape", VGG_DEFAULTS["input_shape"]))
    pools = VGG_CONFIGS[depth].count("M")
    if shape[1] < 2**pools or shape[2] < 2**pools:
        raise SpecError(
            f"vgg{depth} max-pools {pools} times, so its input must be at least {2**pools}x{2**pools}, "
            f"got {shape[1]}x{shape[2]}"
        )
    return {
        "arch": "vgg",
        "depth": int(depth),
        "batch_norm": batch_norm,
        "input_shape": shape,
        "num_classes": _positive_int(spec.get("num_classes", VGG_DEFAULTS["num_classes"]), "vgg num_classes"),
        "hidden": _positive_int(spec.get("hidden", VGG_DEFAULTS["hidden"]), "vgg hidden"),
        "dropout": _dropout(spec.get("dropout", VGG_DEFAULTS["dropout"])),
    }


def _id(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise SpecError(f"{what} must be a token id (an integer >= 0), got {value!r}")
    return int(value)


def _normalize_lstm(spec: dict[str, Any]) -> dict[str, Any]:
    _check_keys(spec, tuple(LSTM_DEFAULTS))
    out: dict[str, Any] = {"arch": "lstm"}
    for key, default in LSTM_DEFAULTS.items():
        out[key] = _positive_int(spec.get(key, default), f"lstm {key}")
    _layer_count(out["layers"], "lstm 'layers'")
    return out


def _normalize_seq2seq(spec: dict[str, Any]) -> dict[str, Any]:
    arch = spec["arch"]
    defaults = _SEQ2SEQ_DEFAULTS[arch]
    _check_keys(spec, tuple(defaults))
    out: dict[str, Any] = {"arch": arch}
    for key in ("src_vocab", "tgt_vocab", "d_model", "layers"):
        out[key] = _positive_int(spec.get(key, defaults[key]), f"{arch} {key}")
    _layer_count(out["layers"], f"{arch} 'layers'")
    if arch == "seq2seq-lstm":
        bidirectional = spec.get("bidirectional", defaults["bidirectional"])
        if not isinstance(bidirectional, bool):
            raise SpecError(f"{arch} bidirectional must be true or false, got {bidirectional!r}")
        if bidirectional and out["d_model"] % 2:
            raise SpecError(
                f"{arch} with a bidirectional encoder needs an even d_model (d_model // 2 units per "
                f"direction), got {out['d_model']}"
            )
        out["bidirectional"] = bidirectional
    else:
        out["heads"] = _positive_int(spec.get("heads", defaults["heads"]), f"{arch} heads")
        if out["d_model"] % out["heads"]:
            raise SpecError(f"{arch} d_model {out['d_model']} is not divisible by heads {out['heads']}")
        ff = spec.get("ff", defaults["ff"])
        out["ff"] = 4 * out["d_model"] if ff is None else _positive_int(ff, f"{arch} ff")
    out["dropout"] = _dropout(spec.get("dropout", defaults["dropout"]))
    if arch == "seq2seq-transformer":
        pos = spec.get("pos", defaults["pos"])
        if pos not in POSITIONS:
            raise SpecError(f"{arch} pos must be one of {POSITIONS}, got {pos!r}")
        out["pos"] = pos
        out["max_len"] = _positive_int(spec.get("max_len", defaults["max_len"]), f"{arch} max_len")
    for key in ("pad", "bos", "eos"):
        out[key] = _id(spec.get(key, defaults[key]), f"{arch} {key}")
        limit = min(out["src_vocab"], out["tgt_vocab"]) if key == "pad" else out["tgt_vocab"]
        if out[key] >= limit:
            raise SpecError(f"{arch} {key} id {out[key]} is outside the vocabulary (size {limit})")
    if len({out["pad"], out["bos"], out["eos"]}) != 3:
        raise SpecError(
            f"{arch} pad, bos and eos must be different ids, got {out['pad'], out['bos'], out['eos']}"
        )
    return out


def spec_input_shape(spec: Mapping[str, Any] | str) -> tuple[int, ...]:
    """Shape of one input example, without the batch dimension: ``(features,)`` or ``(C, H, W)``.

    Sequence-to-sequence specs take token sequences of any length: :class:`SpecError` for them.
    """
    spec = normalize_spec(spec)
    if spec["arch"] in _SEQ2SEQ_DEFAULTS:
        raise SpecError(f"{spec['arch']} takes token sequences of any length, not a fixed input shape")
    if spec["arch"] == "lstm":
        return (spec["input_size"],)
    return (spec["sizes"][0],) if spec["arch"] == "mlp" else tuple(spec["input_shape"])


def spec_to_string(spec: Mapping[str, Any] | str) -> str:
    """The canonical spec string of a spec (``parse_spec(spec_to_string(s)) == normalize_spec(s)``)."""
    spec = normalize_spec(spec)
    if spec["arch"] == "lstm":
        sizes = [spec["input_size"], *[spec["hidden"]] * spec["layers"], spec["num_outputs"]]
        return f"lstm:{_runs(sizes)}:steps={spec['steps']}"
    if spec["arch"] in _SEQ2SEQ_DEFAULTS:
        opts = []
        for key, value in spec.items():
            if key != "arch":
                text = (
                    str(value).lower()
                    if isinstance(value, bool)
                    else f"{value:g}"
                    if key == "dropout"
                    else value
                )
                opts.append(f"{key}={text}")
        return ":".join([spec["arch"], *opts])
    if spec["arch"] == "mlp":
        text = "mlp:" + _runs(spec["sizes"])
        if spec["activation"] != "relu":
            text += f":{spec['activation']}"
        return text + (f":dropout={spec['dropout']:g}" if spec["dropout"] else "")
    shape = "x".join(str(s) for s in spec["input_shape"])
    if spec["arch"] == "cnn":
        return f"cnn:{shape}:" + "-".join(spec["layers"])
    text = f"vgg{spec['depth']}{'bn' if spec['batch_norm'] else ''}:{shape}:{spec['num_classes']}"
    if spec["hidden"] != VGG_DEFAULTS["hidden"]:
        text += f":hidden={spec['hidden']}"
    return text + (f":dropout={spec['dropout']:g}" if spec["dropout"] else "")


def _runs(sizes: Sequence[int]) -> str:
    """``[784, 256, 256, 256, 256, 10]`` -> ``"784-256x4-10"``."""
    out: list[str] = []
    i = 0
    while i < len(sizes):
        j = i
        while j + 1 < len(sizes) and sizes[j + 1] == sizes[i]:
            j += 1
        n = j - i + 1
        out.append(str(sizes[i]) if n == 1 else f"{sizes[i]}x{n}")
        i = j + 1
    return "-".join(out)
