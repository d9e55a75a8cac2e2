"""Search agents on the pruning environment, their presets, and the `autoprune search` run."""

from ._preset import ALGORITHMS, Preset, list_presets, load_preset
from ._search import (
           SearchConfig,
           SearchResult,
           export_policy,
           resume_config,
           search,
           setup,
)

__all__ = ["ALGORITHMS", "Preset", "SearchConfig", "SearchResult", "list_presets", "load_preset", "search", "export_policy", "resume_config",
           "setup"]
