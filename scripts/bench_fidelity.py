"""Does the searched policy still win after fine-tuning? The fidelity of the reward proxies (issue 16).

    python scripts/bench_fidelity.py [--results results/fidelity] [--cells resnet20-0.5 ...] [--report-only]

For each cell (model, MACs target) -- by default resnet20 at 0.5, then resnet32
at 0.5, then resnet20 at 0.3 (the pretrained checkpoints of ../shared) -- it
gathers at least 16 policies spanning the budget's range:

- uniform-l1, global-l1 and global-bn-gamma (``autoprune.pruning.prune``, the rules
  of ``autoprune prune`` and of the handcrafted agents);
- ``--random`` random policies (default 11): per group a keep ratio proportional to
  ``exp(sigma z + slope (t - 1/2))`` with a per-policy ``sigma`` in [0.2, 0.8] and
  ``slope`` in [-1.5, 1.5] (so some prune early layers most, some late ones), scaled
  by bisection to the budget and filled up greedily, channels by L1; seeded;
- the picks of ``--agents`` (default cacp and cmaes): each an ``autoprune search``
  run in-process with its preset's budget (cacp: 50 episodes at each of 0.3, 0.5
  and 0.7, one run serving both targets; cmaes: 150 trials per target; ``--episodes``
  overrides), the default ``bn`` reward; the pick is made on the holdout, never on
  the test split.

Each policy is measured by every proxy of ``--proxies`` (default bn, reconstruct,
finetune-100, distill-100: see ``autoprune.proxies``), i.e. the holdout accuracy
(all 5,000 held-out training images) of the pruned model made ready by the proxy,
with its seconds; then fine-tuned with the ``cpu`` training preset for ``--epochs``
(default 3) from the pretrained weights: SGD with Nesterov momentum 0.9, lr 0.01
annealed to 0 by a cosine stepped every batch, batch 128, weight decay 1e-4,
random crop (4 px padding) and horizontal flip, precision "auto" (bfloat16 autocast
on a CPU with native bfloat16; each record says which); judged on the holdout after the
last epoch and on the test split once (reported, never used to choose). The
first ``--seeded`` policies (default the three handcrafted ones, the agents' picks
and the first random one) are fine-tuned with every seed of ``--seeds`` (default
0 1), which measures the fine-tune's own noise; the others with the first seed.
Every fine-tune holds out the same images (``split_seed`` 0, those the proxies are
judged on): a seed varies only the data order, crops and flips (a fine-tune starts
from the pretrained weights, so nothing is initialised at random).

Storage (default ``results/fidelity``, whose measurements are committed: the README's fidelity
figures come from them, and the hours of CPU they took carry over to any clone):
``RESULTS/<cell>/<policy>/policy.json`` and one JSON per measurement
(``proxy-<name>.json``, ``finetune-seed<s>.json``), each written atomically, so a
kill loses at most the measurement in progress; a fine-tune keeps its run in
``RESULTS/<cell>/<policy>/runs/seed<s>`` and resumes from its last epoch. Searches
live in ``RESULTS/searches`` and resume from their checkpoints. Run it again to
continue; ``--report-only`` prints the tables from whatever is stored.

Statistics, per cell and proxy, over the policies with a fine-tuned result:
Kendall's tau and Spearman's rho of the proxy against the fine-tuned holdout
accuracy (the mean over seeds), with 95 % percentile intervals from 2,000
bootstrap resamples of the policies; the regret of picking by the proxy (the
fine-tuned holdout of the best policy minus that of the proxy's best); the
proxy's median seconds per policy. Each proxy against bn on the same policies:
the difference of their taus with a paired bootstrap interval, of their regrets,
and the ratio of their costs; then the default proxy they call for (:func:`decide`:
a proxy whose tau gain interval lies above 0 in every cell and whose regret
summed over the cells is lower; of several, the cheapest). The claim table sets
the agents' picks beside uniform-l1 and global-l1 after the same fine-tune
(holdout and test, mean over seeds), the differences with 95 % intervals from the
seed-to-seed noise (Student's t, the noise pooled over the policies fine-tuned
twice: 6 degrees of freedom with the defaults). The plot (``RESULTS/fidelity.png``)
shows proxy against fine-tuned holdout, one panel per proxy.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"

sys.path.insert(0, str(ROOT))
from autoprune._io import write_json  # noqa: E402
from autoprune._table import format_table, markdown_table  # noqa: E402

HANDCRAFTED = {"uniform-l1": ("uniform", "l1"), "global-l1": ("global", "l1"), "global-bn-gamma": ("global", "bn-gamma")}
KIND_ORDER = ("uniform-l1", "global-l1", "global-bn-gamma")


@dataclass(frozen=True)
class Cell:
    """One (model, MACs target) of the benchmark."""

    arch: str
    target: float
    checkpoint: str

    @property
    def name(self) -> str:
        return f"{self.arch}-{self.target:g}"


@dataclass(frozen=True)
class Setup:
    """Everything a run of the benchmark depends on; the tests shrink it to a tiny model and dataset."""

    data_dir: str
    cells: tuple[Cell, ...]
    proxies: tuple[str, ...] = ("bn", "reconstruct", "finetune-100", "distill-100")
    random: int = 11
    agents: tuple[str, ...] = ("cacp", "cmaes")
    episodes: int | None = None  # per target; None: each preset's
    epochs: int = 3
    batch_size: int | None = None  # fine-tune batch; None: the cpu preset's 128
    seeds: tuple[int, ...] = (0, 1)
    seeded: int = 6  # the first policies (in the order of policy_names) fine-tuned with every seed
    holdout: int = 5000
    reward_samples: int = 1000
    recal_batches: int = 10
    recal_batch_size: int = 100
    eval_batch_size: int = 500
    device: str = "cpu"
    progress: bool = False

    def policy_names(self) -> list[str]:
        """Policies of a cell in the order they are measured: the claim's first, then the random ones."""
        return [*KIND_ORDER, *self.agents, *(f"random-{i:02d}" for i in range(self.random))]


