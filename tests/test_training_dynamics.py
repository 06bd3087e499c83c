"""Modularity over training: snapshots of a training run (modscope.training.snapshots) and the
training-dynamics reproduction built on them."""

import pytest
import torch
from safetensors.torch import load_file

from modscope.experiments import experiment_config, reproduce
from modscope.models import build_model, load_model, read_metadata
from modscope.training import train
from modscope.training.snapshots import snapshot_path, snapshot_steps, train_with_snapshots

SPEC = "mlp:6-12-3"


def _data(n=80):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 6, generator=g)
    return x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long()


_SETTINGS = {"steps": 10, "batch_size": 16, "seed": 3}


def test_snapshot_steps():
    assert snapshot_steps(10, 4) == [0, 4, 8, 10]
    assert snapshot_steps(8, 4) == [0, 4, 8]
    assert snapshot_steps(3, 10) == [0, 3]


def test_snapshots_are_the_weights_at_those_steps_and_do_not_disturb_training(tmp_path):
    model = build_model(SPEC, seed=1)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    result, kept = train_with_snapshots(model, SPEC, _data(), every=4, folder=tmp_path, **_SETTINGS)
    assert [s for s, _ in kept] == [0, 4, 8, 10] and result.steps == 10
    assert all(p == snapshot_path(tmp_path, s) and p.is_file() for s, p in kept)
    first, _ = load_model(kept[0][1])
    assert all(torch.equal(v, init[k]) for k, v in first.state_dict().items())
    assert read_metadata(kept[1][1]) == {"format": "modscope.snapshot/1", "step": 4}
    last, _ = load_model(kept[-1][1])
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in last.state_dict().items())
    # the same run without snapshots ends with the same weights; the one kept at step 4 is a 4-step run's
    plain = build_model(SPEC, seed=1)
    train(plain, _data(), **_SETTINGS)
    assert all(torch.equal(v, plain.state_dict()[k]) for k, v in model.state_dict().items())
    four = build_model(SPEC, seed=1)
    train(four, _data(), **{**_SETTINGS, "steps": 4})
    snap, _ = load_model(kept[1][1])
    assert not all(torch.equal(v, init[k]) for k, v in snap.state_dict().items())
    assert all(torch.equal(v, four.state_dict()[k]) for k, v in snap.state_dict().items())


def test_an_interrupted_run_resumes_to_the_same_snapshots(tmp_path):
    whole = tmp_path / "whole"
    train_with_snapshots(build_model(SPEC, seed=1), SPEC, _data(), every=4, folder=whole, **_SETTINGS)

    class Stop(Exception):
        pass

    def stop_at_6(label, done, total, info):
        if done == 6:
            raise Stop

    cut = tmp_path / "cut"
    with pytest.raises(Stop):
        train_with_snapshots(build_model(SPEC, seed=1), SPEC, _data(), every=4, folder=cut,
                             progress=stop_at_6, **_SETTINGS)  # fmt: skip
    assert not snapshot_path(cut, 8).exists()
    # the snapshot of the checkpoint's step is lost (as if killed between the two writes): recovered
    snapshot_path(cut, 4).unlink()
    _, kept = train_with_snapshots(build_model(SPEC, seed=1), SPEC, _data(), every=4, folder=cut, **_SETTINGS)
    for s, p in kept:
        a, b = load_file(p), load_file(snapshot_path(whole, s))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_snapshot_arguments_are_checked(tmp_path):
    model = build_model(SPEC, seed=1)
    with pytest.raises(ValueError, match="every must be a positive int"):
        train_with_snapshots(model, SPEC, _data(), every=0, folder=tmp_path, steps=4)
    with pytest.raises(ValueError, match="prune"):
        train_with_snapshots(model, SPEC, _data(), every=2, folder=tmp_path, steps=4, prune=object())


# ------------------------------------------------------------------------------------ the reproduction
TINY = {"hidden": "16x2", "epochs": 3, "every": 12, "k": 3, "shuffles": 2, "mask_steps": 5}


def test_training_dynamics_gives_one_point_per_kept_step_and_is_deterministic(tmp_path, one_thread):
    result = reproduce("training-dynamics", tmp_path / "a", overrides=TINY)
    steps = result.units["network"]["steps"]
    per_epoch = result.units["network"]["steps_per_epoch"]
    assert steps == snapshot_steps(3 * per_epoch, 12) and steps[0] == 0
    clusters, masks = result.sections
    assert clusters["kind"] == masks["kind"] == "lines"
    names = ("network", "layer shuffles (mean)", "test accuracy", "IoU of the masks")
    series = {n: s["series"][n] for s in (clusters, masks) for n in names if n in s["series"]}
    assert set(series) == set(names)
    for points in series.values():
        assert [x for x, _ in points] == steps
    assert [r[0] for r in result.summary["rows"]] == steps
    for step, row in zip(steps, result.summary["rows"], strict=True):
        assert row[3] == result.units[f"step-{step:07d}"]["clusters"]["ncut"]
    again = reproduce("training-dynamics", tmp_path / "b", overrides=TINY)
    assert again.summary == result.summary and again.sections == result.sections
    # resuming the finished folder reads every unit back
    resumed = reproduce("training-dynamics", tmp_path / "a", overrides=TINY)
    assert resumed.summary == result.summary


def test_training_dynamics_config():
    quick = experiment_config("training-dynamics")
    assert quick["dataset"] == "digits" and quick["mask_steps"] > 0
    assert experiment_config("training-dynamics", overrides={"mask_steps": 0})["mask_steps"] == 0
    with pytest.raises(ValueError, match="every must be an int >= 1"):
        experiment_config("training-dynamics", overrides={"every": 0})
    with pytest.raises(ValueError, match="shuffle must be one of"):
        experiment_config("training-dynamics", overrides={"shuffle": "rows"})
