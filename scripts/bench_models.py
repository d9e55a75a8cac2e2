"""How the pruning engine and the export fare on many model families: one table, one row per family.

    python scripts/bench_models.py [--families resnet56 bench-resnet50 ...] [--no-export] [--rounds 3]

Each family is built with random weights and randomised BN statistics at its natural input size, then:

- traced: building its PrunableSpace (the dependency trace) works; else "no" and the reason;
- pruned: applying a 0.5 policy (every searchable group keeps half its channels, chosen by L1) and running
  the smaller model works;
- equiv: largest |pruned output - masked original| in float64, the masked original being
  ``PrunableSpace.masked`` (the removed channels zeroed at every consumer): 0 up to rounding when the
  pruning is right;
- MACs: the cost model's figure for the pruned model against ``torch.utils.flop_counter.FlopCounterMode``
  run on it (FLOPs / 2; both count convolutions and linear layers only);
- trace s, apply ms: medians of ``--rounds`` builds of the space and of ``--rounds`` + 2 applications of the
  policy (goals for the ResNet-50-sized network: trace < 3 s, apply < 100 ms);
- onnx, pt2: ``autoprune.export_model``'s largest difference from PyTorch (float32, batch 1), and in
  brackets that difference over the largest output (at least 1), the figure the export holds to 1e-4
  (random-init deep networks have outputs in the hundreds).

Families are ``Family(name, factory, input_size)`` entries in ``FAMILIES``: zoo names (factory None), the
networks of ``scripts/_bench_nets.py``, and, where ``tests/model_zoo.py`` exists, its ``STRUCTURES``. A
non-zoo family is registered in the model registry under its name for the run (a space is built from a
zoo name today). A family the engine refuses shows "no" with the reason; the run goes on.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from autoprune._table import format_table
from autoprune.errors import DependencyNotInstalled
from autoprune.export import export_model
from autoprune.models import create, get_model_info, list_models, register_model
from autoprune.pruning import PrunableSpace

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench_nets as nets  # noqa: E402

GOALS = {"bench-resnet50": (3.0, 100.0)}  # family: (trace s, apply ms)


@dataclass(frozen=True)
class Family:
    name: str
    factory: Callable[..., nn.Module] | None  # None: a zoo model, built by name; else f(num_classes=...)
    input_size: tuple[int, int, int]
    first_conv: str | None = None  # the stem; default: the first Conv2d
    classifier: str | None = None  # default: the last Linear


FAMILIES: list[Family] = [
    *(Family(n, None, (3, 32, 32)) for n in ("resnet56", "resnet56_b", "vgg16", "mobilenetv2", "densenet40", "googlenet")),
    Family("bench-resnet50", nets.resnet50_like, (3, 224, 224)),
    Family("bench-resnext", nets.resnext_like, (3, 32, 32)),
    Family("bench-se-mobile", nets.se_mobile, (3, 32, 32)),
    Family("bench-convnext", nets.ConvNeXtLike, (3, 32, 32)),
    Family("bench-preact", nets.preact_resnet, (3, 32, 32)),
    Family("bench-shufflenet", nets.shufflenet_like, (3, 32, 32)),
]


def structure_families() -> list[Family]:
    """``tests/model_zoo.py``'s STRUCTURES (test models of the engine's structures), where that module exists."""
    path = Path(__file__).resolve().parents[1] / "tests"
    if not (path / "model_zoo.py").is_file():
        return []
    sys.path.insert(0, str(path))
    import model_zoo  # type: ignore[import-not-found]

    return [Family(f"structure-{name}", lambda num_classes=None, s=s: s.factory(), s.input_size, s.first_conv,
                   s.classifier)
            for name, s in model_zoo.STRUCTURES.items() if name != "resnet50"]  # bench-resnet50 is that row


def register(family: Family) -> None:
    """Put a non-zoo family in the registry: its stem (default: its first conv) and classifier (its last Linear)."""
    if family.factory is None or family.name in list_models():
        return
    model = family.factory(num_classes=10)
    first_conv = family.first_conv or next(n for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    classifier = family.classifier or [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    dataset = "imagenet" if family.input_size[-1] >= 224 else "cifar"
    register_model(dataset=dataset, input_size=family.input_size, first_conv=first_conv, classifier=classifier,
                   name=family.name)(family.factory)


def randomise_bn(model: nn.Module) -> nn.Module:
    """BN statistics away from the identity, so that a wrongly pruned channel shows in the outputs."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def tensors(out: object) -> list[torch.Tensor]:
    """The tensors of a model's output (a tensor, or a tuple, list or dict of them, as multi-head models return)."""
    if isinstance(out, torch.Tensor):
        return [out]
    items = out.values() if isinstance(out, dict) else out if isinstance(out, (tuple, list)) else [out.logits]
    return [t for item in items for t in tensors(item)]