# -- small helpers -----------------------------------------------------------------------------------------------
def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- the policies --------------------------------------------------------------------------------------------------
class CellWork:
    """The model, space, evaluator and policies of one cell, built on first use."""

    def __init__(self, setup: Setup, cell: Cell, results: Path) -> None:
        self.setup, self.cell, self.dir = setup, cell, results / cell.name
        self.results = results
        self._built: tuple | None = None
        self._proxies: dict[str, Any] = {}

    def build(self) -> tuple:
        """(model, sha, space, evaluator): loaded once per cell."""
        if self._built is None:
            from autoprune.checkpoints import load_model
            from autoprune.evaluate import Evaluator
            from autoprune.pruning import space_for

            s = self.setup
            model, sha = load_model(self.cell.arch, self.cell.checkpoint)
            evaluator = Evaluator.from_data_dir(s.data_dir, self.cell.arch, holdout=s.holdout, seed=0, device=s.device,
                                                batch_size=s.eval_batch_size, recal_batches=s.recal_batches,
                                                recal_batch_size=s.recal_batch_size)
            self._built = (model, sha, space_for(model, self.cell.arch), evaluator)
        return self._built

    def policy_path(self, name: str) -> Path:
        return self.dir / name / "policy.json"

    def make_policy(self, name: str) -> Path:
        """The policy ``name`` of this cell, made and stored once."""
        path = self.policy_path(name)
        if path.is_file():
            return path
        if name in HANDCRAFTED:
            policy = self._handcrafted(name)
        elif name.startswith("random-"):
            policy = self._random(int(name.split("-")[1]))
        else:
            policy = self._searched(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, policy.to_dict())
        return path

    def _handcrafted(self, name: str) -> Any:
        from autoprune.pruning import prune

        model, sha, _, _ = self.build()
        method, criterion = HANDCRAFTED[name]
        policy, _ = prune(model, self.cell.arch, self.cell.target, method=method, criterion=criterion, checkpoint=sha)
        policy.provenance = {**policy.provenance, "bench": name}
        return policy

    def _random(self, index: int) -> Any:
        """A seeded random allocation spanning the range: ratios ~ exp(sigma z + slope (t - 1/2)), scaled to the budget."""
        from autoprune.policy import policy_for

        _, sha, space, _ = self.build()
        rng = np.random.default_rng([index, round(self.cell.target * 1000), 16])
        n = len(space.searchable)
        sigma, slope = rng.uniform(0.2, 0.8), rng.uniform(-1.5, 1.5)
        shape = np.exp(sigma * rng.standard_normal(n) + slope * (np.arange(n) / max(n - 1, 1) - 0.5))
        budget = self.cell.target * space.base.macs
        lo, hi = 0.0, 1.0 / shape.min()
        for _ in range(60):  # the largest scale whose rounded policy is within budget
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if space.macs(space.counts(mid * shape)) <= budget else (lo, mid)
        counts = space.counts(lo * shape)
        for j in rng.permutation(n):  # fill what the rounding left, one step at a time, in a random order
            for option in space.count_options(j):
                if option > counts[j]:
                    trial = counts.copy()
                    trial[j] = option
                    if space.macs(trial) <= budget:
                        counts = trial
        scores = space.scores("l1")
        return policy_for(space, space.select(counts, scores), target=self.cell.target,
                          dataset=self.build()[3].dataset.name, checkpoint=sha, criterion="l1",
                          provenance={"agent": "random", "bench": f"random-{index:02d}", "sigma": sigma, "slope": slope})

    def _searched(self, agent: str) -> Any:
        """The pick of ``agent`` at this cell's target: an ``autoprune search`` run (resumed when interrupted)."""
        from autoprune.policy import Policy
        from autoprune.search import SearchConfig, load_preset, search

        s, cell = self.setup, self.cell
        preset = load_preset(agent)
        shared = len(preset.targets) > 1 and cell.target in preset.targets  # cacp: one run answers its targets
        run = self.results / "searches" / (f"{cell.arch}-{agent}" if shared else f"{cell.arch}-{agent}-{cell.target:g}")
        answer = run / f"policy-{cell.target:g}.json"
        if not answer.is_file():
            config = SearchConfig(arch=cell.arch, data_dir=s.data_dir, agent=agent, checkpoint=cell.checkpoint,
                                  targets=None if shared else [cell.target], episodes=s.episodes, seed=0,
                                  device=s.device, holdout=s.holdout, reward_samples=s.reward_samples,
                                  recal_batches=s.recal_batches, recal_batch_size=s.recal_batch_size)
            resumable = (run / "config.yaml").is_file() and (run / "checkpoints").is_dir() and any(
                (run / "checkpoints").iterdir())
            _log(f"{cell.name}: search {agent} -> {run}{' (resumed)' if resumable else ''}")
            started = time.perf_counter()
            if resumable:
                from autoprune.search import resume_config

                search(resume_config(run), run, resume=True)
            else:
                search(config, run, overwrite=run.exists())
            write_json(run / "bench-seconds.json", {"seconds": time.perf_counter() - started})
        policy = Policy.load(answer)
        policy.provenance = {**policy.provenance, "bench": agent, "search_run": str(run)}
        return policy

    # -- measurements ----------------------------------------------------------------------------------------------
    def proxy(self, name: str) -> Any:
        from autoprune.proxies import get_proxy

        if name not in self._proxies:
            self._proxies[name] = get_proxy(name, seed=0)
            self._proxies[name].check(self.build()[3])
        return self._proxies[name]

    def measure_proxy(self, policy_name: str, proxy_name: str) -> dict:
        """The holdout accuracy of the policy judged with ``proxy_name``; stored once."""
        from autoprune.policy import Policy

        path = self.dir / policy_name / f"proxy-{proxy_name}.json"
        done = _read(path)
        if done is not None:
            return done
        _, _, space, evaluator = self.build()
        policy = Policy.load(self.policy_path(policy_name))
        policy.validate(space)
        evaluator.proxy = self.proxy(proxy_name)
        start = time.perf_counter()
        timings: dict[str, float] = {}
        try:
            model = evaluator.judge(space, policy.channels, timings=timings)
            accuracy = evaluator.holdout(model)
        finally:
            evaluator.proxy = None
        record = {"policy": policy_name, "proxy": proxy_name, "holdout": accuracy.top1, "samples": accuracy.samples,
                  "seconds": time.perf_counter() - start, "timings": timings}
        write_json(path, record)
        return record

    def finetune(self, policy_name: str, seed: int) -> dict:
        """The policy fine-tuned with the cpu preset for ``setup.epochs`` from the pretrained weights; stored once.

        The run directory resumes from its last epoch after a kill.
        """
        from autoprune._device import autocast_dtype, resolve_device
        from autoprune.errors import AutopruneError
        from autoprune.training import make_config, train

        path = self.dir / policy_name / f"finetune-seed{seed}.json"
        done = _read(path)
        if done is not None:
            return done
        s = self.setup
        out = self.dir / policy_name / "runs" / f"seed{seed}"
        config = make_config("finetune", s.data_dir, policy=str(self.policy_path(policy_name)),
                             checkpoint=self.cell.checkpoint, preset="cpu", device=s.device, seed=seed, split_seed=0,
                             holdout=s.holdout, eval_batch_size=s.eval_batch_size,
                             recipe={"epochs": s.epochs, "batch_size": s.batch_size})
        start = time.perf_counter()
        resumable = (out / "config.yaml").is_file()
        try:
            result = train(config, out, resume=resumable, progress=s.progress)
        except AutopruneError as e:  # a run folder too damaged to resume (killed while claimed): start again
            if not resumable:
                raise
            _log(f"cannot resume {out} ({e}); starting it again")
            shutil.rmtree(out)
            result = train(config, out, progress=s.progress)
        m = result.metrics
        dtype = autocast_dtype(resolve_device(s.device), config.recipe.precision)
        record = {"policy": policy_name, "seed": seed, "epochs": s.epochs, "recipe": config.recipe.to_dict(),
                  "autocast": str(dtype).removeprefix("torch.") if dtype is not None else "float32",
                  "split_seed": config.split_seed,
                  "holdout": m["holdout_top1"], "test": m["test_top1"], "start_holdout": m.get("start_holdout_top1"),
                  "train_seconds": m.get("train_seconds"), "seconds": time.perf_counter() - start}
        write_json(path, record)
        return record


