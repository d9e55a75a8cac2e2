"""What a search plays on, built from its configuration: the preset, the environment, its evaluator and space.

Kept apart from the orchestrator so that worker processes (``--workers``, Ray
trials) rebuild exactly the parent's environment without importing the
orchestrator that started them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

from torch import nn

from .._budget_metric import budget_metric
from ..checkpoints import load_model
from ..env import EnvConfig, PruningEnv
from ..errors import AutopruneError
from ..evaluate import Evaluator, check_classes
from ..models import state_sha256
from ..proxies import get_proxy
from ..pruning import Metric, PrunableSpace, make_metric, reachable, space_for
from ._config import SearchConfig
from ._preset import Preset, load_preset

__all__ = ["resolve_preset", "setup"]


def resolve_preset(config: SearchConfig) -> Preset:
    """The preset a run of ``config`` uses: as resolved when it started, else the YAML with the config's overrides."""
    if config.preset:  # a run being resumed: the preset as resolved when it started, whatever the YAML says now
        return Preset(**{**config.preset, "targets": tuple(config.preset["targets"])})
    preset = load_preset(config.agent, episodes=config.episodes, multi_fidelity=config.multi_fidelity,
                         reward_proxy=config.reward_proxy)
    if config.targets:  # a multi-target preset keeps its range and adds the asked targets
        asked = tuple(float(t) for t in config.targets)
        targets = tuple(sorted(set(preset.targets) | set(asked))) if len(preset.targets) > 1 else asked
        preset = replace(preset, targets=targets)
    return preset


def _within_reach(preset: Preset, space: PrunableSpace, metric: Metric, asked: Sequence[float]) -> Preset:
    """A conditional preset's own range, moved into what the budget metric can reach on this space.

    The shipped ranges (0.3 to 0.7) are fractions that MACs reach; a latency with a fixed overhead,
    or params held by layers left whole, may not go as low. A range target below the reachable
    minimum is raised to the first multiple of 0.05 above it (dropped if none is below 1); a target
    the user asked for is left as it is, so an unreachable one is refused with the reachable range.
    """
    if len(preset.targets) < 2:
        return preset
    low, _ = reachable(space, metric)
    floor = math.ceil(low * 20 - 1e-9) / 20
    moved = {t if t >= low or t in asked else floor for t in preset.targets}
    targets = tuple(sorted(t for t in moved if t < 1.0))
    return preset if targets == preset.targets else replace(preset, targets=targets)


def setup(config: SearchConfig, model: nn.Module | None = None) -> tuple[Preset, PruningEnv, Evaluator, PrunableSpace]:
    """The preset, environment, evaluator and prunable space a run of ``config`` uses.

    ``model``: the module object of a spec made by ``ModelSpec.of`` (searched as it is, its weights
    hashed as the checkpoint); otherwise the model is built from ``config``'s spec.
    """
    preset = resolve_preset(config)
    kind = preset.spec.kind
    if (config.workers > 1 or config.ray) and not kind.parallel:
        raise AutopruneError(f"--workers and --ray run Optuna agents in parallel; {preset.name!r} is not one "
                             f"({preset.algorithm}: {kind.description}).")
    spec = config.model_spec
    if model is not None:
        if config.workers > 1 or config.ray:
            raise AutopruneError("A module object cannot be searched by worker processes or Ray trials (they "
                                 "rebuild the model): give it as a factory (ModelSpec('my_models.py:net')) instead.")
        sha = state_sha256(model)
        model.eval()
    elif spec.kind == "object":
        raise AutopruneError(f"The run searched a module object ({spec.source}): pass the module again (model=).")
    else:
        model, sha = load_model(spec, config.checkpoint)
    evaluator = Evaluator.from_data_dir(config.data_dir, spec, dataset=config.dataset, holdout=config.holdout,
                                        seed=config.seed, device=config.device, recal_batches=config.recal_batches,
                                        recal_batch_size=config.recal_batch_size, reward_samples=config.reward_samples,
                                        cache_limit=config.cache_limit, skip_bad_images=config.skip_bad_images,
                                        resize=config.resize, workers=config.data_workers,
                                        proxy=get_proxy(preset.reward_proxy, seed=config.seed))
    space = space_for(model, spec, config.space, round_to=config.round_to)
    check_classes(model, space.info.classifier, evaluator.dataset)
    # a method that selects its own channels: the env only prices its answers and gives the uniform-L1 reference
    criterion = "l1" if kind.selects_channels else preset.criterion
    metric = make_metric(space, budget_metric(config.metric, config.latency))
    preset = _within_reach(preset, space, metric, config.targets or ())
    env = PruningEnv(space, evaluator, EnvConfig(targets=preset.targets, reward=preset.reward, criterion=criterion),
                     dataset=evaluator.dataset.name, checkpoint=sha, metric=metric)
    return preset, env, evaluator, space
