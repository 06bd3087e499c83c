"""The self-contained HTML report of a results.json (modscope.report, ``modscope report``)."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
from pathlib import Path

import matplotlib
import matplotlib.image
import numpy as np
import pytest

from modscope.cli import main
from modscope.cluster import spectral_partition
from modscope.graph import WeightGraph
from modscope.models import build_model, save_model
from modscope.report import render_html, write_report
from modscope.report.figures import DPI
from modscope.report.html import format_cell, format_seconds
from modscope.results import (
    RunResult,
    clusterability_section,
    lesions_section,
    lines_section,
    masks_section,
    module_name,
    table,
    validate_section,
)

SPEC = "mlp:6-5x2-3"
EVIL = "<script>alert(1)</script>"
IMG = re.compile(r'<img src="([^"]*)"')
# Figures of the fixture: 2 null histograms + the clustered graph, 2 mask bar charts, 1 lesion heat map.
N_FIGURES = 7


def _document(model: str, labels: list[int], ncut: float) -> RunResult:
    layers = ["fc1.weight", "fc2.weight", "out.weight"]
    sections = (
        table(f"Plain {EVIL} table", ["a", "b"], [[1, 0.123456], ["x", None]], note="note & more"),
        clusterability_section(
            "Clusterability of net 0", network="net 0", k=3, ncut=ncut,
            nulls={
                "layer": [ncut + 0.1 * i for i in range(1, 9)],
                "layer_nonzero": [ncut + 0.05 * i for i in range(-2, 8)],
            },
            model=model, labels=labels,
        ),
        masks_section(
            "Masks of + and x", layers=layers, sizes=dict(zip(layers, [30, 25, 15])),
            kept={"+": dict(zip(layers, [10, 12, 3])), "x": dict(zip(layers, [20, 5, 15]))},
            iou=dict(zip(layers, [0.2, 0.4, 0.1])), iomin=dict(zip(layers, [0.5, 0.6, 0.7])), pair=["+", "x"],
            accuracy=table("Accuracy per mask", ["mask", "+", "x"], [["full", 0.99, 0.98], ["+", 0.97, 0.1]]),
        ),
        lesions_section(
            "Lesions of the modules", classes=["0", "1", "2"],
            modules=[
                {"name": module_name("fc1", 0), "label": "important", "p_important": 0.01, "damage": 0.3,
                 "class_damage": [0.5, -0.1, 0.2]},
                {"name": module_name("fc2", 1), "label": "prunable", "p_important": 0.9, "damage": 0.0,
                 "class_damage": [0.0, 0.01, None]},
                {"name": module_name("fc3", 0), "label": "whole layer", "p_important": None, "damage": 0.75,
                 "class_damage": [0.75, 0.75, 0.75]},
            ],
            pairs=[{"a": "fc1/c0", "b": "fc2/c1", "interaction": 0.05, "p": 0.2}],
        ),
        lines_section(
            "Sharing vs. size", xlabel="width", ylabel="shared",
            series={"all layers": [[256, 0.6], [512, 0.55]], "empty": []}, xscale="log", note="a note",
        ),
    )  # fmt: skip
    return RunResult(
        experiment="demo",
        title=f"Demo {EVIL}",
        setting="quick",
        summary=table(
            "Headline numbers", ["metric", "value"], [["n-cut", ncut], ["p", 0.0196], ["big", 123456.7]]
        ),
        claims=(
            {"paper": "Filan et al.", "claim": "trained MLPs are clusterable", "ours": "yes", "agrees": True},
            {"paper": "Csordás et al.", "claim": "masks specialize", "ours": 0.5, "agrees": False},
            {"paper": "Csordás et al.", "claim": "little reuse", "ours": None, "agrees": None},
        ),
        sections=sections,
        config={"seed": 0, "k": 3, "note": EVIL},
        versions={"modscope": "0.1.0", "torch": "x"},
        seconds=187.3,
    )


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, one_thread):
    """A run folder: models/net.safetensors, results.json with every section kind, and report.html."""
    folder = tmp_path_factory.mktemp("run")
    model = build_model(SPEC, seed=0)
    save_model(model, SPEC, folder / "models" / "net.safetensors")
    partition = spectral_partition(WeightGraph.from_module(model, (6,)), k=3, seed=0)
    result = _document("models/net.safetensors", partition.labels.tolist(), partition.ncut)
    result.save(folder / "results.json")
    write_report(folder / "results.json")
    return folder


@pytest.fixture(scope="module")
def page(run_dir) -> str:
    return (run_dir / "report.html").read_text()


def _images(html: str) -> list[np.ndarray]:
    out = []
    for src in IMG.findall(html):
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix)
        data = base64.b64decode(src[len(prefix) :], validate=True)
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        out.append(matplotlib.image.imread(io.BytesIO(data), format="png"))
    return out


def test_layout_order_summary_claims_sections_then_config(page):
    headings = [re.sub(r"<[^>]+>", "", h) for h in re.findall(r"<h2[^>]*>(.*?)</h2>", page)]
    assert headings == [
        "Headline numbers",
        "Claims of the papers",
        "Plain &lt;script&gt;alert(1)&lt;/script&gt; table",
        "Clusterability of net 0",
        "Masks of + and x",
        "Lesions of the modules",
        "Sharing vs. size",
        "Config and versions",
    ]
    assert "<h1>Demo &lt;script&gt;alert(1)&lt;/script&gt;</h1>" in page
    assert "Accuracy per mask" in page and "Pairs of modules lesioned together" in page
    assert page.index("<pre>") > page.index("Lesions of the modules")  # config at the bottom
    assert "3 min 07 s" in page and "0.1.0" in page


def test_whole_layer_modules_are_reported_as_untested(page, run_dir):
    """A module that is its whole layer keeps its damage, shows no p, and the page says why."""
    row = re.search(r"<tr><td>fc3/c0</td>.*?</tr>", page).group(0)
    assert re.findall(r"<td[^>]*>(.*?)</td>", row) == ["fc3/c0", "whole layer", "–", "0.75"]
    assert "whole layer: the module is every unit of its layer" in page
    assert "untestable: " not in page  # only the labels present are explained
    section = RunResult.load(run_dir / "results.json").sections[3]
    assert section["modules"][2]["p_important"] is None


def test_every_figure_is_an_embedded_png_of_the_drawn_size(page):
    images = _images(page)
    assert len(images) == N_FIGURES
    for img in images:
        assert img.ndim == 3 and img.shape[2] == 4 and img.shape[0] > 100 and img.shape[1] > 100
        assert img[..., :3].std() > 0.05  # something is drawn, not a blank canvas
    # The first figure is the 'layer' null histogram, 4.8 x 2.8 inches at DPI.
    assert images[0].shape[:2] == (round(2.8 * DPI), round(4.8 * DPI))


def test_page_is_self_contained(page):
    assert not re.search(r"https?://", page)
    assert all(src.startswith("data:image/png;base64,") for src in re.findall(r'src="([^"]*)"', page))
    assert re.findall(r"\bsrc\s*=", page) == ["src="] * N_FIGURES
    for external in ("<link", "@import", "url(", "@font-face", "<iframe"):
        assert external not in page
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]*)"', page).group(1)
    assert "default-src 'none'" in csp and "img-src data:" in csp


def test_strings_from_the_json_are_escaped(page):
    assert EVIL not in page
    # <title>, <h1>, contents entry and heading of the table, config
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") == 5
    assert page.count("<script>") == 1  # the page's own image check
    assert "note &amp; more" in page


def test_numbers_and_claims_are_formatted(page):
    assert '<td class="num">0.1235</td>' in page and '<td class="num">–</td>' in page
    assert '<td class="num">123,457</td>' in page and '<td class="num">0.0196</td>' in page
    for word in ("yes", "no", "undetermined"):
        assert f'<span class="{word}">{word}</span>' in page
    # the clusterability test per null: 8 'layer' shuffles all above the network -> p = 1/9, below all
    row = re.search(r"<tr><td>layer</td>(.*?)</tr>", page).group(1)
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row)
    assert cells[0] == "8" and cells[4] == "0.1111" and cells[5] == "yes"
    assert "10 (33.3%)" in page  # kept weights with their share of the layer


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, "–"),
        (True, "yes"),
        (12, "12"),
        (1234567, "1,234,567"),
        (0.123456, "0.1235"),
        (2.0, "2"),
        (123456.7, "123,457"),
        (1.5e-5, "1.5e-05"),
        (0.0, "0"),
        (float("nan"), "nan"),
        ([0.5, None], "0.5, –"),
    ],
)
def test_format_cell(value, text):
    assert format_cell(value) == text


def test_format_seconds():
    assert [format_seconds(s) for s in (4.24, 187.3, 7500)] == ["4.2 s", "3 min 07 s", "2 h 05 min"]


def _only_clusterability(run_dir: Path, **changes) -> RunResult:
    """The fixture's document cut down to its clusterability section with one null (cheap to render)."""
    result = RunResult.load(run_dir / "results.json")
    section = {**result.sections[1], "nulls": {"layer": result.sections[1]["nulls"]["layer"]}, **changes}
    return RunResult(**{**result.to_dict(), "sections": (section,)})


