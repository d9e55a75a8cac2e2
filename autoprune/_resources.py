"""Locate the YAML folders (search_spaces/, agents/) that ship with autoprune, and its cache.

In a wheel they are package data (``autoprune/search_spaces``); in a source
checkout, editable install included, they sit at the top of the repository.
"""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def resource_dir(kind: str) -> Path:
    """The folder holding the shipped ``kind`` YAML files ("search_spaces" or "agents")."""
    for candidate in (_PACKAGE / kind, _PACKAGE.parent / kind):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"autoprune's {kind}/ folder is missing from the installation ({_PACKAGE}).")


def cache_root() -> Path:
    """Where autoprune keeps downloads and decoded data: ``$AUTOPRUNE_CACHE`` or ``~/.cache/autoprune``."""
    env = os.environ.get("AUTOPRUNE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "autoprune"
