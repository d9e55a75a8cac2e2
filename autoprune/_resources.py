"""Locate the YAML folders (search_spaces/, agents/) that ship with autoprune.

In a wheel they are package data (``autoprune/search_spaces``); in a source
checkout, editable install included, they sit at the top of the repository.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def resource_dir(kind: str) -> Path:
    """The folder holding the shipped ``kind`` YAML files ("search_spaces" or "agents")."""
    for candidate in (_PACKAGE / kind, _PACKAGE.parent / kind):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"autoprune's {kind}/ folder is missing from the installation ({_PACKAGE}).")
