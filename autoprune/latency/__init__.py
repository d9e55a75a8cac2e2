"""Latency as a budget: measured on the user's device and runtime, predicted for any policy from lookup tables.

``build_latency_model(space, settings)`` times the parts of a model at the channel counts its space can
take (once per model, device, runtime, batch, threads and dtype, cached on disk) and returns a
:class:`LatencyModel`, the budget metric ``name="latency"``: seconds per batch for any kept counts, in
microseconds. ``measure_latency`` times a whole model the same way.
"""

from ._model import LatencyModel, Timer, build_latency_model, measure_latency
from ._runtimes import device_name, runtime_for
from ._settings import DEVICES, DTYPES, RUNTIMES, LatencySettings
from ._timer import Measurement, Runner, time_interleaved
from ._cache import default_cache_dir

__all__ = [
    "DEVICES", "DTYPES", "RUNTIMES", "LatencyModel", "LatencySettings", "Measurement", "Runner", "Timer",
    "build_latency_model", "default_cache_dir", "device_name", "measure_latency", "runtime_for", "time_interleaved",
]
