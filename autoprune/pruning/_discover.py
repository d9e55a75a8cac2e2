"""Discover the channel groups of a model with Torch-Pruning's DependencyGraph.

A *group* is a set of channels that must be removed together: a conv's output
channels, its BatchNorm, and the input channels of every consumer; residual
additions and concatenations couple more (a whole ResNet stage is one group).
The graph is traced once per model; what we keep of it is plain data (module
names and index arrays), so applying a policy later never traces again.

Structures of modern CNNs, each kept to the engine's contract (the pruned model
computes what the original computes with the removed channels zeroed):

* squeeze-excitation, split/chunk, concatenation, upsampling, dilation, Linear
  after flatten, several outputs: Torch-Pruning's graph couples them as they are;
* grouped convolutions (ResNeXt, RegNet): every conv-group keeps the same number
  of channels, so a group's kept count is a multiple of its ``step`` and its
  channels are chosen per ``block`` (a conv-group's slice);
* bare ``nn.Parameter`` s indexed by channel (layer scale): pruned with their
  channels, along the dimension Torch-Pruning infers (the last non-singleton);
* GroupNorm with one channel per group: pruned with its channels.

Groups that cannot keep the contract are left whole, and :func:`discover_groups`
says why (the ``unprunable`` reasons a space reports): channels normalised
together by a LayerNorm or a GroupNorm of several channels a group (removing some
changes the statistics of the rest), channels that are an output of the model,
grouped convs fed unevenly or with one channel a group.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from ._shortcut_pruner import CUSTOM_PRUNERS

__all__ = ["Member", "Group", "ParameterPruning", "discover_groups", "prune_target"]


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
    """Channels removed together, named after the first conv that produces them (or the first Linear
    applied per position, as in ConvNeXt's channels-last MLP: a 1x1 conv by another name).

    The geometry fields describe that root layer; they feed the search's observations.
    """

    name: str
    channels: int
    members: tuple[Member, ...]
    kind: str  # "conv", "depthwise" or "residual" (several convs write these channels)
    in_channels: int
    kernel: int
    stride: int
    fmap: int  # output height of the root conv
    step: int = 1  # kept counts are multiples of this: the number of blocks
    blocks: np.ndarray | None = None  # block of each root channel (grouped convs); each block keeps as many

    def producers(self) -> list[Member]:
        """Members whose output channels are the group's channels."""
        return [m for m in self.members if m.side == "out"]


class ParameterPruning:
    """Prunes a bare ``nn.Parameter`` along ``dim`` (Torch-Pruning's ParameterPruner reads its dimension from
    the graph at call time; we call pruning functions without the graph, so the dimension travels with us)."""

    __name__ = "prune_parameter"

    def __init__(self, dim: int) -> None:
        self.dim = dim

    def __call__(self, param: nn.Parameter, idxs: Sequence[int]) -> nn.Parameter:
        keep = np.setdiff1d(np.arange(param.shape[self.dim]), np.asarray(idxs, dtype=np.int64))
        index = torch.as_tensor(keep, dtype=torch.long, device=param.device)
        return nn.Parameter(param.detach().index_select(self.dim, index), requires_grad=param.requires_grad)


def prune_grouped_conv_in_channels(layer: nn.Conv2d, idxs: Sequence[int]) -> nn.Conv2d:
    """Remove input channels of a grouped conv, each conv-group keeping the same number, any of its own.

    Torch-Pruning's ConvPruner keeps the same positions in every conv-group; letting each conv-group keep
    its best channels is what a per-channel criterion asks for.
    """
    per_in, per_out = layer.in_channels // layer.groups, layer.out_channels // layer.groups
    keep = np.setdiff1d(np.arange(layer.in_channels), np.asarray(idxs, dtype=np.int64))
    counts = np.bincount(keep // per_in, minlength=layer.groups)
    if len(set(counts.tolist())) != 1:
        raise ValueError(f"grouped conv: every conv-group must keep as many input channels, got {counts.tolist()}")
    positions = torch.as_tensor((keep % per_in).reshape(layer.groups, -1), device=layer.weight.device)
    rows = positions[torch.arange(layer.out_channels, device=layer.weight.device) // per_out]
    w = layer.weight.detach()
    index = rows[:, :, None, None].expand(-1, -1, *w.shape[2:])
    layer.weight = nn.Parameter(w.gather(1, index), requires_grad=layer.weight.requires_grad)
    layer.in_channels = int(keep.size)
    return layer


def prune_groupnorm_channels(layer: nn.GroupNorm, idxs: Sequence[int]) -> nn.GroupNorm:
    """Remove whole GroupNorm groups (here: one channel each), so the kept channels' statistics are unchanged."""
    per = layer.num_channels // layer.num_groups
    keep = torch.as_tensor(np.setdiff1d(np.arange(layer.num_channels), np.asarray(idxs, dtype=np.int64)))
    layer.num_groups -= len(idxs) // per
    layer.num_channels = int(keep.numel())
    if layer.affine:
        layer.weight = nn.Parameter(layer.weight.detach()[keep.to(layer.weight.device)])
        layer.bias = nn.Parameter(layer.bias.detach()[keep.to(layer.bias.device)])
    return layer


def prune_target(model: nn.Module, target: str, fn: Callable, idxs: Sequence[int]) -> None:
    """Apply pruning function ``fn`` to the module or bare parameter of ``model`` named ``target``."""
    if isinstance(fn, ParameterPruning):
        owner, _, attr = target.rpartition(".")
        parent = model.get_submodule(owner)
        setattr(parent, attr, fn(getattr(parent, attr), idxs))
    else:
        fn(model.get_submodule(target), idxs)


def build_graph(model: nn.Module, example: torch.Tensor) -> tp.DependencyGraph:
    """Trace ``model`` once; the DependencyGraph knows our custom modules' pruners.

    Torch-Pruning finds the parameters no module owns (layer scale) itself. The graph also keeps what
    discovery needs besides: the ``grad_fn`` of every model output (``autoprune_outputs``: channels that
    leave the model are not ours to cut), the splits it cannot map (``autoprune_bad_splits``) and the
    example (``autoprune_example``, to check that a split follows the pruned width).
    """
    outputs: list[object] = []

    def keep_outputs(out: object) -> object:
        outputs.extend(t.grad_fn for t in tp.utils.flatten_as_list(out) if isinstance(t, torch.Tensor))
        return out

    with torch.enable_grad():
        graph = tp.DependencyGraph().build_dependency(
            model, example_inputs=example, customized_pruners=CUSTOM_PRUNERS, verbose=False,
            output_transform=keep_outputs,
        )
    graph.autoprune_outputs = {f for f in outputs if f is not None}
    graph.autoprune_example = example
    graph.autoprune_bad_splits = _order_split_outputs(graph)
    return graph


def _order_split_outputs(graph: tp.DependencyGraph) -> set[object]:
    """Put each split's consumers in chunk order; return the splits whose chunks cannot be told apart.

    Torch-Pruning maps the i-th consumer it met while tracing to the i-th chunk, but tracing meets them
    in no particular order (a ``torch.split(x, [8, 16])`` feeding two convs can be mapped the wrong way
    round). The chunk each consumer reads is the ``output_nr`` of its edge in the autograd graph.
    """
    bad = set()
    for node in graph.module2node.values():
        if node.type != tp.ops.OPTYPE.SPLIT:
            continue
        chunk = {}
        for out in node.outputs:
            edges = [nr for f, nr in getattr(out.grad_fn, "next_functions", ()) if f is node.grad_fn]
            chunk[out] = edges[0] if len(edges) == 1 else None
        order = sorted(chunk.values(), key=lambda v: -1 if v is None else v)
        if None in order or order != list(range(len(order))):
            bad.add(node)  # a chunk read twice, or not read: positions and chunks disagree
            continue
        node.outputs.sort(key=lambda out: chunk[out])
    return bad


@contextmanager
def recording_output_sizes(model: nn.Module) -> Iterator[dict[str, tuple[int, ...]]]:
    """Output shape (without batch) of every conv and linear layer, from the forward passes run inside.

    Recorded during the trace's own forward pass rather than in one more: on a ResNet-50 at 224 px a
    forward pass is a third of the time a space takes to build.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = [module.register_forward_hook(lambda _m, _i, out, name=name: shapes.__setitem__(name, tuple(out.shape[1:])))
             for name, module in model.named_modules() if isinstance(module, (nn.Conv2d, nn.Linear))]
    try:
        yield shapes
    finally:
        for h in hooks:
            h.remove()


def _reaches_output(node: object, outputs: set[object]) -> bool:
    """Whether the tensor ``node`` writes is a model output (or only an output's last op reads it)."""
    if node.grad_fn in outputs or not node.outputs:
        return True
    return any(o.grad_fn in outputs and isinstance(o.module, tp.ops._OutputOp) for o in node.outputs)


def _is_depthwise(conv: nn.Module) -> bool:
    return isinstance(conv, nn.Conv2d) and conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels


Partition = tuple[str, np.ndarray, np.ndarray, int]  # (what, block of each entry, root of each entry, blocks)


def _partitions(model: nn.Module, tp_group: object, members: list[Member]) -> list[Partition] | str:
    """What must keep as many channels in each part: the conv-groups of every grouped conv, the chunks of
    every split along channels. A reason (str) when some part cannot."""
    parts: list[Partition] = []
    for m in members:
        conv = None if isinstance(m.fn, ParameterPruning) else model.get_submodule(m.module)
        if not isinstance(conv, nn.Conv2d) or conv.groups == 1 or _is_depthwise(conv):
            continue
        per = (conv.in_channels if m.side == "in" else conv.out_channels) // conv.groups
        if per == 1:
            return f"grouped conv {m.module} has one channel per conv-group on this side"
        parts.append((f"grouped conv {m.module}", m.index // per, m.root, conv.groups))
    for item in tp_group.items:
        node = item.dep.target
        offsets = getattr(node.module, "offsets", None)
        if node.type != tp.ops.OPTYPE.SPLIT or offsets is None or getattr(node.grad_fn, "_saved_dim", 1) != 1:
            continue
        if len(set(np.diff(offsets).tolist())) != 1:
            return "it passes through a split into chunks of different sizes, fixed in the model's code"
        index = np.asarray(item.idxs, dtype=np.int64)
        chunk = np.searchsorted(np.asarray(offsets[1:]), index, side="right")
        parts.append(("a split", chunk, np.asarray(item.root_idxs, dtype=np.int64), len(offsets) - 1))
    return parts


def _blocks(parts: list[Partition], channels: int) -> tuple[int, np.ndarray | None, str | None]:
    """(step, block of each root channel, reason the group cannot be pruned).

    Every conv-group of a grouped conv, and every chunk of a split, must keep as many channels (a chunk's
    width is computed by the model's code from the pruned width). A block is a set of root channels that
    lie in one part of every partition; blocks of equal size each keeping the same number satisfy all.
    """
    labels = np.zeros(channels, dtype=np.int64)
    for what, part, root, n in parts:
        if len(set(np.bincount(part, minlength=n).tolist())) != 1:
            return 1, None, f"its channels reach the parts of {what} unevenly (through a concatenation)"
        block = np.empty(channels, dtype=np.int64)
        block[root] = part
        labels = np.unique(labels * n + block, return_inverse=True)[1].reshape(-1)
    sizes = np.bincount(labels)
    if sizes.size == 1:
        return 1, None, None
    if len(set(sizes.tolist())) != 1 or sizes[0] == 1:
        return 1, None, "its grouped convs and splits cut the channels into parts that cannot all keep the same number"
    return int(sizes.size), labels, None


def _runs_pruned(model: nn.Module, members: list[Member], blocks: np.ndarray, example: torch.Tensor) -> bool:
    """Whether the model still runs, with outputs of the same shapes, after each block loses its last channel.

    A split's chunk sizes come from the model's code: ``torch.chunk(x, n)`` follows the pruned width, but
    ``torch.split(x, sizes)`` does not, and the traced graph cannot tell the two apart.
    """
    gone_roots = np.array([np.flatnonzero(blocks == b)[-1] for b in range(blocks.max() + 1)])
    pruned = copy.deepcopy(model)
    try:
        with torch.no_grad():
            for m in members:
                idx = m.index[np.isin(m.root, gone_roots)]
                if idx.size:
                    prune_target(pruned, m.module, m.fn, np.unique(idx).tolist())
            before = [t.shape[1:] for t in tp.utils.flatten_as_list(model(example))]
            after = [t.shape[1:] for t in tp.utils.flatten_as_list(pruned(example))]
    except (RuntimeError, ValueError, IndexError):
        return False
    return before == after


def _norm_reason(model: nn.Module, members: list[Member]) -> str | None:
    """Why a norm over several channels forbids pruning them (None when none does)."""
    for m in members:
        if isinstance(m.fn, ParameterPruning):
            continue
        module = model.get_submodule(m.module)
        if isinstance(module, nn.LayerNorm):
            return (f"LayerNorm {m.module} normalises over these channels: removing some would change the "
                    "statistics of the kept ones")
        if isinstance(module, nn.GroupNorm) and module.num_groups != module.num_channels:
            return (f"GroupNorm {m.module} normalises {module.num_channels // module.num_groups} of these channels "
                    "together: removing some would change the statistics of the kept ones")
    return None


def _member(item: object, graph: tp.DependencyGraph, names: dict[object, str], params: dict[object, str],
            model: nn.Module) -> Member | None:
    """Our record of one item of a Torch-Pruning group (None for its own elementwise, reshape and concat nodes)."""
    target = item.dep.target.module
    index = np.asarray(item.idxs, dtype=np.int64)
    root = np.asarray(item.root_idxs, dtype=np.int64)
    if isinstance(target, nn.Parameter):
        if target not in params:
            return None
        return Member(module=params[target], side="out", fn=ParameterPruning(item.dep.target.pruning_dim),
                      index=index, root=root)
    if target not in names:
        return None
    side = "out" if graph.is_out_channel_pruning_fn(item.dep.handler) else "in"
    fn = item.dep.handler
    if isinstance(target, nn.Conv2d) and target.groups > 1 and not _is_depthwise(target) and side == "in":
        fn = prune_grouped_conv_in_channels
    elif isinstance(target, nn.GroupNorm):
        fn = prune_groupnorm_channels
    return Member(module=names[target], side=side, fn=fn, index=index, root=root)


def discover_groups(
    model: nn.Module,
    graph: tp.DependencyGraph,
    shapes: dict[str, tuple[int, ...]],
    classifier: str | None,
) -> tuple[list[Group], dict[str, str]]:
    """Every prunable group of ``model`` in definition (= forward) order, and why the others are left whole.

    Groups that would prune the classifier's outputs are left out: the number
    of classes is not ours to change; nor is the width of any other output.
    The reasons are keyed by the group's name (its first conv or linear layer).
    """
    names = {m: n for n, m in model.named_modules()}
    params = {p: n for n, p in model.named_parameters()}
    order = {n: i for i, n in enumerate(names.values())}
    ignored = [model.get_submodule(classifier)] if classifier else []
    outputs = getattr(graph, "autoprune_outputs", set())
    groups: list[Group] = []
    unprunable: dict[str, str] = {}
    if classifier:
        unprunable[classifier] = "the classifier: the number of classes is not ours to change"
    position = {**order, **{n: order.get(n.rpartition(".")[0], len(order)) for n in params.values()}}
    for tp_group in graph.get_all_groups(ignored_layers=ignored, root_module_types=(nn.Conv2d, nn.Linear)):
        members = [m for m in (_member(item, graph, names, params, model) for item in tp_group.items) if m]
        members.sort(key=lambda m: (position[m.module], m.side))
        layers = [m for m in members if m.side == "out" and m.module in order
                  and isinstance(model.get_submodule(m.module), (nn.Conv2d, nn.Linear))]
        convs = [m for m in layers if isinstance(model.get_submodule(m.module), nn.Conv2d)]
        pointwise = [m for m in layers if len(shapes[m.module]) > 1]  # Linears applied per position: 1x1 convs
        if not convs and not pointwise:
            if layers:
                unprunable[layers[0].module] = ("only fully connected layers after a flatten or pooling write "
                                                "these features: the engine prunes the channels of feature maps")
            continue
        name = (convs or pointwise)[0].module
        channels = len(tp_group.items[0].idxs)
        parts = _partitions(model, tp_group, members)
        step, blocks, reason = (1, None, parts) if isinstance(parts, str) else _blocks(parts, channels)
        reason = reason or _norm_reason(model, members)
        if not reason and any(what == "a split" for what, *_ in parts) and not _runs_pruned(
                model, members, blocks if blocks is not None else np.zeros(channels, dtype=np.int64),
                graph.autoprune_example):
            reason = "it passes through a split whose chunk sizes are fixed in the model's code (torch.split)"
        if any(item.dep.target in getattr(graph, "autoprune_bad_splits", ()) for item in tp_group.items):
            reason = ("it passes through a split whose chunks are not each read by exactly one layer "
                      "(Torch-Pruning could not map them)")
        if any(_reaches_output(item.dep.target, outputs) for item in tp_group.items
               if graph.is_out_channel_pruning_fn(item.dep.handler)):
            reason = "its channels are an output of the model"
        if reason:
            unprunable[name] = reason
            continue
        root = model.get_submodule(name)
        dense_convs = [m for m in convs if model.get_submodule(m.module).groups == 1]
        if isinstance(root, nn.Linear):
            geometry = dict(in_channels=root.in_features, kernel=1, stride=1, fmap=shapes[name][0])
        else:
            geometry = dict(in_channels=root.in_channels, kernel=root.kernel_size[0], stride=root.stride[0],
                            fmap=shapes[name][1])
        groups.append(Group(
            name=name,
            channels=channels,
            members=tuple(members),
            kind="residual" if len(dense_convs) > 1 else ("depthwise" if _is_depthwise(root) else "conv"),
            **geometry,
            step=step,
            blocks=blocks,
        ))
    groups.sort(key=lambda g: order[g.name])
    return groups, dict(sorted(unprunable.items(), key=lambda kv: order.get(kv[0], len(order))))