def test_missing_model_renders_a_notice_instead_of_the_drawing(run_dir, tmp_path):
    html = render_html(_only_clusterability(run_dir), tmp_path)  # no models/ folder there
    assert "Model file models/net.safetensors not found" in html and '<p class="notice">' in html
    assert len(_images(html)) == 1  # the histogram is still drawn


def test_the_spread_of_the_k_means_restarts_is_printed(run_dir, tmp_path):
    html = render_html(_only_clusterability(run_dir, restarts=[1.25, 1.5, 1.375]), tmp_path)
    assert "best of 3 k-means restarts, which ranged 1.25–1.5" in html
    assert "k-means restarts" not in render_html(_only_clusterability(run_dir), tmp_path)


def test_labels_that_do_not_fit_the_model_give_a_notice(run_dir):
    labels = RunResult.load(run_dir / "results.json").sections[1]["labels"]
    html = render_html(_only_clusterability(run_dir, labels=labels[:-1]), run_dir)
    assert "cannot be drawn: 18 labels stored for a graph of 19 nodes" in html
    assert len(_images(html)) == 1


def test_report_is_reproducible_atomic_and_leaves_the_backend_alone(run_dir, tmp_path):
    # A model given by the caller is drawn wherever it lies.
    _only_clusterability(run_dir, model="models/not-here.safetensors").save(tmp_path / "results.json")
    model = run_dir / "models" / "net.safetensors"
    backend = dict.__getitem__(matplotlib.rcParams, "backend")  # the raw value: reading it resolves nothing
    first = write_report(tmp_path / "results.json", model=model).read_bytes()
    path = write_report(tmp_path / "results.json", model=model)
    assert dict.__getitem__(matplotlib.rcParams, "backend") == backend
    assert path == tmp_path / "report.html" and path.read_bytes() == first
    assert len(_images(first.decode())) == 2  # histogram and drawing
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "results.json"]  # no temp files
    missing = render_html(_only_clusterability(run_dir), tmp_path, model=tmp_path / "nope.safetensors")
    assert f"Model file {tmp_path / 'nope.safetensors'} not found:" in missing