def reason(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return f"{type(e).__name__}: {text[:160]}"


def median_time(fn: Callable[[], object], rounds: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(rounds):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def measure(family: Family, rounds: int, export_dir: Path | None, notes: list[str]) -> list[str]:
    """One row of the table; failures become "no (n)" with the reason as footnote n."""
    def no(stage: str, e: BaseException) -> str:
        notes.append(f"({len(notes) + 1}) {family.name}, {stage}: {reason(e)}")
        return f"no ({len(notes)})"

    row = {"family": family.name, "input": "x".join(map(str, family.input_size))}
    cols = ["traced", "pruned", "groups", "equiv", "MACs model", "MACs counted", "trace s", "apply ms", "onnx", "pt2"]
    row.update({c: "-" for c in cols})
    out = lambda: [row["family"], row["input"], *(row[c] for c in cols)]  # noqa: E731
    torch.manual_seed(0)
    try:
        register(family)
        model = randomise_bn(create(family.name))
        trace_s, space = median_time(lambda: PrunableSpace(model, family.name), rounds)
    except Exception as e:
        row["traced"] = no("trace", e)
        return out()
    row.update({"traced": "yes", "trace s": f"{trace_s:.2f}", "groups": f"{len(space.searchable)}/{len(space.groups)}"})
    x = torch.randn(1, *family.input_size, generator=torch.Generator().manual_seed(0))
    try:
        counts = space.counts(np.full(len(space.searchable), 0.5))
        scores = space.scores("l1")
        kept = space.select(counts, scores)
        apply_s, pruned = median_time(lambda: space.apply(kept), rounds + 2)
        with torch.no_grad():
            pruned(x)
    except Exception as e:
        row["pruned"] = no("apply", e)
        return out()
    row.update({"pruned": "yes", "apply ms": f"{1000 * apply_s:.1f}"})
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            pruned(x)
        row["MACs model"] = f"{space.cost(counts).macs / 1e6:.2f}M"
        row["MACs counted"] = f"{counter.get_total_flops() / 2e6:.2f}M"
    except Exception as e:
        row["MACs model"] = no("cost", e)
    try:
        model.double()
        with torch.no_grad(), space.masked(kept) as masked:
            reference = masked(x.double())
        outputs = tensors(copy.deepcopy(pruned).double()(x.double()))
        diff = max((a - b).abs().max().item() for a, b in zip(outputs, tensors(reference), strict=True))
        row["equiv"] = f"{diff:.1e}"
    except Exception as e:
        row["equiv"] = no("equivalence", e)
    finally:
        model.float()
    for fmt in ("onnx", "pt2") if export_dir is not None else ():
        try:
            result = export_model(pruned, x, export_dir / f"{family.name}.{fmt}", overwrite=True)
            row[fmt] = f"{result.max_abs_diff:.1e} ({result.relative_diff:.0e})"
        except DependencyNotInstalled:
            row[fmt] = "n/a (extra)"
        except Exception as e:  # an ExportError, or whatever an exporter raised
            row[fmt] = no(f"{fmt} export", e)
    return out()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="+", help="names to run (default: all)")
    parser.add_argument("--rounds", type=int, default=3, help="timing rounds: traces; applications are rounds + 2")
    parser.add_argument("--no-export", dest="export", action="store_false", help="skip the ONNX and pt2 columns")
    args = parser.parse_args()
    families = FAMILIES + structure_families()
    if args.families:
        known = {f.name: f for f in families}
        missing = [n for n in args.families if n not in known]
        if missing:
            raise SystemExit(f"unknown families {missing}; known: {', '.join(known)}")
        families = [known[n] for n in args.families]
    rows, notes = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for family in families:
            start = time.perf_counter()
            rows.append(measure(family, args.rounds, Path(tmp) if args.export else None, notes))
            print(f"  {family.name}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    print(format_table(["family", "input", "traced", "pruned", "groups", "equiv (f64)", "MACs model",
                        "MACs counted", "trace s", "apply ms", "onnx diff (rel)", "pt2 diff (rel)"], rows))
    for note in notes:
        print(note)
    for name, (trace_goal, apply_goal) in GOALS.items():
        row = next((r for r in rows if r[0] == name), None)
        if row is not None and row[2] == "yes" and row[3] == "yes":
            trace, apply = float(row[8]), float(row[9])
            print(f"{name} at {get_model_info(name).input_size[-1]} px: trace {trace:.2f} s (goal < {trace_goal:g}: "
                  f"{'met' if trace < trace_goal else 'MISSED'}), apply {apply:.1f} ms (goal < {apply_goal:g}: "
                  f"{'met' if apply < apply_goal else 'MISSED'})")


if __name__ == "__main__":
    main()
