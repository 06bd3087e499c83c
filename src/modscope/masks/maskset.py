"""The masks of several sub-tasks on one model, with their logits, hyper-parameters and provenance."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from modscope.atomic import atomic_path
from modscope.masks.mask import Mask
from modscope.persist import data_frame

__all__ = ["FORMAT", "MaskSet", "check_model", "model_fingerprint"]

log = logging.getLogger(__name__)

FORMAT = "modscope.masks/1"


def model_fingerprint(model: nn.Module, names: tuple[str, ...]) -> str:
    """SHA-256 over the names, shapes, dtypes and values of the given parameters of ``model``."""
    params = dict(model.named_parameters())
    h = hashlib.sha256()
    for name in names:
        p = params[name].detach().cpu().contiguous()
        h.update(f"{name}:{tuple(p.shape)}:{p.dtype};".encode())
        h.update(p.view(torch.uint8).numpy().tobytes() if p.numel() else b"")
    return h.hexdigest()


def check_model(model: nn.Module, shapes: Mapping[str, tuple[int, ...]]) -> None:
    """Raise ``ValueError`` unless every masked parameter exists in ``model`` with the same shape."""
    params = dict(model.named_parameters())
    missing = [n for n in shapes if n not in params]
    if missing:
        raise ValueError(
            f"mask does not fit {type(model).__name__}: parameters {missing[:5]} not in the model "
            f"(model has {list(params)[:8]}...)"
        )
    wrong = [
        (n, tuple(s), tuple(params[n].shape)) for n, s in shapes.items() if tuple(params[n].shape) != tuple(s)
    ]
    if wrong:
        n, s, got = wrong[0]
        raise ValueError(
            f"mask does not fit {type(model).__name__}: parameter {n!r} has shape {got} in the model but {s} "
            f"in the mask ({len(wrong)} mismatching parameters)"
        )


class MaskSet(Mapping[str, Mask]):
    """One :class:`Mask` per sub-task over the same parameters of one model.

    ``masks[task]`` is the binary read-out ``logit > 0``; ``masks.logits[task][param]`` the real-valued logits
    (``None`` for sets built from binary masks, e.g. by set algebra). ``hparams`` records how the masks were
    trained, ``fingerprint`` the model (:func:`model_fingerprint`). Set operators act task by task on sets
    with
    the same task names.
    """

    __slots__ = ("_masks", "fingerprint", "hparams", "logits")

    def __init__(
        self,
        masks: Mapping[str, Mask],
        *,
        logits: Mapping[str, Mapping[str, Tensor]] | None = None,
        hparams: Mapping[str, Any] | None = None,
        fingerprint: str = "",
    ):
        if not masks:
            raise ValueError("a MaskSet needs at least one task, got none")
        self._masks = dict(masks)
        shapes = None
        for task, m in self._masks.items():
            if not isinstance(m, Mask):
                raise ValueError(f"task {task!r}: expected a Mask, got {type(m).__name__}")
            if shapes is None:
                shapes = m.shapes
            elif list(m.shapes.items()) != list(shapes.items()):
                raise ValueError(f"task {task!r} masks other parameters than the first task")
        self.logits = None if logits is None else {t: dict(v) for t, v in logits.items()}
        self.hparams = dict(hparams or {})
        self.fingerprint = fingerprint

    @classmethod
    def from_logits(
        cls,
        logits: Mapping[str, Mapping[str, Tensor]],
        *,
        hparams: Mapping[str, Any] | None = None,
        fingerprint: str = "",
    ) -> MaskSet:
        """Build from ``task -> param -> logits``; the binary mask is ``logit > 0``."""
        logits = {t: {n: v.detach().clone() for n, v in ps.items()} for t, ps in logits.items()}
        masks = {t: Mask({n: v > 0 for n, v in ps.items()}) for t, ps in logits.items()}
        return cls(masks, logits=logits, hparams=hparams, fingerprint=fingerprint)

    # Mapping protocol
    def __getitem__(self, task: str) -> Mask:
        try:
            return self._masks[task]
        except KeyError:
            raise KeyError(f"unknown task {task!r}; tasks are {list(self._masks)}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._masks)

    def __len__(self) -> int:
        return len(self._masks)

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self._masks)

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(next(iter(self._masks.values())))

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return next(iter(self._masks.values())).shapes

    def check_model(self, model: nn.Module) -> None:
        """``ValueError`` if the masked parameters don't exist in ``model`` with the same shapes; a warning
        (logged) if the weights differ from the ones the masks were trained on."""
        check_model(model, self.shapes)
        if self.fingerprint and model_fingerprint(model, self.param_names) != self.fingerprint:
            log.warning(
                "the model's weights differ from those the masks were trained on (fingerprint mismatch)"
            )

    # Task-wise set algebra
    def _combine(self, other: object, op) -> MaskSet:
        if not isinstance(other, MaskSet):
            return NotImplemented
        if self.tasks != other.tasks:
            raise ValueError(f"mask sets over different tasks: {list(self.tasks)} vs {list(other.tasks)}")
        return MaskSet({t: op(self[t], other[t]) for t in self.tasks}, fingerprint=self.fingerprint)

    def __and__(self, other: MaskSet) -> MaskSet:
        return self._combine(other, lambda a, b: a & b)

    def __or__(self, other: MaskSet) -> MaskSet:
        return self._combine(other, lambda a, b: a | b)

    def __sub__(self, other: MaskSet) -> MaskSet:
        return self._combine(other, lambda a, b: a - b)

    def __invert__(self) -> MaskSet:
        return MaskSet({t: ~m for t, m in self._masks.items()}, fingerprint=self.fingerprint)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MaskSet):
            return NotImplemented
        return self.tasks == other.tasks and all(self[t] == other[t] for t in self.tasks)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        kept = ", ".join(f"{t}: {m.total_kept}/{m.total_size}" for t, m in self._masks.items())
        return f"MaskSet({kept})"

    def to_frame(self) -> Any:
        """One row per task and masked parameter: task, param, kept, size, fraction kept (needs pandas)."""
        columns = ["task", "param", "kept", "size", "fraction"]
        rows = []
        for task, mask in self._masks.items():
            for name, m in mask.items():
                kept, size = int(m.sum()), m.numel()
                fraction = kept / size if size else float("nan")
                rows.append(dict(zip(columns, (task, name, kept, size, fraction))))
        return data_frame(rows, columns)

    # Persistence: the convention of modscope.persist (save / load), with safetensors since masks are tensors
    def save(self, path: str | os.PathLike) -> None:
        """Write to ``path`` in safetensors (atomically: a temp file then ``os.replace``).

        Tensors are ``logits/<task index>/<param>`` (float) or, without logits, ``mask/<task index>/<param>``
        (bool). The metadata holds the format tag, task names, parameter names and shapes (JSON), the
        hyper-parameters (JSON) and the model fingerprint.
        """
        path = Path(path)
        tensors: dict[str, Tensor] = {}
        for i, task in enumerate(self.tasks):
            for name in self.param_names:
                if self.logits is not None:
                    tensors[f"logits/{i}/{name}"] = self.logits[task][name].contiguous()
                else:
                    tensors[f"mask/{i}/{name}"] = self[task][name].contiguous()
        metadata = {
            "format": FORMAT,
            "tasks": json.dumps(list(self.tasks)),
            "params": json.dumps(list(self.param_names)),
            "shapes": json.dumps([list(s) for s in self.shapes.values()]),
            "hparams": json.dumps(self.hparams, default=str),
            "fingerprint": self.fingerprint,
        }
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=metadata)

    @classmethod
    def load(cls, path: str | os.PathLike, *, model: nn.Module | None = None) -> MaskSet:
        """Read a file written by :meth:`save` (``FileNotFoundError`` if there is none, ``ValueError`` if it
        holds something else); with ``model``, check that the masks fit it (``ValueError`` if not)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"mask file {str(path)!r} does not exist")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:  # safetensors raises its own error types for a corrupt header
            raise ValueError(f"{str(path)!r} is not a safetensors mask file: {exc}") from exc
        if meta.get("format") != FORMAT:
            raise ValueError(f"{str(path)!r} is not a modscope mask file (format {meta.get('format')!r})")
        tasks = json.loads(meta["tasks"])
        params = json.loads(meta["params"])
        hparams = json.loads(meta.get("hparams", "{}"))
        fingerprint = meta.get("fingerprint", "")
        if any(k.startswith("logits/") for k in tensors):
            logits = {t: {n: tensors[f"logits/{i}/{n}"] for n in params} for i, t in enumerate(tasks)}
            out = cls.from_logits(logits, hparams=hparams, fingerprint=fingerprint)
        else:
            masks = {t: Mask({n: tensors[f"mask/{i}/{n}"] for n in params}) for i, t in enumerate(tasks)}
            out = cls(masks, hparams=hparams, fingerprint=fingerprint)
        if model is not None:
            out.check_model(model)
        return out