def test_an_absolute_model_path_inside_the_run_folder_is_read(run_dir, tmp_path):
    (tmp_path / "models").mkdir()
    shutil.copy(run_dir / "models" / "net.safetensors", tmp_path / "models" / "net.safetensors")
    result = _only_clusterability(run_dir, model=str(tmp_path / "models" / "net.safetensors"))
    assert len(_images(render_html(result, tmp_path))) == 2


@pytest.mark.parametrize("where", ["../../../etc/passwd", "/etc/passwd", "outside", "link"])
def test_a_model_path_outside_the_run_folder_is_refused(run_dir, tmp_path, monkeypatch, capsys, where):
    folder = tmp_path / "run"
    folder.mkdir()
    model = run_dir / "models" / "net.safetensors"
    if where == "outside":
        where = str(model)
    elif where == "link":  # a link inside the folder that leads out of it
        (folder / "models").mkdir()
        (folder / "models" / "net.safetensors").symlink_to(model)
        where = "models/net.safetensors"
    _only_clusterability(run_dir, model=where).save(folder / "results.json")

    def never(*args, **kwargs):
        raise AssertionError("a model outside the run folder was read")

    monkeypatch.setattr("modscope.models.load_model", never)
    with pytest.raises(ValueError, match=re.escape(f"model {where!r} lies outside the run folder")):
        write_report(folder / "results.json")
    assert main(["report", str(folder / "results.json")]) == 2
    err = capsys.readouterr().err
    assert "lies outside the run folder" in err and "--model PATH" in err and "Traceback" not in err
    assert not (folder / "report.html").exists()
    monkeypatch.undo()
    # named on the command line, the same model is drawn
    assert main(["report", str(folder / "results.json"), "--model", str(model)]) == 0
    assert len(_images((folder / "report.html").read_text())) == 2