# -- the run ---------------------------------------------------------------------------------------------------------
def plan(setup: Setup) -> list[tuple[Cell, str, str]]:
    """Every measurement, in the order they run: per cell, per policy, its proxies then its first fine-tune; the
    second seeds at the end of the cell. Kinds: "policy", "proxy-<name>", "finetune-seed<s>"."""
    steps = []
    for cell in setup.cells:
        names = setup.policy_names()
        for name in names:
            steps.append((cell, name, "policy"))
            steps += [(cell, name, f"proxy-{p}") for p in setup.proxies]
            steps.append((cell, name, f"finetune-seed{setup.seeds[0]}"))
        for seed in setup.seeds[1:]:
            steps += [(cell, name, f"finetune-seed{seed}") for name in names[: setup.seeded]]
    return steps


def _stored(results: Path, cell: Cell, name: str, kind: str) -> dict | None:
    folder = results / cell.name / name
    if kind == "policy":
        return {} if (folder / "policy.json").is_file() else None
    return _read(folder / f"{kind}.json")


_MACS: dict[str, int] = {}


def _base_macs(arch: str) -> int:
    if arch not in _MACS:
        from autoprune.models import create
        from autoprune.pruning import space_for

        _MACS[arch] = space_for(create(arch), arch).base.macs
    return _MACS[arch]


