"""Bad inputs to the structural lens, through the API and the CLI: one line naming the problem."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from modscope.cli import main
from modscope.graph import GraphError, WeightGraph

MLP = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))


@pytest.mark.parametrize("layer", [nn.Linear(4, 3), nn.Conv2d(1, 2, 3), nn.BatchNorm1d(3)])
def test_a_bare_layer_is_named_with_the_way_out(layer):
    name = type(layer).__name__
    with pytest.raises(GraphError, match=rf"^the model is a bare {name} layer; .*nn\.Sequential\(model\)"):
        WeightGraph.from_module(layer)
    if isinstance(layer, nn.Linear):  # the way out works
        assert WeightGraph.from_module(nn.Sequential(layer)).n_nodes == 7


def test_a_meta_device_model_is_named():
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    with pytest.raises(GraphError, match=r"^parameter '0.weight' is on the meta device .*to_empty"):
        WeightGraph.from_module(model)


@pytest.mark.parametrize(
    "model, shape, expected",
    [
        (MLP, (5,), "module '1' (Linear) fails (mat1 and mat2 shapes cannot be multiplied (2x5 and 4x3)); "
         "its first layer module '1' (Linear) takes 4 input features"),
        (nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 2)), (3, 4, 4),
         "its first layer module '0' (Conv2d) takes 1xHxW inputs"),
    ],
)  # fmt: skip
def test_an_input_shape_that_does_not_fit_is_one_line_without_traceback(model, shape, expected, capfd):
    with pytest.raises(GraphError) as info:
        WeightGraph.from_module(model, shape)
    message = str(info.value)
    assert message.startswith(f"the model does not accept inputs of shape {shape}: ") and expected in message
    assert "\n" not in message
    assert capfd.readouterr().err == ""  # torch's ShapeProp printed a full traceback here


def test_cli_input_shape_that_does_not_fit(capfd):
    assert main(["cluster", "mlp:4-3-2", "--input-shape", "5", "--no-progress"]) == 2
    err = capfd.readouterr().err
    assert err.startswith("modscope: error: the model does not accept inputs of shape (5,)")
    assert "takes 4 input features" in err and err.count("\n") == 1
