"""Budgets: parse a target of any metric (MACs, params, latency), check it is reachable, meet it by bisection.

``uniform`` keeps the same ratio in every searchable group; ``global`` ranks
all channels of all groups together on a criterion (each group's scores
divided by their mean, so layers of different scale compare) and keeps the
best. Both find the largest model whose value under the run's budget metric
(:mod:`._metric`; MACs when none is given) stays within the target, using the
analytic cost model or a latency table (microseconds a query), never a forward pass.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Mapping

import numpy as np

from ..errors import BudgetError, unknown_name
from ._metric import Metric, flops_metric, format_value
from ._space import PrunableSpace

__all__ = ["parse_target", "check_target", "reachable", "uniform_counts", "global_counts", "ALLOCATIONS", "counts_for_target"]

# how `prune --method` spreads a budget over the groups (not the handcrafted methods of autoprune.baselines)
ALLOCATIONS = ("uniform", "global")


_UNITS = {  # per metric: suffix -> multiplier, what a count is called, the unit of the base
    "flops": ({"K": 1e3, "M": 1e6, "G": 1e9}, "a MAC count like 60M", "MACs"),
    "params": ({"K": 1e3, "M": 1e6, "G": 1e9}, "a parameter count like 1.2M", "params"),
    "latency": ({"US": 1e-6, "MS": 1e-3, "S": 1.0}, "a latency like 4.5ms (us, ms or s)", "latency"),
}


def parse_target(value: str | float, base: float | Callable[[], float], metric: str = "flops") -> float:
    """Fraction of the base kept: a bare number is the fraction; ``"60M"`` MACs, ``"1.2M"`` params, ``"4.5ms"``.

    The one parser of targets for every command, for the budget ``metric`` ("flops", "params",
    "latency"). ``base`` (the unpruned model's value, in MACs, params or seconds) may be a function,
    called only for an absolute target, so a fraction is checked before any model is built (or timed).
    """
    if metric not in _UNITS:
        raise unknown_name("budget metric", metric, tuple(_UNITS))
    suffixes, absolute, unit = _UNITS[metric]
    text = str(value).strip()
    pattern = "|".join(sorted(map(re.escape, suffixes), key=len, reverse=True))
    match = re.fullmatch(rf"([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*({pattern})?", text, re.IGNORECASE)
    if not match:
        raise BudgetError(f"Target {text!r} is neither a fraction in (0, 1) like 0.5 nor {absolute}.")
    number, suffix = float(match.group(1)), (match.group(2) or "").upper()
    if not suffix:
        if not 0.0 < number < 1.0:
            raise BudgetError(f"Target must be in (0, 1) as a fraction of the {unit} kept (e.g. 0.5), or "
                              f"{absolute}, but got {text}.")
        return number
    base = base() if callable(base) else base
    fraction = number * suffixes[suffix] / base
    if not 0.0 < fraction < 1.0:
        shown = f"{base * 1e3:.3f} ms base latency" if metric == "latency" else f"{base / 1e6:.2f}M base {unit}"
        raise BudgetError(f"Target must keep a fraction in (0, 1) of the {shown}, but got {text} ({fraction:.4g}).")
    return fraction


def _metric(space: PrunableSpace, metric: Metric | None) -> Metric:
    return flops_metric(space) if metric is None else metric


def reachable(space: PrunableSpace, metric: Metric | None = None) -> tuple[float, float]:
    """The fractions of ``metric`` (MACs by default) a policy of this space can reach: all groups at their
    lower, then upper bound."""
    m = _metric(space, metric)
    lo, hi = space.spec.bounds
    n = len(space.searchable)
    return m(space.counts(np.full(n, lo))) / m.base, m(space.counts(np.full(n, hi))) / m.base


def check_target(space: PrunableSpace, fraction: float, metric: Metric | None = None) -> None:
    """Raise :class:`BudgetError` unless ``fraction`` of ``metric`` (MACs by default) is in (0, 1) and
    reachable within the bounds; the message gives the reachable range, also in the metric's unit."""
    m = _metric(space, metric)
    what = _WHAT.get(m.name, m.name)
    if not 0.0 < fraction < 1.0:
        raise BudgetError(f"Target must be a fraction in (0, 1) of the base {what}, but got {fraction}.")
    low, high = reachable(space, m)
    if fraction < low:
        message = (f"Target {fraction:.3f} of the {what} is unreachable in space {space.name!r} of {space.arch} "
                   f"with keep-ratio bounds {space.spec.bounds}: reachable range is [{low:.3f}, 1.0).")
        if m.name != "flops":  # the message the MACs budget always gave, the others in their unit too
            message += (f" In {m.unit}: {format_value(m, fraction * m.base)} asked, "
                        f"{format_value(m, low * m.base)} to {format_value(m, min(high, 1.0) * m.base)} reachable.")
        raise BudgetError(message)


_WHAT = {"flops": "MACs", "params": "params", "latency": "latency"}


def _largest(n_steps: int, counts_at: Callable[[int], np.ndarray], metric: Metric, budget: float) -> np.ndarray:
    """The last of a growing family ``counts_at(0..n_steps)`` within budget (``counts_at(0)`` is).

    Its value grows with the step, so the first step over budget is a bisection of that monotone table.
    """
    over = bisect.bisect_right(range(n_steps + 1), budget, key=lambda i: metric(counts_at(i)))
    return counts_at(max(over - 1, 0))


def uniform_counts(space: PrunableSpace, fraction: float, metric: Metric | None = None) -> np.ndarray:
    """Kept channels for the largest uniform keep ratio within ``fraction`` of ``metric`` (MACs by default)."""
    m = _metric(space, metric)
    check_target(space, fraction, m)
    lo, hi = space.spec.bounds
    grid = np.linspace(lo, hi, 4097)
    n = len(space.searchable)
    return _largest(len(grid) - 1, lambda i: space.counts(np.full(n, grid[i])), m, fraction * m.base)


def global_counts(space: PrunableSpace, fraction: float, scores: Mapping[str, np.ndarray], *,
                  normalise: bool = True, metric: Metric | None = None) -> np.ndarray:
    """Kept channels when one threshold on the scores of all groups is applied to every group.

    ``normalise`` divides each group's scores by their mean first, so that layers of different
    scale compare (weight norms, Taylor terms); without it the scores are ranked as they are,
    for scores comparable across groups already (keep probabilities). The budget is ``fraction``
    of ``metric`` (MACs by default).
    """
    m = _metric(space, metric)
    check_target(space, fraction, m)
    n = len(space.searchable)
    floor = space.counts(np.full(n, space.spec.bounds[0]))
    ceil = space.counts(np.full(n, space.spec.bounds[1]))
    if normalise:
        flat = [scores[g.name] / scores[g.name].mean() if scores[g.name].mean() > 0 else np.ones(g.channels)
                for g in space.searchable]
    else:
        flat = [np.asarray(scores[g.name], dtype=np.float64) for g in space.searchable]
    owner = np.repeat(np.arange(n), space.channels)
    ranking = owner[np.argsort(-np.concatenate(flat), kind="stable")]  # ties: earlier groups first
    step = space.steps

    def counts_at(i: int) -> np.ndarray:
        kept = np.bincount(ranking[:i], minlength=n)
        return np.clip(np.ceil(kept / step) * step, floor, ceil).astype(np.int64)

    return _largest(len(ranking), counts_at, m, fraction * m.base)


def counts_for_target(space: PrunableSpace, fraction: float, method: str, scores: Mapping[str, np.ndarray],
                      metric: Metric | None = None) -> np.ndarray:
    """Kept channels per searchable group that meet ``fraction`` of ``metric`` (MACs by default) by ``method``."""
    if method == "uniform":
        return uniform_counts(space, fraction, metric)
    if method == "global":
        return global_counts(space, fraction, scores, metric=metric)
    raise unknown_name("method", method, ALLOCATIONS)
