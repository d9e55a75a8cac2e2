"""Tests of autoprune.data: CIFAR pickles (and their safety), image folders, cache, splits, loader."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import autoprune.data as data
from autoprune.data import DeviceLoader, Splits, load_cifar_pickle, load_dataset, make_splits
from autoprune.data import _cifar_pickle, _dataset, _image_folder
from autoprune.errors import DataError, UnknownNameError

SHARED_CIFAR10 = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


# --------------------------------------------------------------------------- fake CIFAR pickles


class _Py2Pickler(pickle._Pickler):
    """Writes str and bytes as Python 2 byte strings, as the official CIFAR files (cPickle) do.

    Loaded with ``encoding="bytes"`` they come back as bytes, keys included,
    exactly like the real files; the numpy arrays go through ``_reconstruct``.
    """

    dispatch = dict(pickle._Pickler.dispatch)

    def save_bytes(self, obj: bytes) -> None:
        n = len(obj)
        header = pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)
        self.write(header + obj)

    def save_str(self, obj: str) -> None:
        self.save_bytes(obj.encode("latin-1"))

    dispatch[bytes] = save_bytes
    dispatch[str] = save_str


def _dump_py2(path: Path, obj: dict, numpy_module: str = "numpy.core.multiarray") -> None:
    f = io.BytesIO()
    _Py2Pickler(f, protocol=2).dump(obj)
    # The official files were written by numpy 1 (numpy.core); numpy 2 writes numpy._core.
    path.write_bytes(f.getvalue().replace(b"numpy._core.multiarray\n", numpy_module.encode() + b"\n"))


def _batch(rng: np.random.Generator, n: int, num_classes: int, labels_key: str) -> dict:
    return {
        "batch_label": "fake batch",
        "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        labels_key: [int(v) for v in rng.integers(0, num_classes, n)],
        "filenames": [f"img_{i}.png" for i in range(n)],
    }


CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_cifar10(folder: Path, n: int = 4, numpy_module: str = "numpy.core.multiarray") -> dict:
    """Fake ``cifar-10-batches-py`` with ``n`` images per batch; returns the batches written."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    batches = {f"data_batch_{i}": _batch(rng, n, 10, "labels") for i in range(1, 6)}
    batches["test_batch"] = _batch(rng, n, 10, "labels")
    for fname, batch in batches.items():
        _dump_py2(folder / fname, batch, numpy_module)
    _dump_py2(folder / "batches.meta", {"label_names": CIFAR10_CLASSES, "num_cases_per_batch": n, "num_vis": 3072})
    return batches


