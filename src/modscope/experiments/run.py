"""A reproduction's folder: finished work is kept, an interrupted run resumes where it stopped.

Layout of ``out``::

    run.json                 experiment, setting and config this folder belongs to; wall time so far
    units/KEY.json           one finished unit (a network trained and analysed), written atomically
    models/KEY.safetensors   that unit's network, when it keeps one
    checkpoints/KEY.*        training checkpoints of the unit in progress (deleted when it finishes)
    results.json, report.html

A unit is written only once it is complete, so Ctrl-C or a crash loses at most the unit in progress, and
that one resumes from its last training checkpoint. Resuming a folder with a different config is refused:
numbers made with different settings must not be mixed. Nothing is written before the first unit starts
(``run.json`` then claims the folder), so a run that fails its checks leaves no folder behind to refuse
the corrected command. A unit file that does not read back as the unit it should be (edited, truncated,
from another version) is a clear error naming the file: deleting it recomputes that unit.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from modscope.atomic import finite, remove_stale_temps, write_json_atomic
from modscope.progress import Progress, notify

__all__ = ["Progress", "Run"]

_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+=-]*$")
#: how often (seconds) progress reports rewrite run.json's wall time
SAVE_SECONDS_EVERY = 60.0


def _canonical(doc: Any) -> Any:
    """``doc`` as it reads back from JSON (tuples as lists, NaN as None), so that a unit computed now and
    one read back after a resume are the same object."""
    return json.loads(json.dumps(finite(doc), allow_nan=False))


class Run:
    """The folder ``out`` of one run of ``experiment`` with ``config`` (a JSON-able dict).

    ``fresh=True`` deletes what an earlier run left there first. ``progress`` receives the library's
    progress callbacks; the run adds nothing to stdout.
    """

    def __init__(
        self,
        out: str | os.PathLike,
        experiment: str,
        setting: str,
        config: Mapping[str, Any],
        *,
        fresh: bool = False,
        progress: Progress | None = None,
    ):
        self.out = Path(out)
        self.experiment = experiment
        self.setting = setting
        self.config = _canonical(dict(config))
        self.progress = progress
        self._started = self._saved_at = time.perf_counter()
        self._head = head = {"experiment": experiment, "setting": setting, "config": self.config}
        self._claimed = False
        marker = self.out / "run.json"
        if fresh and self.out.exists():
            if not marker.is_file() and any(self.out.iterdir()):
                raise ValueError(f"{self.out} is not empty and is not a modscope run folder; not deleting it")
            shutil.rmtree(self.out)
        if marker.is_file():
            try:
                old = json.loads(marker.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ValueError(f"{marker} is corrupt ({exc}); use a new folder or --fresh") from None
            if not isinstance(old, dict):
                raise ValueError(f"{marker} is corrupt (not a JSON object); use a new folder or --fresh")
            previous = {k: old.get(k) for k in head}
            if previous != head:
                diff = sorted(
                    k for k in set(self.config) | set(old.get("config") or {})
                    if self.config.get(k) != (old.get("config") or {}).get(k)
                )  # fmt: skip
                what = f"config keys {diff}" if diff else "experiment or setting"
                raise ValueError(
                    f"{self.out} holds a run of {old.get('experiment')!r} ({old.get('setting')}) whose "
                    f"{what} differ; use another --out or --fresh"
                )
            seconds = old.get("seconds", 0.0)
            if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
                raise ValueError(f"{marker} is corrupt (seconds {seconds!r}); use a new folder or --fresh")
            self._seconds_before = float(seconds)
            self._claimed = True
            remove_stale_temps(self.out, recursive=True)  # what writes killed by SIGKILL left
        else:
            self._seconds_before = 0.0

    def _claim(self) -> None:
        """Write ``run.json`` before the first file of the run: from then on the folder is this run's."""
        if not self._claimed:
            write_json_atomic(self.out / "run.json", {**self._head, "seconds": self.seconds()})
            self._claimed = True

    # --- paths ---------------------------------------------------------------------------------------

    @staticmethod
    def _check_key(key: str) -> str:
        if not isinstance(key, str) or not _KEY.match(key):
            raise ValueError(f"unit key must be letters, digits and _.+=- (no slash), got {key!r}")
        return key

    def unit_path(self, key: str) -> Path:
        return self.out / "units" / f"{self._check_key(key)}.json"

    def model_path(self, key: str) -> Path:
        self._claim()
        return self.out / "models" / f"{self._check_key(key)}.safetensors"

    def checkpoint_prefix(self, key: str) -> str:
        """A prefix for a unit's training checkpoints (``run_recipe(checkpoint=...)``)."""
        self._claim()
        (self.out / "checkpoints").mkdir(parents=True, exist_ok=True)
        return str(self.out / "checkpoints" / self._check_key(key))

    def relative(self, path: str | os.PathLike) -> str:
        """``path`` relative to the folder, as results.json stores it."""
        return Path(path).resolve().relative_to(self.out.resolve()).as_posix()

    # --- work ----------------------------------------------------------------------------------------

    def done(self, key: str) -> bool:
        return self.unit_path(key).is_file()

    def load_unit(self, key: str, check: Callable[[dict], None] | None = None) -> dict[str, Any]:
        """Unit ``key`` as written; ``check(doc)`` raises (ValueError, KeyError, TypeError, IndexError) if it
        is not what the experiment wrote. Any problem is a ValueError naming the file."""
        path = self.unit_path(key)
        try:
            doc = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path} is corrupt ({exc}); delete it to recompute that unit") from None
        try:
            if not isinstance(doc, dict):
                raise ValueError(f"it holds a JSON {type(doc).__name__}, not an object")
            if check is not None:
                check(doc)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
            problem = f"lacks the key {exc}" if isinstance(exc, KeyError) else str(exc)
            raise ValueError(
                f"{path} is not a finished {self.experiment!r} unit ({problem}); was it edited? delete it to "
                "recompute that unit"
            ) from None
        return doc

    def unit(
        self, key: str, compute: Callable[[], Mapping[str, Any]], check: Callable[[dict], None] | None = None
    ) -> dict[str, Any]:
        """The result of unit ``key``: read back (and ``check``ed, see :meth:`load_unit`) if a previous run
        finished it, else ``compute()``d and written atomically (with the unit's training checkpoints
        removed)."""
        if self.done(key):
            return self.load_unit(key, check)
        self._claim()
        doc = _canonical(dict(compute()))
        write_json_atomic(self.unit_path(key), doc)
        for ckpt in (self.out / "checkpoints").glob(f"{key}.*"):
            ckpt.unlink(missing_ok=True)
        self._save_seconds()
        return doc

    def report(self, label: str, done: int, total: int, info: Mapping[str, Any] | None = None) -> None:
        """The library's progress protocol (:mod:`modscope.progress`), passed on to the run's callback.

        Also the run's clock: once claimed, ``run.json``'s seconds are rewritten at most every
        ``SAVE_SECONDS_EVERY`` seconds, so a killed run loses that much of its wall time, not a unit's hours.
        """
        notify(self.progress, label, done, total, info)
        if self._claimed and time.perf_counter() - self._saved_at >= SAVE_SECONDS_EVERY:
            self._save_seconds()

    def seconds(self) -> float:
        """Wall time of this run, summed over resumed segments."""
        return self._seconds_before + time.perf_counter() - self._started

    def _save_seconds(self) -> None:
        write_json_atomic(self.out / "run.json", {**self._head, "seconds": self.seconds()})
        self._saved_at = time.perf_counter()
