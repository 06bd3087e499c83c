"""Saved models: safetensors with the architecture spec in the metadata; weight-only files with ``arch``.

See :mod:`modscope.models` for the file format.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from modscope.atomic import atomic_path
from modscope.models.build import build_model, state_shapes
from modscope.models.spec import is_spec_string, normalize_spec

__all__ = [
    "FORMAT",
    "FORMAT_KEY",
    "METADATA_KEY",
    "SPEC_KEY",
    "load_model",
    "read_metadata",
    "resolve_model",
    "save_model",
]

FORMAT_KEY = "modscope.format"
SPEC_KEY = "modscope.spec"
METADATA_KEY = "modscope.metadata"
FORMAT = "modscope.model/1"
_TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
# Keys under which training scripts commonly nest the state dict in a checkpoint dict.
_NESTED_STATE_KEYS = ("state_dict", "model_state_dict", "model")


def save_model(
    model: nn.Module,
    spec: str | Mapping[str, Any],
    path: str | os.PathLike,
    extra_metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model``'s state dict to ``path`` as safetensors, with its spec in the metadata.

    ``spec`` must describe ``model`` (checked: the state dict of ``build_model(spec)`` must have the same
    keys and shapes). ``extra_metadata`` (JSON-able, e.g. training settings and accuracy) is stored as JSON
    under ``"modscope.metadata"``. Parent folders are created; the file is replaced atomically.
    Returns the path written.
    """
    from safetensors.torch import save_file

    spec = normalize_spec(spec)
    state = model.state_dict()
    _check_fits(_shapes(state), state_shapes(spec), f"the weights of {type(model).__name__}", spec)
    empty = [k for k, v in state.items() if v.is_meta]
    if empty:
        raise ValueError(f"{_few(empty)} are on the meta device (shapes without values): no weights to save")
    metadata = {FORMAT_KEY: FORMAT, SPEC_KEY: json.dumps(spec, sort_keys=True)}
    if extra_metadata is not None:
        try:
            metadata[METADATA_KEY] = json.dumps(dict(extra_metadata), sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"extra_metadata must be JSON-serializable (finite numbers): {exc}") from exc
    # safetensors refuses views that share memory or are not contiguous: store independent copies.
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The ``extra_metadata`` stored by :func:`save_model` (``{}`` if none or not a modscope file)."""
    path = _existing(path)
    if _kind(path) != "safetensors":
        return {}
    meta, _ = _safetensors_header(path)
    try:
        return json.loads(meta[METADATA_KEY]) if METADATA_KEY in meta else {}
    except json.JSONDecodeError as exc:
        raise ValueError(f"'{path}' has malformed {METADATA_KEY!r} metadata: {exc}") from exc


def load_model(
    path: str | os.PathLike, arch: str | Mapping[str, Any] | None = None
) -> tuple[nn.Module, dict]:
    """Rebuild the model saved at ``path``; returns ``(model in eval mode, spec dict)``.

    A modscope safetensors file carries its spec. A weight-only file -- a ``.safetensors`` without our
    metadata, or a PyTorch state dict (``.pt``/``.pth``, read with ``torch.load(weights_only=True)``, so
    no arbitrary object is ever unpickled; a dict nesting it under ``state_dict``/``model_state_dict``/
    ``model`` is accepted) -- needs ``arch``, a spec string or dict. If both exist they must agree.

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    ValueError
        Corrupt or truncated file, no spec and no ``arch``, a spec that disagrees with ``arch``, a ``.pt``
        holding something other than a state dict, or weights that do not fit the architecture (the
        message names each parameter whose shape differs, with both shapes, and missing/unexpected keys).
        The shapes are compared before the model is built or a safetensors file's data read, so a small
        file that declares a huge architecture costs no memory.
    """
    path = _existing(path)
    state: dict[str, torch.Tensor] | None = None
    if _kind(path) == "safetensors":
        meta, shapes = _safetensors_header(path)
        stored = _spec_from_metadata(path, meta)
    else:
        stored = None
        state = _read_torch(path)
        shapes = _shapes(state)
    if arch is not None:
        wanted = normalize_spec(arch)
        if stored is not None and stored != wanted:
            raise ValueError(f"'{path}' was saved as {stored} but arch {wanted} was given")
        spec = wanted
    elif stored is not None:
        spec = stored
    else:
        raise ValueError(
            f"'{path}' holds weights only, no architecture: give one with arch / --arch "
            "(e.g. 'mlp:784-256x4-10')"
        )
    _check_fits(shapes, state_shapes(spec), f"the weights in '{path}'", spec)
    model = build_model(spec)
    model.load_state_dict(_read_safetensors(path) if state is None else state, strict=True)
    return model.eval(), spec


def resolve_model(
    text: str | os.PathLike, arch: str | Mapping[str, Any] | None = None, seed: int = 0
) -> tuple[nn.Module, dict]:
    """A built-in spec string (randomly initialized with ``seed``) or a model file -> ``(model, spec)``.

    An existing file wins over a spec of the same name. ``arch`` is only for weight files.
    """
    path = Path(text)
    if path.is_file():
        return load_model(path, arch)
    text = str(text)
    if is_spec_string(text) and path.suffix.lower() not in (*_TORCH_SUFFIXES, ".safetensors"):
        if arch is not None:
            raise ValueError(f"arch {arch!r} is only for weight files, but {text!r} is a built-in spec")
        spec = normalize_spec(text)
        return build_model(spec, seed=seed), spec
    raise FileNotFoundError(
        f"no model file or built-in spec {text!r} (built-in specs look like 'mlp:784-256x4-10', "
        "'cnn:1x28x28:c16-M-c32-M-f64-f10', 'vgg16')"
    )


# ---------------------------------------------------------------------------------------------- helpers
def _existing(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model file not found: '{path}'")
    if not path.is_file():
        raise ValueError(f"'{path}' is not a file")
    return path


def _kind(path: Path) -> str:
    """``"torch"`` or ``"safetensors"``: by suffix, else by content (safetensors: 8-byte size, then JSON)."""
    suffix = path.suffix.lower()
    if suffix in _TORCH_SUFFIXES:
        return "torch"
    if suffix == ".safetensors":
        return "safetensors"
    with open(path, "rb") as f:
        head = f.read(9)
    return "safetensors" if head[8:9] == b"{" else "torch"


def _safetensors_header(path: Path) -> tuple[dict[str, str], dict[str, tuple[int, ...]]]:
    """The metadata and ``{name: shape}`` of a safetensors file, from its header alone (no tensor read)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {}), {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as exc:  # SafetensorError and OS-level errors; the message is what matters
        raise ValueError(
            f"'{path}' is not a readable safetensors file (corrupt or truncated?): {exc}"
        ) from exc


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:
        raise ValueError(
            f"'{path}' is not a readable safetensors file (corrupt or truncated?): {exc}"
        ) from exc


def _spec_from_metadata(path: Path, meta: Mapping[str, str]) -> dict[str, Any] | None:
    if SPEC_KEY not in meta:
        return None
    if meta.get(FORMAT_KEY) != FORMAT:
        raise ValueError(
            f"'{path}' has modscope format {meta.get(FORMAT_KEY)!r}; this version reads {FORMAT!r}"
        )
    try:
        return normalize_spec(json.loads(meta[SPEC_KEY]))
    except json.JSONDecodeError as exc:
        raise ValueError(f"'{path}' has a malformed {SPEC_KEY!r} entry: {exc}") from exc


def _read_torch(path: Path) -> dict[str, torch.Tensor]:
    import pickle

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only refuses any class outside tensors and plain containers: never unpickle the rest.
        # torch's message is a multi-line how-to-bypass text; keep the line that names the refused object.
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        reason = next(
            (ln for ln in lines if "Unsupported" in ln or "global" in ln.lower()), lines[0] if lines else ""
        )
        reason = reason.removeprefix("WeightsUnpickler error:").strip().split(". ")[0]
        raise ValueError(
            f"'{path}' is not a plain state dict (it pickles other objects, which modscope will not load): "
            f"{reason}"
        ) from exc
    except Exception as exc:  # torch raises several unrelated types for corrupt or foreign files
        raise ValueError(f"'{path}' is not a readable PyTorch file (corrupt or truncated?): {exc}") from exc
    if isinstance(obj, Mapping) and not _is_state_dict(obj):
        for key in _NESTED_STATE_KEYS:
            if isinstance(obj.get(key), Mapping) and _is_state_dict(obj[key]):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not _is_state_dict(obj):
        what = type(obj).__name__
        if isinstance(obj, Mapping):
            bad = [k for k, v in obj.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))]
            what = (
                f"a dict whose entry {bad[0]!r} is a {type(obj[bad[0]]).__name__}" if bad else "an empty dict"
            )
        raise ValueError(f"'{path}' holds {what}, not a state dict of tensors")
    return dict(obj)


def _is_state_dict(obj: Mapping) -> bool:
    return len(obj) > 0 and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _shapes(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def _check_fits(
    state: Mapping[str, tuple[int, ...]], expected: Mapping[str, tuple[int, ...]], what: str, spec: Mapping
) -> None:
    """Raise ``ValueError`` listing every shape mismatch and missing/unexpected key (``{key: shape}``)."""
    problems = [
        f"{k} has shape {state[k]} but the model needs {v}"
        for k, v in expected.items()
        if k in state and state[k] != v
    ]
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing:
        problems.append(f"missing {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected {_few(unexpected)}")
    if problems:
        from modscope.models.spec import spec_to_string

        raise ValueError(f"{what} do not fit {spec_to_string(spec)}: " + "; ".join(problems))


def _few(keys: list[str], n: int = 5) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f" and {len(keys) - n} more" if len(keys) > n else "")
