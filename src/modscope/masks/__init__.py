"""Functional lens: differentiable weight masks per sub-task (SPEC §2.1–2.2).

Csordás, van Steenkiste, Schmidhuber, "Are Neural Nets Modular? Inspecting Functional Modularity Through
Differentiable Weight Masks", ICLR 2021, arXiv:2010.02066. :func:`train_masks` learns one binary mask per
sub-task on a frozen model (any ``nn.Module``, all tasks in one vectorized loop), per weight or per unit,
channel or head (:func:`groupings`), or, as :class:`MaskedModel`, in the user's own loop, with a pluggable
gate distribution (:class:`GumbelSigmoid`, :class:`HardConcrete`) and sparsity penalty (:class:`LogitPenalty`,
:class:`ExpectedKeptPenalty`); :class:`MaskSet` holds them; :func:`masked` applies one;
:mod:`~modscope.masks.metrics` compares them; :func:`evaluate_masks`, :func:`p_specialize` and
:func:`p_reuse` turn them into the papers' modularity measures; :func:`control_masks` trains the same masks
where there is nothing to find (a random-weight copy, shuffled labels: :mod:`~modscope.masks.controls`).
"""

from modscope.masks.apply import masked, masked_call, masked_parameters
from modscope.masks.controls import (
    CONTROLS,
    Control,
    control_masks,
    control_setups,
    random_weight_copy,
    shuffled_labels,
)
from modscope.masks.evaluate import Condition, EvalResult, MaskEvalTable, evaluate_masks
from modscope.masks.gates import Gate, GumbelSigmoid, HardConcrete
from modscope.masks.grouping import GRANULARITIES, Grouping, groupings
from modscope.masks.mask import Mask
from modscope.masks.masked_model import MaskedModel
from modscope.masks.maskset import MaskSet, model_fingerprint
from modscope.masks.metrics import Overlap, Stability, iomin, iou, mask_stability, sharing
from modscope.masks.modularity import Reuse, p_reuse, p_specialize, reference_score, relative_drop
from modscope.masks.penalty import ExpectedKeptPenalty, LogitPenalty, Penalty
from modscope.masks.selection import default_masked_names, select_parameters
from modscope.masks.train import train_masks

__all__ = [
    "CONTROLS",
    "GRANULARITIES",
    "Condition",
    "Control",
    "EvalResult",
    "ExpectedKeptPenalty",
    "Gate",
    "Grouping",
    "GumbelSigmoid",
    "HardConcrete",
    "LogitPenalty",
    "Mask",
    "MaskEvalTable",
    "MaskSet",
    "MaskedModel",
    "Overlap",
    "Penalty",
    "Reuse",
    "Stability",
    "control_masks",
    "control_setups",
    "default_masked_names",
    "evaluate_masks",
    "groupings",
    "iomin",
    "iou",
    "mask_stability",
    "masked",
    "masked_call",
    "masked_parameters",
    "model_fingerprint",
    "p_reuse",
    "p_specialize",
    "random_weight_copy",
    "reference_score",
    "relative_drop",
    "select_parameters",
    "sharing",
    "shuffled_labels",
    "train_masks",
]
