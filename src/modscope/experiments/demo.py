"""The demo: both lenses and the lesion test on one small network, from data that ships with scikit-learn.

An MLP (64 inputs, 4 hidden layers of 128 ReLU units, 10 classes) is trained on the 8x8 handwritten digits
and pruned to 90% sparsity (Filan et al. arXiv:2103.03386's protocol, scaled down). Then:

* structural lens: n-cut of its spectral partition (k clusters) against ``layer`` and ``layer_nonzero``
  shuffles (Filan et al. §3), and lesions of the modules found (§6);
* functional lens: one weight mask for the digits 0-4 and one for 5-9 (Csordás et al. arXiv:2010.02066),
  with P_specialize both ways and per-layer IoU;
* the lenses connected (SPEC §3, :mod:`modscope.bridge`): where each mask's kept weights and units fall
  among the clusters, the agreement (ARI, NMI) of the clusters with the units each mask uses, against
  same-size random partitions, next to the share of all kept weights inside clusters;
* sanity controls (``controls``, on by default): the same two masks trained on a random-weight copy of the
  network and on the digits with shuffled labels, reported next to the real masks
  (:mod:`modscope.experiments.controls`);
* a positive control (``planted``, on by default): an MLP with two planted, separate modules (the planted
  benchmark's MLP at cross-talk 0, :mod:`modscope.experiments.planted`), read by both lenses, beside the
  real network -- so that a first reader sees each lens find modules where they exist. A config without
  ``planted`` (a run made before it existed) has it off.

The network is network 0 of the config's ``seed``: its training, clustering, lesion, pair and mask seeds
are :func:`modscope.experiments.structural.network_seeds`, and both shuffle tests share the clustering
seed, so they test the same partition.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

import torch
import torch.nn.functional as F

from modscope.experiments.checks import (
    NUMBER,
    check_fields,
    check_int,
    check_n_jobs,
    check_number,
    finite_or_none,
)
from modscope.experiments.controls import check_controls_config, check_controls_unit, controls_section
from modscope.experiments.run import Run
from modscope.experiments.structural import check_mlp_config, lesion_section, network_seeds
from modscope.progress import labelled
from modscope.results import RunResult, clusterability_section, masks_section, table
from modscope.versions import versions

TITLE = "modscope demo: both lenses on a pruned MLP trained on scikit-learn's 8x8 digits"

SETTINGS: dict[str, dict[str, Any]] = {
    "quick": {
        "seed": 0,
        "hidden": "128x4",
        "epochs": 40,
        "k": 8,
        "shuffles": 30,
        "n_random": 30,
        "mask_steps": 600,
        "beta": 1e-3,
        "n_jobs": 1,
        "controls": True,
        "planted": True,
    },
}

#: Same-size random partitions of the lens bridge's null (about a second on the demo's network).
BRIDGE_NULLS = 200

#: P_specialize from which two masks count as specialized in the claims.
SPECIALIZED = 0.25

_GROUPS = {"0-4": range(0, 5), "5-9": range(5, 10)}
_SHUFFLES = ("layer", "layer_nonzero")


def check_config(config: Mapping[str, Any]) -> None:
    """Validate ``config`` (ValueError naming the key)."""
    check_mlp_config({**config, "dataset": "digits", "networks": 1})
    check_int(config, "shuffles", 2)
    check_int(config, "n_random", 1)
    check_int(config, "mask_steps", 1)
    check_number(config, "beta", positive=False)
    check_n_jobs(config)
    check_controls_config(config)
    if not isinstance(config.get("planted", False), bool):
        raise ValueError(f"planted must be true or false, got {config['planted']!r}")


def _check_clusters(doc: Mapping[str, Any]) -> None:
    from modscope.cluster import ClusterabilityResult

    for shuffle in _SHUFFLES:
        ClusterabilityResult.from_dict(doc[shuffle])


def _check_lesions(doc: Mapping[str, Any]) -> None:
    from modscope.lesion import LesionStudy

    LesionStudy.from_dict(doc["study"])
    for p in doc["pairs"]:
        check_fields(p, {"a": int, "b": int, "interaction": NUMBER, "p_value": NUMBER}, "pairs[]")


def _check_masks(doc: Mapping[str, Any]) -> None:
    from modscope.masks import MaskEvalTable

    pair = {"|".join(_GROUPS): NUMBER, "|".join(reversed(_GROUPS)): NUMBER}
    overlap = {"total": NUMBER, "per_layer": dict}
    check_fields(doc, {"table": dict, "p_specialize": pair, "iou": overlap, "iomin": overlap, "kept": dict,
                       "sizes": dict})  # fmt: skip
    MaskEvalTable.from_dict(doc["table"])
    check_controls_unit(doc, tuple(_GROUPS), {"p_specialize": pair, "iou": overlap})


_NETWORK = {"model": str, "trained_accuracy": (int, float), "pruned_accuracy": (int, float)}


def _train(run: Run, cfg: dict) -> dict:
    from modscope.training import save_trained
    from modscope.training.recipes import run_recipe

    model, spec, results, config = run_recipe(
        "clusterability-mlp", dataset="digits", spec=f"mlp:{{in}}-{cfg['hidden']}-{{out}}",
        epochs=cfg["epochs"], prune=True, seed=network_seeds(cfg["seed"], 0).train,
        checkpoint=run.checkpoint_prefix("network"),
        progress=run.report,
    )  # fmt: skip
    save_trained(model, spec, run.model_path("network"), config, results[-1])
    return {
        "model": run.relative(run.model_path("network")),
        "trained_accuracy": results[0].eval_accuracy,
        "pruned_accuracy": results[-1].eval_accuracy,
        "sparsity": results[-1].sparsity,
    }


def _load(run: Run):
    from modscope.graph import WeightGraph
    from modscope.models import load_model

    model, _ = load_model(run.model_path("network"))
    return model, WeightGraph.from_module(model)


def _cluster(run: Run, cfg: dict) -> dict:
    from modscope.cluster import clusterability

    _, graph = _load(run)
    out: dict[str, Any] = {}
    seed = network_seeds(cfg["seed"], 0).cluster  # one seed for both nulls: both test the same partition
    for shuffle in _SHUFFLES:
        res = clusterability(
            graph, k=cfg["k"], n_shuffles=cfg["shuffles"], shuffle=shuffle, seed=seed,
            n_jobs=cfg["n_jobs"], progress=labelled(run.report, shuffle),
        )  # fmt: skip
        out[shuffle] = res.to_dict()
    return out


def _lesions(run: Run, cfg: dict, partition: Any, test: tuple) -> dict:
    from modscope.lesion import lesion_modules, lesion_pairs

    model, graph = _load(run)
    seeds = network_seeds(cfg["seed"], 0)
    study = lesion_modules(
        model, graph, partition, test, n_random=cfg["n_random"], seed=seeds.lesion, progress=run.report,
    )  # fmt: skip
    pairs = lesion_pairs(
        model, graph, study, test, n_random=cfg["n_random"], seed=seeds.pairs, progress=run.report,
    )  # fmt: skip
    return {"study": study.to_dict(), "pairs": [asdict(p) for p in pairs]}


def _masks(run: Run, cfg: dict, train_set: tuple, test_set: tuple) -> dict:
    from modscope.masks import control_masks, train_masks

    model, _ = _load(run)

    def split(data: tuple) -> dict[str, tuple]:
        x, y = data
        keep = {name: torch.isin(y, torch.tensor(list(c))) for name, c in _GROUPS.items()}
        return {name: (x[k], y[k]) for name, k in keep.items()}

    # lr and init pinned to the values the published demo ran with, whatever train_masks' defaults
    settings = {"steps": cfg["mask_steps"], "beta": cfg["beta"], "batch_size": 128, "lr": 1e-2, "init": 2.0,
                "seed": network_seeds(cfg["seed"], 0).masks}  # fmt: skip
    masks = train_masks(model, split(train_set), F.cross_entropy, progress=run.report, **settings)
    path = run.out / "masks.safetensors"
    masks.save(path)
    evals = {name: [(x, y)] for name, (x, y) in split(test_set).items()}
    doc = {"path": run.relative(path), "sizes": masks[next(iter(_GROUPS))].sizes(),
           **_mask_measures(model, masks, evals)}  # fmt: skip
    if check_controls_config(cfg):
        controls = control_masks(model, split(train_set), F.cross_entropy, progress=run.report, **settings)
        doc["controls"] = {name: _mask_measures(c.model, c.masks, evals) for name, c in controls.items()}
    return doc


def _mask_measures(model: Any, masks: Any, evals: dict) -> dict:
    """What the demo reads from a set of masks on ``model``: the evaluation table, P_specialize both ways,
    IoU / IoMin of the two masks and the kept counts."""
    from modscope.masks import evaluate_masks, iomin, iou

    tab = evaluate_masks(model, masks, evals)
    a, b = _GROUPS
    return {
        "table": tab.to_dict(),
        "p_specialize": {f"{a}|{b}": _p_specialize(tab, a, b), f"{b}|{a}": _p_specialize(tab, b, a)},
        "iou": iou(masks[a], masks[b]).to_dict(),
        "iomin": iomin(masks[a], masks[b]).to_dict(),
        "kept": {t: masks[t].kept() for t in masks.tasks},
    }


def _p_specialize(tab: Any, a: str, b: str) -> float | None:
    """P_specialize with chance 1/5 (five classes per half); ``None`` when the full network is not above
    chance on both halves, where the relative drops are undefined."""
    from modscope.masks import p_specialize

    full = min(tab.score("full", None, s) for s in (a, b))
    return p_specialize(tab, a, b, chance=0.2) if full > 0.2 else None


def _bridge(run: Run, cfg: dict, partition: Any) -> tuple[Any, float]:
    """The masks against the clusters (:func:`modscope.bridge.bridge`), and for comparison the share of all
    weights the pruned network kept that join two units of the same cluster."""
    from modscope.bridge import bridge, inside_share
    from modscope.masks import Mask, MaskSet

    model, graph = _load(run)
    masks = MaskSet.load(run.out / "masks.safetensors", model=model)
    params = dict(model.named_parameters())
    kept = Mask({n: params[n].detach() != 0 for n in masks.param_names})
    result = bridge(graph, partition, masks, n_null=BRIDGE_NULLS, seed=network_seeds(cfg["seed"], 0).cluster)
    return result, inside_share(graph, partition, kept)


def reproduce(run: Run, config: dict) -> RunResult:
    from modscope.cluster import ClusterabilityResult
    from modscope.training.recipes import load_task_data

    check_config(config)
    data = load_task_data("digits", seed=network_seeds(config["seed"], 0).train)
    steps = ("network", "clusters", "lesions", "masks")
    run.report("demo", 0, len(steps))
    net = run.unit("network", lambda: _train(run, config), check=lambda d: check_fields(d, _NETWORK))
    run.report("demo", 1, len(steps))
    clusters = run.unit("clusters", lambda: _cluster(run, config), check=_check_clusters)
    layer = ClusterabilityResult.from_dict(clusters["layer"])
    nonzero = ClusterabilityResult.from_dict(clusters["layer_nonzero"])
    run.report("demo", 2, len(steps))
    les = run.unit("lesions", lambda: _lesions(run, config, layer.partition, data.test), check=_check_lesions)
    run.report("demo", 3, len(steps))
    masks = run.unit("masks", lambda: _masks(run, config, data.train, data.test), check=_check_masks)
    run.report("demo", 4, len(steps))
    connected = _bridge(run, config, layer.partition)
    result = _result(run, config, net, layer, nonzero, les, masks, connected)
    if not config.get("planted", False):
        return result
    from modscope.experiments.planted import check_planted_unit

    planted = run.unit("planted", lambda: _planted(config), check=check_planted_unit)
    return _with_planted(result, planted, masks, connected[0])


def _planted(cfg: dict) -> dict:
    """The planted benchmark's MLP at cross-talk 0 (two separate modules), one replicate, read by both
    lenses (:func:`modscope.experiments.planted_measure.measure`)."""
    from modscope.experiments.planted import SETTINGS as PLANTED
    from modscope.experiments.planted_measure import measure
    from modscope.seeding import derive

    return measure("mlp", 0.0, PLANTED["quick"], derive(cfg["seed"], "planted"))


def _with_planted(result: RunResult, planted: dict, masks: dict, lenses: Any) -> RunResult:
    s, f, c = planted["structural"], planted["functional"], planted["connected"]
    pab, pba = masks["p_specialize"].values()
    rows = [
        ["structural", "ARI of the clusters vs the planted modules (1: found exactly)", s["ari"], None],
        ["functional", "share of each mask inside its planted module", f["inside"], None],
        ["functional", "ARI of the masks' unit assignment vs the planted modules", f["ari_units"], None],
        ["functional", "P_specialize (both ways, mean)", f["p_specialize"],
         None if None in (pab, pba) else (pab + pba) / 2],
        ["connected", "ARI of the clusters vs the masks' one-task units", c["ari_bridge"],
         finite_or_none(lenses.ari)],
    ]  # fmt: skip
    section = table(
        "Positive control: two planted modules beside the digits network",
        ["lens", "measure", "planted MLP (cross-talk 0)", "digits MLP"], rows,
        note="The planted MLP has two separate modules by construction (modscope reproduce planted; "
        "its tasks read disjoint inputs and write disjoint outputs). Where a lens finds them, it can be "
        "trusted to say that the digits network has or lacks such modules; the digits network has no "
        "known modules, so only the scores that need none are shown for it.",
    )  # fmt: skip
    found = s["ari"] == 1.0 and f["inside"] is not None and f["inside"] >= 0.95
    claim = {
        "paper": "modscope (positive control)",
        "claim": "both lenses recover two planted, separate modules: clusters equal the modules and each "
        "task's mask stays inside its module",
        "ours": f"structural ARI {s['ari']:.2f}; masks {f['inside']:.2f} inside their modules",
        "agrees": bool(found),
    }
    return dataclasses.replace(result, sections=(*result.sections, section), claims=(*result.claims, claim))



def _num(v: float | None) -> str:
    return "undefined (network at chance)" if v is None else f"{v:.2f}"


def _result(run, config, net, layer, nonzero, les, masks, connected) -> RunResult:
    from modscope.lesion import UNTESTED
    from modscope.masks import MaskEvalTable

    study = les["study"]
    modules = study["modules"]
    n_important = sum(m["label"] == "important" for m in modules)
    n_untested = sum(m["label"] in UNTESTED for m in modules)  # whole layers: no random set differs
    combined_p = study["combined_p"]
    interacting = sum(p["p_value"] <= study["alpha"] for p in les["pairs"])
    (ab, pab), (ba, pba) = masks["p_specialize"].items()
    a, b = _GROUPS
    lenses, all_inside = connected
    rows = [
        ["—", "test accuracy (trained / pruned 90%)", net["trained_accuracy"], net["pruned_accuracy"], None],
        ["structural", f"n-cut (k={layer.k}) vs layer shuffles", layer.ncut, layer.null_mean, layer.p_value],
        ["structural", "n-cut vs layer_nonzero shuffles", nonzero.ncut, nonzero.null_mean, nonzero.p_value],
        ["structural", "important modules (lesions)", n_important, len(modules), combined_p],
        ["structural", "interacting pairs of important modules", interacting, len(les["pairs"]), None],
        ["functional", f"P_specialize({ab})", pab, None, None],
        ["functional", f"P_specialize({ba})", pba, None, None],
        ["functional", f"IoU of masks {a} and {b}", masks["iou"]["total"], None, None],
        ["connected", f"mask {a}: share inside clusters", lenses.scores[f"inside[{a}]"], all_inside,
         lenses.p_value(f"inside[{a}]")],
        ["connected", "ARI of clusters and mask units", lenses.ari, lenses.null("ari")["mean"],
         lenses.p_value("ari")],
    ]
    summary = table(
        "Summary", ["lens", "measure", "value", "compared with", "p"], rows,
        note="'compared with': the shuffles' mean n-cut, the number of modules or pairs tested, the share "
        "among all weights the pruned network kept, or the mean over same-size random partitions.",
    )  # fmt: skip
    claims = (
        {
            "paper": "Filan et al. 2021",
            "claim": "pruned networks are more clusterable than their layer_nonzero shuffles (the paper's "
            "networks are trained on (Fashion-)MNIST; here a smaller one on 8x8 digits)",
            "ours": f"n-cut {nonzero.ncut:.3f} vs {nonzero.null_mean:.3f}, p = {nonzero.p_value:.3g}",
            "agrees": bool(nonzero.p_value < 0.05),
        },
        {
            "paper": "Filan et al. 2021",
            "claim": "some clusters are important: lesioning them hurts more than random units",
            "ours": f"{n_important} of {len(modules)} modules important ({n_untested} untestable), "
            f"combined p = {combined_p:.3g}",
            "agrees": bool(combined_p < 0.05),
        },
        {
            "paper": "Csordás et al. 2021",
            "claim": "masks specialize: removing one task's weights hurts it far more than the other task "
            "(the paper's tasks are + and ×; here the digits 0-4 and 5-9)",
            "ours": f"P_specialize {_num(pab)} and {_num(pba)} (1 = fully specialized, 0 = not at all)",
            # The papers read P_specialize near 1 as specialization; below 0.25 both tasks share what
            # the masks keep, which is no specialization even if the value is positive.
            "agrees": None if None in (pab, pba) else bool(min(pab, pba) >= SPECIALIZED),
        },
    )
    tab = MaskEvalTable.from_dict(masks["table"])
    conditions = [("full", "full", None)]
    conditions += [(f"{p}{t}", kind, t) for t in tab.tasks for p, kind in (("", "mask"), ("¬", "inverted"))]
    accuracy = table(
        "Accuracy on each half of the test set", ["weights used", *tab.eval_sets],
        [[label, *(tab.score(kind, task, s) for s in tab.eval_sets)] for label, kind, task in conditions],
        note="¬X: every weight except X's mask.",
    )  # fmt: skip
    sections = (
        clusterability_section(
            "Clusters of the pruned network", network="digits MLP, pruned", k=layer.k, ncut=layer.ncut,
            nulls={"layer": layer.null_ncuts.tolist(), "layer_nonzero": nonzero.null_ncuts.tolist()},
            model=net["model"], labels=layer.partition.labels.tolist(),
            restarts=layer.partition.ncut_restarts.tolist() or None,
        ),
        lesion_section(
            "Lesions of the modules (hidden layer x cluster)", [str(c) for c in range(10)], study,
            les["pairs"],
        ),
        masks_section(
            "Masks for the digits 0-4 and 5-9", layers=list(masks["sizes"]), sizes=masks["sizes"],
            kept=masks["kept"], iou=masks["iou"]["per_layer"], iomin=masks["iomin"]["per_layer"], pair=[a, b],
            accuracy=accuracy,
        ),
        lenses.section(
            "The lenses connected: where the masks fall",
            note=f"Of all weights the pruned network kept, {all_inside:.3f} join two units of the same "
            "cluster; a mask that follows the clusters has a larger share.",
        ),
    )
    if check_controls_config(config):
        sections += (controls_section(
            "Sanity controls: the digit masks where there is nothing to find", [("digits MLP", masks)],
            tuple(_GROUPS), [f"P_specialize({ab})", f"P_specialize({ba})", f"IoU({a}, {b})"],
            lambda d: [d["p_specialize"][ab], d["p_specialize"][ba], d["iou"]["total"]],
            note=f"Every set of masks: {config['mask_steps']} steps, as the real ones. P_specialize with "
            "drops from the full network the masks were trained on (undefined where it is at chance, as the "
            "random copy is).",
        ),)  # fmt: skip
    return RunResult(
        "demo", TITLE, run.setting, summary, claims, sections, dict(config), versions(), run.seconds(),
        {"network": net},
    )  # fmt: skip