def _eta(results: Path, steps: list[tuple[Cell, str, str]], setup: Setup) -> str:
    """Seconds left: each missing measurement at the median of its kind measured so far (a measurement that waited
    or resumed is an outlier), scaled by the model's MACs."""
    macs = {arch: _base_macs(arch) for arch in {c.arch for c in setup.cells}}
    seen: dict[str, list[float]] = {}
    missing, stored = [], 0
    for cell, name, kind in steps:
        record = _stored(results, cell, name, kind)
        key = "finetune" if kind.startswith("finetune") else kind
        stored += record is not None
        if record is None and kind != "policy":  # policies take a moment, searches are not counted here
            missing.append((cell, key))
        elif record is not None and record.get("seconds") is not None:
            seen.setdefault(key, []).append(record["seconds"] / macs[cell.arch])
    left = sum(float(np.median(seen[key])) * macs[cell.arch] for cell, key in missing if key in seen)
    unknown = sum(key not in seen for _, key in missing)
    text = (f"{stored} of {len(steps)} measurements stored; about {left / 3600:.1f} h left, the agents' searches "
            "aside")
    return text + (f" (plus {unknown} measurements of kinds not timed yet)" if unknown else "")


def run(setup: Setup, results: Path, *, on_step: Callable[[Cell, str, str], None] | None = None) -> None:
    """Measure everything :func:`plan` lists that is not stored yet, in order; ``on_step`` is called before each."""
    results.mkdir(parents=True, exist_ok=True)
    steps = plan(setup)
    works = {cell.name: CellWork(setup, cell, results) for cell in setup.cells}
    last_eta = 0.0
    for cell, name, kind in steps:
        if _stored(results, cell, name, kind) is not None:
            continue
        if on_step is not None:
            on_step(cell, name, kind)
        work = works[cell.name]
        if kind == "policy":
            work.make_policy(name)
            continue
        if kind.startswith("proxy-"):
            record = work.measure_proxy(name, kind[len("proxy-"):])
            _log(f"{cell.name} {name} {kind}: holdout {100 * record['holdout']:.2f} % in {record['seconds']:.1f} s")
        else:
            record = work.finetune(name, int(kind[len("finetune-seed"):]))
            _log(f"{cell.name} {name} {kind}: holdout {100 * record['holdout']:.2f} %, test {100 * record['test']:.2f} % "
                 f"in {record['seconds'] / 60:.1f} min")
        if time.monotonic() - last_eta > 600 or kind.startswith("finetune"):
            _log(_eta(results, steps, setup))
            last_eta = time.monotonic()


