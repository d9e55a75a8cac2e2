"""A method's hyperparameters (the preset's ``hyperparameters`` mapping) read into its settings dataclass.

Every method reads its knobs the same way: :func:`settings_from` refuses an
unknown name with "Did you mean ...?" and the known names, then the
dataclass checks each value (:func:`check` says the rule and the value).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any, TypeVar

from ..errors import AutopruneError, unknown_name

__all__ = ["check", "is_int", "is_number", "settings_from"]

S = TypeVar("S")


def settings_from(cls: type[S], hyperparameters: Mapping[str, Any], method: str) -> S:
    """``cls`` (a dataclass) built from a preset's hyperparameters; an unknown name fails with the known ones.

    ``cls.aliases`` (if any) maps a preset's name to the field it sets
    (Network Slimming's ``lambda``, a Python keyword, sets ``penalty``); the
    known names listed are the preset's. A value a field refuses fails naming
    ``method``.
    """
    aliases: dict[str, str] = dict(getattr(cls, "aliases", {}))
    known = [next((a for a, f in aliases.items() if f == field.name), field.name) for field in fields(cls)]
    values = {}
    for name, value in hyperparameters.items():
        if name not in known and name not in aliases.values():
            raise unknown_name(f"{method} hyperparameter", name, known)
        values[aliases.get(name, name)] = value
    try:
        return cls(**values)
    except AutopruneError as e:
        raise type(e)(f"{method}: {e}") from None


def check(ok: bool, rule: str, **value: object) -> None:
    """Raise :class:`AutopruneError` saying ``rule`` and the offending value unless ``ok``."""
    if not ok:
        (name, v), = value.items()
        raise AutopruneError(f"{rule}, but got {name}={v!r}.")


def is_int(value: object) -> bool:
    """An integer, and not a bool (YAML's ``true`` is no count)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """An int or a float, and not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)
