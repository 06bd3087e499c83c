"""``modscope masks train``: built-in and user task specs -> a MaskSet file, the comparison table and JSON."""

from __future__ import annotations

import json

import pytest
import torch

from modscope.cli import main
from modscope.cli.masks import compare_table
from modscope.masks import MaskSet
from modscope.models import build_model, save_model

FAST = ["--steps", "6", "--batch-size", "16", "--samples", "2", "--no-progress"]


@pytest.fixture
def here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    save_model(build_model("mlp:64-12-10", seed=1), "mlp:64-12-10", tmp_path / "model.safetensors")
    return tmp_path



def test_digits_tasks_write_a_maskset_table_and_json(here, capsys):
    argv = ["masks", "train", "model.safetensors", "--task", "low=digits:0-4", "--task", "odd=digits:1,3,5-9",
            "--out", "out/m.safetensors", "--json", "out/r.json", "--init", "0.05", *FAST]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr()
    assert "randomly initialized" not in out.err  # a model file is not flagged
    masks = MaskSet.load(here / "out" / "m.safetensors")
    assert masks.tasks == ("low", "odd")
    model = build_model("mlp:64-12-10")
    assert masks.shapes == {n: tuple(p.shape) for n, p in model.named_parameters() if n.endswith("weight")}
    assert masks.hparams["steps"] == 6 and masks.hparams["batch_size"] == 16
    doc = json.loads((here / "out" / "r.json").read_text())
    assert doc["format"] == "modscope.masks.train/1"
    assert doc["tasks"] == {"low": "digits:0-4", "odd": "digits:1,3,5-9"}
    assert doc["settings"]["steps"] == 6 and doc["settings"]["granularity"] == "weight"
    assert doc["hparams"] == json.loads(json.dumps(dict(masks.hparams)))
    assert doc["table"] == json.loads(json.dumps(compare_table(["out/m.safetensors"])))
    for task in masks.tasks:
        assert doc["kept"][task] == masks[task].total_kept / masks[task].total_size
    assert 0 < doc["kept"]["low"] < 1  # init 0.05 with lr 3e-2: some weights drop within 6 steps
    assert "IoU low vs odd" in out.out and "sharing low" in out.out
    # the same seed gives the same masks
    assert main([*argv[:-len(FAST) - 6], "--out", "again.safetensors", "--init", "0.05", *FAST]) == 0
    again = MaskSet.load(here / "again.safetensors")
    for task in masks.tasks:
        assert all(torch.equal(masks[task][n], again[task][n]) for n in masks.shapes)


def test_unit_granularity_keeps_or_drops_whole_units(here):
    argv = ["masks", "train", "mlp:64-12-10", "--task", "a=digits:0-4", "--task", "b=digits:5-9",
            "--granularity", "unit", "--init", "0.05", "--out", "u.safetensors", *FAST]  # fmt: skip
    assert main(argv) == 0
    masks = MaskSet.load(here / "u.safetensors")
    assert masks.hparams["granularity"] == "unit"
    dropped = 0
    for task in masks.tasks:
        for name in masks.shapes:
            rows = masks[task][name]
            assert torch.equal(rows.all(dim=1), rows.any(dim=1)), name  # each output unit all in or all out
            dropped += int((~rows.any(dim=1)).sum())
    assert dropped > 0


def test_arithmetic_tasks_use_the_digit_loss(here):
    argv = ["masks", "train", "mlp:42-16-20", "--task", "add=addmul:+", "--task", "mul=addmul:*",
            "--out", "a.safetensors", *FAST]  # fmt: skip
    assert main(argv) == 0
    assert MaskSet.load(here / "a.safetensors").tasks == ("add", "mul")


def test_a_factory_task_gives_data_and_its_loss(here):
    (here / "tasks.py").write_text(
        "import pathlib\n"
        "import torch\n"
        "import torch.nn.functional as F\n"
        "from torch.utils.data import TensorDataset\n"
        "g = torch.Generator().manual_seed(0)\n"
        "X = torch.rand(40, 64, generator=g)\n"
        "def loss(outputs, targets):\n"
        "    pathlib.Path('loss_called').touch()\n"
        "    return F.cross_entropy(outputs, targets)\n"
        "def first():\n"
        "    zeros, ones = torch.zeros(20, dtype=torch.long), torch.ones(20, dtype=torch.long)\n"
        "    return [(X[:20], zeros), (X[20:], ones)], loss\n"
        "def second():\n"
        "    return [(X, torch.full((40,), 3))], loss\n"
        "def tensors():\n"
        "    return TensorDataset(X, torch.arange(40) % 10)\n"
    )  # fmt: skip
    argv = ["masks", "train", "model.safetensors", "--task", "p=tasks.py:first",
            "--task", "q=tasks.py:second", "--out", "f.safetensors", *FAST]  # fmt: skip
    assert main(argv) == 0
    assert (here / "loss_called").exists()
    masks = MaskSet.load(here / "f.safetensors")
    assert masks.tasks == ("p", "q") and masks.hparams["batch_size"] is None  # batches: no drawing
    argv = ["masks", "train", "model.safetensors", "--task", "t=tasks.py:tensors", "--task", "d=digits:0-1",
            "--out", "t.safetensors", *FAST]  # fmt: skip
    assert main(argv) == 0
    assert MaskSet.load(here / "t.safetensors").hparams["batch_size"] == 16