def _mutated(run_dir: Path, tmp_path: Path, edit) -> Path:
    doc = json.loads((run_dir / "results.json").read_text())
    edit(doc)
    path = tmp_path / "results.json"
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.pop("summary"), "lacks ['summary']"),
        (lambda d: d.update(format="other/1"), "not a modscope results document"),
        (lambda d: d["sections"][1].pop("nulls"), "lacks the key 'nulls'"),
        (lambda d: d["sections"][2].update(pair=["+"]), "'pair' must name two tasks"),
        (lambda d: d["sections"][3]["modules"][0]["class_damage"].pop(), "2 class damages for 3 classes"),
        (lambda d: d["claims"][0].update(agrees="maybe"), "'agrees' must be true, false or null"),
        (lambda d: d["sections"][0]["rows"].append([1]), "does not have one cell per column"),
        (lambda d: d["sections"][4].pop("series"), "lacks the key 'series'"),
        (lambda d: d["sections"][4]["series"].update(x=[[1, "a"]]), "series 'x' must be a list of [x, y]"),
        (lambda d: d["sections"][4].update(xscale="symlog"), "'xscale' must be 'linear' or 'log'"),
        (lambda d: d.update(seconds=None), "field 'seconds' must be a wall time in seconds"),
        (lambda d: d.update(seconds="3 min"), "field 'seconds' must be a wall time in seconds"),
        (lambda d: d.update(sections=None), "field 'sections' must be a list, got None"),
        (lambda d: d.update(claims={"a": 1}), "field 'claims' must be a list"),
        (lambda d: d.update(summary=None), "field 'summary' must be a 'table' section"),
        (lambda d: d.update(versions=None), "field 'versions' must be a JSON object"),
        (lambda d: d.update(title=3), "field 'title' must be a string"),
        (lambda d: d["sections"].append(None), "a section must be a JSON object"),
        (lambda d: d["claims"].append("yes"), "a claim must be an object"),
        (lambda d: d["sections"][1].update(ncut="low"), "'ncut' must be a number or null"),
        (lambda d: d["sections"][1].update(model=7), "'model' must be a path or null"),
        (lambda d: d["sections"][1].update(labels="0,1"), "'labels' must be a list of cluster numbers"),
    ],
)
def test_bad_results_give_a_clear_error(run_dir, tmp_path, edit, message, capsys):
    path = _mutated(run_dir, tmp_path, edit)
    with pytest.raises(ValueError, match=re.escape(message)):
        write_report(path)
    assert main(["report", str(path)]) == 2  # the command says what is wrong, without a traceback
    err = capsys.readouterr().err
    assert str(path) in err and message in err and "Traceback" not in err
    assert not (tmp_path / "report.html").exists()


def test_section_constructors_build_valid_sections_and_refuse_bad_ones():
    lesions = lesions_section(
        "L", classes=[0, 1], modules=[{"name": module_name("fc1", 2), "label": "important",
                                       "p_important": 0.05, "damage": 0.1, "class_damage": (0.2, 0.0)}],
    )  # fmt: skip
    assert lesions["modules"][0]["name"] == "fc1/c2" and lesions["classes"] == ["0", "1"]
    assert lesions["modules"][0]["class_damage"] == [0.2, 0.0] and lesions["pairs"] == []
    lines = lines_section("S", xlabel="x", ylabel="y", series={"a": [(1, 2.0)]})
    assert lines == {"kind": "lines", "title": "S", "xlabel": "x", "ylabel": "y", "series": {"a": [[1, 2.0]]}}
    for section in (lesions, lines, table("T", ["a"], [[1]])):
        validate_section(section)
    bad = [
        (lambda: table("T", ["a", "b"], [[1]]), "does not have one cell per column"),
        (lambda: clusterability_section("C", network="n", k=1, ncut=0.5, nulls={}), "'k' must be an int"),
        (lambda: clusterability_section("C", network="n", k=2, ncut=0.5, nulls={"layer": 0.5}), "'nulls'"),
        (lambda: clusterability_section("C", network="n", k=2, ncut=0.5, nulls={}, restarts=[]), "restarts"),
        (lambda: clusterability_section("C", network="n", k=2, ncut=1, nulls={}, restarts=["x"]), "restarts"),
        (lambda: lines_section("S", xlabel="x", ylabel="y", series={}, xscale="symlog"), "'xscale'"),
        (lambda: lesions_section("L", classes=["0"], modules=[{"name": "m", "label": "important",
                                                             "class_damage": [0.1, 0.2]}]),
         "2 class damages for 1 classes"),
        (lambda: lesions_section("L", classes=["0"], modules=[{"name": "m", "label": None,
                                                             "class_damage": [0.1]}]), "has the label None"),
        (lambda: lesions_section("L", classes=["0"], modules=[{"name": "m", "label": "whole layer",
                                                             "p_important": "nan", "class_damage": [0.1]}]),
         "a number or null"),
        (lambda: masks_section("M", layers=["w"], sizes={"w": 1}, kept={"a": {"w": 1}}, iou={}, iomin={},
                               pair=["a"], accuracy=table("A", ["a"], [])), "'pair' must name two tasks"),
        (lambda: masks_section("M", layers=["w"], sizes={"w": 1}, kept={}, iou={}, iomin={}, pair=["a", "b"],
                               accuracy={"kind": "lines"}), "'accuracy' must be a 'table'"),
    ]  # fmt: skip
    for build, message in bad:
        with pytest.raises(ValueError, match=re.escape(message)):
            build()


