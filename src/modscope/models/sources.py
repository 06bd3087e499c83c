"""Any model a user can point at: one source string -> ``(nn.Module in eval mode, description dict)``.

=================================  ==========================================================================
``mlp:784-256x4-10``, ``vgg16``    a built-in spec, randomly initialized with ``seed`` (:func:`build_model`)
``model.safetensors``              a modscope model file; ``weights.pt`` / bare ``.safetensors`` with ``arch``
                                   (:func:`load_model`: safetensors or ``torch.load(weights_only=True)``)
``model.pt2``                      a ``torch.export`` archive (architecture and weights); checked first so
                                   that nothing in it is unpickled or run (:mod:`modscope.models.exported`)
``torchvision:resnet18``           a torchvision architecture, randomly initialized with ``seed``
                                   (``weights=None``: nothing is downloaded)
``path/to/hf-folder/``             a Hugging Face model folder (has ``config.json``), loaded offline with
                                   ``transformers.AutoModel.from_pretrained(local_files_only=True,
                                   trust_remote_code=False)``; safetensors weights when the folder has them
``path/to/file.py:factory``        imports the file and calls ``factory(**factory_args)``: this RUNS the
                                   file's code, by design -- point it only at code you trust
=================================  ==========================================================================

The description records how the model was obtained: ``source`` (as given), ``kind`` (``"spec"``,
``"file"``, ``"pt2"``, ``"torchvision"``, ``"huggingface"``, ``"python"``), ``spec`` and ``spec_string``
(built-in architectures; ``None`` otherwise), ``random_init``, ``init_seed`` (``None`` unless randomly
initialized), ``input_shape`` (one example without the batch dimension, when the source says it; else
``None``), ``token_inputs`` (for a Hugging Face model: the shape ``[batch, length]`` of the token ids it is
traced with, :func:`example_inputs`; else ``None``), ``model_class``, ``factory_args`` and ``label`` (one
line for people).
"""

from __future__ import annotations

import ast
import inspect
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from modscope.models.io import load_model, resolve_model
from modscope.models.spec import spec_input_shape, spec_to_string
from modscope.seeding import check_seed, derive
from modscope.user_code import first_line, user_function

__all__ = ["SOURCE_FORMS", "example_inputs", "load_any", "parse_factory_args"]

SOURCE_FORMS = (
    "a built-in spec (mlp:784-256x4-10, vgg16), a model file (.safetensors; .pt/.pth with --arch), a "
    "torch.export archive (.pt2), torchvision:NAME, a Hugging Face model folder, or path/to/file.py:factory"
)
_FACTORY = re.compile(r"(?P<file>.+\.py):(?P<name>[A-Za-z_]\w*)")
_IMAGENET = (3, 224, 224)