# -- statistics ------------------------------------------------------------------------------------------------------
@dataclass
class PolicyResult:
    name: str
    macs: float
    proxies: dict[str, float] = field(default_factory=dict)
    proxy_seconds: dict[str, float] = field(default_factory=dict)
    holdout: list[float] = field(default_factory=list)  # fine-tuned, one per seed
    test: list[float] = field(default_factory=list)
    autocast: set[str] = field(default_factory=set)  # of the fine-tunes (records before the option: float32)


def collect(results: Path, cell: Cell, setup: Setup) -> list[PolicyResult]:
    """The stored results of a cell's policies (those with a policy file)."""
    rows = []
    for name in setup.policy_names():
        policy = _read(results / cell.name / name / "policy.json")
        if policy is None:
            continue
        r = PolicyResult(name, policy["macs"] / policy["base_macs"])
        for p in setup.proxies:
            rec = _read(results / cell.name / name / f"proxy-{p}.json")
            if rec is not None:
                r.proxies[p], r.proxy_seconds[p] = rec["holdout"], rec["seconds"]
        for seed in setup.seeds:
            rec = _read(results / cell.name / name / f"finetune-seed{seed}.json")
            if rec is not None:
                r.holdout.append(rec["holdout"])
                r.test.append(rec["test"])
                r.autocast.add(rec.get("autocast", "float32"))
        rows.append(r)
    return rows


def _bootstrap(stat: Callable[..., float], *columns: np.ndarray, reps: int = 2000,
               seed: int = 0) -> tuple[float, float]:
    """95 % percentile interval of ``stat(*columns)`` over resamples of the rows (policies) of ``columns``
    (resamples where a column is constant are skipped: no ranking to compare)."""
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(reps):
        i = rng.integers(0, len(columns[0]), len(columns[0]))
        if any(np.ptp(c[i]) == 0 for c in columns):
            continue
        v = stat(*(c[i] for c in columns))
        if np.isfinite(v):
            values.append(v)
    if not values:
        return float("nan"), float("nan")
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


def _regret(x: np.ndarray, y: np.ndarray) -> float:
    """Fine-tuned accuracy of the best policy minus that of the proxy's pick."""
    return float(y.max() - y[np.argmax(x)])


def fidelity(rows: Sequence[PolicyResult], proxy: str) -> dict[str, Any] | None:
    """Kendall, Spearman (with bootstrap intervals), regret and cost of ``proxy`` over ``rows``; None under 3 policies.
    The cost is the median seconds per policy: a measurement that waited (a paused or crowded run) is an outlier."""
    from scipy.stats import kendalltau, spearmanr

    pairs = [(r.proxies[proxy], float(np.mean(r.holdout)), r.proxy_seconds[proxy]) for r in rows
             if proxy in r.proxies and r.holdout]
    if len(pairs) < 3:
        return None
    x, y, sec = (np.array(v) for v in zip(*pairs))
    constant = np.ptp(x) == 0 or np.ptp(y) == 0  # no ranking to compare (e.g. every policy at chance)
    tau = float("nan") if constant else float(kendalltau(x, y).statistic)
    rho = float("nan") if constant else float(spearmanr(x, y).statistic)
    return {"n": len(pairs), "tau": tau, "tau_ci": _bootstrap(lambda a, b: kendalltau(a, b).statistic, x, y),
            "rho": rho, "rho_ci": _bootstrap(lambda a, b: spearmanr(a, b).statistic, x, y), "regret": _regret(x, y),
            "seconds": float(np.median(sec))}


