"""Budget metrics: what a target is a fraction of (MACs, params, or a latency model's seconds).

Everything that meets, clips or checks a budget (the budgets of :mod:`._budget`, the
environment's AMC-style clipping, the handcrafted methods) asks a :class:`Metric` for the
value of some kept channel counts, so a run budgets one metric and every part of it the same
one. MACs and params come from the analytic cost model; a latency model
(:mod:`autoprune.latency`) implements the same protocol, so the engine never imports it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, Union, runtime_checkable

import numpy as np

from ..errors import unknown_name

if TYPE_CHECKING:
    from ._space import PrunableSpace

__all__ = ["METRICS", "Metric", "MetricLike", "flops_metric", "format_value", "make_metric", "params_metric"]

METRICS = ("flops", "params", "latency")  # the CLI's --target-<name>


@runtime_checkable
class Metric(Protocol):
    """The value of a policy under a budget: non-decreasing in each searchable group's kept count.

    Attributes:
        name: "flops", "params" or "latency" (the CLI's ``--target-<name>``).
        unit: "MACs", "params" or "s".
        base: the unpruned model's value, in ``unit``; a target is a fraction of it.
    """

    name: str
    unit: str
    base: float

    def __call__(self, counts: np.ndarray) -> float: ...


@dataclass(frozen=True)
class _CostMetric:
    """A metric read off the analytic cost model (exact, microseconds a query)."""

    name: str
    unit: str
    base: float
    value: Callable[[np.ndarray], float]

    def __call__(self, counts: np.ndarray) -> float:
        return self.value(counts)


def flops_metric(space: PrunableSpace) -> Metric:
    """MACs of the kept counts (the default budget; ``--target-flops``)."""
    return _CostMetric("flops", "MACs", float(space.base.macs), lambda counts: float(space.macs(counts)))


def params_metric(space: PrunableSpace) -> Metric:
    """Parameters of the kept counts (``--target-params``)."""
    return _CostMetric("params", "params", float(space.base.params), lambda counts: float(space.cost(counts).params))


# a metric's name, or a function making one from a space (a latency model: ``build_latency_model`` bound to its settings)
MetricLike = Union[str, Callable[["PrunableSpace"], Metric]]


def make_metric(space: PrunableSpace, metric: MetricLike = "flops") -> Metric:
    """The metric ``metric`` names ("flops", "params") on ``space``, or the one a function makes from ``space``.

    Latency is not named here: it needs measuring settings, so it comes as a function
    (the pruning engine never imports :mod:`autoprune.latency`).
    """
    if callable(metric):
        return metric(space)
    makers = {"flops": flops_metric, "params": params_metric}
    if metric not in makers:
        raise unknown_name("budget metric", metric, tuple(makers))
    return makers[metric](space)


def format_value(metric: Metric, value: float) -> str:
    """``value`` in the metric's unit for people: "60.02M MACs", "0.43M params", "4.512 ms"."""
    if metric.unit == "s":
        return f"{value * 1e3:.3f} ms"
    return f"{value / 1e6:.2f}M {metric.unit}"
