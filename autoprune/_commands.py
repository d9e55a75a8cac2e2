"""What each CLI command does, in terms of library calls (argparse namespaces in, exit codes out)."""

from __future__ import annotations

import argparse
import functools
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ._io import json_bytes
from ._run_dir import RunDir
from ._table import format_table
from .checkpoints import PRETRAINED, is_pruned_file, load_model, load_pruned, pruned_state
from .errors import AutopruneError
from .models import (ModelSpec, create, get_model_info, list_models, parse_floats, parse_model_args, parse_size,
                     replay_spec, resolve)
from .policy import Policy
from ._budget_metric import budget_metric
from .pruning import METRICS, apply, make_metric, parse_target, space_for

if TYPE_CHECKING:
    from .training import TrainResult
    from .tune import RayOptions


_SPEC_OPTIONS = ("model_arg", "input_size", "num_classes", "mean", "std", "output", "ignore")


def _given_spec(args: argparse.Namespace) -> ModelSpec | None:
    """The model the user named (--model, or --arch for a zoo name) with its options; None if none was named."""
    model, arch = getattr(args, "model", None), getattr(args, "arch", None)
    if model and arch:
        raise AutopruneError(f"Give --model or --arch, not both (--arch {arch} is an alias of --model for zoo names).")
    if arch and ":" in arch:
        raise AutopruneError(f"--arch takes zoo names; for a factory use --model {arch}.")
    source = model or arch
    given = [f"--{o.replace('_', '-')}" for o in _SPEC_OPTIONS if getattr(args, o, None) not in (None, [])]
    if source is None:
        if given:
            raise AutopruneError(f"{', '.join(given)} describe a model: name it with --model (or --arch).")
        return None
    output = args.output
    if output is not None and output.lstrip("-").isdigit():
        output = int(output)
    return ModelSpec(source, args=parse_model_args(args.model_arg), num_classes=args.num_classes,
                     input_size=parse_size(args.input_size), mean=parse_floats(args.mean, "--mean"),
                     std=parse_floats(args.std, "--std"), output=output, ignore=tuple(args.ignore))


def _need_spec(args: argparse.Namespace) -> ModelSpec:
    spec = _given_spec(args)
    if spec is None:
        raise AutopruneError("--model (or --arch) is required: a zoo name (see `autoprune models`), "
                             "package.module:factory or path/to/file.py:factory.")
    return spec


def _need_data(args: argparse.Namespace, why: str) -> str:
    """``--data-dir``, or a clear error saying ``why`` the command needs it."""
    if not args.data_dir:
        raise AutopruneError(f"--data-dir is required: {why}.")
    return args.data_dir


def _label(spec: ModelSpec) -> str:
    """A folder-name-safe label of a model: a zoo name, or a factory's name."""
    return spec.source if spec.is_zoo else spec.source.rpartition(":")[2] or "model"


def _mega(n: float) -> str:
    return f"{n / 1e6:.2f}M"


def _fractions(values: Sequence[str | float], arch: str | ModelSpec, space: str | None = None, metric: str = "flops",
               latency: dict | None = None) -> list[float]:
    """Targets as fractions of the budget metric's base: each a fraction in (0, 1) or an absolute value (60M MACs,
    1.2M params, 4.5ms), as prune takes.

    The base model is built (and for latency, its latency model built or read from its cache) only when an
    absolute value needs the base.
    """
    @functools.cache
    def base() -> float:
        return make_metric(space_for(create(arch).eval(), arch, space), budget_metric(metric, latency)).base

    return [parse_target(v, base, metric) for v in values]


_LATENCY_OPTIONS = ("runtime", "device", "batch", "threads", "dtype")


def _budget(args: argparse.Namespace) -> tuple[str, list[str] | None, dict | None]:
    """The budget the command line names: its metric, the targets given (None: none) and the latency settings
    (the --latency-* options given; {} for a latency budget with the defaults, None for another budget)."""
    metric, values = "flops", None
    for name in METRICS:  # argparse lets only one through (a mutually exclusive group)
        given = getattr(args, f"target_{name}", None)
        if given is not None:
            metric, values = name, given if isinstance(given, list) else [given]
    latency = {k: getattr(args, f"latency_{k}") for k in _LATENCY_OPTIONS if getattr(args, f"latency_{k}", None) is not None}
    if latency and metric != "latency":
        flags = ", ".join(f"--latency-{k}" for k in latency)
        raise AutopruneError(f"{flags} say where a latency budget is measured, but no --target-latency is given "
                             f"(the budget is {metric}): add --target-latency F, or drop them.")
    return metric, values, (latency if metric == "latency" else None)


