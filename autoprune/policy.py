"""The Policy: the artefact every part of autoprune exchanges.

A policy says, for one model (its spec: a zoo name or a user's factory with its
arguments, input size and output selector) and checkpoint, how many and which
channels each searchable group keeps, what that costs, how well it did and
where it came from. It is plain JSON with a schema version, and it replays on
the original model: :func:`autoprune.pruning.apply` rebuilds the pruned network
from it. The engine (:mod:`autoprune.pruning`) imports this module to make
policies; so that the two never import each other, this one needs nothing of
the engine at run time and works on whatever space the caller passes.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._io import write_json
from ._version import __version__
from .errors import AutopruneError, PolicyError
from .models import ModelSpec

if TYPE_CHECKING:
    from .pruning import Metric, PrunableSpace

__all__ = ["SCHEMA_VERSION", "Policy", "make_policy", "policy_for"]

# 2: the model spec and each group's channels; 1 (a zoo name only) migrates on load. A budget of another metric
# than MACs adds keys to ``target`` only (value, base, unit; a latency model's settings), so a file of either
# budget is read by every reader of schema 2, and one without a target metric is a MACs budget.
SCHEMA_VERSION = 2


@dataclass
class Policy:
    """Per-group keep ratios and kept channels of one pruned model, with its provenance.

    Attributes:
        arch: the model's source: a zoo name, ``package.module:factory`` or ``file.py:factory`` (see ``model``).
        dataset: the dataset the checkpoint was trained on (e.g. "cifar10").
        num_classes: classifier width.
        checkpoint: sha256 of the checkpoint the channels were chosen on (None: random init).
        space: name of the prunable space the groups come from.
        ratios: keep ratio per searchable group, as the agent asked for it.
        channels: kept channel indices per searchable group (sorted), after rounding and selection.
        criterion: the channel-selection criterion that chose ``channels``.
        target: the budget, e.g. ``{"metric": "macs", "fraction": 0.5}`` (None: unconstrained). Another
            metric records its value for these channels and the unpruned model's, in its unit:
            ``{"metric": "latency", "fraction": 0.6, "value": 0.0021, "base": 0.0036, "unit": "s",
            "settings": {...}}`` (a latency model's prediction, and where it measures); "params" likewise.
        macs, params: cost of the pruned model; ``base_macs``/``base_params`` of the unpruned one.
        accuracy: measured accuracies by split, e.g. ``{"holdout": 0.71, "test": 0.80}``.
        provenance: who made it (agent, seed, autoprune version, time). ``channel_macs``, when present,
            is the cost of ``channels`` alone for a method that removes more (zeroed kernels: ``macs``
            counts what remains).
        model: the model spec (:class:`~autoprune.models.ModelSpec` as a mapping): factory, arguments, input
            size, output selector, layers kept; a policy replays only onto a model of the same spec.
        widths: channels of each searchable group in the unpruned model: a model of another structure is
            refused by the groups that differ.
    """

    arch: str
    dataset: str
    num_classes: int
    checkpoint: str | None
    space: str
    ratios: dict[str, float]
    channels: dict[str, list[int]]
    criterion: str
    macs: int
    params: int
    base_macs: int
    base_params: int
    target: dict[str, Any] | None = None
    accuracy: dict[str, float] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    widths: dict[str, int] = field(default_factory=dict)
    schema: int = SCHEMA_VERSION

    @property
    def model_spec(self) -> ModelSpec:
        """The spec of the model this policy was made on (a v1 policy's: its zoo name and classes)."""
        if not self.model:
            return ModelSpec(self.arch, num_classes=self.num_classes)
        return ModelSpec.from_dict(self.model, "The policy's 'model'")

    @property
    def macs_fraction(self) -> float:
        return self.macs / self.base_macs

    @property
    def params_fraction(self) -> float:
        return self.params / self.base_params

    def counts(self, names: Sequence[str]) -> np.ndarray:
        """Kept channels of each group of ``names``, in that order (a space's ``names``: its count vector)."""
        return np.array([len(self.channels[n]) for n in names], dtype=np.int64)

    @property
    def budget_metric(self) -> str:
        """The metric the target budgets: "flops" (a MACs target, or none), "params" or "latency"."""
        metric = (self.target or {}).get("metric", "macs")
        return "flops" if metric == "macs" else str(metric)

    @property
    def budget_fraction(self) -> float:
        """The fraction of the budget metric these channels keep (a latency: the recorded prediction)."""
        metric = self.budget_metric
        if metric == "params":
            return self.params_fraction
        if metric == "latency":
            return float(self.target["value"]) / float(self.target["base"])
        return self.macs_fraction

    # -- JSON ---------------------------------------------------------------
    @property
    def kernel_sparse(self) -> bool:
        """Whether it states fewer MACs than its channels cost (zeroed kernels, ``provenance["channel_macs"]``):
        a dense fine-tune would grow those kernels back."""
        channel_macs = self.provenance.get("channel_macs")
        return channel_macs is not None and self.macs < channel_macs

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "policy") -> Policy:
        """Parse and check the shape of a policy dict (not yet against a model: see :meth:`validate`)."""
        if not isinstance(data, dict):
            raise PolicyError(f"{source}: a policy must be a JSON object, but got {type(data).__name__}.")
        schema = data.get("schema")
        if schema == 1:  # v1 named a zoo architecture only: its spec is that name and its classes
            data = {**data, "schema": SCHEMA_VERSION,
                    "model": {"source": data.get("arch"), "num_classes": data.get("num_classes")}}
        elif schema != SCHEMA_VERSION:
            raise PolicyError(f"{source}: schema version {schema!r} is not supported (this autoprune reads {SCHEMA_VERSION}).")
        names = set(cls.__dataclass_fields__)
        missing = sorted(n for n, f in cls.__dataclass_fields__.items()
                         if n not in data and f.default is MISSING and f.default_factory is MISSING)
        unknown = sorted(set(data) - names)
        if missing or unknown:
            raise PolicyError(f"{source}: missing fields {missing}, unknown fields {unknown}.")
        try:
            channels = {str(k): [int(i) for i in v] for k, v in data["channels"].items()}
            ratios = {str(k): float(v) for k, v in data["ratios"].items()}
        except (AttributeError, TypeError, ValueError) as e:
            raise PolicyError(f"{source}: 'channels' must map group names to lists of ints and 'ratios' to numbers ({e}).") from e
        if set(channels) != set(ratios):
            raise PolicyError(f"{source}: 'ratios' and 'channels' name different groups.")
        if not isinstance(data.get("model", {}), dict) or not isinstance(data.get("widths", {}), dict):
            raise PolicyError(f"{source}: 'model' and 'widths' must be JSON objects.")
        target = data.get("target")
        if target is not None and not isinstance(target, dict):
            raise PolicyError(f"{source}: 'target' must be a JSON object or null, but got {type(target).__name__}.")
        if target and target.get("metric") in ("params", "latency") and not all(
                isinstance(target.get(k), (int, float)) and target[k] > 0 for k in ("value", "base")):
            raise PolicyError(f"{source}: a {target['metric']} target needs positive numbers 'value' and 'base'.")
        policy = cls(**{**data, "channels": channels, "ratios": ratios})
        try:
            policy.model_spec
        except AutopruneError as e:
            raise PolicyError(f"{source}: {e}") from e
        return policy

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the policy as JSON, atomically."""
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Policy:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise PolicyError(f"Policy file {path} does not exist.") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise PolicyError(f"Policy file {path} is not valid JSON: {e}") from e
        return cls.from_dict(data, source=str(path))

    # -- against a model ----------------------------------------------------
    def validate(self, space: PrunableSpace, checkpoint: str | None = None) -> None:
        """Raise :class:`PolicyError` unless this policy fits ``space`` (and ``checkpoint``, if given)."""
        if space.arch != self.arch:
            raise PolicyError(f"Policy is for {self.arch}, but the model is {space.arch}.")
        mine, theirs = self.model_spec.identity(), space.info.identity()
        differ = [k for k in mine if mine[k] != theirs[k] and k != "source"]
        if differ:
            raise PolicyError(f"Policy is for another {self.arch}: "
                              + "; ".join(f"{k} {mine[k]!r} in the policy, {theirs[k]!r} here" for k in differ) + ".")
        if space.name != self.space:
            raise PolicyError(f"Policy is for space {self.space!r}, but the model's space is {space.name!r}.")
        if checkpoint is not None and self.checkpoint is not None and checkpoint != self.checkpoint:
            raise PolicyError(
                f"Policy was made on checkpoint {self.checkpoint[:12]}..., but the given checkpoint is "
                f"{checkpoint[:12]}...: its channel choice would not carry over. Pass the checkpoint it names."
            )
        expected = set(space.names)
        if set(self.channels) != expected:
            missing, extra = sorted(expected - set(self.channels)), sorted(set(self.channels) - expected)
            raise PolicyError(f"Policy does not match {self.arch}/{self.space}: missing groups {missing}, unknown groups {extra}.")
        widths = {g.name: g.channels for g in space.searchable}
        changed = [f"{n} ({w} channels in the policy, {widths[n]} here)" for n, w in self.widths.items()
                   if n in widths and widths[n] != w]
        if changed:
            raise PolicyError(f"Policy does not match the structure of {self.arch}: groups {', '.join(changed)}.")
        space.check(self.channels)
        macs = space.macs(self.counts(space.names))
        # a method that removes more than whole channels (zeroed kernels) states fewer MACs, and its channels' own
        sparse = self.provenance.get("channel_macs") == macs and self.macs <= macs
        if macs != self.macs and not sparse:
            raise PolicyError(f"Policy says {self.macs} MACs but its channels cost {macs} on {self.arch}: the file was edited or made by another version.")


def make_policy(
    space: PrunableSpace,
    ratios: Sequence[float] | np.ndarray,
    channels: Mapping[str, Sequence[int] | np.ndarray],
    *,
    dataset: str,
    num_classes: int,
    checkpoint: str | None,
    criterion: str,
    target: dict[str, Any] | None = None,
    provenance: dict[str, Any] | None = None,
) -> Policy:
    """Assemble a Policy from a space, the agent's ratios and the selected channels, pricing it."""
    counts = [len(channels[n]) for n in space.names]
    cost = space.cost(counts)
    return Policy(
        arch=space.arch, dataset=dataset, num_classes=num_classes, checkpoint=checkpoint, space=space.name,
        ratios={n: float(r) for n, r in zip(space.names, ratios)},
        channels={n: [int(i) for i in channels[n]] for n in space.names},
        criterion=criterion, macs=cost.macs, params=cost.params,
        base_macs=space.base.macs, base_params=space.base.params, target=target,
        provenance={"autoprune": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **(provenance or {})},
        model=space.info.to_dict(), widths={g.name: int(g.channels) for g in space.searchable},
    )


def policy_for(space: PrunableSpace, kept: Mapping[str, Sequence[int] | np.ndarray], *, target: float, dataset: str,
               checkpoint: str | None, criterion: str, provenance: dict[str, Any] | None = None,
               metric: Metric | None = None) -> Policy:
    """The Policy of an answer that keeps ``kept`` channels per searchable group under ``target``.

    What the environment's episodes, ``prune`` and the handcrafted methods all record: the keep
    ratios are the kept counts over the groups' channels, the classifier's width comes from the
    model, the target is a fraction of ``metric``'s base (MACs when None, recorded as before;
    another metric adds its value for ``kept`` and its base, see :attr:`Policy.target`).
    :func:`make_policy` takes those explicitly.
    """
    counts = np.array([len(kept[n]) for n in space.names])
    num_classes = int(space.info.num_classes)
    budget: dict[str, Any] = {"metric": "macs", "fraction": target}
    if metric is not None and metric.name != "flops":
        budget = {"metric": metric.name, "fraction": target, "value": float(metric(counts)),
                  "base": float(metric.base), "unit": metric.unit}
        settings = getattr(metric, "settings", None)
        if settings is not None:  # a latency model: where its seconds were measured
            budget["settings"] = asdict(settings) if hasattr(settings, "__dataclass_fields__") else dict(settings)
    return make_policy(space, counts / space.channels, kept, dataset=dataset, num_classes=num_classes,
                       checkpoint=checkpoint, criterion=criterion, target=budget, provenance=provenance)