def test_corrupt_or_missing_results_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no results file"):
        write_report(tmp_path / "nope.json")
    (tmp_path / "results.json").write_text('{"format": "modscope-results/1", "title": ')
    with pytest.raises(ValueError, match="not valid JSON"):
        write_report(tmp_path / "results.json")
    (tmp_path / "results.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a modscope results document"):
        write_report(tmp_path / "results.json")


def test_unknown_section_kind_is_named(run_dir):
    result = RunResult.load(run_dir / "results.json")
    # RunResult refuses unknown kinds itself; bypass it to check the renderer's own guard.
    object.__setattr__(result, "sections", ({"kind": "sankey", "title": "t"},))
    with pytest.raises(ValueError, match="unknown kind 'sankey'"):
        render_html(result, run_dir)


def test_cli_writes_the_report_and_prints_its_path(run_dir, tmp_path, capsys):
    result = RunResult.load(run_dir / "results.json")
    RunResult(**{**result.to_dict(), "sections": ()}).save(tmp_path / "results.json")
    assert main(["report", str(tmp_path / "results.json")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "report.html")
    out = tmp_path / "elsewhere" / "r.html"
    assert main(["report", str(tmp_path / "results.json"), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert out.read_text().startswith("<!DOCTYPE html>") and "Headline numbers" in out.read_text()
    assert main(["report", str(tmp_path / "missing.json")]) == 2
    assert "no results file" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------- in a browser


def test_every_image_renders_in_a_headless_browser(headless, run_dir, tmp_path):
    url = (run_dir / "report.html").resolve().as_uri()
    dom = headless("--dump-dom", "--virtual-time-budget=5000", url)
    assert f'data-images-ok="{N_FIGURES}/{N_FIGURES}"' in dom
    assert '<p class="notice">image failed to load' not in dom

    # The page's check does catch a figure that does not decode.
    page = (run_dir / "report.html").read_text()
    broken = tmp_path / "broken.html"
    broken.write_text(page.replace(IMG.findall(page)[2], "data:image/png;base64,iVBORw0KGgoAAAA", 1))
    dom = headless("--dump-dom", "--virtual-time-budget=5000", broken.as_uri())
    assert f'data-images-ok="{N_FIGURES - 1}/{N_FIGURES}"' in dom
    assert dom.count('<p class="notice">image failed to load: clustered weight graph of net 0</p>') == 1

    shot = tmp_path / "report.png"
    headless(f"--screenshot={shot}", "--window-size=1280,2400", url)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000
    assert matplotlib.image.imread(io.BytesIO(data), format="png").shape[:2] == (2400, 1280)
    if os.environ.get("MODSCOPE_ARTIFACTS"):
        Path(os.environ["MODSCOPE_ARTIFACTS"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(os.environ["MODSCOPE_ARTIFACTS"]) / "report.png")


def test_seed_columns_are_identifiers_not_quantities(tmp_path):
    summary = table("S", ["unit", "seed", "weights"], [["a", 2968811710, 65536], ["b", None, 3]])
    result = RunResult(
        experiment="x", title="t", setting="quick", summary=summary, claims=(), sections=(), config={},
        versions={}, seconds=1.0,
    )  # fmt: skip
    page = render_html(result, tmp_path)
    assert ">2968811710<" in page and ">65,536<" in page and ">–<" in page
