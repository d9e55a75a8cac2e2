"""Tally how the command line answers the bad inputs of issues 20, 13 and 14: clear error, traceback, or wrongly accepted.

    python scripts/check_bad_inputs.py [--code DIR] [--only WORD ...] [--keep]

Each case runs the real CLI (``python -c "from autoprune.cli import main; ..."``)
in a subprocess, on tiny inputs made in a temporary folder: a 10-class 32x32
image folder (8 training, 2 test images a class) and randomly initialised
resnet20/resnet32 checkpoints. ``--code DIR`` puts another checkout first on
PYTHONPATH, so the same list runs against the code before a change (e.g. a
``git archive main | tar -x -C /tmp/before`` copy) and after it.

Outcomes:

    ok               refused (or warned, or accepted) as the case expects, and the files are as they should be
    clear error      a non-zero exit with one ``autoprune ...: error:`` line and no traceback, but not the
                     expected answer (another message, or files left behind / not written)
    unclear error    a non-zero exit without a traceback, but not one error line (e.g. an SQL dump after it)
    traceback        a Python traceback on stderr
    wrongly accepted exit 0 (or damage done) where a refusal was expected
    skipped          the case needs what this machine lacks (the reason is printed)

The read-only and full-disk cases mount tiny tmpfs filesystems (``mount -t
tmpfs -o ro`` and ``-o size=...``): chmod does not stop root, so a
permission-based read-only folder would prove nothing here. Without the right
to mount, those cases are skipped with the reason.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ERROR_LINE = re.compile(r"^autoprune(?: [\w-]+)?: error:", re.MULTILINE)
SETUP_LINE = re.compile(r"autoprune search: (?!error: )")


@dataclass
class Result:
    code: int
    out: str
    err: str


@dataclass
class Case:
    """One bad input: the steps to run (the last is judged) and what must be true afterwards.

    ``expect`` is "refuse" (a clear error whose stderr holds every ``says`` text) or "accept"
    (exit 0; ``says`` then checks stdout and stderr). ``check`` returns a problem with the files, or "".
    """

    name: str
    steps: list[list[str]]
    expect: str
    says: tuple[str, ...] = ()
    check: Callable[[], str] = lambda: ""
    mount: tuple[Path, str] | None = None  # a tmpfs (folder, mount options) the case runs on


class Cli:
    """Runs ``autoprune`` from ``code`` in a subprocess."""

    def __init__(self, code: Path, cwd: Path) -> None:
        self.env = {**os.environ, "PYTHONPATH": f"{code}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
                    "AUTOPRUNE_CACHE": str(cwd / "cache"), "TQDM_DISABLE": "1", "RAY_DEDUP_LOGS": "0"}
        self.cwd = cwd

    def __call__(self, *argv: object, timeout: float = 600) -> Result:
        cmd = [sys.executable, "-c", "import sys; from autoprune.cli import main; sys.exit(main())", *map(str, argv)]
        try:
            p = subprocess.run(cmd, cwd=self.cwd, env=self.env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            return Result(124, e.stdout or "", f"timed out after {timeout} s\n{e.stderr or ''}")
        return Result(p.returncode, p.stdout, p.stderr)


def classify(case: Case, results: list[Result]) -> tuple[str, str]:
    """The outcome of a case (see the module docstring) and a note saying why."""
    last = results[-1]
    if any("Traceback" in r.err for r in results):
        first = next(r for r in results if "Traceback" in r.err)
        return "traceback", first.err.strip().splitlines()[-1][:110]
    problem = case.check()
    if case.expect == "accept":
        if last.code != 0:
            return ("clear error" if len(ERROR_LINE.findall(last.err)) == 1 else "unclear error",
                    _first_error(last.err))
        missing = [s for s in case.says if s not in last.out + last.err]
        if problem or missing:
            return "wrongly accepted", problem or f"output lacks {missing}"
        return "ok", "accepted"
    if last.code == 0:
        return "wrongly accepted", problem or "exit 0"
    if problem.startswith("damage:"):
        return "wrongly accepted", problem
    # a search says its set-up steps on stderr first ("autoprune search: loading ..."): progress, not errors
    lines = [line for line in last.err.strip().splitlines() if line.strip() and not SETUP_LINE.match(line)]
    if len(ERROR_LINE.findall(last.err)) != 1 or len(lines) > 1:
        return "unclear error", f"{len(lines)} lines on stderr: {' | '.join(lines[:2])[:110]}"
    missing = [s for s in case.says if s not in last.err]
    if missing or problem:
        return "clear error", (problem or f"message lacks {missing}: {_first_error(last.err)}")[:140]
    return "ok", _first_error(last.err)


def _first_error(err: str) -> str:
    match = ERROR_LINE.search(err)
    line = err[match.start():].splitlines()[0] if match else (err.strip().splitlines() or [""])[-1]
    return line[:140]


def make_inputs(root: Path, code: Path, cli: Cli) -> dict[str, Path]:
    """The tiny dataset, random resnet20/resnet32 checkpoints and a policy of each, pruned by ``code``'s CLI."""
    import numpy as np
    import torch
    from PIL import Image

    sys.path.insert(0, str(code))  # the models of the checkout under test
    from autoprune.models import create

    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("test", 2)):
        for c in range(10):
            folder = root / "data" / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    torch.manual_seed(0)
    paths = {"data": root / "data", "r20": root / "resnet20.th", "r32": root / "resnet32.th"}
    for arch, key in (("resnet20", "r20"), ("resnet32", "r32")):
        torch.save({"state_dict": create(arch).state_dict()}, paths[key])
        result = cli("prune", "--arch", arch, "--checkpoint", paths[key], "--target-flops", "0.5",
                     "--out", root / f"pruned-{arch}")
        if result.code != 0:
            raise SystemExit(f"could not make the inputs (prune {arch}):\n{result.err}")
    paths.update(policy=root / "pruned-resnet20" / "policy.json", policy32=root / "pruned-resnet32" / "policy.json")
    (root / "user.py").write_text(USER_MODELS)  # issue 13: models outside the zoo, from a factory file
    paths["user"] = root / "user.py"
    return paths


