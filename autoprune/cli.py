"""The `autoprune` command line. Thin: it parses arguments; `_commands` calls the library."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .errors import AutopruneError

__all__ = ["build_parser", "main"]

EPILOG = """examples:
  autoprune models
  autoprune data --data-dir data/imagenet
  autoprune flops --arch resnet56
  autoprune inspect --model my_models.py:net --model-arg width=32 --input-size 3,32,32
  autoprune prune --model my_models.py:net --input-size 3,32,32 --checkpoint net.pt --target-flops 0.5 --out runs/net50
  autoprune eval --arch resnet56 --checkpoint resnet56-4bfd9763.th --data-dir data/cifar10
  autoprune prune --arch resnet56 --checkpoint resnet56-4bfd9763.th --target-flops 0.5 --out runs/r56-u50
  autoprune eval --checkpoint runs/r56-u50/model.pt --data-dir data/cifar10 --recal-batches 10
  autoprune search --arch resnet56 --target-flops 0.5 --agent ddpg --data-dir data/cifar10
  autoprune search --arch resnet56 --target-latency 0.6 --latency-runtime onnxruntime --agent tpe --data-dir data/cifar10
  autoprune report runs/resnet56-ddpg-20261121-120000
  autoprune finetune --policy runs/<id>/policy.json --data-dir data/cifar10
  autoprune finetune --policy a.json b.json --ray --data-dir data/cifar10
  autoprune train --policy runs/<id>/policy.json --scratch B --data-dir data/cifar10
  autoprune export --checkpoint runs/r56-u50/model.pt --out r56-u50.onnx
