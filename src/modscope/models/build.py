"""Build the PyTorch module a spec describes, with a reproducible random initialization."""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from modscope.models.spec import VGG_CONFIGS, normalize_spec, spec_to_string
from modscope.seeding import check_seed

__all__ = ["INITS", "build_model", "init_glorot", "init_torch", "state_shapes"]

#: The initializations :func:`build_model` offers.
INITS = ("glorot", "torch")

_ACTIVATION_MODULES = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
    "silu": nn.SiLU,
}


def build_model(spec: str | Mapping[str, Any], seed: int = 0, *, init: str = "glorot") -> nn.Module:
    """A freshly initialized model for ``spec`` (a spec string or dict, see :mod:`modscope.models.spec`).

    ``init="glorot"`` (default): weights of every ``Linear``/``Conv2d`` are Glorot (Xavier) uniform with gain
    1, biases zero, BatchNorm at its identity (weight 1, bias 0, running mean 0, running variance 1); see
    :func:`init_glorot` for LSTMs, attention and embeddings. ``init="torch"``: PyTorch's own default
    initialization of each module (:func:`init_torch`; what Csordás et al.'s code trains from). Either way the
    draws are seeded with ``seed``: the same seed gives identical weights whatever the global RNG state, and
    building a model leaves the global RNG untouched. The model is returned in eval mode.

    Module names (they become the weight graph's layer names and the state-dict keys):
    mlp ``flatten, fc1, act1, [drop1,] ..., out``;
    cnn ``conv1, [bn1,] relu1, pool1, ..., flatten, fc1, relu_fc1, ..., out``;
    vgg ``features.N`` and ``classifier.{0,3,6}`` as in torchvision (no average pool: the flattened feature
    map feeds the classifier directly, which for a 224x224 input matches torchvision's shapes);
    cnn with ``G``: ``gap`` (``AdaptiveAvgPool2d(1)``) after the last conv/pool, before ``flatten``;
    lstm ``lstm, out`` (:class:`~modscope.models.seq.LSTMClassifier`);
    seq2seq-lstm ``src_embed, encoder, tgt_embed, decoder, drop, out``
    (:class:`~modscope.models.seq.Seq2SeqLSTM`);
    seq2seq-transformer ``src_embed, tgt_embed, [pos,] transformer, out``
    (:class:`~modscope.models.seq.Seq2SeqTransformer`).
    """
    spec = normalize_spec(spec)
    seed = check_seed(seed, "seed")
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    # Built on the meta device first so that PyTorch's own default init (drawn from the global RNG) never
    # runs -- it would cost time for large VGGs and change the caller's random stream -- and so that the
    # size is known before any memory is taken.
    model = _meta_model(spec)
    _check_size(model, spec)
    model = model.to_empty(device="cpu")
    if init == "torch":
        init_torch(model, seed)
    else:
        init_glorot(model, torch.Generator().manual_seed(seed))
    return model.eval()


def state_shapes(spec: str | Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """``{state-dict key: shape}`` of ``build_model(spec)``, read off a meta-device build: no memory taken."""
    return {k: tuple(v.shape) for k, v in _meta_model(normalize_spec(spec)).state_dict().items()}


def _meta_model(spec: dict[str, Any]) -> nn.Module:
    builder = {
        "mlp": _mlp,
        "cnn": _cnn,
        "vgg": _vgg,
        "lstm": _lstm,
        "seq2seq-lstm": _seq2seq_lstm,
        "seq2seq-transformer": _seq2seq_transformer,
    }[spec["arch"]]
    with torch.device("meta"):
        return builder(spec)


def _check_size(model: nn.Module, spec: Mapping[str, Any]) -> None:
    """Refuse a model larger than this machine's memory: a clear error instead of the OOM killer."""
    tensors = [*model.parameters(), *model.buffers()]
    nbytes = sum(t.numel() * t.element_size() for t in tensors)
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not POSIX: no bound
        return
    if nbytes > memory:
        n = sum(t.numel() for t in tensors)
        raise ValueError(
            f"{spec_to_string(spec)} has {n:,} parameters ({nbytes / 2**30:.1f} GiB), more than this "
            f"machine's memory ({memory / 2**30:.1f} GiB)"
        )


def init_torch(model: nn.Module, seed: int) -> None:
    """PyTorch's default initialization (each module's ``reset_parameters``), drawn from ``seed``.

    Linear/Conv: Kaiming-uniform weights with ``a = sqrt(5)``, biases ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``;
    LSTM: every parameter ``U(-1/sqrt(hidden), 1/sqrt(hidden))``. Children are reset before their parents, the
    order in which constructing the model runs them, so a parent's own rule (attention zeroing its output
    bias) wins as it does in PyTorch. The caller's global RNG is left as it was.
    """
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for module in reversed(list(model.modules())):
            if hasattr(type(module), "reset_parameters"):
                module.reset_parameters()


def init_glorot(model: nn.Module, generator: torch.Generator) -> None:
    """Seeded initialization of every parameter, module by module in ``named_modules`` order.

    - ``Linear``/``Conv`` (attention output projections included): Glorot-uniform weight, zero bias.
    - ``LSTM``/``GRU``/``RNN``: each gate's block of ``weight_ih_l*`` / ``weight_hh_l*`` (shape
      ``(hidden, in)``) Glorot-uniform on its own, all biases zero.
    - ``MultiheadAttention``: the query, key and value blocks of ``in_proj_weight`` each Glorot-uniform
      (``(d_model, d_model)``), ``in_proj_bias`` zero.
    - ``Embedding``: normal(0, 1) (PyTorch's default), the ``padding_idx`` row zero.
    - ``BatchNorm``/``LayerNorm``: identity (weight 1, bias 0; BatchNorm statistics 0 mean, 1 variance).

    A module with parameters of another type raises ``TypeError``.
    """
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                nn.init.xavier_uniform_(module.weight, generator=generator)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm)):
                module.reset_parameters()
            elif isinstance(module, nn.RNNBase):
                gates = {"LSTM": 4, "GRU": 3}.get(module.mode, 1)
                for pname in module._flat_weights_names:
                    p = getattr(module, pname)
                    if pname.startswith("bias"):
                        p.zero_()
                    elif pname.startswith("weight_hr"):  # LSTM projection
                        nn.init.xavier_uniform_(p, generator=generator)
                    else:
                        for block in p.chunk(gates, dim=0):
                            nn.init.xavier_uniform_(block, generator=generator)
            elif isinstance(module, nn.MultiheadAttention):
                if module.in_proj_weight is not None:
                    for block in module.in_proj_weight.chunk(3, dim=0):
                        nn.init.xavier_uniform_(block, generator=generator)
                else:
                    for w in (module.q_proj_weight, module.k_proj_weight, module.v_proj_weight):
                        nn.init.xavier_uniform_(w, generator=generator)
                if module.in_proj_bias is not None:
                    module.in_proj_bias.zero_()
                for extra in (module.bias_k, module.bias_v):
                    if extra is not None:
                        nn.init.xavier_normal_(extra, generator=generator)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, 0.0, 1.0, generator=generator)
                if module.padding_idx is not None:
                    module.weight[module.padding_idx].zero_()
            elif any(True for _ in module.parameters(recurse=False)) or any(
                True for _ in module.buffers(False)
            ):
                raise TypeError(f"no initialization rule for module '{name}' ({type(module).__name__})")