USER_MODELS = """
import torch
from torch import nn


def net(width=8):
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, 10))


class NumpyOp(nn.Module):
    def forward(self, x):
        return torch.from_numpy(x.numpy())


def untraceable():
    model = net()
    model[2] = NumpyOp()
    return model


def stem_only():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))


def text():
    return "not a model"


NUMBER = 3
"""


@contextmanager
def _nothing() -> Iterator[None]:
    yield None


@contextmanager
def tmpfs(path: Path, options: str) -> Iterator[str | None]:
    """Mount a tmpfs at ``path`` for the block; yields None, or why it could not (not root, no mount)."""
    path.mkdir(parents=True, exist_ok=True)
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if p.returncode != 0:
        yield f"mount -t tmpfs -o {options} failed: {p.stderr.strip() or p.returncode}"
        return
    try:
        yield None
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def cases(t: Path, p: dict[str, Path]) -> list[Case]:
    """The bad inputs named by issue 20, each with what a good answer is."""
    common = ["--data-dir", p["data"], "--holdout", "20", "--device", "cpu"]

    def searching(recal: str) -> list[object]:
        return ["search", "--arch", "resnet20", "--checkpoint", p["r20"], "--reward-samples", "10", "--recal-batches",
                recal, "--no-report", *common]

    search = searching("1")
    tpe = [*search, "--agent", "tpe", "--episodes", "1", "--target-flops", "0.5"]
    uniform = [*search, "--agent", "uniform", "--target-flops", "0.5"]
    tune = ["finetune", "--policy", p["policy"], "--checkpoint", p["r20"], "--preset", "cpu", "--epochs", "1",
            "--batch-size", "16", "--eval-batch-size", "50", "--no-progress", *common]
    prune = ["prune", "--arch", "resnet20", "--checkpoint", p["r20"], "--target-flops", "0.5"]

    def precious(name: str) -> Path:
        folder = t / name
        folder.mkdir()
        (folder / "thesis.txt").write_text("four years of work\n")
        return folder

    def intact(folder: Path) -> Callable[[], str]:
        return lambda: "" if (folder / "thesis.txt").is_file() else f"damage: {folder.name}/thesis.txt was deleted"

    def holds_no(folder: Path, *names: str) -> Callable[[], str]:
        def check() -> str:
            left = [n for n in names if (folder / n).exists()]
            return f"left behind: {', '.join(left)}" if left else ""
        return check

    def pair_consistent(folder: Path) -> str:
        both = [(folder / n).exists() for n in ("policy.json", "model.pt")]
        return "" if both[0] == both[1] else "policy.json without model.pt (or the reverse)"

    prune_dir, tune_dir, search_dir = t / "out1", t / "out2", t / "out3"
    ro = t / "ro"
    out = []
    for name, argv in (("finetune", [*tune, "--out"]), ("search", [*uniform, "--out"]), ("prune", [*prune, "--out"])):
        folder = precious(f"precious-{name}")
        out.append(Case(f"{name} --overwrite of a user's folder", [[*argv, folder, "--overwrite"]], "refuse",
                        ("thesis.txt",), intact(folder)))
    out += [
        Case("finetune --out a prune output", [[*prune, "--out", prune_dir], [*tune, "--out", prune_dir]], "refuse",
             ("prune",)),
        Case("search --out a finetune run", [[*tune, "--out", tune_dir], [*uniform, "--out", tune_dir]], "refuse",
             ("finetune",)),
        Case("prune --out a search run", [[*uniform, "--out", search_dir], [*prune, "--out", search_dir]], "refuse",
             ("search",)),
    ]
    for name, argv in (("prune", prune), ("search", uniform), ("finetune", tune)):
        out.append(Case(f"{name} --out on a read-only filesystem", [[*argv, "--out", ro / name]], "refuse",
                        ("read-only",), mount=(ro, "ro,size=64k")))
    # sizes: the outputs fit, the model (about 1 MiB) or the SQLite study (about 110 KiB) does not
    out += [
        Case("prune into a full disk", [[*prune, "--out", t / "full1" / "prune"]], "refuse", ("space",),
             lambda: pair_consistent(t / "full1" / "prune"), mount=(t / "full1", "size=256k")),
        Case("finetune into a full disk", [[*tune, "--out", t / "full2" / "finetune"]], "refuse", ("space",),
             mount=(t / "full2", "size=320k")),
        Case("search (Optuna, SQLite) into a full disk", [[*tpe, "--out", t / "full3" / "search"]], "refuse",
             ("space",), mount=(t / "full3", "size=64k")),
        Case("search failing before its first episode (--warm-start of another arch), then corrected",
             [[*tpe, "--out", t / "ws", "--warm-start", p["policy32"]], [*tpe, "--out", t / "ws"]], "accept"),
        Case("search failing before its first episode (unreachable --storage), then corrected",
             [[*tpe, "--out", t / "st", "--storage", "postgresql://u:pw@127.0.0.1:9/db"], [*tpe, "--out", t / "st"]],
             "accept"),
        Case("search failing before its first episode (unreachable --ray-address), then corrected",
             [[*tpe, "--out", t / "ray", "--ray", "--ray-address", "ray://127.0.0.1:9"], [*tpe, "--out", t / "ray"]],
             "accept"),
        Case("--no-report forgotten on --resume", [[*uniform, "--out", t / "nr"], ["search", "--resume", t / "nr"]],
             "accept", (), holds_no(t / "nr", "report.md")),
        Case("eval --batch-size 0", [["eval", "--arch", "resnet20", "--checkpoint", p["r20"], "--batch-size", "0",
                                      *common]], "refuse", ("--batch-size",)),
        Case("finetune --kd-weight without --kd", [[*tune, "--kd-weight", "0.5", "--out", t / "kdw"]], "refuse",
             ("--kd",)),
        Case("finetune --kd-temperature without --kd", [[*tune, "--kd-temperature", "2", "--out", t / "kdt"]],
             "refuse", ("--kd",)),
        Case("search --recal-batches 0", [[*searching("0"), "--agent", "uniform", "--target-flops", "0.5",
                                           "--out", t / "rc0"]], "refuse", ("recalibrat",)),
        Case("prune --target-flops -0.2", [["prune", "--arch", "resnet20", "--checkpoint", p["r20"], "--target-flops",
                                            "-0.2", "--out", t / "neg"]], "refuse", ("(0, 1)",)),
        *model_cases(t, p, common),
        Case("search --reward-proxy misspelt", [[*uniform, "--reward-proxy", "finetun-200", "--out", t / "px1"]],
             "refuse", ("Did you mean 'finetune-200'?",), holds_no(t / "px1", "config.yaml")),
        Case("search --reward-proxy finetune-0", [[*uniform, "--reward-proxy", "finetune-0", "--out", t / "px2"]],
             "refuse", ("at least 1", "finetune-200")),
        Case("search --reward-proxy finetune (no step count)",
             [[*uniform, "--reward-proxy", "finetune", "--out", t / "px3"]], "refuse", ("finetune-200",)),
        Case("search --target-flops 20M (a MAC count, as prune takes)",
             [[*search, "--agent", "uniform", "--target-flops", "20M", "--out", t / "mac"]], "accept"),
    ]
    out += data_cases(t, p)
    out += export_cases(t, p, prune)
    return out