def _kept_on(run_dir: str | Path, name: str, given: bool) -> bool:
    """An on/off option of a resumed run (--no-report, --no-progress): off if turned off now or when it started."""
    return given and bool(RunDir.open(run_dir, writing=False).options.get(name, True))


def run_models(args: argparse.Namespace) -> int:
    rows = []
    for name in list_models(args.pattern):
        info = get_model_info(name)
        rows.append((name, info.dataset, "x".join(map(str, info.input_size[1:])), info.space or "(auto)",
                     f"{PRETRAINED[name].top1:.2f}%" if name in PRETRAINED else "-"))
    print(format_table(["arch", "dataset", "input", "space", "pretrained top-1"], rows))
    return 0


def run_flops(args: argparse.Namespace) -> int:
    policy = Policy.load(args.policy) if args.policy else None
    spec = replay_spec(policy.model_spec, _given_spec(args)) if policy else _need_spec(args)
    arch = spec.source
    model = create(spec).eval()
    space = space_for(model, spec, policy.space if policy else args.space)
    base = space.base
    print(f"{arch}: {_mega(base.macs)} MACs, {_mega(base.params)} params; space {space.name!r}: "
          f"{len(space.searchable)} of {len(space.groups)} groups searchable, keep ratio in {list(space.spec.bounds)}")
    if policy is None:
        rows = [(g.name, g.kind, g.channels, g.kernel, g.stride, g.fmap) for g in space.searchable]
        print(format_table(["group", "kind", "channels", "kernel", "stride", "fmap"], rows))
        return 0
    policy.validate(space)
    rows = [(n, g.channels, len(policy.channels[n]), f"{len(policy.channels[n]) / g.channels:.3f}")
            for n, g in zip(space.names, space.searchable)]
    print(format_table(["group", "channels", "kept", "ratio"], rows))
    print(f"pruned: {_mega(policy.macs)} MACs ({policy.macs_fraction:.2%}), {_mega(policy.params)} params ({policy.params_fraction:.2%})")
    return 0


def _data_options(args: argparse.Namespace) -> dict:
    """The data-loading flags (issue 14) as config fields; a bad --cache-limit or count fails here."""
    from .data._survey import parse_bytes

    if args.cache_limit is not None:
        parse_bytes(args.cache_limit)
    for flag, value, low in (("--data-workers", args.data_workers, 0), ("--resize", args.resize, 1)):
        if value is not None and value < low:
            raise AutopruneError(f"{flag} must be at least {low}, but got {value}.")
    return {"cache_limit": args.cache_limit, "skip_bad_images": args.skip_bad_images,
            "data_workers": args.data_workers, "resize": args.resize}


def run_inspect(args: argparse.Namespace) -> int:
    import json

    spec = _need_spec(args)
    model = create(spec).eval()  # weights do not change what can be pruned
    found = space_for(model, spec, args.space).inventory()
    if args.json:
        print(json.dumps(found, indent=2))
        return 0
    searchable = sum(g["searchable"] for g in found["groups"])
    print(f"{spec.describe()}: {_mega(found['macs'])} MACs, {_mega(found['params'])} params; space "
          f"{found['space']!r}: {searchable} of {len(found['groups'])} groups searchable")

    def layers(names: list[str]) -> str:
        return ", ".join(names[:4]) + (f" (+{len(names) - 4})" if len(names) > 4 else "")

    print(format_table(["group", "kind", "channels", "coupled layers", "MACs %", "params %", "searchable"],
                       [(g["name"], g["kind"], g["channels"], layers(g["layers"]), f"{100 * g['macs_share']:.1f}",
                         f"{100 * g['params_share']:.1f}", "yes" if g["searchable"] else f"no: {g['reason']}")
                        for g in found["groups"]]))
    if found["unpruned"]:
        print("\nleft unpruned:")
        print(format_table(["layer", "type", "why"], [(u["name"], u["type"], u["reason"]) for u in found["unpruned"]]))
    return 0


