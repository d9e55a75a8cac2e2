"""Deployment export (issue 13, section 5): a pruned model.pt as ONNX and torch.export .pt2 files that load
without autoprune and reproduce PyTorch's outputs; the command end to end; its bad inputs.

The exported files are run in a separate ``python -I`` whose importer refuses autoprune, so "loads
without autoprune" is checked, not assumed. ONNX tests need the onnx extra and are skipped, saying so,
where it is absent.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tmpfs
from model_zoo import randomise_norms

from autoprune import export_model, export_pruned, load_pruned, save_pruned
from autoprune.cli import main
from autoprune.errors import DependencyNotInstalled, ExportError, OutputError, UnknownNameError
from autoprune.models import create
from autoprune.pruning import prune

ONNX_MISSING = [m for m in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(m) is None]
needs_onnx = pytest.mark.skipif(bool(ONNX_MISSING), reason=f"{', '.join(ONNX_MISSING)} not installed: the ONNX "
                                "export needs the onnx extra (pip install -e \".[onnx]\", part of .[dev])")

# Runs an exported file on saved inputs in a fresh interpreter that cannot import autoprune.
LOADER = r"""
import sys

class NoAutoprune:
    def find_spec(self, name, path=None, target=None):
        if name == "autoprune" or name.startswith("autoprune."):
            raise ImportError("autoprune is blocked here: an export must load without it")
        return None

sys.meta_path.insert(0, NoAutoprune())
try:
    import autoprune
    sys.exit("the blocker let autoprune in")
except ImportError:
    pass
import numpy as np
fmt, model_path, x_path, y_path = sys.argv[1:]
x = np.load(x_path)
if fmt == "onnx":
    import onnxruntime
    session = onnxruntime.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    y = session.run(None, {"input": x})[0]
else:
    import torch
    with torch.no_grad():
        y = torch.export.load(model_path).module()(torch.from_numpy(x)).numpy()
np.save(y_path, y)
assert not [m for m in sys.modules if m.split(".")[0] == "autoprune"]
"""


@pytest.fixture(scope="module")
def pruned(tmp_path_factory) -> Path:
    """A resnet20 pruned to half its MACs (random weights and BN statistics), saved as model.pt."""
    torch.manual_seed(0)
    model = randomise_norms(create("resnet20").eval())
    policy, small = prune(model, "resnet20", 0.5)
    path = tmp_path_factory.mktemp("pruned") / "model.pt"
    save_pruned(path, small, policy)
    return path


def run_without_autoprune(fmt: str, exported: Path, x: torch.Tensor, tmp_path: Path) -> np.ndarray:
    np.save(tmp_path / "x.npy", x.numpy())
    done = subprocess.run([sys.executable, "-I", "-c", LOADER, fmt, str(exported), str(tmp_path / "x.npy"),
                           str(tmp_path / "y.npy")], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return np.load(tmp_path / "y.npy")


def assert_matches_pytorch(checkpoint: Path, y: np.ndarray, x: torch.Tensor) -> None:
    model, _ = load_pruned(checkpoint)
    with torch.no_grad():
        ref = model(x).numpy()
    assert y.shape == ref.shape
    assert np.abs(y - ref).max() <= 1e-4 * max(1.0, float(np.abs(ref).max()))


def cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def leftovers(folder: Path) -> list[str]:
    """Temporaries an export left beside its output."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# -- the files load without autoprune and compute what PyTorch computes ---------------------------------------
def test_pt2_with_a_dynamic_batch_runs_without_autoprune(pruned, tmp_path):
    out = tmp_path / "out" / "model.pt2"
    result, policy = export_pruned(pruned, out, dynamic_batch=True)
    assert result.format == "pt2" and result.batch is None and policy.arch == "resnet20"
    assert out.is_file() and result.size == out.stat().st_size and not leftovers(out.parent)
    assert result.checked_batches == (1, 3) and result.relative_diff <= 1e-4 and result.scale > 1
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    assert_matches_pytorch(pruned, run_without_autoprune("pt2", out, x, tmp_path), x)


@needs_onnx
def test_onnx_runs_in_onnxruntime_without_autoprune(pruned, tmp_path):
    import onnx

    out = tmp_path / "model.onnx"
    result, _ = export_pruned(pruned, out, "onnx", batch=2, opset=18)
    assert result.opset == 18 and result.batch == 2 and result.runtime.startswith("onnxruntime")
    assert result.relative_diff <= 1e-4 and not leftovers(tmp_path)
    graph = onnx.load(str(out)).graph  # one self-contained file: the weights inside, no external data
    assert [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim] == [2, 3, 32, 32]
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".data"]
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    assert_matches_pytorch(pruned, run_without_autoprune("onnx", out, x, tmp_path), x)


