"""Built-in model specs and safe model files.

Specs
-----
A *spec* describes an architecture, not its weights: a short string (``mlp:784-256x4-10``,
``mlp:784-256x4-10:tanh``, ``cnn:1x28x28:c16-M-c32-M-f64-f10``, ``vgg16``, ``vgg16bn:3x32x32:10``) or the
JSON-able dict it parses to (``{"arch": "mlp", "sizes": [784, 256, 256, 256, 256, 10], "activation": "relu",
"dropout": 0.0}``). :func:`parse_spec` and :func:`normalize_spec` validate and fill defaults;
:func:`build_model` builds a Glorot-uniform-initialized model from a seed (the grammar and the module
names are in :mod:`modscope.models.spec` and :func:`build_model`).

The zoo (grammar and defaults in :mod:`modscope.models.spec`, classes in :mod:`modscope.models.seq`):

=========================================  =========================================================
``mlp:784-256x4-10:dropout=0.5``           Filan et al.'s MLP; dropout after each hidden activation
``cnn-small``                              ``cnn:1x28x28:c16-M-c32-M-c64-M-f128-f10`` (MNIST CNN)
``cifar-cnn``                              ``cnn:3x32x32:c32-M-c64-M-c128-M-c256-G-f10`` (Csordas)
``lstm-addmul``                            ``lstm:42-256x2-20:steps=3``: input repeated 3 steps
``seq2seq-lstm[:key=value...]``            LSTM encoder-decoder, ``forward(src, tgt_in)``, ``generate``
``seq2seq-transformer[:key=value...]``     ``nn.Transformer`` encoder-decoder, same interface
=========================================  =========================================================

File format (version ``modscope.model/1``)
------------------------------------------
A model file is a `safetensors <https://huggingface.co/docs/safetensors>`_ file: the tensors are the
model's ``state_dict()`` (parameter and buffer names as keys), and the file's string metadata holds

=========================  ==============================================================================
``"modscope.format"``      ``"modscope.model/1"``; a reader refuses a format it does not know.
``"modscope.spec"``        the normalized spec dict, as JSON; :func:`load_model` rebuilds the model from it.
``"modscope.metadata"``    optional, JSON: anything the writer adds (``extra_metadata`` of
                           :func:`save_model`: training settings, accuracy, ...); read with
                           :func:`read_metadata`.
=========================  ==============================================================================

safetensors holds tensors only, so loading a file never runs code. Files with weights only are also read
when the architecture is given (``arch=`` / ``--arch``): a ``.safetensors`` without the keys above, or a
PyTorch state dict saved with ``torch.save(model.state_dict(), "model.pt")`` (``.pt``/``.pth``), which
is read with ``torch.load(weights_only=True)``: objects other than tensors and plain containers are refused,
never unpickled. Weights are loaded with ``load_state_dict(strict=True)`` after a check that names every
parameter whose shape differs.

Other sources
-------------
:func:`load_any` takes any source string the command line takes: the above, a ``torch.export`` archive
(``.pt2``, checked so that nothing in it is unpickled or run), ``torchvision:NAME`` (random init),
a Hugging Face model folder (offline) and ``path/to/file.py:factory`` (runs the file's code). The forms
and the description it returns are in :mod:`modscope.models.sources`.
"""

from modscope.models.build import INITS, build_model, init_glorot, init_torch
from modscope.models.io import (
    FORMAT,
    FORMAT_KEY,
    METADATA_KEY,
    SPEC_KEY,
    load_model,
    read_metadata,
    resolve_model,
    save_model,
)
from modscope.models.seq import LSTMClassifier, Seq2Seq, Seq2SeqLSTM, Seq2SeqTransformer
from modscope.models.sources import SOURCE_FORMS, example_inputs, load_any, parse_factory_args
from modscope.models.spec import (
    ACTIVATIONS,
    NAMED_CNNS,
    VGG_CONFIGS,
    SpecError,
    is_spec_string,
    normalize_spec,
    parse_spec,
    spec_input_shape,
    spec_to_string,
)

__all__ = [
    "ACTIVATIONS",
    "FORMAT",
    "FORMAT_KEY",
    "INITS",
    "METADATA_KEY",
    "NAMED_CNNS",
    "SOURCE_FORMS",
    "SPEC_KEY",
    "VGG_CONFIGS",
    "LSTMClassifier",
    "Seq2Seq",
    "Seq2SeqLSTM",
    "Seq2SeqTransformer",
    "SpecError",
    "build_model",
    "example_inputs",
    "init_glorot",
    "init_torch",
    "is_spec_string",
    "load_any",
    "load_model",
    "normalize_spec",
    "parse_factory_args",
    "parse_spec",
    "read_metadata",
    "resolve_model",
    "save_model",
    "spec_input_shape",
    "spec_to_string",
]