def _evaluator(args: argparse.Namespace, arch: str | ModelSpec, **protocol: object):  # noqa: ANN202
    from .evaluate import Evaluator

    options = _data_options(args)
    return Evaluator.from_data_dir(args.data_dir, arch, dataset=args.dataset, holdout=args.holdout,
                                   device=args.device, cache_limit=options["cache_limit"],
                                   skip_bad_images=options["skip_bad_images"], resize=options["resize"],
                                   workers=options["data_workers"], **protocol)


def run_data(args: argparse.Namespace) -> int:
    from .data._describe import describe

    size = get_model_info(args.arch).input_size[-1] if args.arch else None
    print("\n".join(describe(args.data_dir, name=args.dataset, cache_limit=args.cache_limit, input_size=size,
                             verify=args.verify)))
    return 0


def run_eval(args: argparse.Namespace) -> int:
    if args.recal_batches < 0:
        raise AutopruneError(f"--recal-batches must be at least 0, but got {args.recal_batches}.")
    if args.batch_size < 1:
        raise AutopruneError(f"--batch-size must be at least 1, but got {args.batch_size}.")
    given = _given_spec(args)
    if args.checkpoint != "pretrained" and (given is None or not given.is_zoo) and is_pruned_file(args.checkpoint):
        if args.policy:
            raise AutopruneError(f"{args.checkpoint} is a pruned model with its own policy: drop --policy.")
        model, policy = load_pruned(args.checkpoint, model=given)  # a user's model only as --model names it
        spec = replay_spec(policy.model_spec, given)
    else:
        if given is None:
            raise AutopruneError("Give --model or --arch (and optionally --checkpoint), or --checkpoint FILE of a "
                                 "pruned model.")
        policy = Policy.load(args.policy) if args.policy else None
        spec = replay_spec(policy.model_spec, given, what=f"Policy {args.policy}") if policy else given
        model, sha = load_model(spec, args.checkpoint,
                                num_classes=policy.num_classes if policy and spec.is_zoo else None)
        if policy is not None:
            policy.validate(space_for(model, spec, policy.space), checkpoint=sha)
            model = apply(model, policy)
    arch = spec.source
    evaluator = _evaluator(args, spec, batch_size=args.batch_size, recal_batches=args.recal_batches)
    dataset = evaluator.dataset
    expected = policy.num_classes if policy is not None else resolve(model, spec).num_classes
    if expected != dataset.num_classes:
        raise AutopruneError(f"The model has {expected} outputs but {dataset.name} has {dataset.num_classes} classes.")
    model = evaluator.prepare(model)
    rows = []
    stages = [("no", None)] + ([(f"{args.recal_batches} batches", evaluator.ready)] if args.recal_batches else [])
    for label, step in stages:
        if step is not None:
            model = step(model)
        h, t = evaluator.holdout(model, progress="holdout"), evaluator.test(model, progress="test")
        rows.append((label, f"{100 * h.top1:.2f}", f"{100 * h.top5:.2f}", f"{100 * t.top1:.2f}", f"{100 * t.top5:.2f}"))
    what = f"{arch} pruned to {policy.macs_fraction:.1%} MACs" if policy else arch
    print(f"{what} on {dataset.source} ({evaluator.holdout_loader.num_samples} holdout, "
          f"{evaluator.test_loader.num_samples} test images, device {evaluator.device})")
    print(format_table(["BN recalibration", "holdout top-1 %", "holdout top-5 %", "test top-1 %", "test top-5 %"], rows))
    return 0


