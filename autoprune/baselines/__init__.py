"""The handcrafted pruning methods of the literature, as baselines on the search's protocol.

``autoprune search --agent <method>`` runs one (presets in agents/); the
search then scores its answer with the same evaluator and cost model as the
RL and Optuna agents, so every comparison table can hold them side by side.
Every method meets a MACs target, whatever its native knob; each preset says
how that knob is mapped.

One module per method; each exposes ``run(context) -> Outcome``
(:mod:`autoprune.baselines._method`), registered by name in :data:`METHODS`
and imported only when run (:func:`get_method`):

========= ==================================================================
uniform   one keep ratio everywhere (``_magnitude``)
global    one threshold on mean-normalised criterion scores (``_magnitude``)
slimming  Network Slimming: L1 on BN scales, one threshold on |gamma|
lasso     Channel Pruning (He et al. 2017): LASSO selection, least squares
dcp       Dynamic Channel Propagation: top-k utilities during training
scp       soft channel pruning with differentiable masks
dexp      kernel-level pruning from the distribution of kernel sums
          (``_dexp``; ``_kernels``, ``_compress_rate``, ``_kernel_macs``)
========= ==================================================================

What the methods share: ``_settings`` reads a preset's hyperparameters into
the method's settings dataclass ("Did you mean ...?" for a misspelt name);
``_training`` is the one resumable training loop (Slimming, DCP, SCP, DExp)
and ``TrainSettings``, the base of their settings; ``_masks`` masks channels
for DCP and SCP.
"""

from ._method import Context, Outcome, criterion_scores, train_loader
from ._registry import METHODS, get_method, register

__all__ = ["METHODS", "Context", "Outcome", "criterion_scores", "get_method", "register", "train_loader"]
