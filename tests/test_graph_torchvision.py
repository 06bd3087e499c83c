"""torchvision's own model definitions through the structural lens (issue 12); skipped where torchvision
does not import next to this torch (PyPI's CUDA wheel beside the CPU build): the project's residual test
networks (tests/test_graph_residual.py) are the ones that always run."""

from __future__ import annotations

import pytest
import torch

from modscope.cluster import spectral_partition
from modscope.graph import WeightGraph
from modscope.graph.sites import unit_sites
from modscope.lesion import silenced
from modscope.lesion.silence import hidden_groups


@pytest.fixture(scope="module")
def models():
    try:
        import torchvision.models
    except Exception as exc:  # PyPI's CUDA build next to the CPU torch fails in several ways
        pytest.skip(f"torchvision does not import here ({type(exc).__name__}: {str(exc)[:120]})")
    return torchvision.models


# groups and nodes of the 64x64 graphs, counted from the architectures: residual="merge" has one group per
# stream (resnet18: 4 stages; every conv of a basic block but the last writes its own group)
@pytest.mark.parametrize(
    ("name", "groups", "nodes"),
    [("resnet18", {"merge": 14, "filan": 22}, {"merge": 3883, "filan": 5355}),
     ("resnet50", {"merge": 39, "filan": 54}, {"merge": 12459, "filan": 25515}),
     ("mobilenet_v2", {"merge": 44, "filan": 54}, {"merge": 17267, "filan": 18059})],
)  # fmt: skip
def test_torchvision_definitions_become_graphs(models, name, groups, nodes):
    torch.manual_seed(0)
    model = getattr(models, name)(weights=None).eval()
    for rule in ("merge", "filan"):
        g = WeightGraph.from_module(model, input_shape=(3, 64, 64), residual=rule)
        assert (len(g.layers), g.n_nodes) == (groups[rule], nodes[rule]), rule
        sites = unit_sites(model, g)
        assert sites.residual == rule and hidden_groups(g, sites)


def test_a_resnet18_module_is_clustered_and_silenced(models):
    torch.manual_seed(0)
    model = models.resnet18(weights=None).eval()
    g = WeightGraph.from_module(model, input_shape=(3, 64, 64), residual="merge")
    p = spectral_partition(g, k=8, seed=0)
    stream = next(i for i, layer in enumerate(g.layers) if layer.kind == "stream")
    labels = p.labels[g.offsets[stream] : g.offsets[stream] + g.layers[stream].size]
    units = [u for u, label in enumerate(labels) if label == labels[0]]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
        with silenced(model, g, {stream: units}):
            after = model(x)
        assert not torch.allclose(before, after) and torch.equal(model(x), before)
