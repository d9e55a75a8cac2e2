"""Channel masks on a model's searchable groups, and the MACs-target arithmetic the training methods share.

DCP and SCP train the unpruned model while masking channels, then cut the
masked ones. :class:`GroupMasks` multiplies each searchable group's channels
by a per-channel mask where the group's channels are *read*: at the input of
every consumer (the convs and linear layers a member of the group on the
input side, and the option-A shortcut), the points
:meth:`PrunableSpace.masked <autoprune.pruning.PrunableSpace.masked>` zeroes.
So a 0/1 mask computes exactly what the physically pruned model computes, for
every kind of group: a block's inner width, a residual width several blocks
add into (the producers keep writing the channel, nothing reads it), the
branches of a concatenation. A zero mask also stops every gradient into the
channel's producers: their filters and BatchNorm parameters of that channel
get no gradient at all.

Optionally the masks record, for every channel, the first-order Taylor term
``sum(a * dL/dx)`` of the group at all its consumers, ``a`` the unmasked input
and ``x = mask * a`` what the consumer reads: the first-order change of the
loss if the channel were removed (kept channels) or restored (masked ones).

The rest are the budget helpers: :func:`counts_to_target` (a global ranking
cut to the MACs target, then topped up so the answer ends within one channel
of the last group below the target, as the environment's episodes do) and
:class:`ExpectedMacs` (the cost model in torch, differentiable in the counts).
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..pruning import Group, Metric, PrunableSpace, flops_metric, global_counts

__all__ = ["ExpectedMacs", "GroupMasks", "counts_to_target", "fold_masks", "top_up"]


def _consumers(groups: Sequence[Group], device: torch.device | str = "cpu") -> dict[str, list[tuple[str, torch.Tensor, torch.Tensor]]]:
    """For each module reading some group's channels: (group, its input channels, their root channels)."""
    sites: dict[str, list[tuple[str, torch.Tensor, torch.Tensor]]] = defaultdict(list)
    for g in groups:
        for m in g.members:
            if m.fn.__name__ == "prune_in_channels":  # the rule of PrunableSpace.masked
                sites[m.module].append((g.name, torch.as_tensor(m.index, device=device),
                                        torch.as_tensor(m.root, device=device)))
    return dict(sites)


class GroupMasks:
    """Multiplies each group's channels by ``values[group]`` (one entry per channel) at the group's consumers.

    The hooks stay until :meth:`remove`. ``values`` may be replaced or edited
    between forward passes; a tensor that requires grad (SCP's soft masks)
    passes its gradient on.

    Args:
        model: the model to mask (a method's working copy: the hooks go on its modules).
        groups: the groups to mask (a space's searchable groups of this model's architecture).
        capture: record the Taylor terms (see the module docstring) in :attr:`taylor`.
    """

    def __init__(self, model: nn.Module, groups: Sequence[Group], *, capture: bool = False) -> None:
        device = next(model.parameters()).device
        self.groups = list(groups)
        self.values: dict[str, torch.Tensor] = {g.name: torch.ones(g.channels, device=device) for g in self.groups}
        self.capture = capture
        self.taylor: dict[str, torch.Tensor] = {g.name: torch.zeros(g.channels, device=device) for g in self.groups}
        self.fresh = False  # a backward pass added to ``taylor`` since the last :meth:`take`
        self._sites = _consumers(self.groups, device)
        self._handles = [model.get_submodule(name).register_forward_pre_hook(self._hook(sites))
                         for name, sites in self._sites.items()]

    def _hook(self, sites: list[tuple[str, torch.Tensor, torch.Tensor]]):
        def mask_input(_module: nn.Module, args: tuple) -> tuple:
            x = args[0]
            vec = torch.ones(x.shape[1], device=x.device)
            for name, index, root in sites:
                vec = vec.index_put((index.to(x.device),), self.values[name].float()[root.to(x.device)])
            y = x * vec.to(x.dtype).view((1, -1) + (1,) * (x.dim() - 2))
            if self.capture and y.requires_grad:
                a = x.detach()

                def record(grad: torch.Tensor) -> None:
                    s = (a.float() * grad.float()).sum([d for d in range(a.dim()) if d != 1])
                    for name, index, root in sites:
                        self.taylor[name].index_add_(0, root.to(s.device), s[index.to(s.device)])
                    self.fresh = True

                y.register_hook(record)
            return (y,) + args[1:]

        return mask_input

    def take(self) -> dict[str, torch.Tensor] | None:
        """The Taylor terms summed since the last call (None if no backward pass ran), and reset them."""
        if not self.fresh:
            return None
        out = {n: t.clone() for n, t in self.taylor.items()}
        for t in self.taylor.values():
            t.zero_()
        self.fresh = False
        return out

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def fold_masks(model: nn.Module, groups: Sequence[Group], values: Mapping[str, torch.Tensor]) -> None:
    """Scale the input weights of the groups' dense consumers by ``values``, in place.

    The unmasked model then computes what the masked one computes at its convs
    and linear layers (in expectation, for random masks of mean ``values``).
    Consumers without weights (the option-A shortcut) are left as they are.
    """
    with torch.no_grad():
        for name, sites in _consumers(groups).items():
            module = model.get_submodule(name)
            if not isinstance(module, (nn.Conv2d, nn.Linear)) or (isinstance(module, nn.Conv2d) and module.groups > 1):
                continue
            w = module.weight
            for group, index, root in sites:
                scale = values[group].detach().to(w.device, w.dtype)[root.to(w.device)]
                w[:, index.to(w.device)] *= scale.view((1, -1) + (1,) * (w.dim() - 2))


