"""`autoprune search`, the orchestrator: build the environment, let the preset's searcher play, pick, report.

Every agent kind implements one contract (:class:`~autoprune.search.Searcher`),
chosen once from the preset through the registry (:mod:`._registry`); the
orchestrator then runs the same final pick (:mod:`._pick`) on whatever it
proposes, so RL agents, Optuna samplers and handcrafted methods are judged by
one evaluator and one cost model and end in one table. Nothing in search/
imports this module.
"""

from __future__ import annotations

import functools
import os
import sys
from datetime import datetime, timezone
from dataclasses import asdict
from pathlib import Path
from collections.abc import Sequence
from typing import Any

from torch import nn

from .._budget_metric import budget_metric, check_budget
from .._io import reading
from ..errors import AutopruneError, OutputError
from ..models import ModelSpec, replay_spec
from ..policy import Policy
from ..pruning import make_metric, parse_target, space_for
from ._config import SearchConfig, SearchResult
from ._pick import pick
from ._preset import Preset
from ._registry import RL, load_entry_point
from ._run_dir import SearchRunDir
from ._searcher import Searcher
from ._session import resolve_preset, setup

__all__ = ["export_policy", "resume_config", "search", "search_model", "searcher_for"]


def searcher_for(config: SearchConfig, preset: Preset) -> Searcher:
    """The searcher of ``preset``'s kind (imported now: RL needs stable-baselines3, Optuna needs optuna)."""
    return load_entry_point(preset.spec.kind.searcher)(config, preset)


def search(config: SearchConfig, out: str | os.PathLike[str], *, resume: bool = False, overwrite: bool = False,
           cli_options: dict[str, Any] | None = None, model: nn.Module | None = None) -> SearchResult:
    """Run (or resume) a search into ``out`` and return the final policies per target.

    ``out`` is claimed before the model and data load (:class:`~autoprune._run_dir.RunDir`: a user's
    folder or another command's run is refused); a search that fails before its first episode removes
    what it wrote, so the corrected command starts afresh instead of being told to resume the bad one.
    ``cli_options`` are command-line settings outside ``config`` (``{"report": False}``) kept for ``--resume``.
    ``model`` is the module object of a config whose spec came from ``ModelSpec.of`` (see :func:`search_model`).
    """
    if resume:
        run = SearchRunDir.open(out)
        run.read_config()  # a damaged or planted config.yaml is refused by name before any work
    else:
        SearchRunDir.check(out, overwrite=overwrite)
    _say(f"loading {config.arch} ({config.checkpoint}), decoding {config.data_dir}, tracing the model's groups")
    preset, env, _, _ = setup(config, model)
    config.preset = preset.to_dict()
    if not resume:
        run = SearchRunDir.create(out, asdict(config), overwrite=overwrite, cli_options=cli_options)
    kind = preset.spec.kind
    plan = (f"{preset.name} ({kind.description}) on {env.n} groups: targets "
            f"{', '.join(f'{t:g}' for t in preset.targets)}; "
            + ("one answer per target" if kind.selects_channels else f"{preset.total_episodes} episodes")
            + (" (one conditional agent learns its range's targets and the asked ones together)"
               if kind is RL and len(preset.targets) > 1 else ""))
    _say(plan)
    run.log(plan)
    with run.cleanup_unless_started():
        # the report's wall time: from the run's creation, which a resumed run keeps
        started = run.created or datetime.now(timezone.utc).isoformat(timespec="seconds")
        proposals = searcher_for(config, preset).search(env, run, resume)
        run.log("time split (s): " + ", ".join(f"{k} {v:.1f}" for k, v in proposals.seconds.items())
                + f"; evaluations {proposals.evaluations}")
        return pick(config, run, env, proposals, started=started)