def export_cases(t: Path, p: dict[str, Path], prune: list[object]) -> list[Case]:
    """Issue 13, deployment export: each refusal leaves no file at --out."""
    def pruned(tag: str) -> tuple[list[object], Path]:
        """A prune step of its own (cases may run alone, --only) and the model.pt it writes."""
        return [*prune, "--out", t / f"exp-{tag}"], t / f"exp-{tag}" / "model.pt"

    def exporting(name: str, steps: list[list[object]], says: tuple[str, ...], out: Path) -> Case:
        return Case(f"export: {name}", steps, "refuse", says,
                    lambda: f"left behind: {out.name}" if out.exists() else "")

    taken = t / "taken.onnx"
    taken.write_text("someone's file\n")
    return [
        exporting("a checkpoint that is not a pruned model",
                  [["export", "--checkpoint", p["r20"], "--out", t / "e1.pt2"]],
                  ("is not a pruned autoprune checkpoint",), t / "e1.pt2"),
        exporting("an unknown format", [(step := pruned("format"))[0], ["export", "--checkpoint", step[1], "--format",
                                                                         "onxx", "--out", t / "e2.onxx"]],
                  ("Did you mean 'onnx'?",), t / "e2.onxx"),
        Case("export: an existing --out without --overwrite",
             [(step := pruned("taken"))[0], ["export", "--checkpoint", step[1], "--out", taken]], "refuse",
             ("--overwrite",),
             lambda: "" if taken.read_text() == "someone's file\n" else "damage: taken.onnx was replaced"),
        exporting("--opset below the exporter's",
                  [(step := pruned("opset"))[0], ["export", "--checkpoint", step[1], "--opset", "13",
                                                  "--out", t / "e4.onnx"]],
                  ("--opset must be at least",), t / "e4.onnx"),
    ]


