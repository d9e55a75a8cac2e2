"""Which parts of a model a latency table times, and the pruned models that give each its inputs.

A *unit* is a submodule timed on its own: the largest module, descending from the whole model, whose
kept channels depend on at most two searchable groups (the groups with a member inside it), called once
per forward with tensors only. At most two, because then its latency is a function on a 1-D or 2-D grid
of those groups' counts that (bi)linear interpolation reads exactly where time is linear in each count
(a conv's MACs are in x out). For a CIFAR ResNet's ``inner`` space a unit is a residual block (one
group each); in its ``full`` space a block of stage 2 (three groups: its input, inner and output widths)
splits into its convs, norms and shortcut. The larger the unit, the fewer of the model's operations run
outside every unit (functional ReLUs and additions in a parent's forward, the Python between modules);
those are left to the calibration of :mod:`._model`. A leaf module touched by more than two groups (a
conv fed by a concatenation of several) is timed along each group alone, the others whole, and its
latency taken as the sum of those effects (interactions between the groups are missed); a module called
several times or with non-tensor arguments, when it has no children to descend into, is not timed
(``untimed``: the calibration absorbs it).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..pruning import PrunableSpace

__all__ = ["Unit", "find_units", "grid_points", "configurations", "pruned_model", "capture_inputs"]


@dataclass(frozen=True)
class Unit:
    """A submodule timed on its own: ``axes`` are the searchable groups (indices) its latency depends on,
    ``grids[i]`` the kept counts of ``axes[i]`` it is timed at; ``additive`` for more than two axes."""

    name: str
    axes: tuple[int, ...]
    grids: tuple[tuple[int, ...], ...]

    @property
    def additive(self) -> bool:
        return len(self.axes) > 2

    def points(self, full: np.ndarray) -> list[dict[int, int]]:
        """The (group -> count) settings it is timed at: the grid's product for up to two axes; else each
        axis alone along its grid, the other axes whole (``full``), after the all-whole point."""
        if not self.additive:
            return [dict(zip(self.axes, values)) for values in itertools.product(*self.grids)]
        whole = {j: int(full[j]) for j in self.axes}
        return [whole] + [{**whole, j: v} for j, grid in zip(self.axes, self.grids) for v in grid]



def _forward_once(model: nn.Module, example: torch.Tensor, hooks: list) -> None:
    """One forward pass without gradients that the ``hooks`` observe; they are removed after it, whatever happens."""
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()

def grid_points(space: PrunableSpace, j: int, points: int) -> tuple[int, ...]:
    """Up to ``points`` counts of group ``j`` spread evenly over its options (both ends included): the
    options are multiples of the space's step (its ``round``), so the grid is too."""
    options = space.count_options(j)
    pick = np.unique(np.round(np.linspace(0, len(options) - 1, min(points, len(options)))).astype(int))
    return tuple(int(v) for v in options[pick])


def _calls(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """How often each module is called in one forward with tensor-only positional arguments (-1: with others)."""
    calls: dict[str, int] = {}
    hooks = []
    for name, module in model.named_modules():
        def count(_m: nn.Module, args: tuple, kwargs: dict, name: str = name) -> None:
            ok = not kwargs and all(isinstance(a, torch.Tensor) for a in args)
            calls[name] = -1 if not ok or calls.get(name, 0) < 0 else calls.get(name, 0) + 1
        hooks.append(module.register_forward_pre_hook(count, with_kwargs=True))
    _forward_once(model, example, hooks)
    return calls


def find_units(space: PrunableSpace, points: int) -> tuple[list[Unit], list[str]]:
    """The units of ``space``'s model, in forward order, and the modules left untimed (see the module docstring)."""
    model = space.model
    example = torch.zeros(1, *space.info.input_size, device=next(model.parameters()).device)
    calls = _calls(model, example)
    members = [sorted({m.module for m in g.members}) for g in space.searchable]

    def touching(name: str) -> tuple[int, ...]:
        prefix = name + "." if name else ""
        return tuple(j for j, mods in enumerate(members) if any(m == name or m.startswith(prefix) for m in mods))

    units: list[Unit] = []
    untimed: list[str] = []

    def visit(name: str, module: nn.Module) -> None:
        if name not in calls:
            return  # not run by the forward: no latency
        axes = touching(name)
        children = list(module.named_children())
        timed = calls[name] == 1
        if timed and (len(axes) <= 2 or not children):
            grids = tuple(grid_points(space, j, points) for j in axes)
            units.append(Unit(name, axes, grids))
        elif children:
            for child, sub in children:
                visit(f"{name}.{child}" if name else child, sub)
        else:
            untimed.append(name)

    visit("", model)
    return units, untimed


def configurations(units: Iterable[Unit], full: np.ndarray) -> list[tuple[np.ndarray, list[tuple[int, int]]]]:
    """Few pruned models that together give every unit each of its points: a unit's latency depends on its
    own axes only, so units on other groups can share a model. Greedy: each model takes, for every unit in
    turn, the first of its pending points that agrees with the counts fixed so far. Returns (counts of every
    searchable group, [(unit index, point index)]) per model."""
    units = list(units)
    pending = [list(enumerate(u.points(full))) for u in units]
    out = []
    while any(pending):
        fixed: dict[int, int] = {}
        taken = []
        for u, todo in enumerate(pending):
            for k, (p, point) in enumerate(todo):
                if all(fixed.get(j, v) == v for j, v in point.items()):
                    fixed.update(point)
                    taken.append((u, p))
                    del todo[k]
                    break
        counts = full.copy()
        for j, v in fixed.items():
            counts[j] = v
        out.append((counts, taken))
    return out


def pruned_model(space: PrunableSpace, counts: np.ndarray) -> nn.Module:
    """The model pruned to ``counts`` (which channels go does not change its latency: the last ones)."""
    order = {g.name: -np.arange(g.channels, dtype=np.float64) for g in space.searchable}
    return space.apply(space.select(counts, order)).eval()


def capture_inputs(model: nn.Module, names: Iterable[str], example: torch.Tensor
                   ) -> Iterator[tuple[str, nn.Module, tuple[torch.Tensor, ...], list[tuple[int, ...]]]]:
    """Run ``model`` on ``example`` once; yield each named submodule with the inputs it was called with and the
    shapes of its tensor outputs (a stride or padding that its repr does not show still shows there)."""
    seen: dict[str, tuple[torch.Tensor, ...]] = {}
    shapes: dict[str, list[tuple[int, ...]]] = {}
    hooks = []
    for name in names:
        module = model.get_submodule(name)

        def keep(_m: nn.Module, args: tuple, name: str = name) -> None:
            seen[name] = tuple(a.detach() for a in args)

        def out(_m: nn.Module, _args: tuple, result: object, name: str = name) -> None:
            flat = result if isinstance(result, (tuple, list)) else [result]
            shapes[name] = [tuple(r.shape) for r in flat if isinstance(r, torch.Tensor)]
        hooks += [module.register_forward_pre_hook(keep), module.register_forward_hook(out)]
    _forward_once(model, example, hooks)
    for name, args in seen.items():
        yield name, model.get_submodule(name), args, shapes[name]
