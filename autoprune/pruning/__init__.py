"""The pruning engine: groups, search spaces, the cost model, budget metrics and budgets, channel selection and physical pruning.

Everything the rest of autoprune (the environment, the searches, the
handcrafted baselines, the commands) uses of the engine is named here; the
modules behind it are private.
"""

from ._budget import ALLOCATIONS, check_target, counts_for_target, global_counts, parse_target, reachable, uniform_counts
from ._cost import Cost, CostModel
from ._criteria import CRITERIA, channel_scores, taylor_gradients
from ._discover import Group, Member
from ._metric import METRICS, Metric, MetricLike, flops_metric, format_value, make_metric, params_metric
from ._prune import apply, prune
from ._reconstruct import Reconstruction, consumers, lasso_path, sample_features
from ._shortcut_pruner import CUSTOM_PRUNERS
from ._space import PrunableSpace, check_round_to, space_for, top_k
from ._spec import SpaceSpec

__all__ = [
    # budgets
    "ALLOCATIONS", "check_target", "counts_for_target", "global_counts", "parse_target", "reachable", "uniform_counts",
    # the cost model and budget metrics
    "Cost", "CostModel", "METRICS", "Metric", "MetricLike", "flops_metric", "format_value", "make_metric", "params_metric",
    # channel-selection criteria
    "CRITERIA", "channel_scores", "taylor_gradients",
    # feature-map reconstruction (He et al. 2017)
    "Reconstruction", "consumers", "lasso_path", "sample_features",
    # groups and spaces
    "CUSTOM_PRUNERS", "Group", "Member", "PrunableSpace", "SpaceSpec", "check_round_to", "space_for", "top_k",
    # physical pruning
    "apply", "prune",
]
