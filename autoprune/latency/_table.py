"""The lookup table: each unit's measured latency on its grid, compiled into arrays a query only indexes.

A search asks for thousands of predictions, so the grids are expanded once, by (bi)linear interpolation,
to every count each group can take (0 to its channels): a query is then one gather per group and one per
pair of groups, plus a sum (a few microseconds). Counts outside a unit's grid take its nearest end.
Measured values are made non-decreasing along each axis first (a running maximum), so timing noise never
makes the prediction fall when a count grows: a budget metric must not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ._units import Unit

__all__ = ["UnitTable", "CompiledTable"]


@dataclass(frozen=True)
class UnitTable:
    """A unit with its latency (seconds) at each of its points (:meth:`Unit.points`' order)."""

    unit: Unit
    seconds: tuple[float, ...]

    def to_dict(self, names: Sequence[str]) -> dict:
        return {"name": self.unit.name, "axes": [names[j] for j in self.unit.axes],
                "grids": [list(g) for g in self.unit.grids], "seconds": list(self.seconds)}

    @classmethod
    def from_dict(cls, data: dict, names: Sequence[str]) -> UnitTable:
        index = {n: j for j, n in enumerate(names)}
        unit = Unit(str(data["name"]), tuple(index[a] for a in data["axes"]),
                    tuple(tuple(int(v) for v in g) for g in data["grids"]))
        seconds = tuple(float(s) for s in data["seconds"])
        expected = (1 + sum(len(g) for g in unit.grids) if unit.additive
                    else int(np.prod([len(g) for g in unit.grids], dtype=np.int64)))
        if len(seconds) != expected or len(unit.grids) != len(unit.axes):
            raise ValueError(f"unit {unit.name!r}: {len(seconds)} values for grids of {[len(g) for g in unit.grids]}")
        return cls(unit, seconds)


def _dense(grid: Sequence[int], values: np.ndarray, channels: int, axis: int) -> np.ndarray:
    """``values`` (measured at ``grid`` along ``axis``) interpolated to every count 0..channels along it."""
    x = np.arange(channels + 1, dtype=np.float64)
    return np.apply_along_axis(lambda v: np.interp(x, np.asarray(grid, dtype=np.float64), v), axis, values)


class CompiledTable:
    """The sum of all units' latencies for any kept counts, as flat arrays (see the module docstring)."""

    def __init__(self, tables: Sequence[UnitTable], channels: np.ndarray) -> None:
        channels = np.asarray(channels, dtype=np.int64)
        n = len(channels)
        self.channels = channels
        single = [np.zeros(c + 1) for c in channels]
        pairs: dict[tuple[int, int], np.ndarray] = {}
        constant = 0.0
        for t in tables:
            u, s = t.unit, np.asarray(t.seconds, dtype=np.float64)
            if not u.axes:
                constant += float(s[0])
            elif len(u.axes) == 1:
                single[u.axes[0]] += _dense(u.grids[0], np.maximum.accumulate(s), channels[u.axes[0]], 0)
            elif not u.additive:
                (i, j), v = u.axes, s.reshape(len(u.grids[0]), len(u.grids[1]))
                v = np.maximum.accumulate(np.maximum.accumulate(v, axis=0), axis=1)
                d = _dense(u.grids[1], _dense(u.grids[0], v, channels[i], 0), channels[j], 1)
                if i > j:
                    i, j, d = j, i, d.T
                pairs[(i, j)] = pairs.get((i, j), 0) + d
            else:  # the all-whole time, plus each axis's own change from it
                constant += float(s[0])
                at = 1
                for j, grid in zip(u.axes, u.grids):
                    along = np.maximum.accumulate(s[at:at + len(grid)])
                    single[j] += _dense(grid, along, channels[j], 0) - s[0]
                    at += len(grid)
        self.constant = constant
        self._single_at = np.concatenate([[0], np.cumsum(channels + 1)[:-1]]).astype(np.int64)
        self._single = np.concatenate(single) if n else np.zeros(0)
        keys = sorted(pairs)
        self._pair_i = np.array([i for i, _ in keys], dtype=np.int64)
        self._pair_j = np.array([j for _, j in keys], dtype=np.int64)
        self._pair_cols = channels[self._pair_j] + 1 if keys else np.zeros(0, dtype=np.int64)
        sizes = [pairs[k].size for k in keys]
        self._pair_at = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64) if keys else np.zeros(0, np.int64)
        self._pairs = np.concatenate([pairs[k].ravel() for k in keys]) if keys else np.zeros(0)

    def __call__(self, counts: np.ndarray) -> float:
        """Summed unit latency (seconds) for kept ``counts`` (ints, one per searchable group, within 0..channels)."""
        total = self.constant + self._single[self._single_at + counts].sum()
        if self._pairs.size:
            total += self._pairs[self._pair_at + counts[self._pair_i] * self._pair_cols + counts[self._pair_j]].sum()
        return float(total)