@pytest.mark.parametrize(
    ("task", "expected"),
    [
        ("low", "'low': expected NAME=SPEC"),
        ("=digits:0-4", "expected NAME=SPEC"),
        ("a=digits:4-0", "'a=digits:4-0': digits classes must be classes 0-9 and ascending ranges"),
        ("a=digits:x", "'a=digits:x': digits classes"),
        ("a=addmul:-", "'a=addmul:-': addmul operations must be"),
        ("a=mnist:0-4", "'a=mnist:0-4': unknown SPEC 'mnist:0-4'"),
        ("a=missing.py:f", "--task 'a=missing.py:f': no Python file 'missing.py'"),
        ("a=tasks.py:nope", "--task 'a=tasks.py:nope': tasks.py defines no function 'nope'"),
        ("a=tasks.py:number", "--task 'a=tasks.py:number': number() returned a int"),
        ("a=tasks.py:broken", "--task 'a=tasks.py:broken': broken() failed (RuntimeError: no data)"),
    ],
)
def test_a_bad_task_spec_is_one_line_naming_it(here, capsys, task, expected, cli_error):
    (here / "tasks.py").write_text(
        "def number():\n    return 3\ndef broken():\n    raise RuntimeError('no data')\n"
    )
    err = cli_error(["masks", "train", "model.safetensors", "--task", task, "--out", "m.safetensors"])
    assert expected in err
    assert not (here / "m.safetensors").exists()


def test_tasks_must_agree_on_form_and_keep_their_own_losses(here, capsys, cli_error):
    (here / "tasks.py").write_text(
        "import torch\n"
        "X = torch.rand(8, 64)\n"
        "def batches():\n    return [(X, torch.zeros(8, dtype=torch.long))]\n"
        "def loss(o, t):\n    open('calls', 'a').write(f'{len(t)} ')\n"
        "    return (o[:, 0] - 5.0).square().mean()\n"
        "def own_loss():\n    return (X, torch.zeros(8, dtype=torch.long)), loss\n"
    )  # fmt: skip
    base = ["masks", "train", "model.safetensors", "--out", "m.safetensors", *FAST]
    err = cli_error([*base, "--task", "a=tasks.py:batches", "--task", "b=digits:0-4"])
    assert "tasks ['b'] give (inputs, targets) tensors but ['a'] give batches" in err
    # each task with its own loss: a's pushes logit 0 up (keeping weights), b's is cross-entropy
    assert main([*base, "--task", "a=tasks.py:own_loss", "--task", "b=digits:0-4", "--json", "r.json"]) == 0
    assert json.loads((here / "r.json").read_text())["hparams"]["steps"] == 6
    assert (here / "calls").read_text().split() == ["16"] * 6
    err = cli_error([*base, "--task", "a=digits:0-4", "--task", "a=digits:5-9"])
    assert "task 'a' given twice" in err


def test_the_output_path_is_checked_before_any_work(here, capsys, cli_error):
    (here / "taken").mkdir()
    # the model does not exist: the --out error must come first, before loading anything
    err = cli_error(["masks", "train", "nowhere.safetensors", "--task", "a=digits:0-4", "--out", "taken"])
    assert "--out" in err and "taken" in err
    err = cli_error(["masks", "train", "nowhere.safetensors", "--task", "a=digits:0-4",
                     "--out", "m.safetensors", "--json", "taken"])  # fmt: skip
    assert "--json" in err


def test_a_random_model_is_flagged(here, capsys):
    argv = ["masks", "train", "mlp:64-8-10", "--task", "a=digits:0-4", "--out", "r.safetensors", *FAST]
    assert main(argv) == 0
    assert "randomly initialized" in capsys.readouterr().err


def test_a_checkpoint_resumes_to_the_same_masks(here):
    base = ["masks", "train", "model.safetensors", "--task", "a=digits:0-4", "--init", "0.05", *FAST[2:]]
    assert main([*base, "--steps", "6", "--out", "whole.safetensors"]) == 0
    assert main([*base, "--steps", "3", "--out", "half.safetensors", "--checkpoint", "c.pt"]) == 0
    assert main([*base, "--steps", "6", "--out", "resumed.safetensors", "--checkpoint", "c.pt"]) == 0
    whole, resumed = MaskSet.load(here / "whole.safetensors"), MaskSet.load(here / "resumed.safetensors")
    assert all(torch.equal(whole.logits["a"][n], resumed.logits["a"][n]) for n in whole.shapes)
    half = MaskSet.load(here / "half.safetensors")
    assert not all(torch.equal(whole.logits["a"][n], half.logits["a"][n]) for n in whole.shapes)
