"""Shared test fixtures."""

import os
import shutil
import subprocess

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread is far faster than two on a shared, busy CPU (measured 5-50x)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def browser() -> str:
    """Path of a Chromium-like browser. Skips without one, unless MODSCOPE_REQUIRE_BROWSER=1 (CI)."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    if os.environ.get("MODSCOPE_REQUIRE_BROWSER") == "1":
        pytest.fail("MODSCOPE_REQUIRE_BROWSER=1 but no chromium, chromium-browser or google-chrome on PATH")
    pytest.skip("no headless browser (chromium) installed")


@pytest.fixture
def headless(browser, tmp_path):
    """``headless(*args) -> stdout``: one run of the headless browser with a fresh profile, offline."""

    def run(*args: str) -> str:
        cmd = [
            browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-extensions", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", *args,
        ]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    return run


@pytest.fixture
def cli_error(capsys):
    """Run the ``modscope`` command line expecting a usage error: exit code 2 and one line on stderr (no
    traceback); returns that line."""
    from modscope.cli import main

    def run(argv: list[str]) -> str:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err  # one line, no traceback
        return err

    return run
