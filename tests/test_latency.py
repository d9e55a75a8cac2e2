"""The latency model (autoprune.latency) on a tiny CNN: a deterministic fake timer for the table's logic
(lookup, interpolation, calibration, cache keying and invalidation), one real timing per runtime."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from autoprune.errors import AutopruneError, DependencyNotInstalled, LatencyError, UnknownNameError
from autoprune.latency import (LatencyModel, LatencySettings, Measurement, Runner, build_latency_model,
                               measure_latency, time_interleaved)
from autoprune.latency import _runtimes
from autoprune.pruning import PrunableSpace

CONSTANT = 1e-4  # the fake runtime's cost of one call
PER_MAC = 1e-9


def _cbr(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class Tiny(nn.Module):
    """Stem (kept whole by the automatic space), three prunable conv units, a classifier."""

    def __init__(self, widths: tuple[int, ...] = (8, 16, 16, 24)) -> None:
        super().__init__()
        self.stem, self.b1 = _cbr(3, widths[0]), _cbr(widths[0], widths[1])
        self.b2, self.b3 = _cbr(widths[1], widths[2], 2), _cbr(widths[2], widths[3])
        self.fc = nn.Linear(widths[3], 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.b3(self.b2(self.b1(self.stem(x)))).mean((2, 3)))


def macs(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> float:
    """MACs of the convs and linear layers of one call (counted from their output shapes: FlopCounterMode's
    first use imports torch._dynamo, seconds)."""
    total = []

    def count(m: nn.Module, _args: tuple, out: torch.Tensor) -> None:
        per_output = m.in_features if isinstance(m, nn.Linear) else m.in_channels // m.groups * m.weight[0, 0].numel()
        total.append(out.numel() * per_output)
    hooks = [m.register_forward_hook(count) for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        module(*inputs)
    for h in hooks:
        h.remove()
    return float(sum(total))


def fake_timer(module: nn.Module, inputs: tuple[torch.Tensor, ...], settings: LatencySettings) -> Measurement:
    """A call costs a constant plus a time per MAC: the sum of units then predicts the whole exactly."""
    fake_timer.calls += 1
    return Measurement.exactly(CONSTANT + PER_MAC * macs(module, inputs))


fake_timer.calls = 0


def space_of(widths: tuple[int, ...] = (8, 16, 16, 24)) -> PrunableSpace:
    torch.manual_seed(0)
    return PrunableSpace(Tiny(widths).eval(), torch.zeros(1, 3, 8, 8))


@pytest.fixture(scope="module")
def space() -> PrunableSpace:
    return space_of()


def build(space: PrunableSpace, tmp_path, **settings) -> LatencyModel:
    settings.setdefault("threads", 1)
    return build_latency_model(space, LatencySettings(**settings), cache_dir=tmp_path, timer=fake_timer,
                               progress=False, grid=3)


def test_units_and_lookup_at_grid_points(space, tmp_path):
    model = build(space, tmp_path, batch=2)
    units = {t.unit.name: t.unit for t in model.tables}
    assert list(units) == ["stem", "b1", "b2", "b3", "fc"]
    assert [len(units[n].axes) for n in units] == [0, 1, 2, 2, 1]  # b2's conv: its input and output groups
    assert model.untimed == []
    # at a grid point, the table is the unit's measured value: b1 alone, group 0 at its lowest grid count
    b1 = next(t for t in model.tables if t.unit.name == "b1")
    low = b1.unit.grids[0][0]
    x = torch.zeros(2, 8, 8, 8)
    pruned = nn.Sequential(nn.Conv2d(8, low, 3, 1, 1, bias=False), nn.BatchNorm2d(low), nn.ReLU())
    assert b1.seconds[0] == pytest.approx(CONSTANT + PER_MAC * macs(pruned, (x,)))


def test_interpolation_between_grid_points_is_bilinear(space, tmp_path):
    model = build(space, tmp_path)
    b1 = next(t.unit for t in model.tables if t.unit.name == "b1")
    g = b1.grids[0]
    assert len(g) == 3 and g[1] - g[0] > 1  # there are counts between the grid points
    counts = space.counts(np.ones(3))
    between = counts.copy()
    between[0] = (g[0] + g[1]) // 2
    # MACs are linear in each count (bilinear in a conv's in x out): interpolation reproduces them exactly
    assert model.table(between) != model.table(counts)
    assert model(between) == pytest.approx(model.measure(between).fastest, rel=1e-9)


def test_prediction_equals_end_to_end_time(space, tmp_path):
    model = build(space, tmp_path, batch=3)
    assert model.base == pytest.approx(model.measure(space.counts(np.ones(3))).fastest)
    assert model.scale == pytest.approx(1.0)
    assert model.offset == pytest.approx(-4 * CONSTANT)  # five units called where the whole model is called once
    rng = np.random.default_rng(0)
    policies = [space.counts(rng.uniform(0.2, 1.0, 3)) for _ in range(10)]
    for counts, measured in zip(policies, model.measure_all(policies)):  # the pick's and uniform's timing, together
        assert model(counts) == pytest.approx(measured.fastest, rel=1e-9)
        assert measured == model.measure(counts)


def test_prediction_is_monotone_and_fast_to_query(space, tmp_path):
    model = build(space, tmp_path)
    counts = space.counts(np.full(3, 0.5))
    for j in range(3):
        more = counts.copy()
        more[j] += 1
        assert model(more) > model(counts)
    with pytest.raises(AutopruneError, match="Expected 3 kept counts"):
        model(counts[:2])


def test_cache_hit_and_keys(space, tmp_path):
    first = build(space, tmp_path)
    calls = fake_timer.calls
    again = build(space, tmp_path)
    assert again.from_cache and not first.from_cache and fake_timer.calls == calls
    assert again.path == first.path and again(space.counts(np.full(3, 0.4))) == first(space.counts(np.full(3, 0.4)))
    paths = {first.path}
    for other in ({"batch": 4}, {"threads": 2}, {"runtime": "onnxruntime"},
                  {"repeats": 60}):
        if other.get("runtime") == "onnxruntime":
            pytest.importorskip("onnxruntime")
        model = build(space, tmp_path, **other)
        assert not model.from_cache and model.path not in paths, other
        paths.add(model.path)
    stored = json.loads(first.path.read_text())["key"]
    assert stored["device_name"] and stored["runtime_version"].startswith("torch ") and stored["batch"] == 1


def test_structure_change_is_a_new_table(tmp_path):
    narrow, wide = build(space_of(), tmp_path), build(space_of((8, 16, 16, 32)), tmp_path)
    assert not wide.from_cache and wide.path != narrow.path
    assert wide.key["structure"] != narrow.key["structure"]


def test_foreign_and_corrupt_tables_are_rebuilt(space, tmp_path):
    model = build(space, tmp_path)
    entry = json.loads(model.path.read_text())
    entry["key"]["device_name"] = "Another CPU"
    model.path.write_text(json.dumps(entry))
    with pytest.warns(UserWarning, match=r"built for another setting \(device_name: 'Another CPU' there"):
        rebuilt = build(space, tmp_path)
    assert not rebuilt.from_cache and json.loads(model.path.read_text())["key"] == model.key
    for damage in ("{not json", json.dumps({"key": model.key, "units": "nonsense"})):
        model.path.write_text(damage)
        with pytest.warns(UserWarning, match="is corrupt .*rebuilding it"):
            assert not build(space, tmp_path).from_cache
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert build(space, tmp_path).from_cache


def test_bad_settings():
    with pytest.raises(UnknownNameError, match="Did you mean 'onnxruntime'"):
        LatencySettings(runtime="onnxrt")
    with pytest.raises(LatencyError, match="batch must be an integer of at least 1, but got 0"):
        LatencySettings(batch=0)
    with pytest.raises(LatencyError, match="threads must be at least 1"):
        LatencySettings(threads=0)
    with pytest.raises(LatencyError, match="float16 is for --latency-device cuda"):
        LatencySettings(dtype="float16")
    with pytest.raises(LatencyError, match="float32 models only"):
        LatencySettings(runtime="onnxruntime", dtype="bfloat16")
    with pytest.raises(LatencyError, match="repeats .3. must be at least rounds .25."):
        LatencySettings(repeats=3)


def test_bad_build_arguments(space, tmp_path):
    with pytest.raises(AutopruneError, match="grid must be an integer of at least 2, but got 1"):
        build_latency_model(space, LatencySettings(), cache_dir=tmp_path, timer=fake_timer, grid=1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error a machine without CUDA gives")
def test_cuda_without_cuda_is_a_clear_error(space, tmp_path):
    with pytest.raises(LatencyError, match="torch sees no CUDA device.*--latency-device cpu"):
        build(space, tmp_path, device="cuda")


def test_missing_onnxruntime_has_the_install_hint(monkeypatch, space, tmp_path):
    def absent(name: str):
        raise ImportError(f"No module named {name!r}")
    monkeypatch.setattr(_runtimes.importlib, "import_module", absent)
    with pytest.raises(DependencyNotInstalled, match=r'pip install -e "\.\[onnx\]"'):
        build(space, tmp_path, runtime="onnxruntime")


def test_measurement_summary():
    m = Measurement.of([1.0, 2.0, 3.0, 4.0, 100.0])
    assert (m.fastest, m.median, m.repeats) == (1.0, 3.0, 5) and m.fastest < m.p10 < m.median < m.p90 and m.spread == pytest.approx(m.p90 / m.p10 - 1)


def test_real_torch_timing(space, tmp_path):
    settings = LatencySettings(threads=1, warmup=2, repeats=6, rounds=2)
    before = torch.get_num_threads()
    model = build_latency_model(space, settings, cache_dir=tmp_path, progress=False, grid=2, calibration=2)
    assert torch.get_num_threads() == before  # the caller's thread count is restored
    assert model.base_measurement.repeats == 6 and 0 < model.base == model.base_measurement.fastest <= model.base_measurement.p10
    counts = space.counts(np.full(3, 0.5))
    assert model(counts) > 0 and model.measure(counts).fastest > 0
    assert model.key["threads"] == 1 and model.key["timer"] == "runtime"


def test_real_onnxruntime_timing(space):
    pytest.importorskip("onnxruntime", reason="onnxruntime is the optional extra [onnx]")
    settings = LatencySettings(runtime="onnxruntime", threads=1, batch=2, warmup=1, repeats=4, rounds=2)
    m = measure_latency(space.model, torch.zeros(1, 3, 8, 8), settings)
    assert m.repeats == 4 and 0 < m.fastest <= m.p10 <= m.median <= m.p90


def test_time_interleaved_takes_turns():
    order: list[str] = []
    runners = [Runner(lambda: order.append("a")), Runner(lambda: order.append("b"))]
    ms = time_interleaved(runners, LatencySettings(warmup=0, repeats=4, rounds=2, threads=1))
    assert [m.repeats for m in ms] == [4, 4]
    assert sorted(order[:4]) == sorted(order[4:]) == ["a", "a", "b", "b"]  # each round times both, twice each


def test_a_calibration_too_noisy_for_a_line_falls_back_to_a_scale_that_stays_positive():
    from autoprune.latency._model import _fit

    assert _fit(np.array([1.0, 2.0, 3.0]), np.array([1.5, 2.5, 3.5])) == pytest.approx((1.0, 0.5))
    # noise larger than the policies' spread: the line would be negative at the narrowest policy
    with pytest.warns(UserWarning, match="using a scale alone"):
        scale, offset = _fit(np.array([1.0, 2.0, 3.0]), np.array([0.01, 0.02, 10.0]))
    assert offset == 0 and scale > 0
    with pytest.warns(UserWarning, match="using a scale alone"):  # one width only
        assert _fit(np.array([2.0, 2.0]), np.array([3.0, 5.0])) == pytest.approx((2.0, 0.0))
