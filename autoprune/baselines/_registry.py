"""The registry of handcrafted methods: name -> ``"module:function"``, imported on first use.

As Gymnasium's ``register(id, entry_point="module:Class")``: listing the
methods (``autoprune search --help``, preset validation) imports none of them,
and a method whose module is not installed fails only when it is run, saying so.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..errors import AutopruneError, unknown_name

if TYPE_CHECKING:
    from ._method import Context, Outcome

__all__ = ["METHODS", "get_method", "register"]

METHODS: dict[str, str] = {
    "uniform": "autoprune.baselines._magnitude:uniform",
    "global": "autoprune.baselines._magnitude:global_threshold",
    "slimming": "autoprune.baselines._slimming:run",
    "lasso": "autoprune.baselines._lasso:run",
    "dcp": "autoprune.baselines._dcp:run",
    "scp": "autoprune.baselines._scp:run",
    "dexp": "autoprune.baselines._dexp:run",
}


def register(name: str, entry_point: str) -> None:
    """Add a method: ``entry_point`` is ``"package.module:function"``, a ``run(context) -> Outcome``."""
    if ":" not in entry_point:
        raise AutopruneError(f"A method's entry point is 'package.module:function', but got {entry_point!r}.")
    METHODS[name] = entry_point


def get_method(name: str) -> Callable[[Context], Outcome]:
    """The ``run`` function of method ``name``, importing its module now."""
    if name not in METHODS:
        raise unknown_name("handcrafted method", name, METHODS)
    module, _, attr = METHODS[name].partition(":")
    try:
        found = getattr(importlib.import_module(module), attr)
    except ModuleNotFoundError as e:
        if e.name is not None and module.startswith(e.name):  # the method's own module is absent
            raise AutopruneError(f"Method {name!r} is registered at {METHODS[name]}, but {module} is not part of "
                                 "this installation; update autoprune, or pick another agent.") from e
        raise AutopruneError(f"Method {name!r} needs the package {e.name!r}, which is not installed: "
                             f"pip install {e.name}.") from e
    except AttributeError as e:
        raise AutopruneError(f"Method {name!r}: {module} has no function {attr!r} (entry point {METHODS[name]}).") from e
    return found
