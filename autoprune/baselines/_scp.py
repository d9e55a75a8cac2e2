"""SCP, operation-aware soft channel pruning with differentiable masks (Kang & Han, ICML 2020; seed 004).

A channel is alive when the ReLU after its BatchNorm lets something through.
For unit-normal normalised inputs BN's output ``gamma * x + beta`` is positive
with probability ``Phi(beta / |gamma|)``: that is the channel's keep
probability, a differentiable function of the BN parameters. Training samples
soft masks from it with the binary concrete (two-class Gumbel-softmax)
relaxation at a temperature, and a regulariser pulls the expected kept MACs
to the target; at the end the channels of low probability are removed.

The details, as chosen here:

- *Groups of several BatchNorms.* A group's producers are split into stages
  at depthwise convolutions. BNs of one stage act in parallel (a residual
  width several blocks add into, a DenseNet channel every later layer
  normalises): the channel is alive if any lets it through,
  ``1 - prod(1 - Phi_i)``. Stages act in series (MobileNetV2's expansion BN,
  then the depthwise conv's): alive if every stage is, ``prod(p_stage)``. A
  group of one BN has exactly ``Phi(beta / |gamma|)``. A group without a BN
  is refused: there is no probability to learn.
- *Where the mask acts.* At the group's consumers (:mod:`._masks`), one
  sample per channel and forward pass shared by all of them, so the masked
  network is the pruned one when the masks are 0/1.
- *The regulariser.* ``strength * N * |E[MACs] / base - target|``, ``N`` the
  searchable channels (so ``strength`` is the pull on one channel of average
  cost whatever the model's size). ``E[MACs]`` is the cost model at the
  expected counts (sums of probabilities), exact for independent masks
  (:class:`._masks.ExpectedMacs`). Two-sided: from scratch it pushes the
  probabilities down; from a pretrained model, whose BNs have negative shifts
  (``Phi`` about 0.2 in resnet56), it first pulls them up to the budget.
- *Removal.* Channels whose probability ends below ``threshold`` are removed
  (a group keeps at least its lower bound, its best channels). When that set
  misses the target (over it, or under it by more than the last group's
  next channel), all channels are ranked by probability, globally
  (probabilities compare across layers as they are), and the best that fit
  the target are kept (:func:`._masks.counts_to_target`); ``info`` says
  which happened.
- *The weights.* Each kept channel's probability is folded into its
  consumers' input weights, so the unmasked pruned network computes what the
  trained, randomly masked one computes in expectation.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import AutopruneError
from ..pruning import PrunableSpace, check_target
from ._masks import ExpectedMacs, GroupMasks, counts_to_target, fold_masks, top_up
from ._method import Context, Outcome
from ._settings import check, settings_from
from ._training import TrainSettings, train_resumable

__all__ = ["Gates", "SCPSettings", "removal", "run"]

_EPS = 1e-12  # probabilities are clipped to [_EPS, 1 - _EPS] before their logit is taken


@dataclass(frozen=True)
class SCPSettings(TrainSettings):
    """SCP's hyperparameters (the preset's ``hyperparameters``), besides the training's.

    Attributes:
        temperature: of the binary-concrete relaxation; lower is closer to 0/1 masks.
        strength: of the MACs regulariser, per channel (see the module docstring).
        threshold: channels whose keep probability ends below it are removed.
    """

    temperature: float = 0.5
    strength: float = 1.0
    threshold: float = 0.05

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.temperature > 0, "temperature must be positive", temperature=self.temperature)
        check(self.strength >= 0, "strength must be at least 0", strength=self.strength)
        check(0 < self.threshold < 1, "threshold must lie in (0, 1)", threshold=self.threshold)


BNSite = tuple[nn.modules.batchnorm._BatchNorm, torch.Tensor, torch.Tensor]  # BN, its channels, their roots


def _stages(model: nn.Module, space: PrunableSpace) -> dict[str, list[list[BNSite]]]:
    """Each searchable group's BatchNorms, in stages split at depthwise convs (see the module docstring)."""
    device = next(model.parameters()).device
    out = {}
    for g in space.searchable:
        stages: list[list[BNSite]] = [[]]
        for m in g.producers():
            module = model.get_submodule(m.module)
            if isinstance(module, nn.Conv2d) and module.groups > 1 and stages[-1]:
                stages.append([])
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                if not module.affine:
                    raise AutopruneError(f"SCP cannot prune group {g.name!r} of {space.arch}: its BatchNorm {m.module} "
                                         "has no affine parameters, and the keep probability Phi(beta/|gamma|) is "
                                         "learnt through them; use dcp or a criterion-based agent.")
                stages[-1].append((module, torch.as_tensor(m.index, device=device),
                                   torch.as_tensor(m.root, device=device)))
        stages = [s for s in stages if s]
        if not stages:
            raise AutopruneError(f"SCP cannot prune group {g.name!r} of {space.arch}: no BatchNorm normalises its "
                                 "channels, and SCP's keep probability Phi(beta/|gamma|) comes from the BatchNorm "
                                 "before the ReLU; use dcp or a criterion-based agent for this model.")
        out[g.name] = stages
    return out


