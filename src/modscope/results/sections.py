"""The sections of a results document: one constructor per kind, each checking what it builds, and the
validators the report applies to a document it reads (formats in :mod:`modscope.results`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

__all__ = [
    "SECTION_KINDS", "bridge_section", "clusterability_section", "lesions_section", "lines_section",
    "masks_section", "module_name", "table", "validate_section",
]  # fmt: skip

SECTION_KINDS = ("table", "clusterability", "masks", "lines", "lesions", "bridge")


def module_name(layer: str, cluster: int) -> str:
    """How results name a module, the units of hidden layer ``layer`` in cluster ``cluster``: ``"fc2/c3"``."""
    return f"{layer}/c{int(cluster)}"


# ------------------------------------------------------------------------------------ constructors
def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], note: str = "") -> dict:
    """A ``"table"`` section; every row has one cell per column."""
    doc = {"kind": "table", "title": title, "columns": list(columns), "rows": [list(r) for r in rows]}
    if note:
        doc["note"] = note
    return _checked(doc)


def clusterability_section(
    title: str, *, network: str, k: int, ncut: float | None, nulls: Mapping[str, Sequence[float | None]],
    model: str | None = None, labels: Sequence[int] | None = None, restarts: Sequence[float] | None = None,
) -> dict:  # fmt: skip
    """A ``"clusterability"`` section: ``network``'s n-cut at ``k`` clusters against each null's n-cuts;
    ``model`` (relative to results.json) and ``labels`` (one per graph node) let the report draw it;
    ``restarts``, the n-cut of each k-means restart (``Partition.ncut_restarts``), shows how far the
    reported n-cut (their minimum) could move with the seed."""
    doc = {
        "kind": "clusterability", "title": title, "network": network, "k": k, "ncut": ncut,
        "nulls": {str(s): _list(v) for s, v in nulls.items()}, "model": model, "labels": _list(labels),
    }  # fmt: skip
    if restarts is not None:
        doc["restarts"] = _list(restarts)
    return _checked(doc)


def masks_section(
    title: str, *, layers: Sequence[str], sizes: Mapping[str, int], kept: Mapping[str, Mapping[str, int]],
    iou: Mapping[str, float | None], iomin: Mapping[str, float | None], pair: Sequence[str],
    accuracy: Mapping[str, Any],
) -> dict:  # fmt: skip
    """A ``"masks"`` section: per-layer ``sizes``, ``kept`` counts per task, IoU / IoMin of the two tasks in
    ``pair`` per layer, and ``accuracy`` (a :func:`table`)."""
    doc = {
        "kind": "masks", "title": title, "layers": list(layers), "sizes": dict(sizes),
        "kept": {t: dict(v) for t, v in kept.items()}, "iou": dict(iou), "iomin": dict(iomin),
        "pair": list(pair), "accuracy": accuracy,
    }  # fmt: skip
    return _checked(doc)


def lines_section(
    title: str, *, xlabel: str, ylabel: str, series: Mapping[str, Sequence[Sequence[float]]],
    xscale: str = "linear", note: str = "", bands: Mapping[str, Sequence[Sequence[float]]] | None = None,
) -> dict:  # fmt: skip
    """A ``"lines"`` section: one line per ``series`` of ``[x, y]`` points; ``xscale`` linear or log;
    ``bands`` (optional) shade an interval around a series: ``name -> [[x, low, high], ...]``."""
    doc = {"kind": "lines", "title": title, "xlabel": xlabel, "ylabel": ylabel,
           "series": {str(n): [_list(p) for p in _list(pts)] for n, pts in series.items()}}  # fmt: skip
    if bands:
        doc["bands"] = {str(n): [_list(p) for p in _list(pts)] for n, pts in bands.items() if pts}
    if xscale != "linear":
        doc["xscale"] = xscale
    if note:
        doc["note"] = note
    return _checked(doc)


def lesions_section(
    title: str, *, classes: Sequence[str], modules: Sequence[Mapping[str, Any]],
    pairs: Sequence[Mapping[str, Any]] = (),
) -> dict:  # fmt: skip
    """A ``"lesions"`` section: per module ``{"name", "label", "p_important", "damage", "class_damage"}``
    (one damage per class; ``p_important`` null for a module that could not be tested, such as the label
    ``"whole layer"``), per pair of modules ``{"a", "b", "interaction", "p"}`` (a, b: module names)."""
    keys = ("name", "label", "p_important", "damage", "class_damage")
    doc = {
        "kind": "lesions", "title": title, "classes": [str(c) for c in classes],
        "modules": [{k: _list(m[k]) if k == "class_damage" else m[k] for k in keys if k in m}
                    for m in modules],
        "pairs": [{k: p.get(k) for k in ("a", "b", "interaction", "p")} for p in pairs],
    }  # fmt: skip
    return _checked(doc)


def bridge_section(
    title: str, *, clusters: Sequence[str], masks: Sequence[str],
    weight_share: Sequence[Sequence[Any]] | None, unit_share: Sequence[Sequence[Any]],
    scores: Mapping[str, Any], note: str = "",
) -> dict:  # fmt: skip
    """A ``"bridge"`` section (:mod:`modscope.bridge`): per cluster and mask, the share of the mask's kept
    weights inside the cluster (``null`` for unit masks) and of its used units, and ``scores`` (a
    :func:`table`)."""
    doc = {
        "kind": "bridge", "title": title, "clusters": [str(c) for c in clusters],
        "masks": [str(m) for m in masks],
        "weight_share": None if weight_share is None else [_list(r) for r in weight_share],
        "unit_share": [_list(r) for r in unit_share], "scores": scores,
    }  # fmt: skip
    if note:
        doc["note"] = note
    return _checked(doc)


def _list(value: Any) -> Any:
    """Tuples as the lists JSON reads back; anything else unchanged, for the validator to judge."""
    return list(value) if isinstance(value, (list, tuple)) else value


def _checked(section: dict) -> dict:
    validate_section(section)
    return section


# ------------------------------------------------------------------------------------ validators
def _fail(section: Mapping[str, Any], problem: str) -> NoReturn:
    raise ValueError(f"{section.get('kind')!r} section {section.get('title')!r}: {problem}")


def _need(section: Mapping[str, Any], *keys: str) -> None:
    for key in keys:
        if key not in section:
            _fail(section, f"lacks the key {key!r}")


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_list(value: Any) -> bool:
    return isinstance(value, (list, tuple))


def _check_table(section: Mapping[str, Any]) -> None:
    _need(section, "title", "columns", "rows")
    if not is_list(section["columns"]) or not is_list(section["rows"]):
        _fail(section, "'columns' and 'rows' must be lists")
    width = len(section["columns"])
    for r in section["rows"]:
        if not is_list(r) or len(r) != width:
            _fail(section, f"row {r!r} does not have one cell per column ({width})")


def _check_clusterability(section: Mapping[str, Any]) -> None:
    _need(section, "title", "network", "k", "ncut", "nulls")
    k = section["k"]
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        _fail(section, f"'k' must be an int >= 2, got {k!r}")
    if section["ncut"] is not None and not is_number(section["ncut"]):
        _fail(section, f"'ncut' must be a number or null, got {section['ncut']!r}")
    nulls = section["nulls"]
    if not isinstance(nulls, Mapping) or not all(
        is_list(v) and all(x is None or is_number(x) for x in v) for v in nulls.values()
    ):
        _fail(section, "'nulls' must map each shuffle to its list of n-cuts")
    if section.get("model") is not None and not isinstance(section["model"], str):
        _fail(section, f"'model' must be a path or null, got {section['model']!r}")
    labels = section.get("labels")
    if labels is not None and not (is_list(labels) and all(isinstance(v, int) for v in labels)):
        _fail(section, "'labels' must be a list of cluster numbers, one per graph node, or null")
    restarts = section.get("restarts")
    if restarts is not None and not (is_list(restarts) and restarts and all(is_number(v) for v in restarts)):
        _fail(section, "'restarts' must be a non-empty list of n-cuts, one per k-means restart")


def _check_masks(section: Mapping[str, Any]) -> None:
    _need(section, "title", "layers", "sizes", "kept", "iou", "iomin", "pair", "accuracy")
    if not is_list(section["layers"]):
        _fail(section, "'layers' must be a list of parameter names")
    for key in ("sizes", "kept", "iou", "iomin"):
        if not isinstance(section[key], Mapping):
            _fail(section, f"{key!r} must be an object keyed by layer (by task for 'kept')")
    if not is_list(section["pair"]) or len(section["pair"]) != 2:
        _fail(section, f"'pair' must name two tasks, got {section['pair']!r}")
    if not all(isinstance(v, Mapping) for v in section["kept"].values()):
        _fail(section, "'kept' must map each task to {layer: kept count}")
    accuracy = section["accuracy"]
    if not isinstance(accuracy, Mapping) or accuracy.get("kind") != "table":
        _fail(section, "'accuracy' must be a 'table' object")
    _check_table(accuracy)


def _check_lines(section: Mapping[str, Any]) -> None:
    _need(section, "title", "xlabel", "ylabel", "series")
    if not isinstance(section["series"], Mapping):
        _fail(section, "'series' must map each name to its [[x, y], ...] points")
    for name, points in section["series"].items():
        if not is_list(points) or not all(
            is_list(p) and len(p) == 2 and all(is_number(v) for v in p) for p in points
        ):
            _fail(section, f"series {name!r} must be a list of [x, y] number pairs")
    bands = section.get("bands", {})
    if not isinstance(bands, Mapping):
        _fail(section, "'bands' must map series names to their [[x, low, high], ...] intervals")
    for name, points in bands.items():
        if name not in section["series"]:
            _fail(section, f"band {name!r} names no series; series are {list(section['series'])}")
        if not is_list(points) or not all(
            is_list(p) and len(p) == 3 and all(is_number(v) for v in p) and p[1] <= p[2] for p in points
        ):
            _fail(section, f"band {name!r} must be a list of [x, low, high] numbers with low <= high")
    if section.get("xscale", "linear") not in ("linear", "log"):
        _fail(section, f"'xscale' must be 'linear' or 'log', got {section.get('xscale')!r}")


def _check_lesions(section: Mapping[str, Any]) -> None:
    _need(section, "title", "classes", "modules")
    if not is_list(section["classes"]) or not is_list(section["modules"]):
        _fail(section, "'classes' and 'modules' must be lists")
    n_classes = len(section["classes"])
    for m in section["modules"]:
        if not isinstance(m, Mapping):
            _fail(section, f"each module must be an object, got {m!r}")
        missing = [key for key in ("name", "label", "class_damage") if key not in m]
        if missing:
            _fail(section, f"module {m!r} lacks the key {missing[0]!r}")
        if not is_list(m["class_damage"]) or len(m["class_damage"]) != n_classes:
            _fail(section, f"module {m['name']!r} has {len(m['class_damage'])} class damages for {n_classes} "
                  "classes")  # fmt: skip
        if not isinstance(m["label"], str) or not m["label"]:
            _fail(section, f"module {m['name']!r} has the label {m['label']!r}: a word such as 'important'")
        if m.get("p_important") is not None and not is_number(m["p_important"]):
            _fail(section, f"module {m['name']!r} has p_important {m['p_important']!r}: a number or null")
    pairs = section.get("pairs") or []
    if not is_list(pairs) or not all(isinstance(p, Mapping) for p in pairs):
        _fail(section, "'pairs' must be a list of {a, b, interaction, p} objects")


def _check_bridge(section: Mapping[str, Any]) -> None:
    _need(section, "title", "clusters", "masks", "weight_share", "unit_share", "scores")
    if not is_list(section["clusters"]) or not is_list(section["masks"]):
        _fail(section, "'clusters' and 'masks' must be lists of names")
    shape = (len(section["clusters"]), len(section["masks"]))
    for key in ("weight_share", "unit_share"):
        m = section[key]
        if m is None and key == "weight_share":
            continue
        if not (is_list(m) and len(m) == shape[0] and all(
            is_list(r) and len(r) == shape[1] and all(x is None or is_number(x) for x in r) for r in m
        )):
            _fail(section, f"{key!r} must be {shape[0]} rows (clusters) of {shape[1]} shares (masks)")
    scores = section["scores"]
    if not isinstance(scores, Mapping) or scores.get("kind") != "table":
        _fail(section, "'scores' must be a 'table' object")
    _check_table(scores)


_VALIDATORS: dict[str, Callable[[Mapping[str, Any]], None]] = {
    "table": _check_table,
    "clusterability": _check_clusterability,
    "masks": _check_masks,
    "lines": _check_lines,
    "lesions": _check_lesions,
    "bridge": _check_bridge,
}


def validate_section(section: Any) -> None:
    """Raise ValueError naming the section and key when ``section`` is not a well-formed section."""
    if not isinstance(section, Mapping):
        raise ValueError(f"a section must be a JSON object, got {type(section).__name__}")
    kind = section.get("kind")
    if kind not in _VALIDATORS:
        title = section.get("title")
        raise ValueError(f"section {title!r} has unknown kind {kind!r}; known: {list(SECTION_KINDS)}")
    _VALIDATORS[kind](section)
