"""autoprune: automated channel pruning of CNNs.

Find how many channels each layer group keeps under a FLOPs budget, make the
model physically smaller, fine-tune it, and export the per-layer rates.
"""

import gymnasium as _gymnasium

from ._version import __version__
from .checkpoints import load_model, load_pruned, save_pruned
from .errors import AutopruneError
from .export import export_model, export_pruned
from .policy import Policy
from .pruning import apply

ENV_ID = "autoprune/ChannelPruning-v0"
if ENV_ID not in _gymnasium.registry:
    _gymnasium.register(id=ENV_ID, entry_point="autoprune.env:PruningEnv")

__all__ = ["AutopruneError", "Policy", "apply", "export_model", "export_pruned", "load_model", "load_pruned", "save_pruned",
           "__version__", "ENV_ID"]