def write_cifar100(folder: Path, n: int = 6) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    batches = {}
    for split in ("train", "test"):
        batch = _batch(rng, n, 100, "fine_labels")
        batch["coarse_labels"] = [v // 5 for v in batch["fine_labels"]]
        batches[split] = batch
        _dump_py2(folder / split, batch)
    names = [f"class_{i:03d}" for i in range(100)]
    _dump_py2(folder / "meta", {"fine_label_names": names, "coarse_label_names": names[:20]})
    return batches


def _nchw(rows: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rows.reshape(-1, 3, 32, 32))


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


# --------------------------------------------------------------------------- CIFAR pickles


@pytest.mark.parametrize("numpy_module", ["numpy.core.multiarray", "numpy._core.multiarray"])
def test_cifar10_pickles_load_as_nchw(tmp_path: Path, cache_dir: Path, numpy_module: str) -> None:
    batches = write_cifar10(tmp_path / "cifar-10-batches-py", numpy_module=numpy_module)
    ds = load_dataset(tmp_path, cache_dir=cache_dir)
    assert (ds.name, ds.classes, ds.num_classes) == ("cifar10", CIFAR10_CLASSES, 10)
    assert ds.source == str(tmp_path / "cifar-10-batches-py")
    train_rows = np.concatenate([batches[f"data_batch_{i}"]["data"] for i in range(1, 6)])
    train_labels = sum((batches[f"data_batch_{i}"]["labels"] for i in range(1, 6)), [])
    assert ds.train_images.shape == (20, 3, 32, 32) and ds.train_images.dtype == torch.uint8
    assert ds.train_images.is_contiguous() and ds.train_images.device.type == "cpu"
    assert torch.equal(ds.train_images, _nchw(train_rows))
    assert ds.train_labels.dtype == torch.int64 and ds.train_labels.tolist() == train_labels
    assert torch.equal(ds.test_images, _nchw(batches["test_batch"]["data"]))
    assert ds.test_labels.tolist() == batches["test_batch"]["labels"]
    # The folder itself works as data_dir too.
    same = load_dataset(tmp_path / "cifar-10-batches-py", cache_dir=cache_dir)
    assert torch.equal(same.train_images, ds.train_images)


def test_load_cifar_pickle_returns_nhwc(tmp_path: Path) -> None:
    batches = write_cifar10(tmp_path)
    arrays = load_cifar_pickle(tmp_path, "cifar10")
    rows = batches["test_batch"]["data"]
    assert arrays.test_images.shape == (4, 32, 32, 3) and arrays.test_images.dtype == np.uint8
    # row layout: 1024 red, 1024 green, 1024 blue values, each row-major
    assert arrays.test_images[1, 5, 7, 2] == rows[1, 2 * 1024 + 5 * 32 + 7]
    assert arrays.train_labels.dtype == np.int64


def test_cifar100_pickles(tmp_path: Path, cache_dir: Path) -> None:
    batches = write_cifar100(tmp_path / "cifar-100-python")
    ds = load_dataset(tmp_path, "cifar100", cache_dir=cache_dir)
    assert ds.name == "cifar100" and ds.num_classes == 100 and ds.classes[7] == "class_007"
    assert torch.equal(ds.train_images, _nchw(batches["train"]["data"]))
    assert ds.test_labels.tolist() == batches["test"]["fine_labels"]


def test_other_cifar_than_asked_is_named(tmp_path: Path, cache_dir: Path) -> None:
    write_cifar100(tmp_path / "cifar-100-python")
    with pytest.raises(DataError, match=r"holds the CIFAR-100 pickles.*Pass name='cifar100'"):
        load_dataset(tmp_path, "cifar10", cache_dir=cache_dir)


def test_unknown_dataset_name_suggests(tmp_path: Path) -> None:
    with pytest.raises(UnknownNameError, match="Did you mean 'cifar10'"):
        load_dataset(tmp_path, "cifar-10")


class _RunsCode:
    def __init__(self, func, arg) -> None:
        self.func, self.arg = func, arg

    def __reduce__(self):
        return self.func, (self.arg,)


@pytest.mark.parametrize("kind", ["os.system", "builtins.eval"])
def test_restricted_unpickler_refuses_code(tmp_path: Path, cache_dir: Path, kind: str) -> None:
    marker = tmp_path / "pwned"
    if kind == "os.system":
        payload = _RunsCode(os.system, f"touch {marker}")
        refused = os.system.__module__ + ".system"  # posix.system on Linux
    else:
        payload = _RunsCode(eval, f"__import__('pathlib').Path({str(marker)!r}).touch()")
        refused = "builtins.eval"
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder)
    (folder / "data_batch_3").write_bytes(pickle.dumps({"data": payload}, protocol=4))

    with pytest.raises(DataError, match=rf"data_batch_3: it references the global {refused}\b"):
        load_dataset(tmp_path, cache_dir=cache_dir)
    assert not marker.exists()

    # The payload is live: a plain pickle.load would have run it.
    pickle.loads((folder / "data_batch_3").read_bytes())
    assert marker.exists()


def test_restricted_unpickler_is_usable_directly() -> None:
    arr = np.arange(6, dtype=np.uint8)
    obj = data.RestrictedUnpickler(io.BytesIO(pickle.dumps({"a": arr, "b": [1, 2]}, protocol=4))).load()
    assert np.array_equal(obj["a"], arr) and obj["b"] == [1, 2]
    with pytest.raises(DataError, match="collections.OrderedDict"):
        data.RestrictedUnpickler(io.BytesIO(pickle.dumps(__import__("collections").OrderedDict()))).load()


def test_truncated_pickle_is_reported(tmp_path: Path, cache_dir: Path) -> None:
    write_cifar10(tmp_path)
    blob = (tmp_path / "test_batch").read_bytes()
    (tmp_path / "test_batch").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match=r"Cannot read the CIFAR pickle .*test_batch.*corrupt or truncated"):
        load_dataset(tmp_path, cache_dir=cache_dir)


