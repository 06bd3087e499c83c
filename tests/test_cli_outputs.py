"""Output paths are checked before any work: a typo in ``--json`` must not cost an hour of clustering."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from modscope.cli import main


@pytest.fixture
def no_work(monkeypatch):
    """Every command's first piece of work raises: an error about the output must come before it."""

    def work(*args, **kwargs):
        raise AssertionError("work started before the output path was checked")

    import modscope.experiments
    import modscope.masks.maskset
    import modscope.models
    import modscope.report
    import modscope.training.recipes

    monkeypatch.setattr(modscope.models, "resolve_model", work)
    monkeypatch.setattr(modscope.training.recipes, "run_recipe", work)
    monkeypatch.setattr(modscope.experiments, "reproduce", work)
    monkeypatch.setattr(modscope.report, "write_report", work)
    monkeypatch.setattr(modscope.masks.maskset.MaskSet, "load", work)


@pytest.fixture
def afile(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("")
    return "afile"


CASES = [
    (["cluster", "mlp:4-3-2", "--json", "afile/r.json"], "--json 'afile/r.json'", "is a file, not a folder"),
    (["cluster", "mlp:4-3-2", "--json", "."], "--json '.'", "is a folder"),
    (["cluster", "mlp:4-3-2", "--plot", "afile/g.png"], "--plot 'afile/g.png'", "is a file, not a folder"),
    (["cluster", "mlp:4-3-2", "--plot", "g.pngx"], "--plot 'g.pngx'", "cannot write .pngx images"),
    (["train", "clusterability-mlp", "--out", "afile/m.st"], "--out 'afile/m.st'", "is a file, not a folder"),
    (["train", "clusterability-mlp", "--out", "m.safetensors", "--checkpoint", "afile/ck"],
     "--checkpoint 'afile/ck.train.pt'", "is a file, not a folder"),
    (["reproduce", "addmul", "--out", "afile"], "--out 'afile'", "is a file, not a folder"),
    (["demo", "--out", "afile/run"], "--out 'afile/run'", "is a file, not a folder"),
    (["report", "results.json", "--out", "afile/r.html"], "--out 'afile/r.html'", "is a file, not a folder"),
    (["masks", "plot", "m.safetensors", "--out", "."], "--out '.'", "is a folder"),
    (["masks", "plot", "m.safetensors", "--out", "fig.doc"], "--out 'fig.doc'", "cannot write .doc images"),
]  # fmt: skip


@pytest.mark.parametrize("argv, names, problem", CASES, ids=[" ".join(c[0][:3]) for c in CASES])
def test_bad_output_path_is_refused_before_any_work(argv, names, problem, afile, no_work, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"modscope: error: {names}") and problem in err
    assert err.count("\n") == 1  # one line, no traceback


@pytest.mark.parametrize(
    "argv, option",
    [
        (["cluster", "mlp:4-3-2", "--seed", "-1"], "--seed"),
        (["cluster", "mlp:4-3-2", "--init-seed", "-1"], "--init-seed"),
        (["train", "clusterability-mlp", "--out", "m.safetensors", "--seed", "-5"], "--seed"),
    ],
)
def test_negative_seed_option_is_named(argv, option, afile, no_work, capsys):
    assert main(argv) == 2
    assert capsys.readouterr().err.startswith(f"modscope: error: {option} must be a non-negative int")


def test_training_refuses_an_unwritable_checkpoint_before_the_first_step(tmp_path):
    from modscope.training import train

    (tmp_path / "afile").write_text("")
    model = nn.Linear(2, 2)
    before = model.weight.detach().clone()
    data = torch.utils.data.TensorDataset(torch.randn(8, 2), torch.zeros(8, dtype=torch.long))
    with pytest.raises(NotADirectoryError, match=r"^checkpoint '.*afile/ck.pt': .* is a file, not a folder"):
        train(model, data, steps=1, batch_size=4, checkpoint=tmp_path / "afile" / "ck.pt")
    assert torch.equal(model.weight, before)
    with pytest.raises(IsADirectoryError, match=r"^checkpoint"):
        train(model, data, steps=1, batch_size=4, checkpoint=tmp_path)


def test_mask_training_refuses_an_unwritable_checkpoint_before_the_first_step(tmp_path, monkeypatch):
    import modscope.masks.train as mtrain

    monkeypatch.setattr(mtrain, "select_parameters", lambda *a: pytest.fail("work started"))
    model = nn.Sequential(nn.Linear(2, 2))
    batches = [(torch.randn(4, 2), torch.zeros(4, dtype=torch.long))]
    with pytest.raises(IsADirectoryError, match=r"^checkpoint"):
        mtrain.train_masks(model, {"t": batches}, F.cross_entropy, steps=1, beta=0.01, checkpoint=tmp_path)
