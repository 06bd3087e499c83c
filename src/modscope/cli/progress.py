"""Progress bars (tqdm, with ETA) on stderr for the library's ``progress(label, done, total, info)`` calls.

One bar per label, stacked in order of first appearance; a bar closes when it reaches its total, so that
the next network's ``train`` bar starts afresh under the ``networks`` bar. Off when stderr is not a
terminal (logs, CI, pytest), so captured output stays clean.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["bars"]


@contextmanager
def bars(disable: bool = False, unit: str = "step") -> Iterator[Callable[[str, int, int, dict], None]]:
    from tqdm import tqdm

    isatty = getattr(sys.stderr, "isatty", None)
    off = disable or not (callable(isatty) and isatty())
    open_bars: dict[str, tqdm] = {}

    def update(label: str, done: int, total: int, info: dict) -> None:
        bar = open_bars.get(label)
        if bar is None or bar.total != total or done < bar.n:
            if bar is not None:
                bar.close()
            bar = open_bars[label] = tqdm(
                total=total, desc=label, unit=unit, file=sys.stderr, disable=off, leave=False,
                position=list(open_bars).index(label) if label in open_bars else len(open_bars),
            )  # fmt: skip
        bar.update(done - bar.n)
        if isinstance(info.get("loss"), float):
            bar.set_postfix(loss=f"{info['loss']:.4f}", refresh=False)
        if done >= total:
            bar.close()
            del open_bars[label]

    try:
        yield update
    finally:
        for bar in open_bars.values():
            bar.close()
