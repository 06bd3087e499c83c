"""Every ```python example of README.md runs as printed, on built-in data only, in a fresh interpreter."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import modscope

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(text: str) -> list[tuple[int, str]]:
    """``(line number, code)`` of every fenced ```python block."""
    return [
        (text[: m.start()].count("\n") + 2, m.group(1))
        for m in re.finditer(r"^```python\n(.*?)^```$", text, flags=re.M | re.S)
    ]


BLOCKS = python_blocks(README.read_text())


def test_the_readme_has_examples_and_they_are_found():
    assert len(BLOCKS) >= 2
    assert python_blocks("x\n```python\na = 1\n```\n```bash\nb\n```\n") == [(3, "a = 1\n")]


@pytest.mark.slow
@pytest.mark.parametrize("line, code", BLOCKS, ids=[f"README.md:{line}" for line, _ in BLOCKS])
def test_readme_example_runs(line, code, tmp_path):
    # The package under test (a checkout's src/ or the installed one) comes first on the child's path.
    src = str(Path(modscope.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    env.setdefault("OMP_NUM_THREADS", "1")
    env["MPLBACKEND"] = "Agg"
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, f"README.md line {line} failed:\n{proc.stderr[-3000:]}"
    assert proc.stdout.strip(), f"README.md line {line} printed nothing"
    assert not list(tmp_path.iterdir()), "an example wrote files into the working folder"
