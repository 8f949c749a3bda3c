"""Single-task pruners that fill the zoo (paper appendix, Algorithms 2 and 3) and the random baseline.

Every pruner takes a model already fitted with the task's head (inherited from the base model), endless
training batches and a :class:`PruneConfig`; it returns the physically shrunk, trained model and its
:class:`~edgemvp.masks.Masks` in the unpruned model's index space.

* ``ifp-activation`` / ``ifp-taylor`` (CNNs): iterative filter pruning with progressive physical shrinking.
* ``ahnp`` (ViT/DeiT): learnable head/node scores, L1-regularised and thresholded, then fine-tuning.
* ``random`` (any family): random masks, then fine-tuning (the lower-bound baseline).
"""
from edgemvp.pruners.base import PRUNERS, PruneConfig, PruneOutcome, Pruner, get_pruner, register_pruner
from edgemvp.pruners import ahnp, ifp, random  # noqa: F401,E402  (register the pruners)

__all__ = ["PRUNERS", "PruneConfig", "PruneOutcome", "Pruner", "get_pruner", "register_pruner"]