def data_cases(t: Path, p: dict[str, Path]) -> list[Case]:
    """Issue 14: bad image folders, each a copy of the tiny dataset with one thing wrong."""
    import numpy as np
    from PIL import Image

    def variant(name: str, change: Callable[[Path], None]) -> Path:
        folder = t / f"data-{name}"
        shutil.copytree(p["data"], folder)
        change(folder)
        return folder

    def truncate(folder: Path) -> None:
        bad = folder / "train" / "class4" / "3.png"  # in the middle of the split
        data = bad.read_bytes()
        bad.write_bytes(data[: len(data) * 3 // 5])

    def mixed(sizes: tuple[int, int]) -> Callable[[Path], None]:
        def change(folder: Path) -> None:
            rng = np.random.default_rng(1)
            for i, f in enumerate(sorted(folder.glob("*/*/*.png"))):
                w, h = (int(v) for v in rng.integers(*sizes, 2))
                Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(f)
        return change

    def keep_classes(n: int) -> Callable[[Path], None]:
        def change(folder: Path) -> None:
            for c in range(n, 10):
                for split in ("train", "test"):
                    shutil.rmtree(folder / split / f"class{c}")
        return change

    def no_images(folder: Path) -> None:
        for f in folder.glob("*/*/*.png"):
            f.with_suffix(".txt").write_text("not an image")
            f.unlink()

    truncated = variant("truncated", truncate)
    cases_ = []
    for name, folder, says in (
        ("a truncated image in the middle of a split", truncated, ("class4/3.png", "--skip-bad-images")),
        ("train and test with different class folders",
         variant("classes", lambda f: (f / "test" / "class3").rename(f / "test" / "cat")),
         ("only in train: ['class3']", "only in test: ['cat']")),
        ("an empty class folder", variant("empty", lambda f: [x.unlink() for x in (f / "train" / "class2").iterdir()]),
         ("class2 holds no images",)),
        ("a folder with no images", variant("noimg", no_images), ("holds no images",)),
        ("a dataset of 3 classes for a 10-class model", variant("three", keep_classes(3)), ("10 outputs", "3 classes")),
        ("images too small for the model's crop", variant("tiny", mixed((6, 12))), ("too small", "32x32")),
    ):
        cases_.append(Case(f"eval on {name}", [["eval", "--arch", "resnet20", "--checkpoint", p["r20"],
                                                "--data-dir", folder, "--holdout", "20", "--device", "cpu"]],
                           "refuse", says))
    cases_ += [
        Case("eval on a truncated image with --skip-bad-images", [["eval", "--arch", "resnet20", "--checkpoint",
             p["r20"], "--data-dir", truncated, "--holdout", "20", "--device", "cpu", "--skip-bad-images"]], "accept",
             ("Skipped 1 unreadable image",)),
        Case("eval on images of mixed sizes (streamed)", [["eval", "--arch", "resnet20", "--checkpoint", p["r20"],
             "--data-dir", variant("mixed", mixed((30, 60))), "--holdout", "20", "--device", "cpu",
             "--data-workers", "0"]], "accept", ("holdout",)),
        Case("data --data-dir on a truncated image (with --verify)", [["data", "--data-dir", truncated, "--verify"]],
             "accept", ("decode errors: 1 found", "class4/3.png")),
        Case("search --cache-limit lots", [["search", "--arch", "resnet20", "--checkpoint", p["r20"], "--data-dir",
             p["data"], "--cache-limit", "lots", "--agent", "uniform", "--target-flops", "0.5", "--out", t / "cl"]],
             "refuse", ("--cache-limit must be a size like 4G",)),
    ]
    return cases_


def model_cases(t: Path, p: dict[str, Path], common: list[object]) -> list[Case]:
    """Issue 13: a model given as a factory; each refusal must leave --out unwritten."""
    user = f"{p['user']}:net"

    def pruning(name: str, *model: object, says: tuple[str, ...]) -> Case:
        out = t / f"model-{len(name)}-{abs(hash(name)) % 10**6}"
        # the case's own options come last, so that they override these defaults
        return Case(f"prune --model: {name}", [["prune", "--input-size", "3,32,32", "--checkpoint", "none", *model,
                                                 "--target-flops", "0.5", "--out", out]], "refuse", says,
                    lambda: f"left behind: {out.name}" if out.exists() else "")

    return [
        pruning("a factory file that does not import", "--model", f"{t}/nowhere.py:net", says=("does not exist",)),
        pruning("a module that does not import", "--model", "no_such_pkg_13.models:net", says=("cannot import",)),
        pruning("a factory that is not callable", "--model", f"{p['user']}:NUMBER", says=("not a callable",)),
        pruning("a factory returning no nn.Module", "--model", f"{p['user']}:text", says=("not a torch.nn.Module",)),
        pruning("--model-arg the factory rejects", "--model", user, "--model-arg", "depth=3",
                says=("rejects the arguments",)),
        pruning("checkpoint keys that do not match", "--model", user, "--checkpoint", p["r20"],
                says=("missing keys",)),
        pruning("an input size the model rejects", "--model", user, "--input-size", "1,32,32",
                says=("rejects input size 1,32,32",)),
        pruning("an --output that selects nothing", "--model", user, "--output", "scores", says=("selects nothing",)),
        pruning("an --ignore that matches no module", "--model", user, "--ignore", "layer9*",
                says=("matches no module",)),
        pruning("a model with no prunable group", "--model", f"{p['user']}:stem_only", says=("no prunable group",)),
        pruning("a model that cannot be traced", "--model", f"{p['user']}:untraceable",
                says=("cannot be traced", "--ignore '2'")),
        Case("eval --policy of resnet20 onto a user model", [["eval", "--model", user, "--input-size", "3,32,32",
                                                              "--checkpoint", "none", "--policy", p["policy"],
                                                              *common]], "refuse", ("another model",)),
        Case("a user model's pruned file without its --model", [
            ["prune", "--model", user, "--input-size", "3,32,32", "--checkpoint", "none", "--target-flops", "0.5",
             "--out", t / "user-pruned"],
            ["eval", "--checkpoint", t / "user-pruned" / "model.pt", *common]], "refuse", ("--model",)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--code", type=Path, default=ROOT, help="checkout whose autoprune runs (default: this one)")
    parser.add_argument("--only", nargs="+", default=[], help="run the cases whose name holds one of these words")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (its path is printed)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unmount and clean up when killed
    t = Path(tempfile.mkdtemp(prefix="autoprune-bad-inputs-"))
    cli = Cli(args.code.resolve(), t)
    print(f"code: {args.code.resolve()}; work folder: {t}", flush=True)
    rows = []
    try:
        paths = make_inputs(t, args.code.resolve(), cli)
        for case in cases(t, paths):
            if args.only and not any(w in case.name for w in args.only):
                continue
            started = time.perf_counter()
            with tmpfs(*case.mount) if case.mount else _nothing() as unavailable:
                if unavailable:
                    rows.append((case.name, "skipped", unavailable))
                    continue
                results = [cli(*step) for step in case.steps]
                outcome, note = classify(case, results)
            rows.append((case.name, outcome, note))
            print(f"[{time.perf_counter() - started:5.1f} s] {outcome:16} {case.name}: {note}", flush=True)
    finally:
        if args.keep:
            print(f"kept {t}")
        else:
            shutil.rmtree(t, ignore_errors=True)
    width = max(len(r[0]) for r in rows)
    print()
    print(f"{'case':{width}}  {'outcome':16}  note")
    for name, outcome, note in rows:
        print(f"{name:{width}}  {outcome:16}  {note}")
    totals = Counter(r[1] for r in rows)
    print("\ntotals: " + ", ".join(f"{k} {totals[k]}" for k in ("ok", "clear error", "unclear error", "traceback",
                                                                "wrongly accepted", "skipped") if totals[k]))


if __name__ == "__main__":
    main()
