"""The latency model: a policy's latency predicted from per-unit lookup tables, calibrated end to end.

NetAdapt's and PaddleSlim's idea: time the parts of the model (the units of :mod:`._units`) at the channel
counts the space can take, sampled on a grid of up to ``grid`` counts a group, and predict a policy's
latency as the sum of its units' latencies, interpolated between the measured counts (:mod:`._table`).

What the units miss is handled by calibration, not by timing more pieces: the stem and classifier are
units like any other, but the operations between units (functional ReLUs, additions, pooling in a
parent's forward) and the runtime's own per-call overhead are not, and units timed alone run with warmer
caches than inside the model. So the model is also timed end to end, whole and at ``calibration``
random policies, interleaved with the units; the prediction is ``scale * table + offset``, the least-
squares line through those points. A constant alone would miss the glue that grows with the widths
(the ReLUs after additions), a scale alone the per-call overhead; both come from the same measurements,
so no setting-specific constant is guessed. ``base`` is the unpruned model's measured latency.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import AutopruneError
from ..pruning import PrunableSpace
from ._cache import base_key, cache_path, load_entry, save_entry
from ._runtimes import device_name, runtime_for
from ._settings import LatencySettings
from ._table import CompiledTable, UnitTable
from ._timer import Measurement, fixed_threads, time_interleaved
from ._units import Unit, capture_inputs, configurations, find_units, pruned_model

__all__ = ["LatencyModel", "Timer", "build_latency_model", "measure_latency"]

Timer = Callable[[nn.Module, tuple[torch.Tensor, ...], LatencySettings], Measurement]
"""A clock to measure with instead of the runtime: ``timer(module, inputs, settings)`` is the latency of one
call ``module(*inputs)`` (inputs at the settings' batch). Tests use a deterministic one."""


def _batched(example: torch.Tensor, batch: int) -> torch.Tensor:
    return example[:1].expand(batch, *example.shape[1:]).contiguous()


def measure_latency(model: nn.Module, example: torch.Tensor, settings: LatencySettings) -> Measurement:
    """The latency of ``model`` (a copy of it; the model is not changed) on inputs shaped like ``example``,
    whose batch dimension becomes ``settings.batch``, in the settings' runtime, device, dtype and threads."""
    settings = settings.resolved()
    runner = runtime_for(settings).prepare(model, (_batched(example, settings.batch),))
    return time_interleaved([runner], settings)[0]


class LatencyModel:
    """Predicted latency (seconds per batch) of any kept counts of a space: a budget metric.

    ``name`` "latency", ``unit`` "s", ``base`` the unpruned model's measured latency (its full measurement:
    :attr:`base_measurement`). Calling it costs a few microseconds (:class:`~._table.CompiledTable`), and
    it is non-decreasing in every count. :meth:`measure` builds the pruned model and times it for real.
    Built by :func:`build_latency_model`.
    """

    name = "latency"
    unit = "s"

    def __init__(self, space: PrunableSpace, settings: LatencySettings, entry: dict[str, Any], *,
                 path: os.PathLike[str] | None = None, from_cache: bool = False, timer: Timer | None = None) -> None:
        self.space = space
        self.settings = settings
        self.key: dict[str, Any] = entry["key"]
        self.path = path
        self.from_cache = from_cache
        self.timer = timer
        self.tables = [UnitTable.from_dict(d, space.names) for d in entry["units"]]
        self.untimed: list[str] = [str(n) for n in entry["untimed"]]
        cal = entry["calibration"]
        self.scale, self.offset = float(cal["scale"]), float(cal["offset"])
        self.calibration_points: list[dict[str, Any]] = list(cal["points"])
        self.base_measurement = Measurement(**entry["base"])
        self.base = self.base_measurement.fastest
        self.build_seconds = float(entry["build_seconds"])
        self._table = CompiledTable(self.tables, space.channels)
        self._channels = np.asarray(space.channels, dtype=np.int64)
        if not self.scale > 0:
            raise ValueError(f"calibration scale {self.scale} is not positive")

    def table(self, counts: np.ndarray) -> float:
        """The units' summed latency before calibration (seconds)."""
        k = np.asarray(counts)
        if k.shape != self._channels.shape:
            raise AutopruneError(f"Expected {len(self._channels)} kept counts for space {self.space.name!r}, "
                                 f"but got shape {k.shape}.")
        # counts beyond a group's range would read the next group's entries: clamp (np.minimum: 3 us, np.clip: 20)
        return self._table(np.maximum(np.minimum(k.astype(np.int64, copy=False), self._channels), 0))

    def __call__(self, counts: np.ndarray) -> float:
        """Predicted seconds per batch when searchable group ``j`` keeps ``counts[j]`` channels."""
        return self.scale * self.table(counts) + self.offset

    def pruned(self, counts: np.ndarray) -> nn.Module:
        """The space's model pruned to ``counts`` (the last channels of each group go: which ones does not change
        the latency), as :meth:`measure` times it."""
        return pruned_model(self.space, np.asarray(counts, dtype=np.int64))

    def measure(self, counts: np.ndarray) -> Measurement:
        """Build the model pruned to ``counts`` and time it end to end (with the model's timer, if it has one)."""
        return self.measure_all([counts])[0]

    def measure_all(self, policies: Sequence[np.ndarray], *, progress: bool = False) -> list[Measurement]:
        """:meth:`measure` of each of ``policies``, timed interleaved: compare these with each other (a speed-up
        over the unpruned model timed among them), not with a timing of another moment."""
        example = (_batched(_example(self.space), self.settings.batch),)
        models = [self.pruned(c) for c in policies]
        with fixed_threads(self.settings.threads):
            return _time_jobs([(m, example) for m in models], self.settings, self.timer, progress, "measuring latency")

    def __repr__(self) -> str:
        return (f"LatencyModel({self.space.arch}, {self.settings.runtime} on {self.settings.device}, batch "
                f"{self.settings.batch}, {self.settings.threads} threads: base {self.base_measurement}, "
                f"{len(self.tables)} units)")


def _example(space: PrunableSpace) -> torch.Tensor:
    return torch.randn(1, *space.info.input_size, generator=torch.Generator().manual_seed(0))


def _timer_name(timer: Timer | None) -> str:
    return "runtime" if timer is None else f"{getattr(timer, '__module__', '?')}.{getattr(timer, '__qualname__', type(timer).__name__)}"


def build_latency_model(space: PrunableSpace, settings: LatencySettings, *,
                        cache_dir: str | os.PathLike[str] | None = None, timer: Timer | None = None,
                        progress: bool = True, grid: int = 8, calibration: int = 10) -> LatencyModel:
    """The latency model of ``space`` in ``settings``: loaded from the cache when it was built for exactly this
    setting (see :mod:`._cache`), else measured (minutes for a ResNet-56 on a CPU) and cached.

    Args:
        space: the prunable space; its model's structure (not its weights) is timed.
        settings: runtime, device, batch, threads, dtype and the timing's repeats.
        cache_dir: the folder of cached tables (default ``$AUTOPRUNE_CACHE/latency``, ``~/.cache/autoprune/latency``).
        timer: measure with this instead of the runtime (see :data:`Timer`); part of the cache key.
        progress: show progress bars while measuring.
        grid: counts timed per group at most (spread over its options; interpolated between).
        calibration: policies timed end to end besides the unpruned model for the calibration: the narrowest
            and ``calibration - 1`` random ones.

    Raises:
        LatencyError: the device or dtype cannot be used (``cuda`` without CUDA, ...).
        DependencyNotInstalled: ``onnxruntime`` asked for and not installed (the message has the install hint).
    """
    if not isinstance(grid, int) or grid < 2:
        raise AutopruneError(f"grid must be an integer of at least 2, but got {grid!r}.")
    if not isinstance(calibration, int) or calibration < 1:
        raise AutopruneError(f"calibration must be an integer of at least 1, but got {calibration!r}.")
    settings = settings.resolved()
    runtime = runtime_for(settings)
    extra = {"grid": grid, "calibration": calibration, "timer": _timer_name(timer)}
    key = base_key(space, {**settings.to_dict(), **extra}, device_name(settings.device), runtime.name, runtime.version)
    path = cache_path(cache_dir, key)
    model = load_entry(path, key, lambda e: LatencyModel(space, settings, e, path=path, from_cache=True, timer=timer))
    if model is not None:
        return model
    with fixed_threads(settings.threads):  # the pruned models' forwards too: fewer threads than cores on a busy machine
        entry = _measure(space, settings, key, timer, progress, grid, calibration)
    save_entry(path, entry)
    return LatencyModel(space, settings, entry, path=path, timer=timer)


def _measure(space: PrunableSpace, settings: LatencySettings, key: dict[str, Any], timer: Timer | None,
             progress: bool, grid: int, calibration: int) -> dict[str, Any]:
    """Time every unit at its points and the calibration policies end to end; the cache entry."""
    start = time.perf_counter()
    units, untimed = find_units(space, grid)
    n = len(space.searchable)
    full = np.array([space.count_options(j)[-1] for j in range(n)], dtype=np.int64)
    lo = space.counts(np.full(n, space.spec.bounds[0]))
    rng = np.random.default_rng(0)
    policies = [full, lo] + [space.counts(rng.uniform(*space.spec.bounds, n)) for _ in range(calibration - 1)]
    example = _example(space)
    shared: dict[tuple, torch.Tensor] = {}

    def inputs_at_batch(args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        out = []
        for x in args:  # timing depends on shapes, not values: one random tensor per shape
            if not x.is_floating_point():
                out.append(_batched(x, settings.batch))
                continue
            shape = (settings.batch, *x.shape[1:])
            if (shape, x.dtype) not in shared:
                shared[(shape, x.dtype)] = torch.randn(shape, dtype=x.dtype, generator=torch.Generator().manual_seed(1))
            out.append(shared[(shape, x.dtype)])
        return tuple(out)

    jobs: list[tuple[nn.Module, tuple[torch.Tensor, ...]]] = []
    index: dict[str, int] = {}
    at = [[-1] * len(u.points(full)) for u in units]
    for counts, taken in tqdm(configurations(units, full), desc="latency table: pruned models", unit="model",
                              disable=not progress, leave=False):
        pruned = pruned_model(space, counts)
        captured = {name: (m, args, out) for name, m, args, out
                    in capture_inputs(pruned, {units[u].name for u, _ in taken}, example)}
        for u, p in taken:
            module, args, out_shapes = captured[units[u].name]
            signature = repr((repr(module), [(tuple(a.shape), str(a.dtype)) for a in args], out_shapes))
            if signature not in index:  # identical blocks at identical widths are timed once
                index[signature] = len(jobs)
                jobs.append((module, inputs_at_batch(args)))
            at[u][p] = index[signature]
    first_e2e = len(jobs)
    jobs += [(pruned_model(space, c), (_batched(example, settings.batch),)) for c in policies]
    seconds = _time_jobs(jobs, settings, timer, progress)

    tables = [UnitTable(u, tuple(seconds[i].fastest for i in points)) for u, points in zip(units, at)]
    compiled = CompiledTable(tables, space.channels)
    sums = np.array([compiled(c) for c in policies])
    measured = np.array([m.fastest for m in seconds[first_e2e:]])
    scale, offset = _fit(sums, measured)
    points = [{"counts": c.tolist(), "table": float(s), "measured": m.to_dict()}
              for c, s, m in zip(policies, sums, seconds[first_e2e:])]
    return {"key": key, "units": [t.to_dict(space.names) for t in tables], "untimed": untimed,
            "calibration": {"scale": scale, "offset": offset, "points": points},
            "base": seconds[first_e2e].to_dict(), "build_seconds": time.perf_counter() - start}


def _time_jobs(jobs: list[tuple[nn.Module, tuple[torch.Tensor, ...]]], settings: LatencySettings,
               timer: Timer | None, progress: bool, desc: str = "latency table") -> list[Measurement]:
    if timer is not None:
        return [timer(m, args, settings) for m, args in jobs]
    runtime = runtime_for(settings)
    runners = [runtime.prepare(m, args) for m, args in tqdm(jobs, desc=f"{desc}: {runtime.name} set-up",
                                                            unit="model", disable=not progress, leave=False)]
    return time_interleaved(runners, settings, progress=progress, desc=f"{desc}: timing")


def _fit(sums: np.ndarray, measured: np.ndarray) -> tuple[float, float]:
    """The least-squares line measured ~ scale * sums + offset; where the points cannot fix a line that is
    positive over them (one width only, or noise larger than the spread of the policies: a slope of 0 or
    below, or a line below 0 at the narrowest policy), the scale alone (the line through the origin), which
    keeps every prediction positive and rising with the widths."""
    if np.ptp(sums) > 0:
        scale, offset = np.polyfit(sums, measured, 1)
        if scale > 0 and scale * sums.min() + offset > 0:
            return float(scale), float(offset)
    warnings.warn("The latency calibration's points fix no line positive over them (the timings were noisier than "
                  "the policies differ); using a scale alone.", stacklevel=3)
    return float(measured @ sums / (sums @ sums)), 0.0