def run_prune(args: argparse.Namespace) -> int:
    from .pruning import prune

    spec = _need_spec(args)
    arch = spec.source
    out = Path(args.out)
    metric, values, latency = _budget(args)
    budget = budget_metric(metric, latency)  # a runtime or device that cannot time: refused before any work
    RunDir.check(out, kind="prune", overwrite=args.overwrite)
    model, sha = load_model(spec, args.checkpoint)
    space_for(model, spec, args.space, round_to=args.round_to)  # a model that cannot be pruned is refused here
    target = _fractions(values, spec, args.space, metric, latency)[0]
    batches, dataset_name = None, args.dataset
    if args.criterion in ("taylor", "reconstruction"):  # they score on training batches
        if not args.data_dir:
            raise AutopruneError(f"--criterion {args.criterion} needs training data: pass --data-dir.")
        evaluator = _evaluator(args, spec, recal_batches=4)
        dataset_name = evaluator.dataset.name
        model = evaluator.prepare(model)
        batches = list(evaluator.recal_loader)
    policy, pruned = prune(model, spec, target, method=args.method, criterion=args.criterion,
                           space=args.space, dataset=dataset_name, checkpoint=sha, batches=batches, seed=args.seed,
                           metric=budget, round_to=args.round_to)
    pruned = pruned.cpu()
    run = RunDir.create(out, kind="prune", overwrite=args.overwrite)
    with run.cleanup_unless_started():  # both files or neither: a policy.json must describe its model.pt
        run.write_outputs({"policy.json": lambda f: f.write(json_bytes(policy.to_dict())),
                           "model.pt": lambda f: torch.save(pruned_state(pruned, policy), f)})
        run.mark_started()
    ratios = np.array(list(policy.ratios.values()))
    print(f"{arch} -> {_mega(policy.macs)} MACs ({policy.macs_fraction:.2%} of {_mega(policy.base_macs)}), "
          f"{_mega(policy.params)} params ({policy.params_fraction:.2%}); {args.method} / {args.criterion}, "
          f"keep ratios {ratios.min():.2f}..{ratios.max():.2f} over {len(ratios)} groups")
    if metric == "latency":
        print(f"latency: {1e3 * policy.target['value']:.3f} ms predicted ({policy.budget_fraction:.2%} of "
              f"{1e3 * policy.target['base']:.3f} ms) per batch of {policy.target.get('settings', {}).get('batch', 1)}")
    print(f"wrote {out / 'policy.json'} and {out / 'model.pt'}")
    again = "" if spec.is_zoo else f" --model {spec.source}" + "".join(f" --model-arg {k}={v}" for k, v in spec.args.items())
    print(f"evaluate: autoprune eval --checkpoint {out / 'model.pt'}{again} --data-dir DATA --recal-batches 10")
    return 0


def run_search(args: argparse.Namespace) -> int:
    import time

    from .search import SearchConfig, resume_config, search

    metric, values, latency = _budget(args)
    if args.resume:
        given = _given_spec(args)
        zoo = given is not None and given == ModelSpec(given.source)  # a bare zoo name: the arch check says it
        config = resume_config(args.resume, arch=given.source if zoo else None, space=args.space,
                               round_to=args.round_to,
                               model=None if zoo else given,
                               budget=(metric, latency) if values is not None or latency is not None else None)
        out = Path(args.resume)
        report = _kept_on(out, "report", args.report)
    else:
        spec = _need_spec(args)
        arch = spec.source
        _need_data(args, "the search judges policies on held-out training images")
        targets = _fractions(values, spec, args.space, metric, latency) if values else None
        config = SearchConfig(arch=arch, model=None if spec == ModelSpec(arch) else spec.to_dict(),
                              data_dir=args.data_dir, agent=args.agent, checkpoint=args.checkpoint,
                              targets=targets, episodes=args.episodes, space=args.space, round_to=args.round_to,
                              dataset=args.dataset, seed=args.seed, device=args.device, holdout=args.holdout,
                              reward_samples=args.reward_samples, recal_batches=args.recal_batches, top_k=args.top_k,
                              multi_fidelity=args.multi_fidelity, reward_proxy=args.reward_proxy,
                              storage=args.storage, study_name=args.study_name,
                              workers=args.workers, ray=args.ray, ray_address=args.ray_address,
                              warm_start=args.warm_start, metric=metric, latency=latency, **_data_options(args))
        agent = Path(args.agent).stem
        out = Path(args.out) if args.out else Path("runs") / f"{_label(spec)}-{agent}-{time.strftime('%Y%m%d-%H%M%S')}"
        report = args.report
    result = search(config, out, resume=bool(args.resume), overwrite=args.overwrite,
                    cli_options={"report": args.report})
    print(result.table)
    print(f"run directory: {result.run_dir} (policy.json, policy-<target>.json, episodes.csv)")
    for note in result.notes:
        print(note)
    if report:
        _report(result.run_dir)
    return 0


def _report(run_dir: Path) -> None:
    from .reports import write_report

    print(f"report: {write_report(run_dir)} (and report.html)")


def run_report(args: argparse.Namespace) -> int:
    _report(Path(args.run))
    return 0


def run_compare(args: argparse.Namespace) -> int:
    from .reports import compare

    table, png = compare(args.runs, args.out)
    print(table)
    print(f"plot: {png}")
    return 0


