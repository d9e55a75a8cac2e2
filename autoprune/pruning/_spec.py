"""Search-space specifications: which groups are searched, within which bounds.

A spec comes from ``search_spaces/<name>.yaml`` (shipped inside the package,
found through the model registry's ``space`` field), from a user's YAML file,
or, for models without one, is the automatic space "all": every group except
the stem's.

YAML layout::

    default: inner
    spaces:
      inner:
        doc: first conv of every residual block
        groups: ["layer*.conv1"]      # fnmatch patterns over group names
        exclude: []                   # optional
        bounds: [0.2, 1.0]            # keep-ratio bounds
        round: 1                      # kept channels are a multiple of this
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from .._resources import resource_dir
from ..errors import AutopruneError, unknown_name

__all__ = ["SpaceSpec", "load_spec", "AUTO_SPACE"]

AUTO_SPACE = "all"
_KEYS = {"doc", "groups", "exclude", "bounds", "round"}


@dataclass(frozen=True)
class SpaceSpec:
    """Which groups are searchable and how far each may be pruned."""

    name: str
    groups: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    bounds: tuple[float, float] = (0.2, 1.0)
    round: int = 1
    doc: str = ""

    def __post_init__(self) -> None:
        lo, hi = self.bounds
        if not 0.0 < lo <= hi <= 1.0:
            raise AutopruneError(f"Space {self.name!r}: bounds must satisfy 0 < low <= high <= 1, but got {self.bounds}.")
        if self.round < 1:
            raise AutopruneError(f"Space {self.name!r}: round must be at least 1, but got {self.round}.")


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise AutopruneError(f"Search-space file {path} is not valid YAML: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("spaces"), dict):
        raise AutopruneError(f"Search-space file {path} must hold a mapping with a 'spaces' mapping.")
    return data


def _spec(name: str, entry: dict, path: object) -> SpaceSpec:
    unknown = set(entry) - _KEYS
    if unknown:
        raise AutopruneError(f"Space {name!r} in {path}: unknown keys {sorted(unknown)}; allowed: {sorted(_KEYS)}.")
    return SpaceSpec(
        name=name,
        groups=tuple(entry.get("groups", ("*",))),
        exclude=tuple(entry.get("exclude", ())),
        bounds=tuple(float(b) for b in entry.get("bounds", (0.2, 1.0))),  # type: ignore[arg-type]
        round=int(entry.get("round", 1)),
        doc=str(entry.get("doc", "")),
    )


def space_file(stem: str) -> Path:
    """The shipped YAML file ``search_spaces/<stem>.yaml``."""
    return resource_dir("search_spaces") / f"{stem}.yaml"


def load_spec(family: str | None, space: str | os.PathLike[str] | None) -> SpaceSpec:
    """Resolve ``space`` (a name in the family's YAML, a path to a YAML, or None for the default)."""
    if space is not None and (str(space).endswith((".yaml", ".yml")) or os.sep in str(space)):
        path = Path(space)
        if not path.is_file():
            raise AutopruneError(f"Search-space file {path} does not exist.")
        data = _read_yaml(path)
        name = data.get("default") or next(iter(data["spaces"]))
        return _spec(name, data["spaces"][name], path)
    if family is None:
        if space not in (None, AUTO_SPACE):
            raise unknown_name("space", str(space), [AUTO_SPACE])
        return SpaceSpec(name=AUTO_SPACE, doc="every group except the stem's")
    path = space_file(family)
    data = _read_yaml(path)
    name = str(space) if space is not None else data.get("default") or next(iter(data["spaces"]))
    if name not in data["spaces"]:
        raise unknown_name("space", name, data["spaces"])
    return _spec(name, data["spaces"][name], path)