class Gates:
    """SCP's keep probabilities and soft masks on ``model``'s searchable groups (of ``space``).

    A forward pass in training mode samples new masks (binary concrete at
    ``temperature``, noise from a generator seeded with ``seed``); in
    evaluation mode the masks are the probabilities (their expectation). The
    hooks stay until :meth:`remove`.
    """

    def __init__(self, model: nn.Module, space: PrunableSpace, *, temperature: float = 0.5, seed: int = 0) -> None:
        self.space, self.temperature = space, temperature
        self.stages = _stages(model, space)
        self.masks = GroupMasks(model, space.searchable)
        device = next(model.parameters()).device
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self._handle = model.register_forward_pre_hook(self._before_forward)

    def probabilities(self) -> dict[str, torch.Tensor]:
        """Keep probability of every channel of every searchable group (float64, differentiable)."""
        probs = {}
        for g in self.space.searchable:
            p = None
            for stage in self.stages[g.name]:
                if len(stage) == 1:
                    bn, index, root = stage[0]
                    z = bn.bias.double()[index] / bn.weight.double()[index].abs().clamp_min(1e-12)
                    p_stage = torch.ones(g.channels, dtype=torch.float64, device=z.device).index_put(
                        (root,), torch.special.ndtr(z))
                else:
                    dead = None
                    for bn, index, root in stage:
                        z = bn.bias.double()[index] / bn.weight.double()[index].abs().clamp_min(1e-12)
                        q = torch.ones(g.channels, dtype=torch.float64, device=z.device).index_put(
                            (root,), torch.special.ndtr(-z))
                        dead = q if dead is None else dead * q
                    p_stage = 1 - dead
                p = p_stage if p is None else p * p_stage
            probs[g.name] = p
        return probs

    def sample(self) -> dict[str, torch.Tensor]:
        """Soft masks: ``sigmoid((logit(p) + logistic noise) / temperature)`` per channel."""
        masks = {}
        for name, p in self.probabilities().items():
            p = p.clamp(_EPS, 1 - _EPS)
            u = torch.rand(p.shape, generator=self.generator, device=p.device, dtype=torch.float64).clamp(_EPS, 1 - _EPS)
            noise = torch.log(u) - torch.log1p(-u)
            masks[name] = torch.sigmoid((torch.log(p) - torch.log1p(-p) + noise) / self.temperature).float()
        return masks

    def _before_forward(self, module: nn.Module, _args: tuple) -> None:
        if module.training and torch.is_grad_enabled():
            self.masks.values.update(self.sample())
        else:
            with torch.no_grad():
                self.masks.values.update({n: p.float() for n, p in self.probabilities().items()})

    def remove(self) -> None:
        self.masks.remove()
        self._handle.remove()

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])