def search_model(model: nn.Module, data_dir: str | os.PathLike[str], out: str | os.PathLike[str], *,
                 input_size: Sequence[int], targets: Sequence[float | str] = (0.5,), agent: str = "tpe",
                 episodes: int | None = None, output: str | int | None = None, ignore: Sequence[str] = (),
                 metric: str = "flops", latency: Any = None, resume: bool = False, overwrite: bool = False,
                 **settings: Any) -> SearchResult:
    """Search a module object you built (and trained) in Python, on the image folder ``data_dir``.

    One call: the model enters as :meth:`ModelSpec.of` (``input_size`` C,H,W; ``output`` picks the
    logits of a tuple/dict output; ``ignore`` keeps layers whole), its weights are searched as they are
    (hashed as the policy's checkpoint), and ``settings`` are further :class:`SearchConfig` fields
    (``holdout``, ``reward_samples``, ``recal_batches``, ``device``, ``seed``...). ``metric`` is the budget
    ("flops", "params" or "latency", measured as ``latency`` says: a
    :class:`~autoprune.latency.LatencySettings` or its fields, None: the defaults); ``targets`` are fractions
    of it, or absolute values ("60M", "1.2M", "4.5ms"). ``resume`` continues ``out`` with the same module and
    budget. Returns the :class:`SearchResult`; ``result.policies[t]`` (t the fraction) replays with
    ``autoprune.pruning.apply(model, policy)``.
    """
    spec = ModelSpec.of(model, input_size, output=output, ignore=tuple(ignore))
    if latency is not None and not isinstance(latency, dict):
        latency = asdict(latency)
    if metric == "latency" and latency is None:
        latency = {}
    if resume:
        config = resume_config(out, budget=(metric, latency))
        if config.model_spec.identity() != spec.identity():
            raise AutopruneError(f"{out} searched another model ({config.model_spec.describe()}).")
    else:
        check_budget(metric, latency)
        base = functools.cache(lambda: make_metric(space_for(model, spec), budget_metric(metric, latency)).base)
        config = SearchConfig(arch=spec.source, model=spec.to_dict(), data_dir=str(data_dir), agent=agent,
                              checkpoint="none", targets=[parse_target(t, base, metric) for t in targets],
                              episodes=episodes, metric=metric, latency=latency, **settings)
    return search(config, out, resume=resume, overwrite=overwrite, model=model)


def _say(message: str) -> None:
    """A set-up step on stderr, so that a long start (decoding, tracing) is never silent."""
    print(f"autoprune search: {message}", file=sys.stderr, flush=True)


def resume_config(run_dir: str | os.PathLike[str], arch: str | None = None, space: str | None = None,
                  round_to: int | None = None, model: ModelSpec | None = None, budget: tuple[str, dict[str, Any] | None] | None = None) -> SearchConfig:
    """The configuration of the run in ``run_dir``; refuses an ``arch``/``space``/``model`` that differs from it,
    and a ``budget`` (metric, latency settings; settings None: not given) other than the run's: a run keeps the
    metric and the measuring settings it started with, since its targets, rewards and agent are of them."""
    run = SearchRunDir.open(run_dir, writing=False)
    saved = run.read_config()
    if model is not None:
        recorded = ModelSpec.from_dict(saved["model"]) if saved.get("model") else ModelSpec(str(saved.get("arch")))
        replay_spec(recorded, model, what=f"{run_dir}")
        arch = None
    for key, given in (("arch", arch), ("space", space), ("round_to", round_to)):
        if given is not None and given != saved.get(key):
            flag = key.replace("_", "-")
            raise AutopruneError(f"{run_dir} is a run for {flag} {saved.get(key)!r}, not {given!r}; "
                                 f"resume it without --{flag}, or start a new run.")
    if budget is not None:
        metric, latency = budget
        recorded = saved.get("metric", "flops")  # a run begun before budgets had metrics budgets MACs
        if metric != recorded:
            raise AutopruneError(f"{run_dir} searched under a {recorded} budget, not {metric}: a run keeps its "
                                 f"budget metric (resume it with --target-{recorded} or no target, or start a new run).")
        if latency is not None and any(saved.get("latency", {}).get(k) != v for k, v in latency.items()
                                       if v is not None):
            raise AutopruneError(f"{run_dir} measures latency with {saved.get('latency')}, not {latency}: a run "
                                 "keeps where it measures (resume it without the --latency-* options).")
    with reading(run.path / "config.yaml", "Run configuration", hint="Restore it from a copy of the run."):
        config = SearchConfig(**saved)
        resolve_preset(config)  # the saved preset must be one too
    return config


def export_policy(run_dir: str | os.PathLike[str], target: float, out: str | os.PathLike[str] | None = None, *,
                  model: nn.Module | None = None, overwrite: bool = False) -> Policy:
    """A policy for ``target`` from the trained agent of a run, without searching again.

    Meant for conditional agents: ``target`` must lie inside the range they were trained on. The model
    is rebuilt from the run's config (a user's factory: the one the search command named), or is
    ``model``, the module object a :func:`search_model` run searched. An existing file is kept unless
    ``overwrite``: the default ``RUN/policy-<target>.json`` of a searched target is the search's own pick,
    measured on test, which a holdout-only export must not replace by accident.
    """
    config = resume_config(run_dir)
    out = Path(out) if out is not None else Path(run_dir) / f"policy-{target:g}.json"
    if out.exists() and not overwrite:
        raise OutputError(f"{out} exists (for a searched target it is the search's pick); write the export "
                          "elsewhere with --out FILE, or replace it with --overwrite.")
    preset, env, evaluator, space = setup(config, model)
    counts = searcher_for(config, preset).export(env, SearchRunDir(Path(run_dir)), target)
    policy = env.policy(counts, target, provenance={"agent": config.agent, "exported_from": str(run_dir)})
    model = evaluator.judge(space, policy.channels)
    policy.accuracy["holdout"] = evaluator.holdout(model).top1
    policy.save(out)
    return policy
