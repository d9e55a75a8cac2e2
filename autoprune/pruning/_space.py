"""The prunable space of one model: its groups, which are searched, and how to prune them."""

from __future__ import annotations

import copy
import fnmatch
import os
import weakref
from collections import defaultdict
from functools import cached_property
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from ._cost import Cost, CostModel
from ..errors import AutopruneError, PolicyError
from ..models import ModelInfo, get_model_info
from ._criteria import channel_scores, taylor_gradients
from ._discover import Group, build_graph, discover_groups, output_sizes
from ._reconstruct import reconstruction_problems
from ._spec import AUTO_SPACE, SpaceSpec, load_spec

__all__ = ["PrunableSpace", "space_for"]

Kept = Mapping[str, Sequence[int] | np.ndarray]


class PrunableSpace:
    """Groups of ``model`` and the subset a search may prune, in forward order.

    Built once per model (one trace); afterwards :meth:`apply` prunes copies
    of the model from cached index arrays, and :attr:`cost` prices any
    configuration without building it. ``model`` itself is never modified.

    Args:
        model: the unpruned model (its weights are read by the criteria).
        arch: its zoo name, which locates its search-space YAML and metadata.
        space: a space name from that YAML, a path to a YAML file, or None for the default.
    """

    def __init__(self, model: nn.Module, arch: str, space: str | os.PathLike[str] | None = None) -> None:
        self.model = model
        self.arch = arch
        self.info: ModelInfo = get_model_info(arch)
        self.spec: SpaceSpec = load_spec(self.info.space, space)
        device = next(model.parameters()).device
        example = torch.zeros(1, *self.info.input_size, device=device)
        shapes = output_sizes(model, example)
        graph = build_graph(model, example)
        self.groups: list[Group] = discover_groups(model, graph, shapes, self.info.classifier)
        self.searchable: list[Group] = [g for g in self.groups if self._selected(g)]
        if not self.searchable:
            raise AutopruneError(f"Space {self.spec.name!r} of {arch} selects no group; group names: "
                                 f"{', '.join(g.name for g in self.groups)}.")
        self._index = {g.name: i for i, g in enumerate(self.groups)}
        self._searchable_at = np.array([self._index[g.name] for g in self.searchable])
        self.cost_model = CostModel(model, self.groups, shapes)
        self._plan = self._compile()

    # -- what is searched ---------------------------------------------------
    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def names(self) -> list[str]:
        """Names of the searchable groups, in forward order."""
        return [g.name for g in self.searchable]

    @cached_property
    def channels(self) -> np.ndarray:
        """Channels of each searchable group, in forward order (int64, read-only): the denominator of
        every keep ratio and the ceiling of every count, asked for on every episode and budget."""
        full = np.array([g.channels for g in self.searchable], dtype=np.int64)
        full.flags.writeable = False
        return full

    def _selected(self, group: Group) -> bool:
        if self.spec.name == AUTO_SPACE and any(
            m.module == self.info.first_conv for m in group.producers()
        ):
            return False
        match = any(fnmatch.fnmatchcase(group.name, p) for p in self.spec.groups)
        return match and not any(fnmatch.fnmatchcase(group.name, p) for p in self.spec.exclude)

    def counts(self, ratios: Sequence[float] | np.ndarray) -> np.ndarray:
        """Kept channels per searchable group for keep ratios (clipped to the bounds, rounded)."""
        r = np.asarray(ratios, dtype=np.float64)
        if r.shape != (len(self.searchable),):
            raise AutopruneError(f"Expected {len(self.searchable)} keep ratios for space {self.name!r}, but got shape {r.shape}.")
        lo, hi = self.spec.bounds
        step = np.minimum(self.spec.round, self.channels)
        n = np.round(np.clip(r, lo, hi) * self.channels / step) * step
        return np.clip(n, step, self.channels).astype(np.int64)

    def count_options(self, j: int) -> np.ndarray:
        """Every kept-channel count searchable group ``j`` can take within the bounds, ascending."""
        lo, hi = self.spec.bounds
        ends = self.counts(np.full(len(self.searchable), lo))[j], self.counts(np.full(len(self.searchable), hi))[j]
        step = min(self.spec.round, self.searchable[j].channels)
        return np.unique(np.append(np.arange(ends[0], ends[1] + 1, step), ends[1]))

    def all_counts(self, counts: Sequence[int] | np.ndarray) -> np.ndarray:
        """Kept channels of every group (non-searchable groups stay whole)."""
        k = self.cost_model.full.copy()
        k[self._searchable_at] = counts
        return k

    def cost(self, counts: Sequence[int] | np.ndarray) -> Cost:
        """MACs and params when searchable group ``j`` keeps ``counts[j]`` channels."""
        return self.cost_model.cost(self.all_counts(counts))

    def macs(self, counts: Sequence[int] | np.ndarray) -> int:
        return self.cost_model.macs(self.all_counts(counts))

    @property
    def base(self) -> Cost:
        return self.cost_model.base

    # -- which channels -----------------------------------------------------
    def scores(
        self,
        criterion: str = "l1",
        *,
        batches: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None,
        seed: int = 0,
    ) -> dict[str, np.ndarray]:
        """Per-channel scores of every searchable group (``taylor`` and ``reconstruction`` need training ``batches``)."""
        grads = taylor_gradients(self.model, batches) if criterion == "taylor" and batches else None
        problems = (reconstruction_problems(self.model, self.searchable, batches, seed=seed)
                    if criterion == "reconstruction" and batches else None)
        return channel_scores(self.model, self.searchable, criterion, seed=seed, grads=grads, problems=problems)

    def select(self, counts: Sequence[int] | np.ndarray, scores: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Kept channel indices per searchable group: the ``counts[j]`` highest-scoring ones."""
        return {g.name: top_k(scores[g.name], int(n)) for g, n in zip(self.searchable, counts)}

    # -- pruning ------------------------------------------------------------
    def _compile(self) -> dict[tuple[str, str], list[tuple[int, np.ndarray, np.ndarray]]]:
        """For each (module, pruning function): the (group, member index, root index) arrays."""
        plan: dict[tuple[str, str], list[tuple[int, np.ndarray, np.ndarray]]] = defaultdict(list)
        self._fns = {}
        for j, group in enumerate(self.groups):
            for m in group.members:
                key = (m.module, m.fn.__name__)
                self._fns[key] = m.fn
                plan[key].append((j, m.index, m.root))
        return dict(plan)

    def _removed(self, kept: Kept) -> dict[tuple[str, str], list[int]]:
        """Channel indices each module loses, in its original numbering."""
        self.check(kept)
        gone: dict[int, np.ndarray] = {}
        for name, idx in kept.items():
            mask = np.ones(self.groups[self._index[name]].channels, dtype=bool)
            mask[np.asarray(idx, dtype=np.int64)] = False
            gone[self._index[name]] = mask
        removed = {}
        for key, entries in self._plan.items():
            idx = [index[gone[j][root]] for j, index, root in entries if j in gone]
            if idx:
                flat = np.unique(np.concatenate(idx))
                if flat.size:
                    removed[key] = flat.tolist()
        return removed

    def check(self, kept: Kept) -> None:
        """Raise :class:`PolicyError` unless ``kept`` names groups of this model with valid indices."""
        for name, idx in kept.items():
            if name not in self._index:
                raise PolicyError(f"Group {name!r} is not a group of {self.arch} (space {self.name!r}).")
            idx = np.asarray(idx)
            channels = self.groups[self._index[name]].channels
            if idx.size == 0:
                raise PolicyError(f"Group {name!r} keeps no channel: every group must keep at least one.")
            if idx.min() < 0 or idx.max() >= channels or len(np.unique(idx)) != idx.size:
                raise PolicyError(f"Group {name!r}: kept indices must be distinct and in [0, {channels}).")

    def apply(self, kept: Kept, *, model: nn.Module | None = None) -> nn.Module:
        """A physically smaller copy of the model keeping ``kept[group]`` channels of each named group.

        ``model``: cut a copy of this one instead, a model of the same architecture with other
        weights (the ``reconstruct`` reward proxy's refit copy); it is not modified either.
        """
        removed = self._removed(kept)
        pruned = copy.deepcopy(self.model if model is None else model)
        with torch.no_grad():
            for (module, fn_name), idx in removed.items():
                self._fns[(module, fn_name)](pruned.get_submodule(module), idx)
        return pruned

    @contextmanager
    def masked(self, kept: Kept) -> Iterator[nn.Module]:
        """The original model with the removed channels zeroed at every consumer's input.

        Numerically what :meth:`apply` builds, without changing shapes: the
        reference that tests the pruning and that mask-based methods train.
        """
        hooks = []
        for (module, fn_name), idx in self._removed(kept).items():
            if fn_name != "prune_in_channels":
                continue  # producers: their outputs reach only masked consumers
            mask = torch.ones(self._in_width(module), dtype=torch.bool)
            mask[idx] = False

            def zero(_m: nn.Module, args: tuple, mask: torch.Tensor = mask) -> tuple:
                x = args[0]
                shape = (1, -1) + (1,) * (x.dim() - 2)
                return (x * mask.to(x.device, x.dtype).view(shape),) + args[1:]

            hooks.append(self.model.get_submodule(module).register_forward_pre_hook(zero))
        try:
            yield self.model
        finally:
            for h in hooks:
                h.remove()

    def _in_width(self, module: str) -> int:
        m = self.model.get_submodule(module)
        for attr in ("in_channels", "in_features", "num_features"):
            if hasattr(m, attr):
                return int(getattr(m, attr))
        raise AutopruneError(f"Cannot mask the input of {module} ({type(m).__name__}).")


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Sorted indices of the ``k`` highest scores (ties go to the lower index)."""
    order = np.argsort(-scores, kind="stable")
    return np.sort(order[:k])


_CACHE: weakref.WeakKeyDictionary[nn.Module, dict[tuple[str, str], PrunableSpace]] = weakref.WeakKeyDictionary()


def space_for(model: nn.Module, arch: str, space: str | os.PathLike[str] | None = None) -> PrunableSpace:
    """The :class:`PrunableSpace` of ``model``, built on first use and cached with the model."""
    per_model = _CACHE.setdefault(model, {})
    key = (arch, str(space))
    if key not in per_model:
        per_model[key] = PrunableSpace(model, arch, space)
    return per_model[key]