def versus(rows: Sequence[PolicyResult], proxy: str, base: str = "bn") -> dict[str, Any] | None:
    """``proxy`` against ``base`` on the same fine-tuned policies: the difference of their Kendall taus with a 95 %
    interval from a paired bootstrap (both taus on each resample), the difference of their regrets and the ratio of
    their median seconds per policy; None under 3 policies.

    Paired, because both taus rank the same policies: their own intervals share the spread of which policies were
    drawn, so they overlap even where one proxy ranks better on nearly every resample.
    """
    from scipy.stats import kendalltau

    keep = [r for r in rows if proxy in r.proxies and base in r.proxies and r.holdout]
    if len(keep) < 3:
        return None
    x, b = (np.array([r.proxies[p] for r in keep]) for p in (proxy, base))
    y = np.array([float(np.mean(r.holdout)) for r in keep])

    def gain(x: np.ndarray, b: np.ndarray, y: np.ndarray) -> float:
        return float(kendalltau(x, y).statistic - kendalltau(b, y).statistic)

    cost = np.median([r.proxy_seconds[proxy] for r in keep]) / np.median([r.proxy_seconds[base] for r in keep])
    return {"n": len(keep), "tau_gain": gain(x, b, y), "tau_gain_ci": _bootstrap(gain, x, b, y),
            "regret_gain": _regret(b, y) - _regret(x, y), "cost": float(cost)}


def decide(comparisons: dict[str, dict[str, dict[str, Any] | None]], complete: bool, base: str = "bn") -> str:
    """The default proxy the results call for (issue 16's rule): another proxy replaces ``base`` only if it clearly
    ranks better in every cell -- its paired tau gain's interval above 0 -- and loses less by its pick (a lower
    regret summed over the cells); of several such, the cheapest. ``comparisons``: proxy -> cell -> :func:`versus`."""
    status = "" if complete else "provisional (not every policy is fine-tuned yet): "
    wins = {}
    for proxy, cells in comparisons.items():
        if cells and all(c is not None and c["tau_gain_ci"][0] > 0 for c in cells.values()) \
                and sum(c["regret_gain"] for c in cells.values()) > 0:
            wins[proxy] = float(np.mean([c["cost"] for c in cells.values()]))
    if not wins:
        return (f"Default proxy: {status}keep {base}: no proxy ranks the policies better in every cell with a paired "
                f"tau interval above 0 and a lower total regret.")
    best = min(wins, key=wins.get)
    return (f"Default proxy: {status}{best}: it ranks the policies better than {base} in every cell (paired tau "
            f"interval above 0) with a lower total regret, at {wins[best]:.1f}x {base}'s seconds per policy.")


def seed_noise(rows: Sequence[PolicyResult], metric: str = "holdout") -> tuple[float | None, int]:
    """The fine-tune's seed-to-seed standard deviation, pooled over the policies fine-tuned with 2+ seeds, and its
    degrees of freedom (one per policy fine-tuned twice): few, so the claim's intervals use Student's t."""
    groups = [np.array(getattr(r, metric)) for r in rows if len(getattr(r, metric)) >= 2]
    if not groups:
        return None, 0
    dof = sum(len(g) - 1 for g in groups)
    return float(math.sqrt(sum(((g - g.mean()) ** 2).sum() for g in groups) / dof)), dof


def claim(rows: Sequence[PolicyResult], agents: Sequence[str]) -> list[tuple]:
    """Each agent's pick against uniform-l1 and global-l1 after the same fine-tune: means and differences with
    95 % intervals (Student's t on the pooled seed noise's degrees of freedom, scaled by each side's number of
    seeds)."""
    from scipy.stats import t
    by = {r.name: r for r in rows if r.holdout}
    out = []
    for metric in ("holdout", "test"):
        sd, dof = seed_noise(rows, metric)
        for agent in agents:
            for ref in ("uniform-l1", "global-l1"):
                if agent not in by or ref not in by:
                    continue
                a, b = getattr(by[agent], metric), getattr(by[ref], metric)
                diff = float(np.mean(a) - np.mean(b))
                half = (t.ppf(0.975, dof) * sd * math.sqrt(1 / len(a) + 1 / len(b)) if sd is not None
                        else float("nan"))
                out.append((metric, agent, ref, float(np.mean(a)), float(np.mean(b)), diff, half, len(a), len(b)))
    return out


