"""What a search run is given (:class:`SearchConfig`, saved as its config.yaml) and what it returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._budget_metric import check_budget
from ..errors import AutopruneError
from ..models import ModelSpec
from ..policy import Policy
from ..proxies import get_proxy
from ..pruning import check_round_to

__all__ = ["SearchConfig", "SearchResult"]


@dataclass
class SearchConfig:
    """Everything a search run depends on (saved as the run's config.yaml).

    ``arch`` names the model (a zoo name, or a user spec's source); ``model``, when given, is its full
    :class:`~autoprune.models.ModelSpec` as a plain mapping, so that ``--resume`` rebuilds the same model
    (for a user's factory, by importing the factory the original command named). ``targets`` are fractions
    of ``metric``'s value for the unpruned model; a latency budget records its measuring settings in
    ``latency``, so a resumed run budgets what it started with.
    """

    arch: str
    data_dir: str
    agent: str = "cacp"
    checkpoint: str = "pretrained"
    targets: list[float] | None = None  # None: the preset's
    episodes: int | None = None  # per target; None: the preset's
    space: str | None = None
    round_to: int | None = None  # kept channels a multiple of this; None: the space's rounding
    dataset: str = "cifar10"
    seed: int = 0
    device: str = "auto"
    holdout: int = 5000
    reward_samples: int = 1000
    # 1,000 recalibration images: their noise (0.29 points from a 4,000-image recalibration) is far below
    # the 1.4 points of sampling noise of the 1,000 reward images, at half the cost of 2,000 (bench_recal.py)
    recal_batches: int = 10
    recal_batch_size: int = 100
    top_k: int = 5
    multi_fidelity: bool | None = None  # Optuna; None: the preset's
    reward_proxy: str | None = None  # how a pruned model is made ready to judge (autoprune.proxies); None: the preset's
    storage: str | None = None  # Optuna; None: SQLite in the run directory
    study_name: str | None = None  # Optuna; None: the run directory's name
    workers: int = 1  # Optuna: trials evaluated at once
    ray: bool = False  # Optuna: run the trials through Ray Tune
    ray_address: str | None = None  # None: a local Ray
    warm_start: list[str] = field(default_factory=list)  # Optuna: policy files to try first
    preset: dict[str, Any] = field(default_factory=dict)  # filled in: the resolved preset
    cache_limit: str | None = None  # data: see autoprune.data.load_dataset; None: a quarter of the memory
    skip_bad_images: bool = False
    data_workers: int | None = None  # decoding processes of streamed data; None: the CPUs, at most 8
    resize: int | None = None  # evaluation resize of streamed data; None: input size / 0.875
    model: dict[str, Any] | None = None  # the model spec; None: the zoo model ``arch``
    metric: str = "flops"  # the budget the targets are fractions of: flops (MACs), params or latency
    latency: dict[str, Any] | None = None  # a latency budget: where it is measured (LatencySettings' fields)

    def __post_init__(self) -> None:
        if isinstance(self.model, ModelSpec):
            self.model = self.model.to_dict()
        if self.model is not None and not self.arch:
            self.arch = str(self.model.get("source", ""))
        if self.model_spec.source != self.arch:
            raise AutopruneError(f"arch {self.arch!r} and the model spec's source {self.model_spec.source!r} differ.")
        if self.episodes is not None and self.episodes < 1:
            raise AutopruneError(f"--episodes must be at least 1, but got {self.episodes}.")
        check_round_to(self.round_to)
        if self.top_k < 1:
            raise AutopruneError(f"--top-k must be at least 1, but got {self.top_k}.")
        if self.reward_proxy is not None:
            get_proxy(self.reward_proxy)  # a misspelt or incomplete name fails here, before any work
        check_budget(self.metric, self.latency)
        if self.workers < 1:
            raise AutopruneError(f"--workers must be at least 1, but got {self.workers}.")
        if not 0 < self.reward_samples < self.holdout:
            raise AutopruneError(f"--reward-samples must be in (0, {self.holdout}) (--holdout, the held-out images; "
                                 f"the rest of them re-judge the best policies), but got {self.reward_samples}.")
        if self.recal_batches < 1:
            raise AutopruneError(f"--recal-batches must be at least 1 for a search, but got {self.recal_batches}: "
                                 "the rewards would be meaningless, since BatchNorm statistics would not be "
                                 "recalibrated after pruning and every pruned model scores near chance.")


    @property
    def model_spec(self) -> ModelSpec:
        """The model searched: ``model`` as a spec, else the zoo model ``arch``."""
        return ModelSpec.from_dict(self.model, "The run's model") if self.model else ModelSpec(self.arch)


@dataclass
class SearchResult:
    """What a search produced.

    Attributes:
        run_dir: the run directory.
        policies: the final policy per target.
        table: the printed table.
        uniform: holdout and test accuracy of the uniform-L1 policy per target.
        evaluations: distinct policies evaluated during the search (cache hits excluded).
        seconds: wall time of this process's search (without the final pick), and its split.
        notes: what to do next, for the command line to print (e.g. how to fine-tune from saved weights).
    """

    run_dir: Path
    policies: dict[float, Policy]
    table: str
    uniform: dict[float, tuple[float, float]]
    evaluations: int
    seconds: dict[str, float]
    notes: list[str] = field(default_factory=list)