def run_export_policy(args: argparse.Namespace) -> int:
    from .search import export_policy, resume_config

    metric, values, _ = _budget(args)
    config = resume_config(args.run, budget=(metric, None))
    target = _fractions(values, config.model_spec, config.space, config.metric, config.latency)[0]
    out = Path(args.out) if args.out else Path(args.run) / f"policy-{target:g}.json"
    policy = export_policy(args.run, target, out, overwrite=args.overwrite)
    print(f"{policy.arch} at target {values[0]} of the {metric} budget: {policy.macs_fraction:.2%} MACs, "
          f"holdout top-1 {100 * policy.accuracy['holdout']:.2f}%")
    print(f"wrote {out}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from .export import export_pruned

    result, policy = export_pruned(args.checkpoint, args.out, args.format, model=_given_spec(args), batch=args.batch,
                                   dynamic_batch=args.dynamic_batch, opset=args.opset, overwrite=args.overwrite,
                                   rtol=args.rtol)
    print(f"{policy.model_spec.source} pruned to {policy.macs_fraction:.1%} MACs ({_mega(policy.macs)}), {_mega(policy.params)} params")
    print(result.summary())
    load = ("onnxruntime.InferenceSession(PATH).run(None, {'input': x})" if result.format == "onnx"
            else "torch.export.load(PATH).module()(x)")
    print(f"load it without autoprune: {load}")
    return 0


# -- training (autoprune.training, autoprune.tune) ----------------------------------
def _train_kwargs(args: argparse.Namespace) -> dict:
    """The options `finetune` and `train` share, as make_config() keywords."""
    from .training import Distillation

    recipe = {"epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size, "weight_decay": args.weight_decay,
              "momentum": args.momentum, "nesterov": args.nesterov, "schedule": args.schedule,
              "label_smoothing": args.label_smoothing, "precision": args.precision}
    given = {k: v for k, v in (("temperature", args.kd_temperature), ("weight", args.kd_weight)) if v is not None}
    if given and not (args.kd or args.kd_teacher):
        flags = " and ".join(f"--kd-{k}" for k in given)
        verb, them = ("apply", "them") if len(given) > 1 else ("applies", "it")
        raise AutopruneError(f"{flags} only {verb} with knowledge distillation: add --kd (or --kd-teacher), or drop "
                             f"{them}.")
    kd = Distillation(args.kd_teacher, **given) if args.kd or args.kd_teacher else None
    return {"checkpoint": args.checkpoint, "recipe": recipe, "kd": kd, "dataset": args.dataset, "model": _given_spec(args),
            "holdout": args.holdout, "seed": args.seed, "split_seed": args.split_seed,
            "eval_batch_size": args.eval_batch_size, **_data_options(args)}


def _default_out(name: str) -> Path:
    import time

    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def _print_run(result: TrainResult) -> int:
    m = result.metrics

    def pct(key: str) -> str:
        return f"{100 * m[key]:.2f}" if m.get(key) is not None else "-"

    print(format_table(["run", "epochs", "MACs kept %", "holdout at start %", "holdout %", "test %"],
                       [(str(result.run_dir), m["epoch"], pct("macs_fraction"), pct("start_holdout_top1"),
                         pct("holdout_top1"), pct("test_top1"))]))
    print(f"model: {result.model_path}; curves: tensorboard --logdir {result.run_dir / 'tb'}")
    return 0


def _resume_training(args: argparse.Namespace) -> int:
    from .training import resume_config, train

    config = resume_config(args.resume)
    if args.device != "auto":
        config.device = args.device
    progress = _kept_on(args.resume, "progress", args.progress)
    return _print_run(train(config, args.resume, resume=True, progress=progress))


def _ray_options(args: argparse.Namespace) -> RayOptions:
    """The Ray Tune flags of finetune --ray and sweep, as RayOptions."""
    from .tune import RayOptions

    return RayOptions(address=args.ray_address, cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
                      max_failures=args.max_failures, asha=args.asha, asha_grace=args.asha_grace,
                      max_concurrent=args.max_concurrent)


def run_finetune(args: argparse.Namespace) -> int:
    from .training import make_config, read_experiment, train

    ray_only = [flag for flag, given in (("--ray-address", args.ray_address), ("--asha", args.asha),
                                         ("--gpus-per-trial", args.gpus_per_trial is not None),
                                         ("--max-concurrent", args.max_concurrent is not None)) if given]
    if args.resume:
        if read_experiment(args.resume) is not None:
            from .training import resume_experiment
            from .tune import outcomes_table

            outcomes = resume_experiment(args.resume, args.ray_address)
            print(outcomes_table(outcomes))
            return 1 if any(o.status == "error" for o in outcomes) else 0
        return _resume_training(args)
    if not args.policy:
        raise AutopruneError("--policy is required (or --resume RUN_DIR).")
    _need_data(args, "fine-tuning trains on it and judges on its holdout split")
    if len(args.policy) > 1 and not args.ray:
        raise AutopruneError(f"{len(args.policy)} policies given: pass --ray to fine-tune them as Ray Tune trials "
                             "(a local Ray needs no setup), or give one --policy.")
    if ray_only and not args.ray:
        raise AutopruneError(f"{', '.join(ray_only)} only apply with --ray.")
    if args.ray:
        from .training import finetune_on_ray
        from .tune import outcomes_table

        options = _ray_options(args)
        out = Path(args.out) if args.out else _default_out("finetune")
        outcomes = finetune_on_ray(args.policy, args.data_dir, out, options, preset=args.preset,
                                   overwrite=args.overwrite, device=args.device, **_train_kwargs(args))
        print(outcomes_table(outcomes))
        print(f"experiment: {out} (results.csv; one run directory per trial; --resume {out} continues it)")
        return 1 if any(o.status == "error" for o in outcomes) else 0
    config = make_config("finetune", args.data_dir, policy=args.policy[0], preset=args.preset, device=args.device,
                         **_train_kwargs(args))
    out = Path(args.out) if args.out else _default_out(f"{_label(config.model_spec)}-finetune")
    return _print_run(train(config, out, overwrite=args.overwrite, progress=args.progress))


def run_train(args: argparse.Namespace) -> int:
    from .training import make_config, train

    if args.resume:
        return _resume_training(args)
    _need_data(args, "training reads it and judges on its holdout split")
    if args.policy is None:
        _need_spec(args)
    config = make_config("scratch", args.data_dir, policy=args.policy, arch=args.arch, scratch=args.scratch,
                         preset=args.preset, device=args.device, **_train_kwargs(args))
    label = _label(config.model_spec)
    name = f"{label}-scratch{config.scratch}" if config.scratch else f"{label}-train"
    out = Path(args.out) if args.out else _default_out(name)
    code = _print_run(train(config, out, overwrite=args.overwrite, progress=args.progress))
    if config.policy is None:
        model = f"--arch {config.arch}" if config.model_spec.is_zoo else f"--model {config.arch}"
        print(f"use it: {model} --checkpoint {out / 'model.pt'}")
    return code


def run_sweep(args: argparse.Namespace) -> int:
    from .sweep import SweepConfig, sweep, table

    options = _ray_options(args)
    if args.resume:
        outcomes = sweep(None, args.resume, options, resume=True)
        out = Path(args.resume)
        report = _kept_on(out, "report", args.report)
    else:
        spec = _need_spec(args)
        arch = spec.source
        _need_data(args, "every cell searches and fine-tunes on it")
        named = {} if spec == ModelSpec(arch) else {"model": spec.to_dict()}
        metric, values, latency = _budget(args)
        budget = {"metric": metric, "latency": latency} if metric != "flops" else {}
        rounding = {"round_to": args.round_to} if args.round_to is not None else {}
        config = SweepConfig(arch=arch, data_dir=args.data_dir,
                             targets=tuple(_fractions(values or [0.3, 0.5, 0.7], spec, None, metric, latency)),
                             agents=tuple(args.agents),
                             checkpoint=args.checkpoint, episodes=args.episodes, finetune_epochs=args.finetune_epochs,
                             preset=args.preset, seed=args.seed,
                             search={"dataset": args.dataset, "holdout": args.holdout, "device": args.device,
                                     "reward_samples": args.reward_samples, "recal_batches": args.recal_batches,
                                     **named, **budget, **rounding, **_data_options(args)},
                             train={"dataset": args.dataset, "holdout": args.holdout, **named, **_data_options(args)})
        out = Path(args.out) if args.out else _default_out(f"{_label(spec)}-sweep")
        outcomes = sweep(config, out, options, overwrite=args.overwrite, cli_options={"report": args.report})
        report = args.report
    print(table(outcomes))
    print(f"sweep: {out} (results.csv, sweep.png; --resume {out} continues it)")
    if report:
        _report(out)
    return 1 if any(o.status == "error" for o in outcomes) else 0