def test_export_model_takes_any_module_and_leaves_it_as_it_was(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 2)).train()
    result = export_model(model, torch.zeros(3, 3, 8, 8), tmp_path / "m.pt2")
    assert model.training and result.batch == 3 and result.checked_batches == (3, 3)
    module = torch.export.load(str(tmp_path / "m.pt2")).module()
    x = torch.randn(3, 3, 8, 8)
    torch.testing.assert_close(module(x), model.eval()(x))


# -- it checks itself, and fails loudly ---------------------------------------------------------------------
def test_an_export_that_does_not_reproduce_pytorch_is_an_error_and_leaves_nothing(pruned, tmp_path, monkeypatch):
    import autoprune.export as export

    real = export._pt2_runner

    def off_by_a_little(tmp):
        run, runtime = real(tmp)
        return (lambda x: [y + 1e-2 for y in run(x)]), runtime

    monkeypatch.setattr(export, "_pt2_runner", off_by_a_little)
    with pytest.raises(ExportError, match=r"does not reproduce PyTorch: max abs diff 0\.01 .* was not written"):
        export_pruned(pruned, tmp_path / "model.pt2")
    assert list(tmp_path.iterdir()) == []


def test_a_missing_onnx_package_names_the_extra_before_any_work(pruned, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    with pytest.raises(DependencyNotInstalled, match=r'onnxruntime .* pip install "autoprune\[onnx\]"'):
        export_model(torch.nn.Linear(2, 2), torch.zeros(1, 2), tmp_path / "m.onnx")
    code, _, err = cli(capsys, "export", "--checkpoint", pruned, "--out", tmp_path / "m.onnx")
    assert code == 2 and 'pip install "autoprune[onnx]"' in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


# -- the command -------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_cli_writes_checks_and_never_silently_overwrites(pruned, tmp_path, capsys):
    out = tmp_path / "model.pt2"
    code, stdout, _ = cli(capsys, "export", "--checkpoint", pruned, "--format", "pt2", "--out", out, "--batch", 4)
    assert code == 0 and out.is_file()
    assert f"wrote {out}" in stdout and "MB; pt2, batch 4" in stdout and "max abs diff" in stdout
    assert "resnet20 pruned to" in stdout and "torch.export.load" in stdout
    before = out.read_bytes()
    code, _, err = cli(capsys, "export", "--checkpoint", pruned, "--out", out, "--dynamic-batch")
    assert code == 2 and "exists; pass --overwrite" in err and out.read_bytes() == before
    code, stdout, _ = cli(capsys, "export", "--checkpoint", pruned, "--out", out, "--dynamic-batch", "--overwrite")
    assert code == 0 and "dynamic batch" in stdout and out.read_bytes() != before and not leftovers(tmp_path)


@pytest.mark.slow
@needs_onnx
def test_cli_onnx_with_a_dynamic_batch(pruned, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    code, stdout, _ = cli(capsys, "export", "--checkpoint", pruned, "--out", out, "--dynamic-batch")
    assert code == 0 and "onnx, opset" in stdout and "dynamic batch" in stdout and "onnxruntime" in stdout
    x = torch.randn(7, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    assert_matches_pytorch(pruned, run_without_autoprune("onnx", out, x, tmp_path), x)


@pytest.mark.parametrize("argv,message", [
    (["--checkpoint", "{plain}", "--out", "{tmp}/m.pt2"], "is not a pruned autoprune checkpoint"),
    (["--checkpoint", "{tmp}/missing.pt", "--out", "{tmp}/m.pt2"], "does not exist"),
    (["--checkpoint", "{ck}", "--format", "onxx", "--out", "{tmp}/m.onnx"], "Did you mean 'onnx'?"),
    (["--checkpoint", "{ck}", "--out", "{tmp}/m.bin"], "Cannot tell the export format from 'm.bin'"),
    (["--checkpoint", "{ck}", "--out", "{tmp}/m.onnx", "--opset", "13"], "--opset must be at least 18"),
    (["--checkpoint", "{ck}", "--out", "{tmp}/m.pt2", "--opset", "18"], "--opset applies to ONNX only"),
    (["--checkpoint", "{ck}", "--out", "{tmp}/m.pt2", "--batch", "0"], "--batch must be at least 1"),
    (["--checkpoint", "{ck}", "--out", "{tmp}/m.pt2", "--rtol", "0"], "rtol must be positive"),
    (["--checkpoint", "{ck}", "--format", "pt2", "--out", "{tmp}"], "is a folder"),
    (["--checkpoint", "{ck}", "--out", "{tmp}/a-file/m.pt2"], "a-file is a file, not a folder"),
])
def test_bad_input_is_one_clear_error(pruned, tmp_path, capsys, argv, message):
    if "--opset" in argv and argv[argv.index("--out") + 1].endswith(".onnx") and ONNX_MISSING:
        pytest.skip(f"{', '.join(ONNX_MISSING)} not installed: the ONNX checks come after the dependency check")
    torch.save(create("resnet20").state_dict(), tmp_path / "plain.th")
    (tmp_path / "a-file").write_text("x")
    values = {"ck": pruned, "plain": tmp_path / "plain.th", "tmp": tmp_path}
    code, _, err = cli(capsys, "export", *[a.format(**values) for a in argv])
    assert code == 2 and message in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "plain.th"]


def test_library_errors_are_autoprune_errors(tmp_path):
    with pytest.raises(UnknownNameError, match="Did you mean 'pt2'"):
        export_model(torch.nn.Linear(2, 2), torch.zeros(1, 2), tmp_path / "m", "pt3")
    (tmp_path / "m.pt2").write_text("mine")
    with pytest.raises(OutputError, match="--overwrite"):
        export_model(torch.nn.Linear(2, 2), torch.zeros(1, 2), tmp_path / "m.pt2")
    assert (tmp_path / "m.pt2").read_text() == "mine"


# -- a read-only or full disk ---------------------------------------------------------------------------------


def test_a_read_only_out_fails_before_the_export(pruned, tmp_path, capsys, monkeypatch):
    import autoprune.export as export

    monkeypatch.setattr(export, "_write_pt2", lambda *a: pytest.fail("exported before checking --out"))
    with tmpfs(tmp_path / "ro", "ro,size=64k") as ro:
        code, _, err = cli(capsys, "export", "--checkpoint", pruned, "--out", ro / "m.pt2")
    assert code == 2 and f"Could not write {ro / 'm.pt2'}: it is on a read-only filesystem" in err


def test_a_full_disk_is_one_error_and_leaves_nothing(pruned, tmp_path, capsys):
    with tmpfs(tmp_path / "full", "size=64k") as full:  # the pruned resnet20 takes about 800 kB
        code, _, err = cli(capsys, "export", "--checkpoint", pruned, "--out", full / "m.pt2")
        assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
        assert "no space left" in err or "is the disk full" in err
        assert list(full.iterdir()) == []


def test_public_names_and_the_written_file_mode(tmp_path):
    import autoprune.export as export
    from autoprune._io import atomic_path

    assert export.__all__ and all(hasattr(export, name) for name in export.__all__)
    umask = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "m.pt2") as tmp:
            assert tmp.suffix == ".pt2" and tmp.parent == tmp_path  # torch.export.load reads the suffix
            tmp.write_bytes(b"x")
    finally:
        os.umask(umask)
    assert (tmp_path / "m.pt2").stat().st_mode & 0o777 == 0o644  # as open() would make it, not mkstemp's 0600
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt2"]


def test_a_users_pruned_model_exports_with_its_spec(tmp_path):
    from autoprune.models import ModelSpec, build

    spec = ModelSpec(f"{Path(__file__).with_name('model_zoo.py')}:SEBasicNet", input_size=(3, 16, 16))
    torch.manual_seed(0)
    policy, small = prune(build(spec).eval(), spec, 0.5)
    save_pruned(tmp_path / "model.pt", small, policy)
    result, _ = export_pruned(tmp_path / "model.pt", tmp_path / "m.pt2", model=spec, batch=2)
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(torch.export.load(str(tmp_path / "m.pt2")).module()(x), small(x))
    assert result.relative_diff <= 1e-4 and result.batch == 2


@needs_onnx
def test_a_model_with_two_heads_exports_both_outputs(tmp_path):
    """The deployed file returns what the model returns (class logits and boxes), not only the logits autoprune
    judges by."""
    import onnxruntime

    from autoprune.models import ModelSpec, build, every_output

    spec = ModelSpec(f"{Path(__file__).with_name('model_zoo.py')}:TwoHeadNet", input_size=(3, 16, 16))
    torch.manual_seed(0)
    policy, small = prune(randomise_norms(build(spec).eval()), spec, 0.5)
    save_pruned(tmp_path / "model.pt", small, policy)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad(), every_output(small):
        logits, boxes = small(x)
    assert logits.shape == (2, 10) and boxes.shape == (2, 4, 8, 8)

    export_pruned(tmp_path / "model.pt", tmp_path / "m.onnx", model=spec, batch=2)
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["output_0", "output_1"]
    for got, ref in zip(session.run(None, {"input": x.numpy()}), (logits, boxes)):
        np.testing.assert_allclose(got, ref.numpy(), rtol=1e-4, atol=1e-5)

    export_pruned(tmp_path / "model.pt", tmp_path / "m.pt2", model=spec, batch=2)
    with torch.no_grad():
        got = torch.export.load(str(tmp_path / "m.pt2")).module()(x)
    torch.testing.assert_close(tuple(got), (logits, boxes))


def test_an_output_that_is_not_tensors_is_a_clear_error(tmp_path):
    class Named(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, str]:
            return self.conv(x), "boxes"

    with pytest.raises(ExportError, match="return tensors.*returns a tuple holding Tensor, str"):
        export_model(Named(), torch.zeros(1, 3, 8, 8), tmp_path / "m.pt2")
    assert list(tmp_path.iterdir()) == []