"""


def _presets() -> list[str]:
    """The agent presets shipped in agents/ (names only: nothing is imported)."""
    from ._resources import resource_dir

    return sorted(p.stem for p in resource_dir("agents").glob("*.yaml"))


_MODEL_HELP = ("the model: a zoo name (see `autoprune models`), package.module:factory, or path/to/file.py:factory "
               "(a function returning an nn.Module; autoprune imports it because you name it here, and a resumed "
               "run imports it again from the run's config)")


def _add_model_args(p: argparse.ArgumentParser, *, checkpoint: bool = True, space: bool = True,
                    arch_help: str = "a zoo name: an alias of --model for zoo names") -> None:
    """The model options, the same on every command that takes a model (see autoprune.models.ModelSpec)."""
    g = p.add_argument_group("model (a zoo name, or your own nn.Module)")
    g.add_argument("--model", help=_MODEL_HELP)
    g.add_argument("--arch", help=arch_help)
    g.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="a keyword argument of the factory, parsed as a YAML scalar (3, 0.5, true, name); repeatable")
    g.add_argument("--input-size", metavar="C,H,W", help="size of one input (default: the zoo's; required otherwise)")
    g.add_argument("--num-classes", type=int, default=None,
                   help="classifier width (default: 10 for CIFAR zoo models; a factory's own otherwise)")
    g.add_argument("--mean", metavar="M1,M2,M3", help="input normalisation mean (default: the zoo's, else ImageNet's)")
    g.add_argument("--std", metavar="S1,S2,S3", help="input normalisation std (default: the zoo's, else ImageNet's)")
    g.add_argument("--output", metavar="KEY|INDEX",
                   help="where the logits are in a tuple, dict or .logits output (default: the tensor itself, else "
                        "'logits', else the first element)")
    g.add_argument("--ignore", action="append", default=[], metavar="PATTERN",
                   help="keep the output channels of the modules whose name matches (fnmatch, e.g. 'head.*'); "
                        "repeatable. The stem conv and the classifier are kept anyway")
    if space:
        g.add_argument("--space", default=None,
                       help="prunable space: a name from the arch's search_spaces YAML (e.g. inner, full) or a YAML "
                            "path; default: the arch's default ('all' outside the zoo: every group but the stem's)")
    if checkpoint:
        g.add_argument("--checkpoint", default="pretrained",
                       help="weights: a state-dict file (plain, or under 'state_dict'/'model'; a 'module.' prefix is "
                            "removed), 'pretrained' for the zoo's registered weights (downloaded to $AUTOPRUNE_CACHE, "
                            "default ~/.cache/autoprune), or 'none' for the weights your factory built; default: "
                            "pretrained")


def _add_data_args(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--data-dir", required=required,
                   help="dataset folder: CIFAR python pickles (cifar-10-batches-py) or train/ and test/ class folders")
    p.add_argument("--dataset", default="cifar10", choices=["cifar10", "cifar100"], help="which CIFAR when reading pickles")
    p.add_argument("--holdout", type=int, default=5000, help="training images held out for validation (default 5000)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N")
    _add_loading_args(p)


def _add_loading_args(p: argparse.ArgumentParser) -> None:
    """How an image folder is loaded (issue 14); see `autoprune data`."""
    g = p.add_argument_group("data loading (image folders)")
    g.add_argument("--cache-limit", help="decode a folder whose images share one size into memory when it takes at "
                                         "most this (e.g. 4G, 500M); otherwise stream it from disk (default: a "
                                         "quarter of this machine's memory)")
    g.add_argument("--skip-bad-images", action="store_true",
                   help="skip images that cannot be decoded, and count them, instead of stopping at the first")
    g.add_argument("--data-workers", type=int, help="processes decoding streamed images (default: the CPUs, at most 8)")
    g.add_argument("--resize", type=int, help="streamed images: the shorter side before the centre crop at evaluation "
                                              "(default: input size / 0.875, 256 for 224-px models)")


_PRESET_HELP = ("recipe preset: auto, cifar, cpu or a YAML file (default auto: cifar on CUDA, cpu otherwise). cifar is "
                "the literature's GPU recipe: fine-tune 100 epochs, lr 0.01 cosine; from scratch 160 epochs, lr 0.1 "
                "divided by 10 at 50%% and 75%%; both SGD nesterov 0.9, batch 128, weight decay 1e-4. cpu is a short "
                "budget: fine-tune 2 epochs, from scratch 3. The options below override it")


_OVERWRITE_HELP = ("replace a run of autoprune already in --out; a folder holding anything else (your own files) "
                   "is never removed")
_TARGET_HELP = "a fraction of the MACs kept, 0 < F < 1 (e.g. 0.5), or an absolute MAC count like 60M"
_BUDGET_HELP = {
    "flops": _TARGET_HELP,
    "params": "a fraction of the parameters kept, 0 < F < 1, or an absolute count like 1.2M",
    "latency": "a fraction of the unpruned model's latency, 0 < F < 1, measured where the --latency-* options say "
               "(a per-layer latency table is timed once and cached), or an absolute latency like 4.5ms (us, ms, s) "
               "per batch",
}


def _add_budget_args(p: argparse.ArgumentParser, *, many: bool, required: bool, flops_alias: str | None = None,
                     more: str = "", latency: bool = True) -> None:
    """The budget: exactly one of --target-flops, --target-params, --target-latency, and (``latency``) where
    latency is measured."""
    g = p.add_argument_group("budget (one metric a run: MACs, params or measured latency)").add_mutually_exclusive_group(
        required=required)
    for metric, help_text in _BUDGET_HELP.items():
        flags = [f"--target-{metric}"] + ([flops_alias] if metric == "flops" and flops_alias else [])
        g.add_argument(*flags, dest=f"target_{metric}", nargs="+" if many else None, metavar="F",
                       help=(f"target(s), each {help_text}" if many else help_text) + more)
    p.add_argument("--round-to", type=int, metavar="N",
                   help="every searched group keeps a multiple of N channels (default: the space's rounding, 1 in the "
                        "zoo's spaces); 8 or 16 match the vector units of most CPUs and GPUs, so a latency budget "
                        "buys more with them (see the README's latency section)")
    if not latency:
        return
    g = p.add_argument_group("latency (with --target-latency: where the latency is measured)")
    g.add_argument("--latency-runtime", choices=["torch", "onnxruntime"],
                   help="what runs the model: torch (eager) or onnxruntime (what CPU deployments run; needs the onnx "
                        "extra); default torch")
    g.add_argument("--latency-device", choices=["cpu", "cuda"], help="the device timed (default cpu)")
    g.add_argument("--latency-batch", type=int, metavar="N", help="images per timed batch (default 1)")
    g.add_argument("--latency-threads", type=int, metavar="N",
                   help="CPU threads while timing (default: torch's current count, recorded in the cache key)")
    g.add_argument("--latency-dtype", choices=["float32", "float16", "bfloat16"],
                   help="the dtype timed (default float32; float16 on cuda only)")


def _add_train_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("recipe (default: the preset's)")
    g.add_argument("--preset", default="auto", help=_PRESET_HELP)
    g.add_argument("--epochs", type=int, help="epochs (with --scratch B: the base model's, scaled)")
    g.add_argument("--lr", type=float, help="initial learning rate")
    g.add_argument("--batch-size", type=int, help="training batch size")
    g.add_argument("--weight-decay", type=float, help="L2 weight decay (5e-4 suits VGG checkpoints trained with it)")
    g.add_argument("--momentum", type=float, help="SGD momentum")
    g.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None, help="Nesterov momentum")
    g.add_argument("--schedule", choices=["cosine", "step"], help="cosine to 0, or step (x0.1 at 50%% and 75%%)")
    g.add_argument("--label-smoothing", type=float, help="cross-entropy label smoothing in [0, 1)")
    g.add_argument("--precision", choices=["auto", "float32"],
                   help="auto (default): float16 autocast on CUDA, bfloat16 on a CPU with native bfloat16 (about 1.5x "
                        "faster there), else float32; float32: no autocast")
    g = p.add_argument_group("knowledge distillation")
    g.add_argument("--kd", action="store_true", help="distil from a teacher (default: the unpruned model of the policy)")
    g.add_argument("--kd-teacher", help="teacher: a checkpoint of the policy's arch, 'pretrained', or a pruned model.pt "
                                        "(implies --kd)")
    g.add_argument("--kd-temperature", type=float, help="softmax temperature (default 4; needs --kd)")
    g.add_argument("--kd-weight", type=float, help="weight of the soft term; CE gets 1 - it (default 0.9; needs --kd)")
    p.add_argument("--seed", type=int, default=0, help="initialisation, data order and holdout split (default 0)")
    p.add_argument("--split-seed", type=int, help="the holdout split's own seed (default: --seed); fix it to compare "
                                                  "seeds on the same held-out images")
    p.add_argument("--eval-batch-size", type=int, default=500, help="holdout/test batch size (default 500)")
    p.add_argument("--out", help="run directory, new or empty (default runs/<arch>-<command>-<time>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run (its saved config and --no-progress; "
                                                      "--device may change)")
    p.add_argument("--overwrite", action="store_true", help=_OVERWRITE_HELP)
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    _add_data_args(p, required=False)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="autoprune", description="Automated channel pruning of CNNs: search per-layer keep ratios under a "
        "FLOPs budget, prune physically, fine-tune, export.", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"autoprune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("models", help="list the architectures of the model zoo")
    p.add_argument("pattern", nargs="?", default="*", help="glob filter, e.g. 'resnet*'")

    p = sub.add_parser("flops", help="MACs and params of an architecture, or of a policy")
    _add_model_args(p, checkpoint=False)
    p.add_argument("--policy", help="a policy.json: report its pruned cost per group")

    p = sub.add_parser("inspect", help="every group of a model: searchable or not and why, before any search",
                       description="Trace a model once and list every channel group (name, kind, channels, coupled "
                       "layers, share of MACs and params, searchable or not and why) and every layer left unpruned, "
                       "with the reason. A model that cannot be traced is named here, with the --ignore that skips "
                       "the module at fault.")
    _add_model_args(p, checkpoint=False)
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")

    p = sub.add_parser("eval", help="top-1/top-5 accuracy on the holdout and test splits",
                       description="Evaluate a model: a zoo arch with a checkpoint (optionally pruned by --policy), or a "
                       "pruned model file written by `autoprune prune` (give --checkpoint without --arch).")
    _add_model_args(p)
    p.add_argument("--policy", help="prune the model with this policy.json before evaluating")
    p.add_argument("--recal-batches", type=int, default=0,
                   help="also report accuracy after re-estimating BatchNorm statistics on N training batches (default 0: off)")
    p.add_argument("--batch-size", type=int, default=500, help="evaluation batch size (default 500)")
    _add_data_args(p, required=True)

    p = sub.add_parser("prune", help="prune to a FLOPs, params or latency target, uniformly or by a global threshold",
                       description="Prune a pretrained model to a budget (MACs, params or measured latency) without search: one keep ratio everywhere "
                       "(uniform) or one threshold on a channel criterion across all groups (global). Writes "
                       "policy.json and model.pt (the physically pruned model) into --out.")
    _add_model_args(p)
    _add_budget_args(p, many=False, required=True)
    p.add_argument("--method", default="uniform", help="uniform or global (default uniform)")
    p.add_argument("--criterion", default="l1", help="channel selection: l1, l2, bn-gamma, group-l1, group-l2, group-bn-gamma, random, taylor, "
                   "reconstruction "
                   "(taylor and reconstruction need --data-dir; default l1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random criterion")
    p.add_argument("--out", required=True, help="output directory, new or empty: policy.json and model.pt are "
                                                 "written together, or neither")
    p.add_argument("--overwrite", action="store_true", help=_OVERWRITE_HELP)
    _add_data_args(p, required=False)

    p = sub.add_parser("search", help="search per-group keep ratios with an RL agent (the main command)",
                       description="Search how many channels each group keeps under a budget: MACs (--target-flops), "
                       "params (--target-params) or the latency measured on your device and runtime (--target-latency). An agent (--agent) "
                       "plays the pruning environment: one step per group, reward = holdout accuracy after BN "
                       "recalibration. The best policies are re-judged on a disjoint part of the holdout; the winner is "
                       "measured on the test split once, beside the uniform-L1 policy. Writes runs/<id>/ (config, "
                       "log, episodes.csv, checkpoints, policy.json); Ctrl-C keeps the last checkpoint and "
                       "--resume continues it. A handcrafted method (uniform, global-*, slimming, ...) answers once "
                       "per target instead, judged the same way; one that trains writes weights-<target>.pt, which "
                       "the policy names (autoprune finetune --checkpoint).")
    _add_model_args(p)
    _add_budget_args(p, many=True, required=False,
                     more="; a conditional agent (cacp) adds them to its trained range (default: the preset's "
                          "targets, of the MACs; with --resume: the run's, and a different metric is refused)")
    p.add_argument("--agent", default="cacp",
                   help="preset name or a preset YAML; default cacp. RL: cacp, ddpg, td3, sac, ppo. Optuna: tpe, "
                        "cmaes, random, qmc (one study per target), nsga2 (accuracy against MACs over a range). "
                        "Handcrafted baselines, one answer per target (--episodes ignored): uniform, global-l1, "
                        "global-l2, global-bn-gamma, global-taylor, slimming (Network Slimming; saves the trained "
                        f"weights beside the policy). Shipped presets: {', '.join(_presets())}")
    p.add_argument("--episodes", type=int, help="episodes per target (default: the preset's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reward-samples", type=int, default=1000,
                   help="holdout images that score an episode; the rest re-judge the finalists (default 1000)")
    p.add_argument("--recal-batches", type=int, default=10,
                   help="batches of 100 training images for BN recalibration (default 10; at least 1: without it "
                        "every reward is near chance)")
    p.add_argument("--top-k", type=int, default=5, help="finalists re-judged on the rest of the holdout (default 5)")
    p.add_argument("--reward-proxy", metavar="PROXY",
                   help="how each pruned model is made ready before its holdout accuracy is the reward: bn (BN "
                        "recalibration), reconstruct (least-squares refit of each pruned layer, then bn), finetune-K "
                        "(K SGD steps, e.g. finetune-200, then bn) or distill-K (the same, distilled from the "
                        "unpruned model); default: the preset's (bn). scripts/bench_fidelity.py measures them")
    p.add_argument("--out", help="run directory, new or empty (default runs/<arch>-<agent>-<time>); a search that "
                                 "fails before its first episode leaves nothing in it")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run (with the options it started with; "
                                                       "a model from a factory is imported again, as the original "
                                                       "command named it in the run's config.yaml)")
    p.add_argument("--no-report", dest="report", action="store_false",
                   help="do not write report.md/html at the end (kept by --resume)")
    g = p.add_argument_group("Optuna agents")
    g.add_argument("--multi-fidelity", action=argparse.BooleanOptionalAction, default=None,
                   help="score a quarter of the reward images first and prune trials below the median (default: the preset's)")
    g.add_argument("--storage", help="Optuna storage URL shared by several machines, e.g. postgresql://user:pw@host/db "
                                     "(default: sqlite in the run directory)")
    g.add_argument("--study-name", help="study name in the storage (default: the run directory's name)")
    g.add_argument("--workers", type=int, default=1, help="trials evaluated at once, as processes (default 1)")
    g.add_argument("--ray", action="store_true", help="run the trials through Ray Tune's OptunaSearch")
    g.add_argument("--ray-address", help="join this Ray cluster (auto, or ray://host:10001); default: a local Ray")
    g.add_argument("--warm-start", nargs="+", default=[], metavar="POLICY",
                   help="policy.json files of earlier runs to try first (after the uniform policy)")
    p.add_argument("--overwrite", action="store_true", help=_OVERWRITE_HELP)
    _add_data_args(p, required=False)

    p = sub.add_parser("export-policy", help="a policy for any target from a trained conditional agent",
                       description="Ask the trained agent of a search run for a policy at a new target inside its "
                       "trained range, without searching again.")
    p.add_argument("--run", required=True, help="the search run directory")
    _add_budget_args(p, many=False, required=True, more=" (the run's own budget metric, measured as it was)",
                     latency=False)
    p.add_argument("--out", help="policy file to write (default RUN/policy-<target>.json)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing policy file (for a searched target, the search's own pick)")

    p = sub.add_parser("export", help="a pruned model.pt as a standalone ONNX or torch.export (.pt2) file",
                       description="Export a pruned model (model.pt of prune, finetune or train) to a file that loads "
                       "without autoprune: ONNX (onnxruntime.InferenceSession(FILE); needs the onnx extra: "
                       'pip install "autoprune[onnx]") or torch.export\'s .pt2 (torch.export.load(FILE).module()). '
                       "The written file is loaded back and compared with PyTorch on random inputs before it takes "
                       "its name; a difference above the tolerance is an error and leaves nothing behind.")
    p.add_argument("--checkpoint", required=True, help="the pruned model.pt to export")
    _add_model_args(p, checkpoint=False, space=False,
                    arch_help="a zoo name: an alias of --model (not needed: a zoo model is rebuilt from its policy)")
    p.add_argument("--format", help="onnx or pt2 (default: from --out's suffix, .onnx or .pt2)")
    p.add_argument("--out", required=True, help="the file to write (not replaced unless --overwrite)")
    p.add_argument("--batch", type=int, default=1, help="batch size fixed in the file (default 1)")
    p.add_argument("--dynamic-batch", action="store_true", help="leave the batch size free instead")
    p.add_argument("--opset", type=int, help="ONNX opset, 18 or newer (default: torch's)")
    p.add_argument("--rtol", type=float, default=1e-4,
                   help="largest difference from PyTorch allowed, relative to the largest output (default 1e-4)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")

    p = sub.add_parser("finetune", help="fine-tune pruned models from their policies (locally, or as Ray Tune trials)",
                       description="Rebuild the pruned model from a policy and the checkpoint it was cut from (its kept "
                       "channels), train it with SGD, judge it on the holdout split every epoch and on the test split "
                       "once at the end. Writes a run directory: config.yaml, log.txt, metrics.csv, tb/, checkpoints/ "
                       "(every epoch, atomically; --resume continues exactly), model.pt (autoprune.load_pruned) and "
                       "result.json. Several policies run as Ray Tune trials (--ray), one per policy.")
    p.add_argument("--policy", nargs="+", metavar="POLICY", help="policy.json file(s); several need --ray")
    p.add_argument("--checkpoint", default="pretrained",
                   help="the weights the policy was cut from: a file, or 'pretrained' (default); its hash must match the policy's")
    _add_model_args(p, checkpoint=False, space=False)
    _add_train_args(p)
    g = p.add_argument_group("Ray Tune (one trial per policy)")
    g.add_argument("--ray", action="store_true", help="run the fine-tunes as Ray Tune trials")
    _add_trial_resources(g)

    p = sub.add_parser("train", help="train from random initialisation: a base model, or a policy's architecture",
                       description="Train from scratch. Without --policy: the unpruned --arch (a checkpoint for "
                       "users without one; model.pt loads with --checkpoint). With --policy: its pruned architecture, "
                       "as in 'Rethinking the value of network pruning': --scratch E trains the base model's epochs, "
                       "--scratch B scales them by base MACs / pruned MACs, capped at 2x. Same run directory as "
                       "finetune.")
    _add_model_args(p, checkpoint=False, space=False, arch_help="a zoo name (taken from --policy when given)")
    p.add_argument("--policy", help="train this policy's pruned architecture")
    p.add_argument("--scratch", choices=["E", "B"], help="epoch budget with --policy (default E)")
    p.add_argument("--checkpoint", default="pretrained", help="with --policy and --kd: the unpruned teacher's weights")
    _add_train_args(p)

    p = sub.add_parser("sweep", help="search and fine-tune every (target, agent) cell, as Ray Tune trials",
                       description="Each (target, agent) cell is one Ray Tune trial that searches (or runs a "
                       "handcrafted method such as uniform once) and then fine-tunes its policy. Writes OUT/<cell>/search, "
                       "OUT/<cell>/finetune, results.csv and sweep.png (test accuracy against MACs kept, one line per "
                       "agent). A failed cell is retried from its last search checkpoint or epoch; --resume OUT "
                       "continues an interrupted sweep.")
    _add_model_args(p, checkpoint=False, space=False)
    p.add_argument("--checkpoint", default="pretrained", help="the weights searched and fine-tuned (default: pretrained)")
    _add_budget_args(p, many=True, required=False, flops_alias="--targets",
                     more=" (default: --target-flops 0.3 0.5 0.7)")
    p.add_argument("--agents", nargs="+", default=["cacp", "tpe", "uniform"],
                   help="agent presets, as for search --agent (default: cacp tpe uniform)")
    p.add_argument("--episodes", type=int, help="search episodes per target (default: each preset's)")
    p.add_argument("--reward-samples", type=int, default=1000,
                   help="holdout images that score a search episode, as for search (default 1000; fewer than --holdout)")
    p.add_argument("--recal-batches", type=int, default=10,
                   help="batches of 100 training images for BN recalibration in the search, as for search (default 10)")
    p.add_argument("--finetune-epochs", type=int, help="fine-tune epochs (default: the training preset's)")
    p.add_argument("--preset", default="auto",
                   help="training preset: auto (cifar where trials get a GPU, else cpu), cifar, cpu, or a YAML file")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="sweep directory, new or empty (default runs/<arch>-sweep-<time>)")
    p.add_argument("--resume", metavar="OUT", help="continue an interrupted sweep (with the options it started with)")
    p.add_argument("--no-report", dest="report", action="store_false",
                   help="do not write report.md/html at the end (kept by --resume)")
    p.add_argument("--overwrite", action="store_true", help=_OVERWRITE_HELP)
    _add_data_args(p, required=False)
    _add_trial_resources(p.add_argument_group("Ray Tune"))

    p = sub.add_parser("data", help="what autoprune sees in a data folder: splits, classes, sizes, loader, errors",
                       description="Survey a data folder without decoding it: splits, classes, images per class, the "
                       "sizes and formats seen (from the image headers), which loader the data gets (in-memory cache "
                       "or streaming) and why, the transforms for the model's input size, and the unreadable images.")
    p.add_argument("--data-dir", required=True, help="the dataset folder")
    p.add_argument("--dataset", default="cifar10", choices=["cifar10", "cifar100"], help="which CIFAR when reading pickles")
    p.add_argument("--arch", help="report the transforms for this architecture's input size (default 224, or the "
                                  "images' size when they share a square one)")
    p.add_argument("--cache-limit", help="as for the other commands (default: a quarter of this machine's memory)")
    p.add_argument("--verify", action="store_true", help="decode every image to find truncated files (slow)")

    p = sub.add_parser("report", help="report.md and report.html with plots for a run directory",
                       description="Write report.md, a self-contained report.html and PNG plots into a run directory "
                       "(search, finetune/train or sweep): keep ratios per group against the uniform policy, reward "
                       "and accuracy per episode with the best so far, accuracy against MACs kept, and the table of "
                       "final policies. A run still in progress gets a partial report, marked as such.")
    p.add_argument("run", help="the run directory")

    p = sub.add_parser("compare", help="one table and one accuracy-against-MACs plot across runs",
                       description="Compare runs (agents, targets, methods) of one dataset: a table of their final "
                       "policies and compare.png, each point labelled by its run.")
    p.add_argument("runs", nargs="+", help="run directories")
    p.add_argument("--out", default=".", help="where compare.md and compare.png go (default: here)")
    return parser


def _add_trial_resources(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--ray-address", help="join this Ray cluster: auto, or ray://HEAD:10001 (default: a local Ray)")
    g.add_argument("--gpus-per-trial", type=float, help="GPUs per trial, fractions allowed (default: 1 where the "
                                                         "cluster has GPUs, else 0)")
    g.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs (and torch threads) per trial (default 1)")
    g.add_argument("--asha", action="store_true", help="stop trials whose holdout accuracy lags (ASHA, per epoch)")
    g.add_argument("--asha-grace", type=int, help="epochs before ASHA may stop a trial (default: a tenth of them)")
    g.add_argument("--max-failures", type=int, default=2, help="retries of a failed trial, each from its last epoch (default 2)")
    g.add_argument("--max-concurrent", type=int, help="trials at a time (default: as many as the cluster's resources hold)")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from . import _commands as commands

        return getattr(commands, f"run_{args.command.replace('-', '_')}")(args)
    except AutopruneError as e:
        print(f"autoprune {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"autoprune {args.command}: interrupted; files already written are complete.", file=sys.stderr)
        return 130
    except Exception as e:  # a full or read-only disk, wherever the write was: one line, not a traceback
        from ._io import output_error

        error = output_error(e)
        if error is None:
            raise
        print(f"autoprune {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