def _mlp(spec: dict[str, Any]) -> nn.Module:
    sizes, act = spec["sizes"], _ACTIVATION_MODULES[spec["activation"]]
    # The leading flatten lets the MLP take images (B, 1, 28, 28) as well as vectors; a no-op on (B, 784).
    layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
    n_hidden = len(sizes) - 2
    for i in range(n_hidden):
        layers[f"fc{i + 1}"] = nn.Linear(sizes[i], sizes[i + 1])
        layers[f"act{i + 1}"] = act()
        if spec["dropout"] > 0:  # after each hidden activation, never on the input (Filan et al.)
            layers[f"drop{i + 1}"] = nn.Dropout(spec["dropout"])
    layers["out"] = nn.Linear(sizes[-2], sizes[-1])
    return nn.Sequential(layers)


def _cnn(spec: dict[str, Any]) -> nn.Module:
    channels, h, w = spec["input_shape"]
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    n_conv = n_pool = n_fc = 0
    features: int | None = None  # set at the implicit flatten
    tokens = spec["layers"]
    for i, token in enumerate(tokens):
        if token == "G":
            layers["gap"] = nn.AdaptiveAvgPool2d(1)
            h = w = 1
        elif token == "M":
            n_pool += 1
            layers[f"pool{n_pool}"] = nn.MaxPool2d(2)
            h, w = h // 2, w // 2
        elif token.startswith("f"):
            width = int(token[1:])
            if features is None:
                layers["flatten"] = nn.Flatten()
                features = channels * h * w
            if i == len(tokens) - 1:
                layers["out"] = nn.Linear(features, width)
            else:
                n_fc += 1
                layers[f"fc{n_fc}"] = nn.Linear(features, width)
                layers[f"relu_fc{n_fc}"] = nn.ReLU()
            features = width
        else:
            bn = token.startswith("bc")
            width = int(token[2:] if bn else token[1:])
            n_conv += 1
            layers[f"conv{n_conv}"] = nn.Conv2d(channels, width, 3, padding=1)
            if bn:
                layers[f"bn{n_conv}"] = nn.BatchNorm2d(width)
            layers[f"relu{n_conv}"] = nn.ReLU()
            channels = width
    return nn.Sequential(layers)


def _vgg(spec: dict[str, Any]) -> nn.Module:
    channels, h, w = spec["input_shape"]
    features: list[nn.Module] = []
    for v in VGG_CONFIGS[spec["depth"]]:
        if v == "M":
            features.append(nn.MaxPool2d(2))
            h, w = h // 2, w // 2
            continue
        features.append(nn.Conv2d(channels, v, 3, padding=1))
        if spec["batch_norm"]:
            features.append(nn.BatchNorm2d(v))
        features.append(nn.ReLU())
        channels = v
    hidden, p = spec["hidden"], spec["dropout"]
    # Dropout modules are kept even at p = 0 so the Linear layers sit at torchvision's indices 0, 3, 6.
    classifier = nn.Sequential(
        nn.Linear(channels * h * w, hidden), nn.ReLU(), nn.Dropout(p),
        nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(p),
        nn.Linear(hidden, spec["num_classes"]),
    )  # fmt: skip
    return nn.Sequential(
        OrderedDict(features=nn.Sequential(*features), flatten=nn.Flatten(), classifier=classifier)
    )


def _lstm(spec: dict[str, Any]) -> nn.Module:
    from modscope.models.seq import LSTMClassifier

    return LSTMClassifier(
        spec["input_size"], spec["hidden"], spec["layers"], spec["num_outputs"], spec["steps"]
    )


def _seq2seq_lstm(spec: dict[str, Any]) -> nn.Module:
    from modscope.models.seq import Seq2SeqLSTM

    return Seq2SeqLSTM(**{k: v for k, v in spec.items() if k != "arch"})


def _seq2seq_transformer(spec: dict[str, Any]) -> nn.Module:
    from modscope.models.seq import Seq2SeqTransformer

    return Seq2SeqTransformer(**{k: v for k, v in spec.items() if k != "arch"})
