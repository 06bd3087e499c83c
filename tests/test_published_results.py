"""The runs behind the README's results table are committed under results/NAME/ (results.json and
report.html, no weights): each report must be what the current code renders from its results.json, and
each README row must quote its run."""

import re
from pathlib import Path

import pytest

from modscope.experiments import RunResult
from modscope.report import render_html

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED = sorted(p.parent for p in (ROOT / "results").glob("*/results.json"))
_IMAGE = re.compile(r"data:image/png;base64,[A-Za-z0-9+/=]+")


def _text(page: str) -> str:
    """The page without its figures: PNG bytes depend on matplotlib's version and fonts, the rest must not."""
    return _IMAGE.sub("data:image/png;base64,", page)


def test_there_are_published_results():
    assert PUBLISHED, "results/ holds no published run"


@pytest.mark.parametrize("folder", PUBLISHED, ids=[p.name for p in PUBLISHED])
def test_committed_report_is_rebuilt_from_its_results(folder):
    result = RunResult.load(folder / "results.json")
    committed = (folder / "report.html").read_text(encoding="utf-8")
    rebuilt = render_html(result, folder)
    assert _text(rebuilt) == _text(committed)
    assert len(_IMAGE.findall(rebuilt)) == len(_IMAGE.findall(committed)) > 0


@pytest.mark.parametrize("folder", PUBLISHED, ids=[p.name for p in PUBLISHED])
def test_readme_names_each_published_run(folder):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert f"results/{folder.name}/" in readme
