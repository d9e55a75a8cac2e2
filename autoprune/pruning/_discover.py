"""Discover the channel groups of a model with Torch-Pruning's DependencyGraph.

A *group* is a set of channels that must be removed together: a conv's output
channels, its BatchNorm, and the input channels of every consumer; residual
additions and concatenations couple more (a whole ResNet stage is one group).
The graph is traced once per model; what we keep of it is plain data (module
names and index arrays), so applying a policy later never traces again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from ._shortcut_pruner import CUSTOM_PRUNERS

__all__ = ["Member", "Group", "discover_groups"]


@dataclass(frozen=True)
class Member:
    """One module touched by a group.

    ``index[j]`` is a channel of this module that is removed together with the
    group's root channel ``root[j]``. ``side`` is "out" when the group owns the
    module's output channels (conv, BN, depthwise conv), "in" when it owns its inputs.
    """

    module: str
    side: str
    fn: Callable[[nn.Module, list[int]], nn.Module]
    index: np.ndarray
    root: np.ndarray


@dataclass(frozen=True)
class Group:
    """Channels removed together, named after the first conv that produces them.

    The geometry fields describe that root conv; they feed the search's observations.
    """

    name: str
    channels: int
    members: tuple[Member, ...]
    kind: str  # "conv", "depthwise" or "residual" (several convs write these channels)
    in_channels: int
    kernel: int
    stride: int
    fmap: int  # output height of the root conv

    def producers(self) -> list[Member]:
        """Members whose output channels are the group's channels."""
        return [m for m in self.members if m.side == "out"]


def build_graph(model: nn.Module, example: torch.Tensor) -> tp.DependencyGraph:
    """Trace ``model`` once; the DependencyGraph knows our custom modules' pruners."""
    with torch.enable_grad():
        return tp.DependencyGraph().build_dependency(
            model, example_inputs=example, customized_pruners=CUSTOM_PRUNERS, verbose=False
        )


def output_sizes(model: nn.Module, example: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """Output shape (without batch) of every conv and linear layer, from one forward pass."""
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            hooks.append(module.register_forward_hook(
                lambda _m, _i, out, name=name: shapes.__setitem__(name, tuple(out.shape[1:]))
            ))
    try:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            model(example)
        model.train(was_training)
    finally:
        for h in hooks:
            h.remove()
    return shapes


def discover_groups(
    model: nn.Module,
    graph: tp.DependencyGraph,
    shapes: dict[str, tuple[int, ...]],
    classifier: str | None,
) -> list[Group]:
    """Every prunable group of ``model`` in definition (= forward) order.

    Groups that would prune the classifier's outputs are left out: the number
    of classes is not ours to change.
    """
    names = {m: n for n, m in model.named_modules()}
    order = {n: i for i, n in enumerate(names.values())}
    ignored = [model.get_submodule(classifier)] if classifier else []
    groups = []
    for tp_group in graph.get_all_groups(ignored_layers=ignored, root_module_types=(nn.Conv2d, nn.Linear)):
        members = []
        for item in tp_group.items:
            module = item.dep.target.module
            if module not in names:  # Torch-Pruning's own elementwise/concat nodes
                continue
            side = "out" if graph.is_out_channel_pruning_fn(item.dep.handler) else "in"
            members.append(Member(
                module=names[module], side=side, fn=item.dep.handler,
                index=np.asarray(item.idxs, dtype=np.int64), root=np.asarray(item.root_idxs, dtype=np.int64),
            ))
        members.sort(key=lambda m: (order[m.module], m.side))
        convs = [m for m in members if m.side == "out" and isinstance(model.get_submodule(m.module), nn.Conv2d)]
        if not convs:
            continue
        root = model.get_submodule(convs[0].module)
        depthwise = root.groups > 1 and root.groups == root.out_channels
        dense_convs = [m for m in convs if model.get_submodule(m.module).groups == 1]
        groups.append(Group(
            name=convs[0].module,
            channels=len(tp_group.items[0].idxs),
            members=tuple(members),
            kind="residual" if len(dense_convs) > 1 else ("depthwise" if depthwise else "conv"),
            in_channels=root.in_channels,
            kernel=root.kernel_size[0],
            stride=root.stride[0],
            fmap=shapes[convs[0].module][1],
        ))
    groups.sort(key=lambda g: order[g.name])
    return groups