def load_any(
    source: str,
    *,
    arch: str | Mapping[str, Any] | None = None,
    seed: int = 0,
    factory_args: Mapping[str, Any] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Resolve ``source`` (see the table above) to ``(model in eval mode, description)``.

    ``arch`` is only for weight-only files, ``factory_args`` only for ``file.py:factory``, ``seed`` the
    random initialization of a built-in spec or a torchvision architecture (torchvision's draws run under
    ``torch.manual_seed(derive(seed, "torchvision", name))`` in a forked RNG, so the global RNG is untouched).

    Raises ``ValueError`` / ``FileNotFoundError`` with one line naming ``source``: an unknown form or
    scheme, a missing file or folder, an archive or weights that modscope will not load, a torchvision or
    transformers that does not import, a factory that fails or returns something other than an ``nn.Module``.
    """
    source = str(source)
    seed = check_seed(seed, "seed")
    factory = _FACTORY.fullmatch(source)
    if factory_args and not factory:
        raise ValueError(f"factory arguments are only for a file.py:factory source, not {source!r}")
    if arch is not None and (factory or source.startswith("torchvision:") or source.endswith(".pt2")):
        raise ValueError(f"arch {arch!r} is only for weight-only files, not {source!r}")
    if source.startswith("torchvision:"):
        model, info = _torchvision(source, source.removeprefix("torchvision:"), seed)
    elif factory:
        model, info = _factory(source, Path(factory["file"]), factory["name"], dict(factory_args or {}))
    else:
        path = Path(source)
        if path.is_dir():
            if arch is not None:
                raise ValueError(f"arch {arch!r} is only for weight-only files, not the folder {source!r}")
            model, info = _huggingface(source, path)
        elif path.is_file() and path.suffix.lower() == ".pt2":
            from modscope.models.exported import load_exported

            model, shape = load_exported(path)
            info = {"kind": "pt2", "input_shape": shape, "label": f"{source} (torch.export archive)"}
        elif path.is_file() and path.suffix.lower() == ".py":
            raise ValueError(f"{source!r} is a Python file: name the function that builds the model, "
                             f"e.g. {source}:make_model")  # fmt: skip
        elif path.is_file():
            model, spec = load_model(path, arch)
            info = _spec_info("file", spec, f"{source} ({spec_to_string(spec)})")
        else:
            model, info = _builtin(source, arch, seed)
    if not isinstance(model, nn.Module):  # pragma: no cover - every branch returns a module or raises
        raise ValueError(f"{source!r} gave a {type(model).__name__}, not a torch.nn.Module")
    shape = info.get("input_shape")
    description = {
        "source": source,
        "spec": None,
        "spec_string": None,
        "random_init": False,
        "init_seed": None,
        "factory_args": None,
        "token_inputs": None,
        **info,
        "input_shape": None if shape is None else [int(s) for s in shape],
        "model_class": type(model).__name__,
    }
    return model.eval(), description


def example_inputs(description: Mapping[str, Any]) -> dict[str, torch.Tensor] | None:
    """Keyword inputs to trace a model described by :func:`load_any` with (``WeightGraph.from_module(
    model, example_inputs=...)``): token ids (all 0: the graph depends on their shape only) for a model
    that reads tokens, ``None`` for one that takes ``input_shape``."""
    shape = description.get("token_inputs")
    return None if shape is None else {"input_ids": torch.zeros(*shape, dtype=torch.long)}


def parse_factory_args(items: Sequence[str] | None) -> dict[str, Any]:
    """``["width=64", "act='tanh'", "name=relu"]`` -> ``{"width": 64, "act": "tanh", "name": "relu"}``.

    A value is read as a Python literal (number, string, bool, None, list, tuple, dict) when it is one,
    else kept as a string; nothing is evaluated.
    """
    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, text = item.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(f"factory argument {item!r}: expected NAME=VALUE, e.g. width=64")
        try:
            out[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            out[key] = text
    return out


def _spec_info(kind: str, spec: dict, label: str) -> dict[str, Any]:
    return {"kind": kind, "spec": spec, "spec_string": spec_to_string(spec),
            "input_shape": spec_input_shape(spec), "label": label}  # fmt: skip


def _builtin(source: str, arch: Any, seed: int) -> tuple[nn.Module, dict[str, Any]]:
    scheme = source.split(":", 1)[0]
    try:
        model, spec = resolve_model(source, arch=arch, seed=seed)
    except FileNotFoundError:
        if ":" in source and not Path(scheme).exists() and scheme.isidentifier():
            raise ValueError(
                f"unknown model source {source!r} (scheme '{scheme}:'); expected {SOURCE_FORMS}"
            ) from None
        raise FileNotFoundError(
            f"no model file, folder or built-in spec {source!r}; expected {SOURCE_FORMS}"
        ) from None
    info = _spec_info("spec", spec, f"{spec_to_string(spec)} (random init, seed {seed})")
    return model, {**info, "random_init": True, "init_seed": seed}


def _torchvision(source: str, name: str, seed: int) -> tuple[nn.Module, dict[str, Any]]:
    try:
        import torchvision.models as tvm
    except Exception as exc:  # a CUDA wheel next to a CPU torch fails with several error types
        raise ValueError(
            f"{source!r}: torchvision does not import here ({type(exc).__name__}: {first_line(exc)}); "
            f"install a torchvision build that matches torch {torch.__version__}"
        ) from exc
    if name not in tvm.list_models():
        raise ValueError(f"{source!r}: torchvision has no model '{name}' (e.g. resnet18, resnet50, vgg16, "
                         "mobilenet_v2; torchvision.models.list_models() lists them)")  # fmt: skip
    builder = tvm.get_model_builder(name)
    kwargs = {"weights": None}
    if "weights_backbone" in inspect.signature(builder).parameters:
        kwargs["weights_backbone"] = None  # detection / segmentation: no pretrained backbone either
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive(seed, "torchvision", name))
        model = builder(**kwargs)
    classifier = name in tvm.list_models(module=tvm)
    return model, {
        "kind": "torchvision", "random_init": True, "init_seed": seed,
        "input_shape": _IMAGENET if classifier else None, "label": f"{source} (random init, seed {seed})",
    }  # fmt: skip


def _huggingface(source: str, path: Path) -> tuple[nn.Module, dict[str, Any]]:
    if not (path / "config.json").is_file():
        raise ValueError(f"{source!r} is a folder without config.json: not a Hugging Face model folder")
    try:
        from transformers import AutoModel
    except Exception as exc:
        raise ValueError(
            f"{source!r} is a Hugging Face model folder, but transformers does not import "
            f"({type(exc).__name__}: {first_line(exc)}); pip install transformers"
        ) from exc
    from transformers.utils import logging as hf_logging

    safetensors = any(path.glob("*.safetensors"))
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # its per-tensor bar would interleave with modscope's own output
    try:
        model = AutoModel.from_pretrained(
            str(path), local_files_only=True, trust_remote_code=False, use_safetensors=safetensors or None
        )
    except Exception as exc:  # transformers raises OSError, ValueError, KeyError, ... for a bad folder
        raise ValueError(f"{source!r}: transformers could not load the folder: {first_line(exc)}") from exc
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    kind = getattr(model.config, "model_type", "?")
    label = f"{source} (Hugging Face {kind}, {type(model).__name__})"
    return model, {"kind": "huggingface", "label": label, "token_inputs": [1, 8]}


def _factory(source: str, file: Path, name: str, kwargs: dict) -> tuple[nn.Module, dict[str, Any]]:
    fn = user_function(file, name, where=repr(source))
    try:
        model = fn(**kwargs)
    except Exception as exc:
        raise ValueError(f"{source!r}: {name}({_call(kwargs)}) failed ({type(exc).__name__}: "
                         f"{first_line(exc)})") from exc  # fmt: skip
    if not isinstance(model, nn.Module):
        raise ValueError(f"{source!r}: {name}({_call(kwargs)}) returned a {type(model).__name__}, "
                         "not a torch.nn.Module")  # fmt: skip
    label = f"{source} ({type(model).__name__} built by {name}({_call(kwargs)}))"
    return model, {"kind": "python", "factory_args": kwargs or None, "label": label}


def _call(kwargs: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())