class MacsPenalty:
    """SCP's regulariser: ``strength * N * |E[MACs] / base - target|`` (see the module docstring)."""

    def __init__(self, gates: Gates, target: float, strength: float) -> None:
        self.gates, self.target, self.strength = gates, target, strength
        device = next(iter(gates.masks.values.values())).device
        self.expected = ExpectedMacs(gates.space, device)
        self.channels = int(gates.space.channels.sum())

    def expected_fraction(self) -> torch.Tensor:
        """E[MACs] / base under the current probabilities (float64, differentiable)."""
        probs = self.gates.probabilities()
        return self.expected(torch.stack([probs[g.name].sum() for g in self.gates.space.searchable]))

    def __call__(self, _model: nn.Module | None = None) -> torch.Tensor:
        device = self.expected._a_in.device
        with torch.autocast(device.type, enabled=False):
            gap = self.expected_fraction() - self.target
            return (self.strength * self.channels * gap.abs()).float()


def removal(space: PrunableSpace, probs: dict[str, np.ndarray], threshold: float,
            target: float) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, Any]]:
    """SCP's final removal: counts, kept channels and what was done (see "Removal" in the module docstring)."""
    n = len(space.searchable)
    floor, ceil = space.counts(np.full(n, space.spec.bounds[0])), space.counts(np.full(n, space.spec.bounds[1]))
    step = space.steps
    above = np.array([int((probs[g.name] >= threshold).sum()) for g in space.searchable])
    counts = np.clip(np.ceil(above / step) * step, floor, ceil).astype(np.int64)
    info: dict[str, Any] = {"threshold": threshold, "below_threshold": int(space.channels.sum() - above.sum()),
                            "threshold_macs": space.macs(counts) / space.base.macs}
    lifted = [g.name for g, a, c in zip(space.searchable, above, counts) if c > a]
    if lifted:
        info["lifted_to_lower_bound"] = lifted
    if space.macs(counts) <= target * space.base.macs and np.array_equal(top_up(space, counts, target), counts):
        info["adjusted"] = "none: the threshold meets the target"
    else:
        adjusted = counts_to_target(space, target, probs, normalise=False)
        info["adjusted"] = (f"the threshold kept {info['threshold_macs']:.4f} of the MACs; ranked every channel by "
                            f"probability and kept the best within the target "
                            f"({int(adjusted.sum() - counts.sum()):+d} channels)")
        counts = adjusted
    return counts, space.select(counts, probs), info


def run(context: Context) -> Outcome:
    """Train with soft channel masks under the MACs regulariser; answer with the removal and the trained weights."""
    settings = settings_from(SCPSettings, context.hyperparameters, "scp")
    context.require_macs("SCP (its regulariser is the expected MACs)")
    check_target(context.space, context.target)
    model = copy.deepcopy(context.model).to(context.device)
    gates = Gates(model, context.space, temperature=settings.temperature, seed=context.seed)
    penalty = MacsPenalty(gates, context.target, settings.strength)
    try:
        history = train_resumable(context, model, settings, "scp", state=gates, regularizer=penalty).history
    finally:
        gates.remove()
    with torch.no_grad():
        probs_t = gates.probabilities()
        expected = float(penalty.expected_fraction())
    probs = {n: p.cpu().numpy() for n, p in probs_t.items()}
    counts, kept, info = removal(context.space, probs, settings.threshold, context.target)
    fold_masks(model, context.space.searchable, probs_t)
    info = {"method": "scp",
            "knob": "the probability threshold removes channels; the kept set is then adjusted to the MACs target "
                    "by ranking every channel by its keep probability (cost model)",
            **info, "expected_macs": expected, "training": asdict(settings), "history": history}
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return Outcome(counts=counts, kept=kept, weights=weights, info=info)
