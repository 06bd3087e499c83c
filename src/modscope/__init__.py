"""modscope: is a trained neural network modular, where, and how sure are we?

Two lenses on a PyTorch model:

* structural -- :mod:`modscope.graph` turns weights into a graph of units, :mod:`modscope.cluster`
  partitions it by spectral clustering and tests the normalized cut against shuffled networks
  (Filan et al., "Clusterability in Neural Networks", arXiv:2103.03386);
* functional -- :mod:`modscope.masks` learns binary weight masks per sub-task
  (Csordás et al., "Are Neural Nets Modular?", ICLR 2021, arXiv:2010.02066).

:mod:`modscope.lesion` connects them: it silences the modules the structural lens finds and measures what
the network loses.
"""

import importlib

from modscope.cluster import (
    ClusterabilityResult,
    Partition,
    clusterability,
    ncut,
    spectral_partition,
)
from modscope.graph import GraphError, WeightGraph, shuffle_graph

__version__ = "0.1.0"

# The functional lens and the lesions need torch; they are imported on first use so that `import modscope`
# (and every clustering worker process) stays free of it.
_MASKS = (
    "Mask",
    "MaskEvalTable",
    "MaskSet",
    "evaluate_masks",
    "iomin",
    "iou",
    "mask_stability",
    "masked",
    "masked_call",
    "p_reuse",
    "p_specialize",
    "sharing",
    "train_masks",
)
_LESION = (
    "LesionStudy",
    "ModuleLesion",
    "PairLesion",
    "PairStudy",
    "lesion_modules",
    "lesion_pairs",
    "silenced",
)
_LAZY = {**dict.fromkeys(_MASKS, "modscope.masks"), **dict.fromkeys(_LESION, "modscope.lesion")}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'modscope' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    *_MASKS,
    *_LESION,
    "ClusterabilityResult",
    "GraphError",
    "Partition",
    "WeightGraph",
    "__version__",
    "clusterability",
    "ncut",
    "shuffle_graph",
    "spectral_partition",
]
