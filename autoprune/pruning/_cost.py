"""The cost model: MACs and parameters of any pruning, computed analytically.

Every layer's input and output widths are affine in the groups' kept channel
counts ``k`` (a group removes the same number of channels from each member for
every root channel it drops). So MACs and params are a quadratic form in ``k``,
built once per model from the discovered groups and evaluated with two small
matrix-vector products: microseconds per query, exact against a traced count.
Counted: convolutions (grouped and depthwise too) and linear layers, a Linear
once per position it is applied at (channels-last MLPs), as
``torch.utils.flop_counter.FlopCounterMode`` counts them (MACs); all
parameters, bare ``nn.Parameter`` s pruned with their channels included (params).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from torch import nn

from ._discover import Group, ParameterPruning

__all__ = ["Cost", "CostModel"]


@dataclass(frozen=True)
class Cost:
    """MACs and parameter count of one (pruned) model."""

    macs: int
    params: int


class CostModel:
    """MACs/params as a function of each group's kept channel count.

    Args:
        model: the unpruned model.
        groups: all its groups (the order fixes the order of ``kept`` vectors).
        shapes: output shape of every conv/linear (from one forward pass).
    """

    def __init__(self, model: nn.Module, groups: Sequence[Group], shapes: dict[str, tuple[int, ...]]) -> None:
        self.groups = list(groups)
        self.full = np.array([g.channels for g in self.groups], dtype=np.float64)
        rows: list[str] = []
        in_full: list[float] = []
        out_full: list[float] = []
        w_dense: list[float] = []  # MACs per (in x out) channel pair
        w_depthwise: list[float] = []  # MACs per channel (depthwise convs)
        p_pair: list[float] = []  # params per (in x out) pair
        p_out: list[float] = []  # params per output channel (bias, BN affine, depthwise kernels)
        fixed_params = 0
        pruned_params = {m.module: m.fn.dim for g in self.groups for m in g.members if isinstance(m.fn, ParameterPruning)}
        named_params = dict(model.named_parameters())
        owned_by: dict[str, int] = {}  # numel of pruned bare parameters, by the module holding them
        for p in pruned_params:
            owned_by[p.rpartition(".")[0]] = owned_by.get(p.rpartition(".")[0], 0) + named_params[p].numel()
        for name, module in model.named_modules():
            own = sum(p.numel() for p in module.parameters(recurse=False))
            if isinstance(module, nn.Conv2d):
                kk = module.kernel_size[0] * module.kernel_size[1]
                hw = int(np.prod(shapes[name][1:]))
                bias = 1.0 if module.bias is not None else 0.0
                if module.groups == module.in_channels == module.out_channels and module.groups > 1:
                    terms = (0.0, kk * hw, 0.0, kk + bias)
                else:  # a grouped conv: each output sees in_channels / groups inputs
                    terms = (kk * hw / module.groups, 0.0, kk / module.groups, bias)
                cin, cout = module.in_channels, module.out_channels
            elif isinstance(module, nn.Linear):
                bias = 1.0 if module.bias is not None else 0.0
                positions = int(np.prod(shapes[name][:-1]))  # 1 after flatten, H*W when applied channels-last
                terms = (float(positions), 0.0, 1.0, bias)
                cin, cout = module.in_features, module.out_features
            elif isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)):
                width = _norm_width(module)
                terms = (0.0, 0.0, 0.0, own / width)
                cin = cout = width
            else:
                fixed_params += own - owned_by.get(name, 0)
                continue
            rows.append(name)
            in_full.append(cin)
            out_full.append(cout)
            w_dense.append(terms[0])
            w_depthwise.append(terms[1])
            p_pair.append(terms[2])
            p_out.append(terms[3])

        for name, dim in pruned_params.items():  # layer scale and the like: params per channel, no MACs
            p = named_params[name]
            rows.append(name)
            in_full.append(p.shape[dim])
            out_full.append(p.shape[dim])
            w_dense.append(0.0)
            w_depthwise.append(0.0)
            p_pair.append(0.0)
            p_out.append(p.numel() / p.shape[dim])

        row = {n: i for i, n in enumerate(rows)}
        depthwise = {n for n, m in model.named_modules()
                     if isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels == m.out_channels}
        a_in = np.zeros((len(rows), len(self.groups)))
        a_out = np.zeros_like(a_in)
        for j, group in enumerate(self.groups):
            for m in group.members:
                if m.module not in row:
                    continue
                per_root = len(m.index) / group.channels
                if m.side == "out":
                    a_out[row[m.module], j] += per_root
                if m.side == "in" or m.module in depthwise:  # a depthwise conv loses inputs with its outputs
                    a_in[row[m.module], j] += per_root
        self._a_in, self._a_out = a_in, a_out
        self._in0 = np.array(in_full) - a_in @ self.full
        self._out0 = np.array(out_full) - a_out @ self.full
        self._w_dense, self._w_dw = np.array(w_dense), np.array(w_depthwise)
        self._p_pair, self._p_out = np.array(p_pair), np.array(p_out)
        self._fixed_params = fixed_params
        self.base = self.cost(self.full)

    def cost(self, kept: Sequence[float] | np.ndarray) -> Cost:
        """MACs and params when group ``j`` keeps ``kept[j]`` channels."""
        k = np.asarray(kept, dtype=np.float64)
        cin = self._in0 + self._a_in @ k
        cout = self._out0 + self._a_out @ k
        pair = cin * cout
        macs = self._w_dense @ pair + self._w_dw @ cout
        params = self._p_pair @ pair + self._p_out @ cout + self._fixed_params
        return Cost(int(round(macs)), int(round(params)))

    def macs(self, kept: Sequence[float] | np.ndarray) -> int:
        """MACs only (the quantity budgets are usually given in)."""
        k = np.asarray(kept, dtype=np.float64)
        cout = self._out0 + self._a_out @ k
        return int(round(self._w_dense @ ((self._in0 + self._a_in @ k) * cout) + self._w_dw @ cout))


def _norm_width(module: nn.Module) -> int:
    """Channels of a normalisation layer (its parameters are per channel; a LayerNorm's over its last dimension)."""
    if isinstance(module, nn.GroupNorm):
        return module.num_channels
    if isinstance(module, nn.LayerNorm):
        return module.normalized_shape[-1]
    return module.num_features
