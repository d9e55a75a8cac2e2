"""The budget metric a run names (flops, params or latency with its settings), as the engine takes it.

Commands, the search and the sweep record a budget as plain data: the metric's
name and, for latency, where it is measured (the fields of
:class:`autoprune.latency.LatencySettings`). This turns that record into what
:func:`autoprune.pruning.make_metric` takes, importing the latency model only
for a latency budget.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from .errors import BudgetError, unknown_name
from .pruning import METRICS, MetricLike

__all__ = ["budget_metric", "check_budget"]


def check_budget(metric: str, latency: Mapping[str, Any] | None) -> None:
    """Raise unless ``metric`` is a budget metric and ``latency`` settings come only with a latency budget,
    and can be measured here (a runtime that is installed, a device that is present), before any work."""
    if metric not in METRICS:
        raise unknown_name("budget metric", metric, METRICS)
    if latency is not None and metric != "latency":
        raise BudgetError(f"Latency settings ({', '.join(f'{k}={v}' for k, v in latency.items())}) say where a "
                          f"latency budget is measured, but the budget is {metric}: give --target-latency, or drop "
                          "the --latency-* options.")
    if metric == "latency":
        _settings(latency)


def _settings(latency: Mapping[str, Any] | None) -> Any:
    from .latency import LatencySettings, runtime_for

    try:
        settings = LatencySettings(**dict(latency or {}))
    except TypeError as e:  # a field LatencySettings does not have (a hand-edited config.yaml)
        raise BudgetError(f"Latency settings {dict(latency or {})} are not LatencySettings' fields ({e}).") from e
    runtime_for(settings.resolved())  # onnxruntime missing: the install hint; cuda without CUDA: said so
    return settings


def budget_metric(metric: str = "flops", latency: Mapping[str, Any] | None = None) -> MetricLike:
    """``metric``'s name, or for "latency" a function building the latency model of a space under ``latency``
    (:class:`~autoprune.latency.LatencySettings` fields; None: the defaults), cached on disk by that model."""
    check_budget(metric, latency)
    if metric != "latency":
        return metric
    from .latency import build_latency_model

    return functools.partial(build_latency_model, settings=_settings(latency))
