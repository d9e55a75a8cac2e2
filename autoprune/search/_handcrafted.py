"""A handcrafted method (``autoprune.baselines``) in `autoprune search`: one answer per target, judged like a pick.

    runs/<id>/method/t<target>/     the method's own files (training checkpoints, masks), kept for --resume
    runs/<id>/weights-<target>.pt   the weights the policy was cut from, when the method trains or refits
                                    (a plain state dict of the unpruned architecture; the policy's
                                    ``checkpoint`` is its sha256, so `autoprune finetune --checkpoint` takes it)
    runs/<id>/policy-<target>.json, policy.json, result.json

A method answers once per target, so there is nothing to re-judge: its
policy is measured on the whole holdout and on the test split once, as it is
made, and the search's final pick sets it beside the uniform-L1 policy in the
same table as the searched agents. A policy file is written as soon as it is
measured, so ``--resume`` re-runs exactly the targets without one (and the
method resumes from its ``method/t<target>`` folder). The method reaches the
engine through the environment: its space, evaluator and checkpoint.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .._io import save_torch
from ..baselines import Context, Outcome, criterion_scores, get_method
from ..checkpoints import file_sha256
from ..env import PruningEnv
from ..errors import AutopruneError
from ..policy import Policy, policy_for
from ..pruning import PrunableSpace, space_for
from ._run_dir import SearchRunDir
from ._searcher import Proposals, Searcher

__all__ = ["HandcraftedSearcher"]


class HandcraftedSearcher(Searcher):
    """A method of :mod:`autoprune.baselines`: one answer per target, measured like a pick as it is made."""

    def search(self, env: PruningEnv, run: SearchRunDir, resume: bool) -> Proposals:
        """Run the method for every target without a policy file yet; targets with one keep it."""
        method = get_method(self.preset.algorithm)  # a missing module fails before any work
        proposals = Proposals(evaluations=len(env.config.targets), seconds={"search": 0.0})
        for target in env.config.targets:
            path = run.path / f"policy-{target:g}.json"
            if path.is_file():
                run.log(f"target {target:g}: {path.name} exists, kept")
                policy = Policy.load(path)
            else:
                started = time.perf_counter()
                policy = self._answer(method, env, run, target)
                proposals.seconds["search"] += time.perf_counter() - started
                policy.save(path)
            proposals.answers[float(target)] = policy
            weights = policy.provenance.get("weights")
            if policy.kernel_sparse:
                proposals.notes.append(f"target {target:g}: kernel-sparse; fine-tuned inside the method with its "
                                       "masks held (raise the preset's `epochs`), not with autoprune finetune")
            else:
                proposals.notes.append(f"fine-tune: autoprune finetune --policy {path} --data-dir {self.config.data_dir}"
                                       + (f" --checkpoint {run.path / weights}" if weights else ""))
        return proposals

    def export(self, env: PruningEnv, run: SearchRunDir, target: float) -> list[int]:
        raise AutopruneError(f"{run.path} is a run of the handcrafted method {self.preset.algorithm!r}: it has no "
                             f"agent; run it at the new target: autoprune search --agent {self.config.agent} "
                             f"--target-{env.metric.name} {target}.")

    def _answer(self, method: Callable[[Context], Outcome], env: PruningEnv, run: SearchRunDir, target: float) -> Policy:
        """Run the method at ``target`` and make its answer a measured Policy (saving its weights, if any)."""
        config, preset, space, evaluator = self.config, self.preset, env.space, env.evaluator
        context = Context(model=space.model, space=space, evaluator=evaluator, target=target,
                          criterion=preset.criterion, hyperparameters=dict(preset.hyperparameters),
                          work_dir=run.path / "method" / f"t{target:g}", seed=config.seed, metric=env.metric)
        context.work_dir.mkdir(parents=True, exist_ok=True)
        run.mark_started()  # the method's own files (method/t<target>) are worth resuming from here on
        run.log(f"target {target:g}: {preset.algorithm} ({preset.name}) started")
        started = time.perf_counter()
        outcome = method(context)
        elapsed = time.perf_counter() - started
        counts = _counts(outcome, space, preset.name)
        provenance: dict[str, Any] = {"agent": config.agent, "method": preset.algorithm, "seed": config.seed,
                                      "seconds": round(elapsed, 3), "info": _plain(outcome.info)}
        checkpoint, source = env.checkpoint, space
        if outcome.weights is not None:
            file = run.path / f"weights-{target:g}.pt"
            source = _trained_space(space, outcome.weights, config.space, preset.name)
            save_torch(file, source.model.state_dict())  # atomic; a plain state dict, read with weights_only=True
            checkpoint = file_sha256(file)
            provenance["weights"] = file.name
        kept = outcome.kept
        if kept is None:
            kept = source.select(counts, criterion_scores(context, source.model))
        for name, n in zip(source.names, counts):
            if name not in kept or len(kept[name]) != n:
                raise AutopruneError(f"Method {preset.algorithm!r} answered {n} channels for group {name!r} but "
                                     f"kept {len(kept.get(name, []))} indices; its counts and kept indices must agree.")
        policy = policy_for(source, kept, target=target, dataset=evaluator.dataset.name, checkpoint=checkpoint,
                            criterion=preset.criterion, provenance=provenance, metric=env.metric)
        if outcome.macs is not None:  # more removed than whole channels (zeroed kernels): the method's count
            policy.provenance["channel_macs"] = policy.macs
            policy.macs = int(outcome.macs)
        model = evaluator.judge(source, policy.channels)
        policy.accuracy.update({"holdout": evaluator.holdout(model).top1, "test": evaluator.test(model).top1})
        budget = "" if env.metric.name == "flops" else f", {policy.budget_fraction:.4f} of the {env.metric.name}"
        run.log(f"target {target:g}: {policy.macs_fraction:.4f} of the MACs{budget}, holdout top-1 "
                f"{policy.accuracy['holdout']:.4f} ({elapsed:.1f} s)")
        return policy


def _counts(outcome: Outcome, space: PrunableSpace, name: str) -> np.ndarray:
    counts = np.asarray(outcome.counts, dtype=np.int64)
    full = space.channels
    if counts.shape != full.shape or (counts < 1).any() or (counts > full).any():
        raise AutopruneError(f"Agent {name!r} answered counts {counts.tolist()}; expected {len(full)} counts, "
                             f"each in [1, channels] = {full.tolist()}.")
    return counts


def _trained_space(space: PrunableSpace, weights: dict[str, Any], space_arg: str | None, name: str) -> PrunableSpace:
    """The space of a copy of the model holding ``weights`` (same groups; its channels are cut from them)."""
    model = copy.deepcopy(space.model)
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise AutopruneError(f"Agent {name!r} returned weights that do not fit {space.arch}: "
                             f"{str(e).splitlines()[0]}") from e
    return space_for(model, space.arch, space_arg, round_to=space.spec.round)


def _plain(value: Any) -> Any:
    """``value`` with numpy scalars and arrays made JSON types (a method's info goes into the policy)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value