def test_incomplete_pickle_folder_lists_missing_files(tmp_path: Path, cache_dir: Path) -> None:
    write_cifar10(tmp_path)
    (tmp_path / "data_batch_4").unlink()
    (tmp_path / "batches.meta").unlink()
    with pytest.raises(DataError, match=r"lacks the cifar10 files data_batch_4, batches.meta"):
        load_dataset(tmp_path, cache_dir=cache_dir)


def test_wrong_pickle_content_is_reported(tmp_path: Path, cache_dir: Path) -> None:
    write_cifar10(tmp_path)
    _dump_py2(tmp_path / "data_batch_2", {"data": np.zeros((4, 100), np.uint8), "labels": [0] * 4})
    with pytest.raises(DataError, match=r"data_batch_2: 'data' must be a uint8 array of shape \[N, 3072\]"):
        load_dataset(tmp_path, cache_dir=cache_dir)


# --------------------------------------------------------------------------- download


def _make_archive(tmp_path: Path) -> tuple[Path, str, dict]:
    src = tmp_path / "src"
    batches = write_cifar10(src / "cifar-10-batches-py")
    archive = src / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return archive, hashlib.md5(archive.read_bytes()).hexdigest(), batches


def _patch_archive(monkeypatch: pytest.MonkeyPatch, url: str, md5: str) -> None:
    entry = dataclasses.replace(_cifar_pickle._ARCHIVES["cifar10"], url=url, md5=md5)
    monkeypatch.setitem(_cifar_pickle._ARCHIVES, "cifar10", entry)