def report(setup: Setup, results: Path) -> str:
    """The fidelity and claim tables of whatever is stored; writes them to RESULTS/fidelity.md in Markdown, and the plot."""
    lines: list[Any] = [  # text, or a table as (headers, rows): rendered for the terminal and as Markdown
        f"Fine-tune: cpu preset, {setup.epochs} epochs from the pretrained weights, SGD Nesterov 0.9, lr 0.01 cosine, "
        "batch 128, weight decay 1e-4, crop+flip, autocast {}; holdout = 5,000 held-out training images.", ""]
    autocast: set[str] = set()
    frows, vrows, crows, panels = [], [], [], {p: [] for p in setup.proxies}
    others = [p for p in setup.proxies if p != "bn"]
    comparisons: dict[str, dict[str, dict[str, Any] | None]] = {p: {} for p in others}
    complete = True
    for cell in setup.cells:
        rows = collect(results, cell, setup)
        autocast.update(*(r.autocast for r in rows))
        tuned = sum(bool(r.holdout) for r in rows)
        complete &= tuned == len(setup.policy_names())
        for p in others if "bn" in setup.proxies else ():
            v = comparisons[p][cell.name] = versus(rows, p)
            if v is not None:
                vrows.append((cell.name, p, f"{v['n']}", f"{v['tau_gain']:+.2f} [{v['tau_gain_ci'][0]:+.2f}, "
                              f"{v['tau_gain_ci'][1]:+.2f}]", f"{100 * v['regret_gain']:+.2f}", f"{v['cost']:.1f}x"))
        sd, _ = seed_noise(rows)
        noise = f"{100 * sd:.2f}" if sd is not None else "-"
        for p in setup.proxies:
            f = fidelity(rows, p)
            if f is None:
                frows.append((cell.name, p, f"{tuned}", "-", "-", "-", "-", noise))
                continue
            frows.append((cell.name, p, f"{f['n']}", f"{f['tau']:.2f} [{f['tau_ci'][0]:.2f}, {f['tau_ci'][1]:.2f}]",
                          f"{f['rho']:.2f} [{f['rho_ci'][0]:.2f}, {f['rho_ci'][1]:.2f}]", f"{100 * f['regret']:.2f}",
                          f"{f['seconds']:.1f}", noise))
            panels[p] += [(cell.name, r.name, r.proxies[p], float(np.mean(r.holdout))) for r in rows
                          if p in r.proxies and r.holdout]
        for metric, agent, ref, a, b, diff, half, na, nb in claim(rows, setup.agents):
            interval = (f"[{100 * (diff - half):+.2f}, {100 * (diff + half):+.2f}]" if math.isfinite(half)
                        else "(no seed noise measured yet)")
            crows.append((cell.name, metric, f"{agent} vs {ref}", f"{100 * a:.2f} ({na})", f"{100 * b:.2f} ({nb})",
                          f"{100 * diff:+.2f} {interval}"))
    lines += ["Fidelity: each proxy against the fine-tuned holdout accuracy (95 % bootstrap intervals over policies); "
              "regret in points of fine-tuned holdout; seed noise = the fine-tune's seed-to-seed sd, points.", "",
              (["cell", "proxy", "policies", "Kendall tau", "Spearman", "regret", "s/policy", "seed noise"], frows),
              ""]
    if vrows:
        lines += ["Against bn, on the same policies: the tau gain (the proxy's Kendall tau minus bn's, 95 % paired "
                  "bootstrap interval), the regret gain (bn's regret minus the proxy's, points) and the cost (the "
                  "proxy's seconds per policy over bn's).", "",
                  (["cell", "proxy", "policies", "tau gain", "regret gain", "cost"], vrows), "",
                  decide(comparisons, complete), ""]
    lines += ["Claim: the agents' picks against uniform-l1 and global-l1 after the same fine-tune (mean over the "
              "seeds in brackets; difference with a 95 % interval from the seed noise).", "",
              (["cell", "split", "comparison", "pick %", "reference %", "difference, points"], crows)
              if crows else "(no pair fine-tuned yet)"]
    lines[0] = lines[0].format(" and ".join(sorted(autocast)) or "-")
    def render(table: Callable[[Sequence[str], Sequence[Sequence[object]]], str]) -> str:
        return "\n".join(line if isinstance(line, str) else table(*line) for line in lines)

    (results / "fidelity.md").write_text(render(markdown_table) + "\n")  # the tables as the README quotes them
    _plot(panels, results / "fidelity.png", setup)
    return render(format_table)


