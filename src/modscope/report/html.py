"""One self-contained HTML page per run: ``results.json`` rendered for a person to read.

The page needs nothing but itself: figures are PNGs embedded as ``data:`` URIs, the stylesheet and the one
script are inline, fonts are the system's. A Content-Security-Policy forbids every other source, so opening
the file never touches the network, and only the page's own script (pinned by its hash) can run. Every
string taken from the results is HTML-escaped.

Layout: title and run line; the summary table; the papers' claims with our verdict; each section in order
(drawn by kind, see :mod:`modscope.results`); config, versions and wall time at the bottom.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

from modscope.atomic import write_text_atomic
from modscope.report import figures
from modscope.results import RunResult, validate

__all__ = ["format_cell", "format_seconds", "render_html", "write_report"]

# On load, every <img> that did not decode gets a visible notice, and <body data-images-ok="N/M"> says
# how many of the M images rendered: a broken figure is never silently blank.
_SCRIPT = """
window.addEventListener("load", function () {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) {
    var img = imgs[i];
    if (img.complete && img.naturalWidth > 0) { ok++; continue; }
    var note = document.createElement("p");
    note.className = "notice";
    note.textContent = "image failed to load: " + (img.alt || "figure");
    img.insertAdjacentElement("afterend", note);
  }
  document.body.setAttribute("data-images-ok", ok + "/" + imgs.length);
});
"""

_CSS = """
:root { color-scheme: light; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
  color: #1c2833; background: #fdfefe; margin: 0; line-height: 1.45; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 32px 64px; }
h1 { font-size: 1.7em; margin: 0.2em 0 0.1em; }
h2 { font-size: 1.3em; margin: 2.2em 0 0.6em; padding-bottom: 0.2em; border-bottom: 2px solid #d6dbdf; }
h3 { font-size: 1.05em; margin: 1.4em 0 0.5em; }
.run { color: #566573; margin: 0 0 1.2em; }
.run code, td code { background: #f2f3f4; padding: 0 4px; border-radius: 3px; }
nav { font-size: 0.92em; color: #566573; }
nav ol { margin: 0.3em 0; padding-left: 1.4em; columns: 2; }
nav a { color: #1f618d; text-decoration: none; }
table { border-collapse: collapse; margin: 0.4em 0 0.8em; font-size: 0.92em; }
th, td { padding: 4px 10px; border-bottom: 1px solid #e5e8e8; text-align: left; vertical-align: top; }
th { background: #f4f6f6; border-bottom: 2px solid #d5d8dc; font-weight: 600; }
tbody tr:nth-child(even) { background: #fafbfb; }
th.num, td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.caption { font-weight: 600; margin: 1em 0 0.2em; }
.note { color: #566573; font-size: 0.9em; margin: 0.2em 0 1em; }
.yes, .no, .undetermined { font-weight: 600; padding: 1px 8px; border-radius: 10px; white-space: nowrap; }
.yes { background: #d5f5e3; color: #196f3d; }
.no { background: #fadbd8; color: #922b21; }
.undetermined { background: #eaecee; color: #424949; }
.figures { display: flex; flex-wrap: wrap; gap: 12px 24px; align-items: flex-start; }
figure { margin: 0.6em 0; }
figure img { max-width: 100%; height: auto; display: block; }
figcaption { color: #566573; font-size: 0.88em; margin-top: 2px; }
.notice { background: #fef5e7; border-left: 4px solid #f39c12; padding: 8px 12px; margin: 0.6em 0; }
pre { background: #f4f6f6; padding: 12px; overflow-x: auto; font-size: 0.85em; border-radius: 4px; }
footer { margin-top: 3em; }
"""


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


_CSP = (
    f"default-src 'none'; img-src data:; style-src {_csp_hash(_CSS)}; script-src {_csp_hash(_SCRIPT)}; "
    "base-uri 'none'; form-action 'none'"
)


def write_report(
    results: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    model: str | os.PathLike | None = None,
) -> Path:
    """Render ``results`` (a ``results.json`` written by a reproduction) to one HTML file.

    ``out`` defaults to ``report.html`` next to ``results``; the file is replaced atomically. Model paths
    in the results are resolved relative to the results file and must lie inside its folder; ``model``
    (a safetensors model) is drawn instead, wherever it lies. Returns the path written.

    Raises
    ------
    FileNotFoundError
        No file at ``results``.
    ValueError
        ``results`` is not valid JSON, not a modscope results document, a field or section lacks what it
        needs, or a section's model path leads out of the results' folder (the message names the file,
        field or section, and key).
    """
    results = Path(results)
    try:
        result = RunResult.load(results)
        page = render_html(result, results.resolve().parent, model=model)
    except ValueError as exc:
        raise ValueError(f"{results}: {exc}") from None
    path = Path(out) if out is not None else results.with_name("report.html")
    write_text_atomic(path, page)
    return path


def render_html(result: RunResult, base_dir: Path, *, model: str | os.PathLike | None = None) -> str:
    """The report page of ``result`` as a string.

    ``base_dir`` (the run folder) resolves the sections' model paths, which must stay inside it: a
    results.json cannot make the report read files elsewhere. ``model``, given by the caller, replaces
    the model of every clusterability section and may lie anywhere.

    Raises ValueError, before anything is drawn, for a section of unknown kind, one that lacks (or has
    malformed) a key its kind needs (:func:`modscope.results.validate`), or a model path outside
    ``base_dir``.
    """
    validate(result)
    base_dir = Path(base_dir)
    # every model path checked before anything is drawn
    models = [_model_path(s, base_dir, model) if s["kind"] == "clusterability" else None
              for s in result.sections]  # fmt: skip
    parts = [
        f"<h1>{escape(result.title)}</h1>",
        '<p class="run">experiment <code>'
        + escape(result.experiment)
        + "</code> &middot; setting <code>"
        + escape(result.setting)
        + f"</code> &middot; wall time {escape(format_seconds(result.seconds))}</p>",
        _contents(result),
        '<h2 id="summary">' + escape(str(result.summary.get("title") or "Summary")) + "</h2>",
        _table(result.summary, caption=False),
    ]
    if result.claims:
        parts += ['<h2 id="claims">Claims of the papers</h2>', _claims(result.claims)]
    for i, (section, path) in enumerate(zip(result.sections, models), start=1):
        parts.append(f'<section id="s{i}">{_section(section, path)}</section>')
    parts.append(_footer(result))
    return _page(result.title, "\n".join(parts))


def _model_path(
    section: Mapping[str, Any], base_dir: Path, model: str | os.PathLike | None
) -> tuple[Path, bool] | None:
    """Where the clustered graph of ``section`` is read from, and whether the caller gave it: the caller's
    ``model``, else the section's model inside ``base_dir`` (``None`` when none is recorded)."""
    if model is not None:
        return Path(model), True
    if section.get("model") is None:
        return None
    path = (base_dir / section["model"]).resolve()
    if not path.is_relative_to(base_dir.resolve()):
        raise ValueError(
            f"'clusterability' section {section.get('title')!r}: model {section['model']!r} lies outside "
            f"the run folder {base_dir}; not reading it. Pass the model explicitly (modscope report --model "
            "PATH) to draw it from there"
        )
    return path, False


def _page(title: str, body: str) -> str:
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(title)}</title>\n<style>{_CSS}</style>\n<script>{_SCRIPT}</script>\n"
        f"</head>\n<body>\n<main>\n{body}\n</main>\n</body>\n</html>\n"
    )


def _contents(result: RunResult) -> str:
    items = ['<li><a href="#summary">Summary</a></li>']
    if result.claims:
        items.append('<li><a href="#claims">Claims of the papers</a></li>')
    items += [
        f'<li><a href="#s{i}">{escape(str(s.get("title", "")))}</a></li>'
        for i, s in enumerate(result.sections, start=1)
    ]
    items.append('<li><a href="#run">Config and versions</a></li>')
    return "<nav><ol>" + "".join(items) + "</ol></nav>"


# ----------------------------------------------------------------------------------------------- cells


def format_cell(value: Any) -> str:
    """Plain text of one table cell (not yet escaped).

    ``None`` -> ``"–"``; booleans -> ``yes``/``no``; floats to 4 significant digits (thousands and up
    rounded to integers with separators, tiny ones in scientific notation); lists joined by commas;
    dicts as compact JSON.
    """
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "∞" if value > 0 else "-∞"
        a = abs(value)
        if a == 0:
            return "0"
        if 1e-3 <= a < 1e4:
            return f"{value:.4g}"
        if 1e4 <= a < 1e12:
            return f"{value:,.0f}"
        return f"{value:.3g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(format_cell(v) for v in value)
    if isinstance(value, Mapping):
        return json.dumps(value, separators=(", ", ": "))
    return str(value)


def format_seconds(seconds: float) -> str:
    """Wall time for people: ``"42.0 s"``, ``"3 min 07 s"``, ``"2 h 05 min"``."""
    s = float(seconds)
    if not math.isfinite(s) or s < 0:
        return format_cell(seconds)
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _html_table(columns: Sequence[Any], rows: Sequence[Sequence[Any]]) -> str:
    """A table; columns whose cells are all numbers (or missing) are right-aligned."""
    numeric = [all(v is None or _is_number(v) for v in col) for col in zip(*rows)] or [False] * len(columns)
    num = ' class="num"'
    head = "".join(f"<th{num if n else ''}>{escape(str(c))}</th>" for c, n in zip(columns, numeric))
    # Seeds are names, not quantities: no thousands separators.
    raw = [str(c).lower().endswith("seed") for c in columns]
    body = "".join(
        "<tr>"
        + "".join(
            f"<td{num if n else ''}>{escape(str(v) if is_raw and v is not None else format_cell(v))}</td>"
            for v, n, is_raw in zip(r, numeric, raw)
        )
        + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# -------------------------------------------------------------------------------------------- sections


def _section(section: Mapping[str, Any], model: tuple[Path, bool] | None) -> str:
    if section["kind"] == "clusterability":
        body = _clusterability(section, model)
    else:
        body = _RENDERERS[section["kind"]](section)
    return f"<h2>{escape(str(section['title']))}</h2>\n" + body


def _table(section: Mapping[str, Any], caption: bool = True) -> str:
    """A ``"table"`` object: optional caption (its title), the table, its note."""
    columns, rows = section["columns"], section["rows"]
    out = f'<p class="caption">{escape(str(section["title"]))}</p>' if caption else ""
    out += _html_table(columns, rows)
    if section.get("note"):
        out += f'<p class="note">{escape(str(section["note"]))}</p>'
    return out


def _table_section(section: Mapping[str, Any]) -> str:
    return _table(section, caption=False)


def _figure(fig: Any, alt: str, caption: str = "") -> str:
    data = base64.b64encode(figures.png_bytes(fig)).decode("ascii")
    cap = f"<figcaption>{escape(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="data:image/png;base64,{data}" alt="{escape(alt)}">{cap}</figure>'


def _notice(text: str) -> str:
    return f'<p class="notice">{escape(text)}</p>'


def _clusterability(section: Mapping[str, Any], model: tuple[Path, bool] | None) -> str:
    """Null histograms, the n-cut test per null (Filan et al. arXiv:2103.03386), and the clustering."""
    import numpy as np

    from modscope.cluster import null_summary

    network, k, ncut = str(section["network"]), int(section["k"]), section["ncut"]
    rows, figs = [], []
    for shuffle, values in section["nulls"].items():
        null = np.array([v for v in values if v is not None], dtype=float)
        if ncut is None or null.size == 0:
            rows.append([shuffle, int(null.size), None, None, None, None, None])
            continue
        s = null_summary(float(ncut), null)
        rows.append(
            [shuffle, int(null.size), s["null_mean"], s["null_std"], s["z"], s["p_value"], s["below_all"]]
        )
        figs.append(
            _figure(
                figures.null_histogram(null, float(ncut), str(shuffle), network),
                alt=f"histogram of the '{shuffle}' null n-cuts",
                caption=f"n-cuts of {null.size} '{shuffle}' shuffles; the line is {network}.",
            )
        )
    restarts = section.get("restarts")
    spread = (
        f"; best of {len(restarts)} k-means restarts, which ranged {format_cell(min(restarts))}"
        f"–{format_cell(max(restarts))}"
        if restarts else ""
    )
    out = (
        f"<p>{escape(network)}: k = {k}, n-cut = <strong>{escape(format_cell(ncut))}</strong>{escape(spread)}"
        " (lower is more clusterable; p is one-sided, the share of shuffles at or below it).</p>"
    )
    out += _html_table(["null", "shuffles", "mean", "sd", "z", "p", "below all"], rows)
    out += f'<div class="figures">{"".join(figs)}</div>'
    return out + _drawing(section, model, k)


def _drawing(section: Mapping[str, Any], model: tuple[Path, bool] | None, k: int) -> str:
    """The clustered weight graph of ``model`` (its path, and whether the caller gave it), or a notice
    saying why it cannot be drawn."""
    if model is None or section.get("labels") is None:
        return _notice("No model or cluster labels were recorded: the clustered graph cannot be drawn.")
    path, given = model
    name = str(path) if given else str(section["model"])
    if not path.is_file():
        where = "" if given else " beside the results file"
        return _notice(f"Model file {name} not found{where}: the clustered graph cannot be drawn.")
    from modscope.graph import WeightGraph
    from modscope.models import load_model, spec_input_shape

    try:
        model, spec = load_model(path)
        graph = WeightGraph.from_module(model, spec_input_shape(spec))
        ncut = float("nan") if section["ncut"] is None else float(section["ncut"])
        fig = figures.partition_figure(graph, section["labels"], k, ncut)
    except (OSError, ValueError) as exc:
        return _notice(f"The clustered graph of {name} cannot be drawn: {exc}")
    return _figure(
        fig,
        alt=f"clustered weight graph of {section['network']}",
        caption="Units as dots, one column per layer, coloured by cluster (grey: no edges); "
        "edge opacity is the weight relative to the strongest of its layer.",
    )


def _masks(section: Mapping[str, Any]) -> str:
    """Per-layer kept weights and overlaps of task masks (Csordás et al. arXiv:2010.02066)."""
    layers, sizes, kept = [str(x) for x in section["layers"]], section["sizes"], section["kept"]
    iou, iomin, pair = section["iou"], section["iomin"], section["pair"]
    out = '<div class="figures">'
    out += _figure(
        figures.kept_bars(layers, sizes, kept),
        alt="kept weights per layer and task",
        caption="Fraction of each layer's weights kept by each task's mask.",
    )
    out += _figure(
        figures.overlap_bars(layers, iou, iomin, pair),
        alt=f"IoU and IoMin of {pair[0]} and {pair[1]}",
        caption="IoU = |A∩B| / |A∪B|, IoMin = |A∩B| / min(|A|, |B|), per layer.",
    )
    out += "</div>"
    rows = []
    for layer in layers:
        size = sizes.get(layer)
        cells = [
            f"{format_cell(c)} ({100 * c / size:.1f}%)" if c is not None and size else format_cell(c)
            for c in (kept[t].get(layer) for t in kept)
        ]
        rows.append([layer, size, *cells, iou.get(layer), iomin.get(layer)])
    out += _html_table(["layer", "size", *[f"kept {t}" for t in kept], "IoU", "IoMin"], rows)
    return out + _table(section["accuracy"])


def _lines(section: Mapping[str, Any]) -> str:
    """Line plots: mask training curves, sharing against network size."""
    series = {str(k): v for k, v in section["series"].items() if v}
    if not series:
        out = _notice("No points were recorded.")
    else:
        fig = figures.line_plot(series, section["xlabel"], section["ylabel"], section.get("xscale", "linear"),
                                section.get("bands"))
        out = _figure(fig, alt=str(section["title"]))
    if section.get("note"):
        out += f'<p class="note">{escape(str(section["note"]))}</p>'
    return out


# Labels of modules that random same-size sets of their layer cannot test (modscope.lesion.controls).
_UNTESTED = {
    "whole layer": "whole layer: the module is every unit of its layer, so each random set of its size is "
    "the module itself: it is not tested (no p) and not in the combined p; its accuracy drop is measured.",
    "untestable": "untestable: the module's layer holds fewer distinct sets of its size than the test needs "
    "to reach its level, so no accuracy drop could be significant; it is not in the combined p.",
}


def _lesions(section: Mapping[str, Any]) -> str:
    """Module importance and per-class damage of lesions (Filan et al. arXiv:2103.03386)."""
    classes, modules = section["classes"], section["modules"]
    out = ""
    if modules:
        out += _figure(
            figures.lesion_heatmap(classes, modules),
            alt="per-class accuracy drop per module",
            caption="Accuracy drop per class when the module's units are silenced "
            "(red: accuracy lost, blue: gained).",
        )
        rows = [[m["name"], m["label"], m.get("p_important"), m.get("damage")] for m in modules]
        out += _html_table(["module", "label", "p (vs random units)", "accuracy drop"], rows)
        found = {str(m["label"]) for m in modules}
        notes = [text for label, text in _UNTESTED.items() if label in found]
        out += "".join(f'<p class="note">{escape(text)}</p>' for text in notes)
    else:
        out += _notice("No modules were lesioned.")
    pairs = section.get("pairs") or []
    if pairs:
        rows = [[p.get("a"), p.get("b"), p.get("interaction"), p.get("p")] for p in pairs]
        out += '<p class="caption">Pairs of modules lesioned together</p>'
        out += _html_table(["module a", "module b", "interaction", "p"], rows)
    return out


def _bridge(section: Mapping[str, Any]) -> str:
    """Clusters x masks shares and the lens-bridge scores against their nulls (:mod:`modscope.bridge`)."""
    shares = {"kept weights inside the cluster": section["weight_share"],
              "used units in the cluster": section["unit_share"]}  # fmt: skip
    shares = {title: rows for title, rows in shares.items() if rows is not None}
    out = _figure(
        figures.share_heatmaps(section["clusters"], section["masks"], shares),
        alt="clusters x masks heat map of shares",
        caption="Per mask (column), the share of its kept weights joining two units of each cluster and the "
        "share of the units it uses in each cluster (a column of the weight map sums to at most 1: the rest "
        "joins two clusters).",
    )
    if section.get("note"):
        out += f'<p class="note">{escape(str(section["note"]))}</p>'
    return out + _table(section["scores"])


# kind -> render of a section (clusterability sections also take their model's path).
_RENDERERS: dict[str, Callable[[Mapping[str, Any]], str]] = {
    "table": _table_section,
    "masks": _masks,
    "lines": _lines,
    "lesions": _lesions,
    "bridge": _bridge,
}


def _claims(claims: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for c in claims:
        word = {True: "yes", False: "no", None: "undetermined"}[c.get("agrees")]
        rows.append(
            f"<tr><td>{escape(format_cell(c.get('paper')))}</td><td>{escape(format_cell(c.get('claim')))}</td>"
            f"<td>{escape(format_cell(c.get('ours')))}</td>"
            f'<td><span class="{word}">{word}</span></td></tr>'
        )
    head = "<tr><th>paper</th><th>claim</th><th>ours</th><th>agrees</th></tr>"
    return f"<table><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"


def _footer(result: RunResult) -> str:
    config = json.dumps(result.config, indent=2, ensure_ascii=False, default=str)
    versions = _html_table(["package", "version"], [[k, str(v)] for k, v in result.versions.items()])
    return (
        '<footer id="run"><h2>Config and versions</h2>'
        f"<p>Wall time {escape(format_seconds(result.seconds))} (summed over resumed segments); "
        f"{len(result.units)} unit results in results.json.</p>"
        f"<pre>{escape(config)}</pre>{versions}</footer>"
    )