def test_download_checks_md5_and_extracts(tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive, md5, batches = _make_archive(tmp_path)
    dest = tmp_path / "datasets"

    _patch_archive(monkeypatch, archive.as_uri(), "0" * 32)
    with pytest.raises(DataError, match=rf"has md5 {md5}, but the official archive has md5 0{{32}}; it was not saved"):
        load_dataset(dest, download=True, cache_dir=cache_dir)
    assert not (dest / archive.name).exists() and not (dest / "cifar-10-batches-py").exists()
    assert not [p for p in dest.iterdir() if p.name.startswith(".")]  # no temporary left behind

    _patch_archive(monkeypatch, archive.as_uri(), md5)
    ds = load_dataset(dest, download=True, cache_dir=cache_dir)
    assert torch.equal(ds.test_images, _nchw(batches["test_batch"]["data"]))
    assert (dest / archive.name).is_file() and (dest / "cifar-10-batches-py" / "test_batch").is_file()


def test_archive_placed_by_hand_is_extracted_offline(tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive, md5, _ = _make_archive(tmp_path)
    _patch_archive(monkeypatch, "http://offline.invalid/cifar-10-python.tar.gz", md5)
    dest = tmp_path / "datasets"
    dest.mkdir()
    (dest / archive.name).write_bytes(archive.read_bytes())
    assert load_dataset(dest, cache_dir=cache_dir).num_classes == 10

    (dest / archive.name).write_bytes(archive.read_bytes()[:-10])
    (dest / "cifar-10-batches-py").rename(tmp_path / "moved")
    with pytest.raises(DataError, match=r"incomplete or not the official file. Delete it"):
        load_dataset(dest, cache_dir=cache_dir)


def test_failed_download_says_where_to_put_files(tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _patch_archive(monkeypatch, (tmp_path / "nowhere" / "cifar-10-python.tar.gz").as_uri(), "0" * 32)
    dest = tmp_path / "datasets"
    with pytest.raises(DataError, match=rf"Could not download .*put it, or the cifar-10-batches-py/ folder it contains, in {dest}"):
        load_dataset(dest, download=True, cache_dir=cache_dir)


def test_unsafe_archive_member_is_refused(tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    _patch_archive(monkeypatch, archive.as_uri(), hashlib.md5(archive.read_bytes()).hexdigest())
    dest = tmp_path / "deep" / "datasets"
    with pytest.raises(DataError, match="Cannot extract"):
        load_dataset(dest, download=True, cache_dir=cache_dir)
    assert not (tmp_path / "deep" / "escaped.txt").exists()


# --------------------------------------------------------------------------- image folders


def _pixel(label: int, index: int) -> tuple[int, int, int]:
    return (label * 40, index * 7, 255 - index)


def write_image_folder(root: Path, size: tuple[int, int] = (6, 5), classes=("ant", "bee", "cat")) -> dict:
    """Per split, file i (global index, numbered 0..n) goes to class i % 3; returns expected labels."""
    expected = {}
    for split, n in (("train", 12), ("test", 11)):
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
        labels = []
        for i in range(n):
            label = i % len(classes)
            Image.new("RGB", size, _pixel(label, i)).save(root / split / classes[label] / f"{i}.png")
            labels.append(label)
        expected[split] = labels
    (root / "train" / "ant" / "notes.txt").write_text("not an image")
    return expected


def test_image_folder_loads_in_file_name_order(tmp_path: Path, cache_dir: Path) -> None:
    root = tmp_path / "shapes"
    expected = write_image_folder(root)
    # A greyscale image is converted to RGB.
    Image.new("L", (6, 5), 99).save(root / "test" / "bee" / "10.png")
    expected["test"][10] = 1
    (root / "test" / "bee" / "10.png").rename(root / "test" / "bee" / "11.png")
    (root / "test" / "bee" / "11.png").rename(root / "test" / "bee" / "10.png")

    ds = load_dataset(root, cache_dir=cache_dir)
    assert (ds.name, ds.classes, ds.source) == ("shapes", ["ant", "bee", "cat"], str(root))
    assert ds.train_images.shape == (12, 3, 5, 6) and ds.test_images.shape == (11, 3, 5, 6)
    # 10.png sorts after 9.png (numbers compare as numbers), so the order is the index order.
    assert ds.train_labels.tolist() == expected["train"] and ds.test_labels.tolist() == expected["test"]
    for i in range(12):
        assert ds.train_images[i, :, 2, 3].tolist() == list(_pixel(expected["train"][i], i))
    assert ds.test_images[10].unique().tolist() == [99]


def test_image_folder_parallel_decode_matches_serial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "shapes"
    write_image_folder(root)
    index = _image_folder.scan_image_folder(root)
    serial = _image_folder.decode_image_folder(index)
    monkeypatch.setattr(_image_folder, "_CHUNK", 2)
    monkeypatch.setattr(_image_folder.os, "cpu_count", lambda: 2)
    parallel = _image_folder.decode_image_folder(index)
    assert np.array_equal(serial.train_images, parallel.train_images)
    assert np.array_equal(serial.test_images, parallel.test_images)
    # An error inside a worker reaches the caller as the same DataError.
    Image.new("RGB", (7, 5)).save(root / "test" / "cat" / "5.png")
    with pytest.raises(DataError, match=r"5\.png is 7x5 but .* is 6x5"):
        _image_folder.decode_image_folder(_image_folder.scan_image_folder(root))


def test_image_folder_mismatched_classes(tmp_path: Path, cache_dir: Path) -> None:
    write_image_folder(tmp_path)
    (tmp_path / "test" / "cat").rename(tmp_path / "test" / "cow")
    with pytest.raises(DataError, match=r"only in train: \['cat'\]; only in test: \['cow'\]"):
        load_dataset(tmp_path, cache_dir=cache_dir)


def test_image_folder_different_sizes_names_the_file(tmp_path: Path, cache_dir: Path) -> None:
    write_image_folder(tmp_path)
    odd = tmp_path / "test" / "bee" / "4.png"
    Image.new("RGB", (8, 8)).save(odd)
    # Mixed sizes are streamed now (issue 14); the uint8 cache, when forced, still names the odd file.
    with pytest.raises(DataError, match=rf"{odd} is 8x8 but .*0\.png is 6x5: all images .* same size"):
        load_dataset(tmp_path, cache_dir=cache_dir, loader="memory")


def test_image_folder_unreadable_image_names_the_file(tmp_path: Path, cache_dir: Path) -> None:
    write_image_folder(tmp_path)
    bad = tmp_path / "train" / "cat" / "2.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DataError, match=rf"Cannot read the image {bad}"):
        load_dataset(tmp_path, cache_dir=cache_dir)


def test_image_folder_missing_split_and_empty_class(tmp_path: Path, cache_dir: Path) -> None:
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match=r"test is missing: an image-folder dataset needs both"):
        load_dataset(tmp_path, cache_dir=cache_dir)
    (tmp_path / "test" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match=r"train/a holds no images"):
        load_dataset(tmp_path, cache_dir=cache_dir)


@pytest.mark.parametrize("state", ["missing", "empty", "unknown", "file"])
def test_bad_data_dir_lists_expected_layouts(tmp_path: Path, cache_dir: Path, state: str) -> None:
    root = tmp_path / "data"
    if state == "empty":
        root.mkdir()
    elif state == "unknown":
        root.mkdir()
        (root / "images").mkdir()
        (root / "labels.csv").write_text("x")
    elif state == "file":
        root.write_text("x")
    message = {
        "missing": "does not exist",
        "empty": "is empty",
        "unknown": r"holds no known dataset layout \(found: images/, labels.csv\)",
        "file": "is a file, not a directory",
    }[state]
    with pytest.raises(DataError, match=message) as info:
        load_dataset(root, cache_dir=cache_dir)
    if state != "file":
        assert "cifar-10-batches-py/" in str(info.value) and "train/<class>/<image>" in str(info.value)
        assert "download=True" in str(info.value)


def test_default_data_dir_is_used_for_none(tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(DataError, match=r"No data_dir was given and the default .*autoprune/datasets does not exist"):
        load_dataset(None, cache_dir=cache_dir)


# --------------------------------------------------------------------------- cache


def test_cache_hit_returns_identical_tensors_without_decoding(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "shapes"
    write_image_folder(root)
    first = load_dataset(root, cache_dir=cache_dir)
    (cached,) = cache_dir.glob("shapes-*.pt")

    def no_decoding(index):
        raise AssertionError("decoded despite a valid cache")

    monkeypatch.setattr(_dataset, "decode_image_folder", no_decoding)
    second = load_dataset(root, cache_dir=cache_dir)
    for field in ("train_images", "train_labels", "test_images", "test_labels"):
        assert torch.equal(getattr(first, field), getattr(second, field))
    assert second.classes == first.classes

    # Editing a source file changes the key, so the stale cache is not used.
    os.utime(root / "test" / "ant" / "0.png", ns=(1, 1))
    with pytest.raises(AssertionError, match="decoded despite"):
        load_dataset(root, cache_dir=cache_dir)
    assert cached.exists()


def test_cache_dir_defaults_to_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_cifar10(tmp_path / "d")
    monkeypatch.setenv("AUTOPRUNE_CACHE", str(tmp_path / "envcache"))
    load_dataset(tmp_path / "d")
    assert len(list((tmp_path / "envcache" / "data").glob("cifar10-*.pt"))) == 1


@pytest.mark.parametrize("garbage", [b"", b"not a torch file", "valid-but-wrong"])
def test_corrupt_cache_is_deleted_and_rebuilt(tmp_path: Path, cache_dir: Path, garbage) -> None:
    write_cifar10(tmp_path / "d")
    good = load_dataset(tmp_path / "d", cache_dir=cache_dir)
    (cached,) = cache_dir.glob("cifar10-*.pt")
    if garbage == "valid-but-wrong":
        torch.save({"format": 1, "classes": ["x"]}, cached)
    else:
        cached.write_bytes(garbage)
    with pytest.warns(UserWarning, match="Deleting the corrupt data cache"):
        rebuilt = load_dataset(tmp_path / "d", cache_dir=cache_dir)
    assert torch.equal(rebuilt.train_images, good.train_images)
    assert torch.load(cached, weights_only=True)["classes"] == CIFAR10_CLASSES


# --------------------------------------------------------------------------- Dataset and splits


def test_dataset_validates_and_has_a_short_repr() -> None:
    images = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    labels = torch.tensor([0, 1, 0, 1])
    ds = data.Dataset("toy", ["a", "b"], images, labels, images, labels, source="memory")
    assert repr(ds) == "Dataset(name='toy', classes=2, train=4, test=4, image=3x8x8, source='memory')"
    with pytest.raises(DataError, match=r"train_images must be a uint8 \[N, C, H, W\] tensor"):
        data.Dataset("toy", ["a", "b"], images.float(), labels, images, labels, source="memory")
    with pytest.raises(DataError, match=r"test_labels must lie in \[0, 2\)"):
        data.Dataset("toy", ["a", "b"], images, labels, images, labels + 1, source="memory")


def test_splits_disjoint_covering_sorted_deterministic() -> None:
    s = make_splits(1000, holdout=100, seed=3)
    assert isinstance(s, Splits)
    assert s.train.dtype == s.holdout.dtype == torch.int64
    assert len(s.holdout) == 100 and len(s.train) == 900
    assert torch.equal(torch.cat([s.train, s.holdout]).sort().values, torch.arange(1000))
    assert torch.equal(s.train, s.train.sort().values) and torch.equal(s.holdout, s.holdout.sort().values)
    again = make_splits(1000, holdout=100, seed=3)
    assert torch.equal(again.train, s.train) and torch.equal(again.holdout, s.holdout)
    assert not torch.equal(make_splits(1000, holdout=100, seed=4).holdout, s.holdout)
    assert len(make_splits(10, holdout=0).train) == 10


def test_splits_ignore_the_global_rng() -> None:
    torch.manual_seed(123)
    a = make_splits(50, holdout=5)
    torch.manual_seed(456)
    b = make_splits(50, holdout=5)
    assert torch.equal(a.holdout, b.holdout)


@pytest.mark.parametrize("num_train, holdout", [(100, 100), (100, -1), (100, 500), (0, 0)])
def test_splits_reject_bad_holdout(num_train: int, holdout: int) -> None:
    with pytest.raises(DataError, match=r"must (lie in \[0, num_train\)|be at least 1)"):
        make_splits(num_train, holdout=holdout)


# --------------------------------------------------------------------------- DeviceLoader


def _toy(n: int = 10, size: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    return images, torch.arange(n)


MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


@pytest.mark.parametrize("device", DEVICES)
def test_loader_shapes_and_normalisation(device: str) -> None:
    images, labels = _toy()
    loader = DeviceLoader(images, labels, batch_size=4, mean=MEAN, std=STD, device=device)
    batches = list(loader)
    assert len(loader) == len(batches) == 3 and loader.num_samples == 10
    assert [len(x) for x, _ in batches] == [4, 4, 2]
    x, y = batches[0]
    assert x.dtype == torch.float32 and x.shape == (4, 3, 6, 6) and x.device.type == device
    assert y.dtype == torch.int64 and y.device.type == device
    manual = (images[:4].float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    torch.testing.assert_close(x.cpu(), manual, rtol=1e-6, atol=1e-6)
    assert torch.equal(torch.cat([y for _, y in batches]).cpu(), labels)
    assert len(DeviceLoader(images, labels, batch_size=4, mean=MEAN, std=STD, drop_last=True)) == 2


def test_loader_limit_and_channels_last() -> None:
    images, labels = _toy()
    loader = DeviceLoader(images, labels, batch_size=3, mean=MEAN, std=STD, limit=7, channels_last=True)
    assert loader.num_samples == 7 and len(loader) == 3
    x, _ = next(iter(loader))
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert DeviceLoader(images, labels, batch_size=3, mean=MEAN, std=STD, limit=50).num_samples == 10


@pytest.mark.parametrize("device", DEVICES)
def test_loader_shuffle_covers_each_sample_once_and_is_seeded(device: str) -> None:
    images, labels = _toy(23)
    make = lambda seed: DeviceLoader(images, labels, batch_size=5, mean=MEAN, std=STD, device=device, shuffle=True, seed=seed)
    loader = make(0)
    epochs = [torch.cat([y for _, y in loader]).cpu() for _ in range(2)]
    for order in epochs:
        assert torch.equal(order.sort().values, labels)
    assert not torch.equal(epochs[0], epochs[1])  # reshuffled every epoch
    assert torch.equal(torch.cat([y for _, y in make(0)]).cpu(), epochs[0])  # same seed, same order
    assert not torch.equal(torch.cat([y for _, y in make(1)]).cpu(), epochs[0])


def test_loader_resumes_identically() -> None:
    images, labels = _toy(20)
    kwargs = dict(batch_size=6, mean=MEAN, std=STD, shuffle=True, augment=True, seed=7)
    a = DeviceLoader(images, labels, **kwargs)
    for _ in range(2):
        list(a)
    state = a.state_dict()
    assert state == {"epoch": 2, "seed": 7}
    b = DeviceLoader(images, labels, **{**kwargs, "seed": 0})
    b.load_state_dict(state)
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    with pytest.raises(ValueError, match=r"state\['epoch'\] must be an integer"):
        b.load_state_dict({"seed": 0})


def _reference_augment(images: torch.Tensor, order, offsets, flips) -> torch.Tensor:
    """Per-sample crop-and-flip, the slow obvious way."""
    h, w = images.shape[2:]
    out = []
    for k in range(len(images)):
        padded = F.pad(images[order[k]], (4, 4, 4, 4))
        dy, dx = offsets[k].tolist()
        crop = padded[:, dy : dy + h, dx : dx + w]
        out.append(crop.flip(-1) if flips[k] else crop)
    return torch.stack(out)


@pytest.mark.parametrize("device", DEVICES)
def test_augmentation_matches_per_sample_reference(device: str) -> None:
    images, labels = _toy(40, size=8)
    images.clamp_(min=1)  # so that zeros can only come from the padding
    loader = DeviceLoader(
        images, labels, batch_size=16, mean=(0, 0, 0), std=(1, 1, 1), device=device, shuffle=True, augment=True, seed=5
    )
    for epoch in range(2):
        order, offsets, flips = loader.epoch_draws(epoch)
        assert 0 <= offsets.min() and offsets.max() <= 8 and flips.any() and not flips.all()
        got = torch.cat([x for x, _ in loader]).cpu()
        expected = _reference_augment(images, order, offsets, flips)
        assert torch.equal(got, expected.float() / 255)
    # Some crops really are shifted: zeros from the padding appear.
    assert (got == 0).any() and not (images == 0).any()


def test_loader_validates_arguments() -> None:
    images, labels = _toy()
    ok = dict(batch_size=2, mean=MEAN, std=STD)
    with pytest.raises(ValueError, match=r"batch_size must be an integer of at least 1, but got batch_size=0"):
        DeviceLoader(images, labels, **{**ok, "batch_size": 0})
    with pytest.raises(ValueError, match=r"limit must be None or an integer of at least 1, but got limit=0"):
        DeviceLoader(images, labels, **ok, limit=0)
    with pytest.raises(DataError, match=r"images must be a uint8 tensor of shape \[N, C, H, W\], but got torch.float32"):
        DeviceLoader(images.float(), labels, **ok)
    with pytest.raises(DataError, match=r"same length, but got 10 images and 9 labels"):
        DeviceLoader(images, labels[:9], **ok)
    with pytest.raises(ValueError, match=r"mean must have one value per channel \(3\)"):
        DeviceLoader(images, labels, **{**ok, "mean": (0.5,)})
    with pytest.raises(ValueError, match=r"std must be positive"):
        DeviceLoader(images, labels, **{**ok, "std": (1, 0, 1)})


def test_public_api() -> None:
    assert set(data.__all__) == {
        "Dataset", "DeviceLoader", "RestrictedUnpickler", "Splits", "load_cifar_pickle", "load_dataset", "make_splits",
        "StreamLoader", "Transforms", "make_loader", "register_dataset",  # issue 14
    }
    for name in data.__all__:
        assert getattr(data, name).__doc__


# --------------------------------------------------------------------------- the real data


@pytest.mark.slow
def test_shared_cifar10_image_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    if not SHARED_CIFAR10.is_dir():
        pytest.skip(f"the shared CIFAR-10 image folder is not on this machine ({SHARED_CIFAR10})")
    load_dataset(SHARED_CIFAR10)  # the first call decodes 60,000 images (about 30 s); then cached

    def no_decoding(*args: object) -> None:
        raise AssertionError("the second load decoded images instead of reading the cache")

    monkeypatch.setattr(_image_folder, "_decode_all", no_decoding)
    ds = load_dataset(SHARED_CIFAR10)
    assert ds.name == "cifar10" and ds.classes == CIFAR10_CLASSES
    assert ds.train_images.shape == (50000, 3, 32, 32) and ds.test_images.shape == (10000, 3, 32, 32)
    assert ds.test_labels[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    assert torch.bincount(ds.train_labels).tolist() == [5000] * 10
    mean = ds.test_images.float().mean(dim=(0, 2, 3)) / 255
    # The PNGs are exact: the published test-set mean, and within 0.01 of the training-set one.
    torch.testing.assert_close(mean, torch.tensor([0.4942, 0.4851, 0.4504]), rtol=0, atol=1e-3)
    torch.testing.assert_close(mean, torch.tensor([0.4914, 0.4822, 0.4465]), rtol=0, atol=0.01)
