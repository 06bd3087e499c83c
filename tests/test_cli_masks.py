"""``modscope masks`` given something other than mask files: one clear line naming what was given."""

from __future__ import annotations

import pytest
import torch

from modscope.cli import main
from modscope.masks import MaskSet
from modscope.masks.mask import Mask
from modscope.models import build_model, save_model


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    MaskSet({"a": Mask({"0.weight": torch.tensor([[True, False]])})}).save(tmp_path / "d" / "m.safetensors")
    save_model(build_model("mlp:2-3-2"), "mlp:2-3-2", tmp_path / "model.safetensors")
    return tmp_path



def test_a_folder_is_named_with_the_mask_files_in_it(folder, capsys, cli_error):
    err = cli_error(["masks", "compare", "d"])
    assert "'d' is a folder, not a mask file (it holds m.safetensors)" in err
    assert err.rstrip().endswith("give the files, e.g. d/*.safetensors")
    assert main(["masks", "compare", "d/m.safetensors"]) == 0  # what the message suggests works
    (folder / "empty").mkdir()
    assert "'empty' is a folder, not a mask file (no .safetensors in it)" in cli_error(
        ["masks", "plot", "empty", "--out", "f.png"]
    )


def test_a_model_file_is_named_as_one(folder, cli_error):
    err = cli_error(["masks", "compare", "model.safetensors"])
    assert "'model.safetensors' is a modscope model file, not a mask file" in err


def test_plot_writes_atomically_into_a_new_folder(folder):
    assert main(["masks", "plot", "d/m.safetensors", "--out", "figs/m.svg"]) == 0
    assert (folder / "figs" / "m.svg").read_text().lstrip().startswith("<?xml")
    assert [p.name for p in (folder / "figs").iterdir()] == ["m.svg"]
