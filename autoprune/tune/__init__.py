"""Ray Tune: run many trainings as Tune trials, on this machine or on a Ray cluster.

The one Ray Tune experiment layer of autoprune; fine-tunes
(:func:`autoprune.training.finetune_on_ray`), sweeps (:func:`autoprune.sweep.sweep`)
and Optuna searches through Ray (``autoprune search --ray``) use it rather
than Ray directly:

- :func:`ray_session` (``_cluster``): start or join Ray for a block, decide the GPUs per trial, shut down a Ray it
  started however the block ends; :func:`check_nodes` (every node's autoprune version and the paths it sees, before
  any trial) and :func:`require_paths` (the same paths, inside a trial).
- :func:`run_trials` (``_trials``): one Tune run of a grid of configs or of a search algorithm's samples, with
  resources checked, retries from the last checkpoint (``max_failures``), optional ASHA, ``Tuner.restore`` on resume;
  :class:`TrialOutcome` per trial, :func:`write_outcomes` as results.csv.
- :func:`run_experiment` and :class:`ExperimentDir` (``_experiment``): an experiment folder from config.yaml (what
  ``--resume`` replays) through the trials to results.csv.

When a trial fails (its worker dies, its node is preempted) Tune retries it up
to ``max_failures`` times, from the last checkpoint it reported. Without an
address a local Ray is started (and stopped afterwards); ``address="auto"`` or
``"ray://host:10001"`` joins a running cluster, whose nodes must see the data,
the checkpoints and the output folder at the same paths (a shared filesystem)
and have autoprune installed.

Ray is imported inside the functions that need it.
"""

from ._cluster import (
    RayOptions,
    check_address,
    check_nodes,
    check_resources,
    connect,
    node_id,
    node_resources,
    ray_session,
    require_paths,
    resolve_gpus,
)
from ._experiment import ExperimentDir, run_experiment
from ._trials import (
    TrialOutcome,
    _trial_name,  # noqa: F401  experiments saved before the split pickled it as autoprune.tune's
    outcomes_table,
    run_trials,
    write_outcomes,
)

__all__ = [
    "ExperimentDir",
    "RayOptions",
    "TrialOutcome",
    "check_address",
    "check_resources",
    "connect",
    "node_resources",
    "outcomes_table",
    "ray_session",
    "resolve_gpus",
    "run_experiment",
    "run_trials",
    "write_outcomes",
]
