"""Budgets: parse a FLOPs target, check it is reachable, and meet it by bisection.

``uniform`` keeps the same ratio in every searchable group; ``global`` ranks
all channels of all groups together on a criterion (each group's scores
divided by their mean, so layers of different scale compare) and keeps the
best. Both find the largest model whose MACs stay within the target, using
the analytic cost model (microseconds a query), never a forward pass.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Mapping

import numpy as np

from ..errors import BudgetError, unknown_name
from ._space import PrunableSpace

__all__ = ["parse_target", "check_target", "reachable", "uniform_counts", "global_counts", "ALLOCATIONS", "counts_for_target"]

# how `prune --method` spreads a budget over the groups (not the handcrafted methods of autoprune.baselines)
ALLOCATIONS = ("uniform", "global")
_SUFFIX = {"K": 1e3, "M": 1e6, "G": 1e9}


def parse_target(value: str | float, base_macs: int | Callable[[], int]) -> float:
    """Fraction of the base MACs kept: a bare number is the fraction, ``"60M"``/``"1.2G"`` a MAC count.

    The one parser of targets for every command. ``base_macs`` may be a function, called only for
    a MAC count, so a fraction is checked before any model is built.
    """
    text = str(value).strip()
    match = re.fullmatch(r"([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([KMG]?)", text, re.IGNORECASE)
    if not match:
        raise BudgetError(f"Target {text!r} is neither a fraction in (0, 1) like 0.5 nor a MAC count like 60M.")
    number, suffix = float(match.group(1)), match.group(2).upper()
    if not suffix:
        if not 0.0 < number < 1.0:
            raise BudgetError(f"Target must be in (0, 1) as a fraction of the MACs kept (e.g. 0.5), or a MAC count "
                              f"like 60M, but got {text}.")
        return number
    base = base_macs() if callable(base_macs) else base_macs
    fraction = number * _SUFFIX[suffix] / base
    if not 0.0 < fraction < 1.0:
        raise BudgetError(f"Target must keep a fraction in (0, 1) of the {base / 1e6:.2f}M base MACs, but got {text} ({fraction:.4g}).")
    return fraction


def reachable(space: PrunableSpace) -> tuple[float, float]:
    """The MACs fractions a policy of this space can reach: all groups at their lower, then upper bound."""
    lo, hi = space.spec.bounds
    n = len(space.searchable)
    base = space.base.macs
    return space.macs(space.counts(np.full(n, lo))) / base, space.macs(space.counts(np.full(n, hi))) / base


def check_target(space: PrunableSpace, fraction: float) -> None:
    """Raise :class:`BudgetError` unless ``fraction`` is in (0, 1) and reachable within the bounds."""
    if not 0.0 < fraction < 1.0:
        raise BudgetError(f"Target must be a fraction in (0, 1) of the base MACs, but got {fraction}.")
    low, _ = reachable(space)
    if fraction < low:
        raise BudgetError(
            f"Target {fraction:.3f} of the MACs is unreachable in space {space.name!r} of {space.arch} "
            f"with keep-ratio bounds {space.spec.bounds}: reachable range is [{low:.3f}, 1.0)."
        )


def _largest(n_steps: int, counts_at: Callable[[int], np.ndarray], space: PrunableSpace, budget: float) -> np.ndarray:
    """The last of a growing family ``counts_at(0..n_steps)`` within budget (``counts_at(0)`` is).

    Its MACs grow with the step, so the first step over budget is a bisection of that monotone table.
    """
    over = bisect.bisect_right(range(n_steps + 1), budget, key=lambda i: space.macs(counts_at(i)))
    return counts_at(max(over - 1, 0))


def uniform_counts(space: PrunableSpace, fraction: float) -> np.ndarray:
    """Kept channels for the largest uniform keep ratio within the target."""
    check_target(space, fraction)
    lo, hi = space.spec.bounds
    grid = np.linspace(lo, hi, 4097)
    n = len(space.searchable)
    return _largest(len(grid) - 1, lambda i: space.counts(np.full(n, grid[i])), space, fraction * space.base.macs)


def global_counts(space: PrunableSpace, fraction: float, scores: Mapping[str, np.ndarray], *,
                  normalise: bool = True) -> np.ndarray:
    """Kept channels when one threshold on the scores of all groups is applied to every group.

    ``normalise`` divides each group's scores by their mean first, so that layers of different
    scale compare (weight norms, Taylor terms); without it the scores are ranked as they are,
    for scores comparable across groups already (keep probabilities).
    """
    check_target(space, fraction)
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

    return _largest(len(ranking), counts_at, space, fraction * space.base.macs)


def counts_for_target(space: PrunableSpace, fraction: float, method: str, scores: Mapping[str, np.ndarray]) -> np.ndarray:
    """Kept channels per searchable group that meet ``fraction`` of the MACs by ``method``."""
    if method == "uniform":
        return uniform_counts(space, fraction)
    if method == "global":
        return global_counts(space, fraction, scores)
    raise unknown_name("method", method, ALLOCATIONS)
