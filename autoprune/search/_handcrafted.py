"""A handcrafted method (``autoprune.baselines``) in `autoprune search`: one answer per target, judged like a pick.

    runs/<id>/method/t<target>/     the method's own files (training checkpoints, masks), kept for --resume
    runs/<id>/weights-<target>.pt   the weights the policy was cut from, when the method trains or refits
                                    (a plain state dict of the unpruned architecture; the policy's
                                    ``checkpoint`` is its sha256, so `autoprune finetune --checkpoint` takes it)
    runs/<id>/policy-<target>.json, policy.json, result.json

A method answers once per target, so there is nothing to re-judge: its
policy is measured on the whole holdout and on the test split once, beside
the uniform-L1 policy, in the same table as the searched agents. A policy
file is written last, so ``--resume`` re-runs exactly the targets without one
(and the method resumes from its ``method/t<target>`` folder).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .._io import save_torch, write_json
from .._table import format_table
from ..baselines import Context, Outcome, criterion_scores, get_method
from ..checkpoints import file_sha256
from ..env import PruningEnv
from ..errors import AutopruneError
from ..evaluate import Evaluator
from ..policy import Policy, make_policy
from ..pruning import PrunableSpace, space_for
from ._preset import Preset
from ._run_dir import SearchRunDir
from ._search import TABLE_HEADER, SearchConfig, SearchResult, uniform_reference

__all__ = ["run_handcrafted"]


def run_handcrafted(config: SearchConfig, preset: Preset, env: PruningEnv, evaluator: Evaluator,
                    space: PrunableSpace, run: SearchRunDir) -> SearchResult:
    """Run ``preset``'s method for every target without a policy file yet; report all targets."""
    method = get_method(preset.algorithm)  # a missing module fails before any work
    policies, references, rows, notes = {}, {}, [], []
    seconds = {"search": 0.0}
    for target in env.config.targets:
        path = run.path / f"policy-{target:g}.json"
        if path.is_file():
            run.log(f"target {target:g}: {path.name} exists, kept")
            policy = Policy.load(path)
        else:
            started = time.perf_counter()
            policy = _answer(method, config, preset, env, evaluator, space, run, target)
            seconds["search"] += time.perf_counter() - started
            policy.save(path)
        policies[target] = policy
        u_hold, u_test = references[target] = uniform_reference(env, evaluator, space, target)
        rows.append((f"{target:g}", f"{policy.macs_fraction:.3f}", f"{policy.params_fraction:.3f}",
                     f"{100 * policy.accuracy['holdout']:.2f}", f"{100 * policy.accuracy['test']:.2f}",
                     f"{100 * u_hold:.2f}", f"{100 * u_test:.2f}"))
        weights = policy.provenance.get("weights")
        if policy.kernel_sparse:
            notes.append(f"target {target:g}: kernel-sparse; fine-tuned inside the method with its masks held "
                         "(raise the preset's `epochs`), not with autoprune finetune")
        else:
            notes.append(f"fine-tune: autoprune finetune --policy {path} --data-dir {config.data_dir}"
                         + (f" --checkpoint {run.path / weights}" if weights else ""))
    main = float(config.targets[0]) if config.targets else env.config.targets[0]
    policies[main].save(run.path / "policy.json")  # the first target asked for
    table = format_table(TABLE_HEADER, rows)
    run.log("final\n" + table + "\n" + "\n".join(notes))
    evaluations = len(env.config.targets)
    write_json(run.path / "result.json", {
        "evaluations": evaluations, "seconds": seconds,
        "uniform": {f"{t:g}": {"holdout": h, "test": u} for t, (h, u) in references.items()}})
    return SearchResult(run.path, policies, table, references, evaluations, seconds, notes)


def _answer(method: Callable[[Context], Outcome], config: SearchConfig, preset: Preset, env: PruningEnv,
            evaluator: Evaluator, space: PrunableSpace, run: SearchRunDir, target: float) -> Policy:
    """Run the method at ``target`` and make its answer a measured Policy (saving its weights, if any)."""
    context = Context(model=space.model, space=space, evaluator=evaluator, target=target, criterion=preset.criterion,
                      hyperparameters=dict(preset.hyperparameters), work_dir=run.path / "method" / f"t{target:g}",
                      seed=config.seed)
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
            raise AutopruneError(f"Method {preset.algorithm!r} answered {n} channels for group {name!r} but kept "
                                 f"{len(kept.get(name, []))} indices; its counts and kept indices must agree.")
    num_classes = space.model.get_submodule(space.info.classifier).out_features
    ratios = counts / np.array([g.channels for g in space.searchable])
    policy = make_policy(source, ratios, kept, dataset=evaluator.dataset.name, num_classes=num_classes,
                         checkpoint=checkpoint, criterion=preset.criterion,
                         target={"metric": "macs", "fraction": target}, provenance=provenance)
    if outcome.macs is not None:  # more removed than whole channels (zeroed kernels): the method's count
        policy.provenance["channel_macs"] = policy.macs
        policy.macs = int(outcome.macs)
    model = evaluator.ready(evaluator.prepare(source.apply(policy.channels)))
    policy.accuracy.update({"holdout": evaluator.holdout(model).top1, "test": evaluator.test(model).top1})
    run.log(f"target {target:g}: {policy.macs_fraction:.4f} of the MACs, holdout top-1 "
            f"{policy.accuracy['holdout']:.4f} ({elapsed:.1f} s)")
    return policy


def _counts(outcome: Outcome, space: PrunableSpace, name: str) -> np.ndarray:
    counts = np.asarray(outcome.counts, dtype=np.int64)
    full = np.array([g.channels for g in space.searchable])
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
    return space_for(model, space.arch, space_arg)


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
