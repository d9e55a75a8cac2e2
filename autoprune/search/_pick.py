"""The end of every search: pick per target, measure on test once, set beside uniform-L1, write the files.

The pick guards against the winner's curse: the best ``top_k`` policies by
reward (scored on the holdout's "reward" part) are re-scored on its disjoint
"select" part; the winner's holdout accuracy is the sum of the two parts, and
it is measured on the test split once. A handcrafted method's answer has been
measured already: nothing to re-judge, the same table and files.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .._io import json_bytes
from .._table import format_table
from ..env import PruningEnv
from ..evaluate import Accuracy
from ..errors import AutopruneError
from ..latency import LatencyModel
from ..policy import Policy
from ..pruning import format_value, uniform_counts
from ._config import SearchConfig, SearchResult
from ._run_dir import SearchRunDir
from ._searcher import Candidate, Proposals, asked_targets

__all__ = ["TABLE_HEADER", "pick", "uniform_reference"]

TABLE_HEADER = ["target", "policy", "MACs kept", "params kept", "holdout %", "test %"]
LATENCY_HEADER = ["predicted ms", "measured ms (spread)", "speed-up x"]  # where the budget is a latency model


def pick(config: SearchConfig, run: SearchRunDir, env: PruningEnv, proposals: Proposals, *,
         started: str | None = None) -> SearchResult:
    """The final policy per target from ``proposals``: saved, tabled beside uniform-L1, summed up in result.json.

    ``started`` (ISO 8601) is when the run was created (kept across --resume); result.json records it and the end.
    """
    targets = asked_targets(config, env)
    missing = [t for t in targets if t not in proposals.answers and not proposals.pools.get(t)]
    if missing:
        raise AutopruneError(f"No finished episode meets the target(s) {missing}: nothing to pick from. "
                             "Search longer (--episodes).")
    order = [t for t in [*proposals.answers, *sorted(proposals.pools)] if t in targets]
    bar = tqdm(total=sum(2 if t in proposals.answers else config.top_k + 2 for t in order), desc="final pick",
               unit="eval")
    rows, policies, references, budget, uniforms = [], {}, {}, {}, {}
    spent = dict.fromkeys(("rejudge", "test", "uniform_reference", "latency"), 0.0)  # where the final pick's time goes
    for target in order:
        if target in proposals.answers:
            policy = proposals.answers[target]
        else:
            policy = _rejudge(config, env, target, proposals.pools[target], bar, spent)
        uniforms[target] = uniform = env.policy(uniform_counts(env.space, target, env.metric), target)
        if target in proposals.answers and _same_model(policy, uniform):  # the uniform method's own answer
            references[target] = (policy.accuracy["holdout"], policy.accuracy["test"])
        else:
            with _timed(spent, "uniform_reference"):
                references[target] = uniform_reference(env, uniform)
        bar.update(2)
        policies[target] = policy
        budget[f"{target:g}"] = {"pick": _kept(policy), "uniform-L1": _kept(uniform)}
    bar.close()
    latency = env.metric if isinstance(env.metric, LatencyModel) else None
    if latency is not None:  # measured once, at the end: the pick and uniform-L1 of every target, and the base
        with _timed(spent, "latency"):
            _measure(latency, policies, uniforms, budget)
    for target in order:
        for name, p in (("pick", policies[target]), ("uniform-L1", None)):
            kept = budget[f"{target:g}"][name]
            accuracy = p.accuracy if p is not None else dict(zip(("holdout", "test"), references[target]))
            rows.append((f"{target:g}", name, f"{kept['macs']:.3f}", f"{kept['params']:.3f}",
                         f"{100 * accuracy['holdout']:.2f}", f"{100 * accuracy['test']:.2f}")
                        + (_latency_cells(kept) if latency is not None else ()))
    main = float(config.targets[0]) if config.targets else targets[0]
    table = format_table(TABLE_HEADER + (LATENCY_HEADER if latency is not None else []), rows)
    if env.metric.name != "flops":
        table += f"\nbudget: {env.metric.name}, targets are fractions of {format_value(env.metric, env.metric.base)}"
    seconds = {**proposals.seconds, "final_pick": spent}
    table += "\n" + _time_footer(seconds, proposals.evaluations)
    run.log("\n".join(["final", table, *proposals.notes]))
    outputs = {  # all or none; the policy-<target>.json files, which say a search finished, go in last
        "result.json": json_bytes({  # what the table and the log say, for scripts and reports
            "evaluations": proposals.evaluations, "seconds": seconds, "started": started,
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "uniform": {f"{t:g}": {"holdout": h, "test": u} for t, (h, u) in references.items()},
            # per target, for the pick and uniform-L1: the fractions kept, and with a latency budget the
            # predicted and measured seconds and the speed-up over the unpruned model measured beside them
            "budget": {"metric": env.metric.name, "base": env.metric.base, "unit": env.metric.unit,
                       "targets": budget}}),
        "policy.json": json_bytes(policies[main].to_dict()),  # the first target asked for
        **{f"policy-{t:g}.json": json_bytes(p.to_dict()) for t, p in policies.items()}}
    run.write_outputs({name: lambda f, data=data: f.write(data) for name, data in outputs.items()})
    return SearchResult(run.path, policies, table, references, proposals.evaluations, seconds,
                        proposals.notes)


def _rejudge(config: SearchConfig, env: PruningEnv, target: float, pool: list[Candidate], bar: tqdm,
             spent: dict[str, float]) -> Policy:
    """The best of ``pool``'s top ``top_k`` on the select part, its holdout summed from both parts, test once;
    ``spent`` gains the seconds of the re-judging and of the test."""
    top = sorted(pool, reverse=True)[: config.top_k]
    best = None  # (select accuracy, reward, counts, model): the winner's model is judged on test
    for reward, counts in top:  # re-judged on holdout images the search never scored
        with _timed(spent, "rejudge"):
            model = env.judged(counts)
            select = env.evaluator.holdout(model, part="select")
        if best is None or (select.top1, reward) > (best[0].top1, best[1]):
            best = (select, reward, counts, model)
        bar.update(1)
    bar.update(config.top_k - len(top))
    select, reward, counts, model = best
    policy = env.policy(counts, target, provenance={"agent": config.agent, "seed": config.seed,
                                                      "episodes": len(pool)})
    with _timed(spent, "test"):
        test = env.evaluator.test(model).top1
    scored = env.accuracy(counts, part="reward")[0]  # the search's own (cached) accuracy on the reward part
    policy.accuracy.update({"reward": scored, "select": select.top1, "holdout": _holdout(env, scored, select),
                            "test": test})
    return policy


def _holdout(env: PruningEnv, reward: float, select: Accuracy) -> float:
    """The whole holdout's accuracy of a policy, from its ``reward`` part's and its ``select`` part's.

    The holdout is the reward part plus the select part, both measured on the same recalibration (the
    reward part by the search, cached): adding them up is exact and costs nothing.
    """
    n_select = select.samples
    n_reward = len(env.evaluator.splits.holdout) - n_select
    return (round(reward * n_reward) + round(select.top1 * n_select)) / (n_reward + n_select)


@contextlib.contextmanager
def _timed(spent: dict[str, float], key: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        spent[key] += time.perf_counter() - start


def _time_footer(seconds: dict[str, Any], evaluations: int) -> str:
    """Where a run's time went, for the final table: the search, and the final pick and its parts with their share."""
    search, pick = float(seconds.get("search", 0.0)), seconds.get("final_pick", {})
    total = search + sum(pick.values())
    parts = {"re-judging the top candidates": pick.get("rejudge", 0.0), "test": pick.get("test", 0.0),
             "uniform-L1 references": pick.get("uniform_reference", 0.0), "latency measurement": pick.get("latency", 0.0)}
    said = ", ".join(f"{name} {s:.0f} s" for name, s in parts.items() if s > 0)
    share = f"{sum(pick.values()) / total:.0%} of the run" if total > 0 else "-"
    return (f"time: search {search / 60:.1f} min ({evaluations} evaluations), final pick "
            f"{sum(pick.values()) / 60:.1f} min ({share}{': ' + said if said else ''})")


