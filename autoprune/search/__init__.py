"""Search agents on the pruning environment, their presets, and the `autoprune search` run.

Every agent kind (RL, Optuna, handcrafted) implements :class:`Searcher`; the
registry (:data:`ALGORITHMS`, :func:`get_algorithm`) says which kind plays an
algorithm; :func:`search` orchestrates a run.
"""

from ._config import SearchConfig, SearchResult
from ._preset import Preset, list_presets, load_preset
from ._registry import ALGORITHMS, Algorithm, Kind, get_algorithm
from ._search import export_policy, resume_config, search, search_model, searcher_for
from ._searcher import Proposals, Searcher
from ._session import setup

__all__ = ["ALGORITHMS", "Algorithm", "Kind", "Preset", "Proposals", "SearchConfig", "SearchResult", "Searcher",
           "export_policy", "get_algorithm", "list_presets", "load_preset", "resume_config", "search", "search_model",
           "searcher_for", "setup"]