class ExpectedMacs:
    """The space's MACs, as a fraction of the unpruned model's, as a torch function of the searchable counts.

    The cost model's quadratic form (``CostModel``: every layer's MACs are
    ``in x out`` widths, each affine in the counts) evaluated in float64 on
    ``device``, so gradients flow into the counts. With independent random
    masks the expected MACs are this function of the expected counts exactly:
    no layer's input and output widths belong to one group, so every product
    is of two independent counts (and a depthwise conv's MACs are linear).
    """

    def __init__(self, space: PrunableSpace, device: torch.device | str = "cpu") -> None:
        cm = space.cost_model
        at = np.array([space.groups.index(g) for g in space.searchable])
        fixed = cm.full.copy()
        fixed[at] = 0.0
        t = {"dtype": torch.float64, "device": device}
        # widths = constant part (including every non-searchable group, whole) + A[:, searchable] @ counts
        self._in0 = torch.tensor(cm._in0 + cm._a_in @ fixed, **t)
        self._out0 = torch.tensor(cm._out0 + cm._a_out @ fixed, **t)
        self._a_in = torch.tensor(cm._a_in[:, at], **t)
        self._a_out = torch.tensor(cm._a_out[:, at], **t)
        self._w_dense = torch.tensor(cm._w_dense, **t) / cm.base.macs
        self._w_dw = torch.tensor(cm._w_dw, **t) / cm.base.macs

    def __call__(self, counts: torch.Tensor) -> torch.Tensor:
        k = counts.to(self._a_in.dtype)
        cout = self._out0 + self._a_out @ k
        return self._w_dense @ ((self._in0 + self._a_in @ k) * cout) + self._w_dw @ cout


def top_up(space: PrunableSpace, counts: np.ndarray, fraction: float, metric: Metric | None = None) -> np.ndarray:
    """Raise the last groups' counts (the last group first) as far as the target of ``metric`` (None: MACs) allows.

    A global ranking stops at the first channel that does not fit, which may
    be an expensive one while cheaper channels of later groups would; topping
    up the last group ends every answer within one channel of that group below
    the target, the tolerance the environment's episodes meet.
    """
    counts = np.array(counts, dtype=np.int64)
    metric = flops_metric(space) if metric is None else metric
    budget = fraction * metric.base
    for j in reversed(range(len(counts))):
        options = space.count_options(j)
        options = options[options >= counts[j]]

        def value_with(count: int, j: int = j) -> float:
            trial = counts.copy()
            trial[j] = count
            return metric(trial)

        best = bisect.bisect_right(options, budget, key=value_with) - 1  # the last option that fits
        if best >= 0:
            counts[j] = options[best]
        if counts[j] < options[-1]:
            break  # this group stopped below its ceiling: one more of its channels would not fit
    return counts


def counts_to_target(space: PrunableSpace, fraction: float, scores: Mapping[str, np.ndarray], *,
                     normalise: bool, metric: Metric | None = None) -> np.ndarray:
    """Kept channels per searchable group: the best-scored channels of all groups that fit ``fraction``.

    ``normalise`` divides each group's scores by their mean first (scores of
    different scale per layer, like Taylor terms: :func:`global_counts`);
    otherwise the raw scores are ranked (probabilities). Counts respect the
    space's bounds and rounding, then :func:`top_up` fills the last groups.
    """
    return top_up(space, global_counts(space, fraction, scores, normalise=normalise, metric=metric), fraction, metric)