def uniform_reference(env: PruningEnv, uniform: Policy) -> tuple[float, float]:
    """Holdout and test accuracy of ``uniform`` (uniform-L1 at a target of the env's budget metric), the row
    beside every agent's pick; judged as the picks are (its reward part and BN statistics are the search's
    when it scored the policy, as the normalized reward does)."""
    counts = uniform.counts(env.space.names)
    model = env.judged(counts)
    select = env.evaluator.holdout(model, part="select")
    return _holdout(env, env.accuracy(counts, part="reward")[0], select), env.evaluator.test(model).top1


def _same_model(a: Policy, b: Policy) -> bool:
    """Whether ``a`` and ``b`` cut the same channels from the same weights (so they are judged alike)."""
    return a.checkpoint == b.checkpoint and a.channels.keys() == b.channels.keys() and all(
        np.array_equal(a.channels[n], b.channels[n]) for n in a.channels)


def _kept(policy: Policy) -> dict[str, float]:
    """The fractions of the MACs and params ``policy`` keeps (and of a latency budget, its predicted seconds)."""
    kept = {"macs": policy.macs_fraction, "params": policy.params_fraction}
    if (policy.target or {}).get("metric") == "latency":
        kept["predicted_s"] = float(policy.target["value"])
    return kept


def _measure(latency: LatencyModel, policies: dict[float, Policy], uniforms: dict[float, Policy],
             budget: dict[str, dict]) -> None:
    """Really time the picks and uniform-L1 policies, with the unpruned model for the speed-ups, into ``budget``:
    all in one interleaved timing, so a load change on the machine hits them alike."""
    names = latency.space.names
    todo = [(f"{t:g}", name, p) for t, p in policies.items() for name, p in (("pick", p), ("uniform-L1", uniforms[t]))]
    base, *measured = latency.measure_all([latency.space.channels] + [p.counts(names) for _, _, p in todo],
                                          progress=True)
    for (key, name, _), m in zip(todo, measured):
        budget[key][name].update(measured_s=m.fastest, spread=m.spread, base_s=base.fastest,
                                 speedup=base.fastest / m.fastest)


def _latency_cells(kept: dict[str, float]) -> tuple[str, str, str]:
    return (f"{1e3 * kept['predicted_s']:.3f}", f"{1e3 * kept['measured_s']:.3f} ({100 * kept['spread']:.0f}%)",
            f"{kept['speedup']:.2f}")
