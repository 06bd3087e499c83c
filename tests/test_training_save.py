"""modscope.training.save_trained: a modscope model file with training settings and metrics."""

from __future__ import annotations

import pytest
import torch

from modscope.graph import WeightGraph
from modscope.models import build_model, load_model, read_metadata
from modscope.training import TRAINING_FORMAT, save_trained, train

pytestmark = pytest.mark.usefixtures("one_thread")


def test_save_trained_round_trip(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    y = (x.sum(1) > 0).long()
    spec = "mlp:4-8-8-2:dropout=0.5"
    model = build_model(spec, 0)
    result = train(model, (x, y), epochs=2, batch_size=16, eval_set=(x, y), l2=5e-5)
    config = {**result.config, "dataset": "toy", "dropout": 0.5}
    path = save_trained(model, spec, tmp_path / "net.safetensors", config, result)
    loaded, loaded_spec = load_model(path)
    assert loaded_spec["dropout"] == 0.5
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    meta = read_metadata(path)
    assert meta["format"] == TRAINING_FORMAT
    assert meta["training"]["dataset"] == "toy" and meta["training"]["l2"] == 5e-5
    assert meta["metrics"]["eval_accuracy"] == result.eval_accuracy and meta["metrics"]["steps"] == 8
    assert len(meta["history"]) == 2
    assert WeightGraph.from_module(loaded).layer_sizes == (4, 8, 8, 2)  # the structural lens reads it
    # config defaults to result.config; a spec that does not fit is refused
    assert (
        read_metadata(save_trained(model, spec, tmp_path / "b.safetensors", result=result))["training"][
            "seed"
        ]
        == 0
    )
    with pytest.raises(ValueError, match="do not fit"):
        save_trained(model, "mlp:4-9-2", tmp_path / "bad.safetensors", result=result)
