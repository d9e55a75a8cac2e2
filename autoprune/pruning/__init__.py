"""The pruning engine: groups, search spaces, channel selection and physical pruning."""

from ._budget import METHODS, check_target, first_true, counts_for_target, parse_target, reachable, uniform_counts
from ._criteria import CRITERIA
from ._discover import Group, Member
from ._space import PrunableSpace, space_for, top_k
from ._spec import SpaceSpec

__all__ = [
    "CRITERIA", "METHODS", "check_target", "first_true", "counts_for_target", "parse_target", "reachable", "uniform_counts",
    "Group", "Member", "PrunableSpace", "SpaceSpec", "space_for", "top_k"]
