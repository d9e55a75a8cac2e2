"""The prunable space of one model: its groups, which are searched, and how to prune them."""

from __future__ import annotations

import copy
import fnmatch
import itertools
import os
import weakref
from collections import defaultdict
from functools import cached_property
from collections.abc import Iterator, Mapping, Sequence
from typing import Any
from contextlib import contextmanager
from dataclasses import replace

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from ._cost import Cost, CostModel
from ..errors import AutopruneError, ModelError, PolicyError
from ..models import ModelSpec, every_output, resolve, running_module, where
from ._criteria import channel_scores, taylor_gradients
from ._discover import Group, build_graph, discover_groups, prune_target, recording_output_sizes
from ._reconstruct import reconstruction_problems
from ._spec import AUTO_SPACE, SpaceSpec, load_spec

__all__ = ["PrunableSpace", "check_round_to", "space_for"]


def check_round_to(value: object) -> None:
    """Refuse a channel rounding that is not a positive integer, naming the option (a config checks it before
    any model loads; the space checks it for Python callers)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise AutopruneError(f"--round-to (round_to) must be an integer of at least 1, but got {value!r}.")

Kept = Mapping[str, Sequence[int] | np.ndarray]


class PrunableSpace:
    """Groups of ``model`` and the subset a search may prune, in forward order.

    Built once per model (one trace); afterwards :meth:`apply` prunes copies
    of the model from cached index arrays, and :attr:`cost` prices any
    configuration without building it. ``model`` itself is never modified
    (a model whose output is a tuple, dict or ``.logits`` gets a forward hook selecting the logits).

    ``unprunable`` maps the groups (and layers) left whole to the reason: the
    classifier, outputs of the model, channels normalised together (LayerNorm,
    GroupNorm of several channels a group), grouped convs fed unevenly.

    Args:
        model: the unpruned model (its weights are read by the criteria).
        spec: what autoprune must know about it: a :class:`~autoprune.models.ModelSpec`, a zoo name, or an
            example input (a batch of one; the rest is discovered: stem, classifier, logits).
        space: a space name from the zoo model's YAML, a path to a YAML file, or None for the default
            (models outside the zoo: "all", every group except the stem's).
        ignore: fnmatch patterns over module names, added to the spec's: layers whose output channels are never
            pruned (as Torch-Pruning's ``ignored_layers`` and the classifier: their inputs follow the layers before).
        round_to: every searched group keeps a multiple of this many channels, instead of the space's ``round``
            (1 unless its YAML says): vector units work in 8 or 16 lanes, so a width between two multiples costs
            about as much as the next multiple up (measured: ``scripts/bench_latency.py --cells rounding``).

    Raises:
        ModelError: the model rejects its input size, cannot be traced (the message names the module, the
            op and the ``--ignore`` that skips it), or has no prunable group.
    """

    def __init__(self, model: nn.Module, spec: ModelSpec | str | torch.Tensor,
                 space: str | os.PathLike[str] | None = None, *, ignore: Sequence[str] = (),
                 round_to: int | None = None) -> None:
        self.model = model
        self.info: ModelSpec = resolve(model, _as_spec(model, spec, ignore))
        self.arch = self.info.source
        self.spec: SpaceSpec = load_spec(self.info.family, space)
        if round_to is not None:
            check_round_to(round_to)
            self.spec = replace(self.spec, round=round_to)
        device = next(model.parameters()).device
        example = torch.zeros(1, *self.info.input_size, device=device)
        with every_output(model), recording_output_sizes(model) as shapes:  # every head's channels are traced
            graph, self.untraced = _trace(model, example, self.info)
        self.groups, self.unprunable = discover_groups(model, graph, shapes, self.info.classifier)
        self._index = {g.name: i for i, g in enumerate(self.groups)}
        self.reasons: dict[str, str] = {}  # why a group is not searchable, by group name
        for g in self.groups:
            reason = self._reason(g)
            if reason:
                self.reasons[g.name] = reason
        self.cost_model = CostModel(model, self.groups, shapes)
        self._plan = self._compile()
        if not self.info.is_zoo:  # the trace of a zoo model is known to be complete
            self._check_trace(example)
        self.searchable: list[Group] = [g for g in self.groups if g.name not in self.reasons]
        if not self.searchable:
            why = "; ".join(f"{n}: {r}" for n, r in self.reasons.items()) or "it has no conv whose channels can go"
            raise ModelError(f"{self.info.source} has no prunable group in space {self.spec.name!r} ({why}).")
        self._searchable_at = np.array([self._index[g.name] for g in self.searchable])

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

    @cached_property
    def steps(self) -> np.ndarray:
        """Kept counts of each searchable group are multiples of its step (int64, read-only): the space's
        ``round``, times what the group's grouped convs need (one channel per conv-group), at most the group."""
        step = np.array([min(np.lcm(self.spec.round, g.step), g.channels) for g in self.searchable], dtype=np.int64)
        step.flags.writeable = False
        return step

    def _reason(self, group: Group) -> str | None:
        """Why ``group`` is not searchable (None: it is)."""
        if self.spec.name == AUTO_SPACE and any(m.module == self.info.first_conv for m in group.producers()):
            return "the stem (first conv): kept by default"
        for pattern in self.info.ignore:
            hit = next((m.module for m in group.producers() if fnmatch.fnmatchcase(m.module, pattern)), None)
            if hit is not None:
                return f"--ignore {pattern!r} keeps {hit}"
        if not any(fnmatch.fnmatchcase(group.name, p) for p in self.spec.groups):
            return f"not in space {self.spec.name!r}"
        if any(fnmatch.fnmatchcase(group.name, p) for p in self.spec.exclude):
            return f"excluded by space {self.spec.name!r}"
        return None

    def _check_trace(self, example: torch.Tensor) -> None:
        """Prune one channel of each candidate group and run the model: a dependency the trace missed (an op
        Torch-Pruning cannot follow) shows as a shape error, here and not mid-search.

        Groups next to a module left untraced on purpose (``--ignore``) that fail are kept whole;
        any other failure names the group, where it broke, and the ``--ignore`` that keeps it whole.
        """
        candidates = [g for g in self.groups if g.name not in self.reasons and g.channels > g.step]
        if not candidates or self._breaks(candidates, example) is None:
            return
        for group in candidates:
            broken = self._breaks([group], example)
            if broken is None:
                continue
            if self.untraced:
                self.reasons[group.name] = f"next to {', '.join(self.untraced)}, left untraced by --ignore"
                continue
            raise ModelError(f"{self.info.source} cannot be traced completely: pruning group {group.name!r} breaks "
                             f"the model in {broken}. Torch-Pruning did not follow an op there; keep the group whole "
                             f"with --ignore {group.name!r} (or the module that op is in).")

    def _breaks(self, groups: Sequence[Group], example: torch.Tensor) -> str | None:
        """Where the model fails with one channel less in each of ``groups`` (None: it runs, same output shape)."""
        # one channel less per conv-group: a group feeding grouped convs stays balanced
        pruned = self.apply({g.name: _top_k_of(g, -np.arange(g.channels, dtype=np.float64), g.channels - g.step)
                             for g in groups})
        pruned.eval()
        with running_module(pruned) as stack, torch.no_grad():
            try:
                out = pruned(example)
            except Exception as e:
                at = where(pruned, stack[-1]) if stack else "the model"
                return f"{at} ({type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''})"
        if tuple(out.shape) != (1, self.info.num_classes):
            return f"its output (shape {tuple(out.shape)} instead of (1, {self.info.num_classes}))"
        return None

    def inventory(self) -> dict[str, Any]:
        """What can and cannot be pruned, as plain data (``autoprune inspect``): every group (kind, channels,
        coupled layers, share of the MACs and params it controls, searchable or why not), and every layer
        with weights that no searchable group changes, with the reason."""
        base = self.cost_model.base
        order = {n: i for i, (n, _) in enumerate(self.model.named_modules())}
        groups, touched = [], set()
        for j, g in enumerate(self.groups):
            k = self.cost_model.full.copy()
            k[j] = 0
            without = self.cost_model.cost(k)
            layers = sorted({m.module for m in g.members}, key=order.__getitem__)
            if g.name not in self.reasons:
                touched.update(layers)
            groups.append({"name": g.name, "kind": g.kind, "channels": int(g.channels), "layers": layers,
                           "macs_share": (base.macs - without.macs) / base.macs,
                           "params_share": (base.params - without.params) / base.params,
                           "searchable": g.name not in self.reasons, "reason": self.reasons.get(g.name, "")})
        owner = {m.module: g.name for g in self.groups for m in g.producers()}
        kept = []
        for name, module in self.model.named_modules():
            if name in touched or not any(True for _ in module.parameters(recurse=False)):
                continue
            if name == self.info.classifier:
                reason = "the classifier: its outputs are the classes (its inputs follow the layers before)"
            elif name in self.unprunable:
                reason = self.unprunable[name]
            elif name in owner:
                reason = f"in group {owner[name]!r}: {self.reasons.get(owner[name], '')}"
            elif any(name == u or name.startswith(u + ".") for u in self.untraced):
                reason = "run untraced (--ignore): the groups around it stay whole"
            elif self.untraced:
                reason = f"in no prunable group: cut off from the trace by {', '.join(self.untraced)} (untraced)"
            else:
                reason = "in no prunable group (no conv output the trace could follow feeds it, or it feeds none)"
            kept.append({"name": name, "type": type(module).__name__, "reason": reason})
        return {"model": self.info.to_dict(), "space": self.name, "macs": base.macs, "params": base.params,
                "groups": groups, "unpruned": kept, "untraced": list(self.untraced)}

    def counts(self, ratios: Sequence[float] | np.ndarray) -> np.ndarray:
        """Kept channels per searchable group for keep ratios (clipped to the bounds, rounded)."""
        r = np.asarray(ratios, dtype=np.float64)
        if r.shape != (len(self.searchable),):
            raise AutopruneError(f"Expected {len(self.searchable)} keep ratios for space {self.name!r}, but got shape {r.shape}.")
        lo, hi = self.spec.bounds
        step = self.steps
        n = np.round(np.clip(r, lo, hi) * self.channels / step) * step
        return np.clip(n, step, self.channels).astype(np.int64)

    def count_options(self, j: int) -> np.ndarray:
        """Every kept-channel count searchable group ``j`` can take within the bounds, ascending."""
        lo, hi = self.spec.bounds
        ends = self.counts(np.full(len(self.searchable), lo))[j], self.counts(np.full(len(self.searchable), hi))[j]
        step = int(self.steps[j])
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
        """Kept channel indices per searchable group: the ``counts[j]`` highest-scoring ones (in a group
        with grouped convs, the ``counts[j] / step`` highest of each block, so every conv-group keeps as many)."""
        return {g.name: _top_k_of(g, scores[g.name], int(n)) for g, n in zip(self.searchable, counts)}

    # -- pruning ------------------------------------------------------------
    def _compile(self) -> dict[tuple[str, str], list[tuple[int, np.ndarray, np.ndarray]]]:
        """For each (module, pruning function): the (group, member index, root index) arrays."""
        plan: dict[tuple[str, str], list[tuple[int, np.ndarray, np.ndarray]]] = defaultdict(list)
        self._fns = {}
        self._consumers: set[tuple[str, str]] = set()
        for j, group in enumerate(self.groups):
            for m in group.members:
                key = (m.module, m.fn.__name__)
                self._fns[key] = m.fn
                if m.side == "in":
                    self._consumers.add(key)
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
            blocks = self.groups[self._index[name]].blocks
            if blocks is not None and len(set(np.bincount(blocks[idx], minlength=blocks.max() + 1).tolist())) != 1:
                raise PolicyError(f"Group {name!r} feeds grouped convolutions: each of its {blocks.max() + 1} blocks "
                                  f"(conv-groups) must keep the same number of channels; choose them with "
                                  f"PrunableSpace.select.")

    def apply(self, kept: Kept, *, model: nn.Module | None = None) -> nn.Module:
        """A physically smaller copy of the model keeping ``kept[group]`` channels of each named group.

        ``model``: cut a copy of this one instead, a model of the same architecture with other
        weights (the ``reconstruct`` reward proxy's refit copy); it is not modified either.
        """
        removed = self._removed(kept)
        source = self.model if model is None else model
        pruned = _copy_sharing_tensors(source)
        with torch.no_grad():
            for (module, fn_name), idx in removed.items():
                prune_target(pruned, module, self._fns[(module, fn_name)], idx)
        _unshare(pruned, source)
        return pruned

    @contextmanager
    def masked(self, kept: Kept) -> Iterator[nn.Module]:
        """The original model with the removed channels zeroed at every consumer's input.

        Numerically what :meth:`apply` builds, without changing shapes: the
        reference that tests the pruning and that mask-based methods train.
        """
        hooks = []
        for key, idx in self._removed(kept).items():
            if key not in self._consumers:
                continue  # producers: their outputs reach only masked consumers
            module = key[0]
            mask = torch.ones(self._in_width(module), dtype=torch.bool)
            mask[idx] = False
            last = isinstance(self.model.get_submodule(module), nn.Linear)  # features last (also channels-last)

            def zero(_m: nn.Module, args: tuple, mask: torch.Tensor = mask, last: bool = last) -> tuple:
                x = args[0]
                shape = (1,) * (x.dim() - 1) + (-1,) if last else (1, -1) + (1,) * (x.dim() - 2)
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


def _copy_sharing_tensors(model: nn.Module) -> nn.Module:
    """A deep copy of ``model``'s modules whose parameters and buffers are still ``model``'s own tensors.

    Pruning replaces every tensor it cuts with a new, smaller one (Torch-Pruning's functions and ours
    never write in place), so cloning them first would copy most of the weights only to drop them: on a
    ResNet-50 that clone was half of ``apply``'s time. :func:`_unshare` copies the ones left whole.
    """
    memo: dict[int, object] = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    return copy.deepcopy(model, memo)


def _unshare(pruned: nn.Module, source: nn.Module) -> None:
    """Give ``pruned`` its own copy of every tensor it still shares with ``source`` (the layers left whole)."""
    shared = {id(t) for t in itertools.chain(source.parameters(), source.buffers())}
    copies: dict[int, torch.Tensor] = {}  # one copy per tensor, so tied weights stay tied

    def own(t: torch.Tensor) -> torch.Tensor:
        if id(t) not in copies:
            c = t.detach().clone()
            copies[id(t)] = nn.Parameter(c, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else c
        return copies[id(t)]

    for module in pruned.modules():
        for store in (module._parameters, module._buffers):
            for name, t in store.items():
                if t is not None and id(t) in shared:
                    store[name] = own(t)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Sorted indices of the ``k`` highest scores (ties go to the lower index)."""
    order = np.argsort(-scores, kind="stable")
    return np.sort(order[:k])


def _top_k_of(group: Group, scores: np.ndarray, k: int) -> np.ndarray:
    """:func:`top_k` within each block of ``group`` (``k / step`` each), or over the whole group without blocks."""
    if group.blocks is None:
        return top_k(scores, k)
    if k % group.step:
        raise PolicyError(f"Group {group.name!r} feeds grouped convolutions: its kept count must be a multiple of "
                          f"{group.step} (one channel per conv-group), but got {k}; use PrunableSpace.counts.")
    scores = np.asarray(scores, dtype=np.float64)
    members = [np.flatnonzero(group.blocks == b) for b in range(group.step)]
    return np.sort(np.concatenate([idx[top_k(scores[idx], k // group.step)] for idx in members]))


def _as_spec(model: nn.Module, spec: ModelSpec | str | torch.Tensor, ignore: Sequence[str]) -> ModelSpec:
    if isinstance(spec, torch.Tensor):
        spec = ModelSpec.of(model, tuple(spec.shape[1:]))
    elif isinstance(spec, str):
        spec = ModelSpec(spec)
    return replace(spec, ignore=tuple(dict.fromkeys((*spec.ignore, *ignore)))) if ignore else spec


def _trace(model: nn.Module, example: torch.Tensor, info: ModelSpec) -> tuple[tp.DependencyGraph, list[str]]:
    """Torch-Pruning's graph of ``model``, and the modules run untraced because ``--ignore`` names them.

    A trace that fails names the module running when it failed, the op, and the ``--ignore`` that runs
    that module untraced (outside autograd: the groups around it are then kept whole).
    """
    untraced: list[str] = []
    while True:
        with _untraced(model, untraced), running_module(model) as stack:
            try:
                return build_graph(model, example), untraced
            except Exception as e:
                failed, error = (stack[-1] if stack else None), e
        op = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
        ignored = failed is not None and failed not in untraced and any(
            fnmatch.fnmatchcase(failed, p) for p in info.ignore)
        if not ignored:
            at = where(model, failed) if failed else "Torch-Pruning's graph analysis, after the forward pass"
            hint = (f"; skip it with --ignore {failed!r} (it then runs untraced and the groups around it stay whole)"
                    if failed and failed != "(the model)" else "")
            raise ModelError(f"{info.source} cannot be traced for pruning: {op} in {at}{hint}.") from error
        untraced.append(failed)


@contextmanager
def _untraced(model: nn.Module, names: Sequence[str]) -> Iterator[None]:
    """Run the named modules outside autograd (their outputs detached), so the trace passes over them."""
    patched = []
    for name in names:
        module = model.get_submodule(name)

        def forward(*args: object, _f=module.forward, **kwargs: object) -> object:
            with torch.no_grad():
                return _f(*args, **kwargs)

        module.forward = forward
        patched.append(module)
    try:
        yield
    finally:
        for module in patched:
            del module.forward


_CACHE: weakref.WeakKeyDictionary[nn.Module, dict[tuple[str, str, tuple[str, ...]], PrunableSpace]] = (
    weakref.WeakKeyDictionary())


def space_for(model: nn.Module, spec: ModelSpec | str | torch.Tensor, space: str | os.PathLike[str] | None = None,
              *, ignore: Sequence[str] = (), round_to: int | None = None) -> PrunableSpace:
    """The :class:`PrunableSpace` of ``model``, built on first use and cached with the model."""
    per_model = _CACHE.setdefault(model, {})
    spec = _as_spec(model, spec, ignore)
    key = (spec.defaults().key(), str(space), round_to)  # a zoo name and its recorded spec share one trace
    if key not in per_model:
        per_model[key] = PrunableSpace(model, spec, space, round_to=round_to)
    return per_model[key]