def _plot(panels: dict[str, list[tuple[str, str, float, float]]], path: Path, setup: Setup) -> None:
    """Proxy against fine-tuned holdout accuracy, one panel per proxy, one colour per cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4), squeeze=False)
    colours = {c.name: f"C{i}" for i, c in enumerate(setup.cells)}
    for ax, (proxy, points) in zip(axes[0], panels.items()):
        for cell, name, x, y in points:
            special = name in KIND_ORDER or name in setup.agents
            ax.plot(100 * x, 100 * y, "s" if special else "o", color=colours[cell], mfc=None if special else "none")
            if special:
                ax.annotate(name, (100 * x, 100 * y), fontsize=6, xytext=(2, 2), textcoords="offset points")
        ax.set_title(proxy)
        ax.set_xlabel("proxy: holdout top-1 %")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"fine-tuned ({setup.epochs} epochs) holdout top-1 %")
    for cell, colour in colours.items():
        axes[0][-1].plot([], [], "o", color=colour, label=cell)
    axes[0][-1].legend(fontsize="small", loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- the command line ------------------------------------------------------------------------------------------------
DEFAULT_CELLS = {
    "resnet20-0.5": Cell("resnet20", 0.5, str(SHARED / "pretrained/cifar10/resnet20-12fca82f.th")),
    "resnet32-0.5": Cell("resnet32", 0.5, str(SHARED / "pretrained/cifar10/resnet32-d509ac18.th")),
    "resnet20-0.3": Cell("resnet20", 0.3, str(SHARED / "pretrained/cifar10/resnet20-12fca82f.th")),
}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default=str(ROOT / "results" / "fidelity"),
                        help="where results are stored and resumed (default: the repository's results/fidelity)")
    parser.add_argument("--data-dir", default=str(SHARED / "data/cifar10"))
    parser.add_argument("--cells", nargs="+", default=list(DEFAULT_CELLS), choices=list(DEFAULT_CELLS),
                        help="in this order (default: resnet20-0.5 resnet32-0.5 resnet20-0.3)")
    parser.add_argument("--proxies", nargs="+", default=list(Setup.proxies), help="reward proxies measured")
    parser.add_argument("--random", type=int, default=Setup.random, help="random policies per cell (default 11)")
    parser.add_argument("--agents", nargs="+", default=list(Setup.agents),
                        help="agents whose picks join (default cacp cmaes, each with its preset's episodes)")
    parser.add_argument("--episodes", type=int, help="search episodes per target (default: each preset's: "
                        "cacp 50 at each of 0.3/0.5/0.7, cmaes 150)")
    parser.add_argument("--epochs", type=int, default=Setup.epochs, help="fine-tune epochs (default 3)")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(Setup.seeds), help="fine-tune seeds (default 0 1)")
    parser.add_argument("--seeded", type=int, default=Setup.seeded,
                        help="the first N policies are fine-tuned with every seed (default 6)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--report-only", action="store_true", help="print the tables of what is stored and stop")
    args = parser.parse_args(argv)
    from autoprune.proxies import get_proxy

    for p in args.proxies:
        get_proxy(p)  # a misspelt proxy fails now, not hours later
    if args.epochs < 1 or args.random < 0 or args.seeded < 0:
        parser.error("--epochs must be at least 1, --random and --seeded at least 0")
    setup = Setup(data_dir=args.data_dir, cells=tuple(DEFAULT_CELLS[c] for c in args.cells),
                  proxies=tuple(args.proxies), random=args.random, agents=tuple(args.agents), episodes=args.episodes,
                  epochs=args.epochs, seeds=tuple(args.seeds), seeded=args.seeded, device=args.device)
    results = Path(args.results)
    if not args.report_only:
        _log(f"plan: {len(plan(setup))} measurements over {', '.join(c.name for c in setup.cells)}; "
             f"{_eta(results, plan(setup), setup) if results.exists() else 'nothing stored yet'}")
        run(setup, results)
    print(report(setup, results))
    print(f"wrote {results / 'fidelity.md'} and {results / 'fidelity.png'}")


if __name__ == "__main__":
    main()
