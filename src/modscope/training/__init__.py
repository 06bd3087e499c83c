"""Making the networks modscope analyses: training, pruning, clusterable init and regularizers (SPEC §1.5).

* :func:`train` -- a seeded, deterministic (on CPU), checkpointed and resumable training loop: Adam or SGD,
  dropout (in the model), L1/L2 weight penalties, gradient clipping, cross-entropy over one or several
  digit classes per example (the arithmetic tasks of Csordás et al., arXiv:2010.02066), MSE or any loss,
  an evaluation set, a progress callback ``progress(label, step, total_steps, info)``; returns a
  :class:`TrainResult` (frozen, JSON via ``to_dict``). :func:`evaluate` gives loss and accuracy. The loop
  is a driver over :func:`train_step` (one update) and :class:`LoopState` (the position a checkpoint holds).
* :class:`PruneSchedule` -- magnitude pruning after training with a polynomial per-layer sparsity schedule
  (50% -> 90%, every 10 steps), on ``torch.nn.utils.prune``; ``train(..., prune=PruneSchedule())``
  runs the pruning phase (Filan et al., "Clusterability in Neural Networks", arXiv:2103.03386).
  :func:`layer_sparsity` measures it.
* :func:`clusterable_init` -- plant modules: scale within-module weights by 4.6 and cross-module weights
  by 0.6 (Filan et al.); returns the :class:`ModuleAssignment`.
* :func:`clusterability_penalty` -- differentiable sum of the 2nd..(e+1)-th smallest eigenvalues of the
  weight graph's normalized Laplacian, invariant to rescaling units (:func:`path_flow`); use it with
  ``train(..., regularizer=(penalty_fn, weight))``. :func:`weight_penalty` is the L1/L2 term.
* :func:`save_trained` -- a modscope model file (:func:`modscope.models.save_model`) with the training
  settings and metrics in its metadata, loadable by the CLI and the structural lens.
* :func:`train_with_snapshots` -- :func:`train` that also keeps the network (a model file) before the first
  update, every ``every`` updates and at the end, for analyses of modularity over training.

The library never prints; it logs to ``logging.getLogger("modscope.training...")``.
"""

from modscope.progress import Progress
from modscope.training.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, save_checkpoint
from modscope.training.data import as_tensors
from modscope.training.evaluation import evaluate
from modscope.training.init import ModuleAssignment, clusterable_init
from modscope.training.loop import train
from modscope.training.losses import IGNORE_INDEX, LOSSES, cross_entropy, mse
from modscope.training.prune import PruneSchedule, layer_sparsity
from modscope.training.regularizer import clusterability_penalty, path_flow, weight_penalty
from modscope.training.result import EpochRecord, Evaluation, TrainResult
from modscope.training.save import TRAINING_FORMAT, save_trained
from modscope.training.snapshots import train_with_snapshots
from modscope.training.state import LoopState
from modscope.training.step import OPTIMIZERS, Regularizer, StepOutput, train_step

__all__ = [
    "CHECKPOINT_FORMAT",
    "IGNORE_INDEX",
    "LOSSES",
    "OPTIMIZERS",
    "TRAINING_FORMAT",
    "EpochRecord",
    "Evaluation",
    "LoopState",
    "ModuleAssignment",
    "Progress",
    "PruneSchedule",
    "Regularizer",
    "StepOutput",
    "TrainResult",
    "as_tensors",
    "clusterability_penalty",
    "clusterable_init",
    "cross_entropy",
    "evaluate",
    "layer_sparsity",
    "load_checkpoint",
    "mse",
    "path_flow",
    "save_checkpoint",
    "save_trained",
    "train",
    "train_step",
    "train_with_snapshots",
    "weight_penalty",
]
