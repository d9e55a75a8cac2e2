"""Optuna's CMA-ES, reading its stored optimiser state as data only.

Optuna's ``CmaEsSampler`` keeps the CMA-ES optimiser of each generation in
the trials' system attributes, as a hex-encoded pickle, and unpickles it from
the study to propose the next trial. The study is a file of the run directory
(``study.db``) or a database shared with others: a tampered one would run code
on ``--resume``. This sampler unpickles that state with an unpickler that
resolves only what such a state is made of (the ``cmaes`` optimiser classes
and numpy arrays, scalars and dtypes) and refuses anything else, so a study
can never make autoprune run code, while a genuine state loads unchanged.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import cmaes
import numpy as np
from optuna.samplers import CmaEsSampler

from ..errors import AutopruneError

__all__ = ["SafeCmaEsSampler"]

# The exact objects a pickled CMA-ES optimiser names, resolved here rather than imported by name;
# numpy's under both spellings (numpy<2 wrote numpy.core, numpy>=2 writes numpy._core).
_STATE_GLOBALS: dict[tuple[str, str], Any] = {
    **{(cls.__module__, cls.__qualname__): cls for cls in (cmaes.CMA, cmaes.SepCMA, cmaes.CMAwM)},
    **{(module, name): obj for module in ("numpy.core.multiarray", "numpy._core.multiarray")
       for name, obj in (("_reconstruct", np.empty(0).__reduce__()[0]), ("scalar", np.float64(0).__reduce__()[0]))},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _StateUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _STATE_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which a CMA-ES state never holds") from None


class SafeCmaEsSampler(CmaEsSampler):
    """:class:`optuna.samplers.CmaEsSampler` whose optimiser state is read with a restricted unpickler."""

    def _restore_optimizer(self, completed_trials: list[Any]) -> Any:
        for trial in reversed(completed_trials):  # as Optuna's: the newest trial that stored a state
            attrs = {k: v for k, v in trial.system_attrs.items() if k.startswith(self._attr_key_optimizer)}
            if attrs:
                try:
                    return _StateUnpickler(io.BytesIO(bytes.fromhex(self._concat_optimizer_attrs(attrs)))).load()
                except Exception as e:  # noqa: BLE001 - whatever the bytes hold, the answer is the same: refuse
                    raise AutopruneError(
                        f"Trial {trial.number} of the study holds a CMA-ES state ({self._attr_key_optimizer}*) "
                        f"that is not plain data ({e}). "
                        "Unpickling it could run code, so autoprune will not; the study was altered or written "
                        "by another program. Start a new search (another --out, or --study-name).") from None
        return None
