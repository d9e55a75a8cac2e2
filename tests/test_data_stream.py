"""Tests of issue 14: image folders of any size streamed, the field's transforms, loader choice, user Datasets."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from autoprune.cli import main
from autoprune.data import (
    Dataset,
    DeviceLoader,
    StreamLoader,
    Transforms,
    _image_folder,
    load_dataset,
    make_loader,
    register_dataset,
)
from autoprune.data._sources import TensorImages
from autoprune.data._survey import parse_bytes
from autoprune.errors import AutopruneError, DataError

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def _save(path: Path, size: tuple[int, int], label: int, i: int, mode: str = "RGB") -> None:
    rng = np.random.default_rng(i * 31 + label)
    rgb = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    image = {"RGB": rgb, "L": rgb.convert("L"), "P": rgb.convert("P"), "CMYK": rgb.convert("CMYK"),
             "RGBA": rgb.convert("RGBA")}[mode]
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def mixed_folder(root: Path, test_dir: str = "val", per_class: int = 4, classes=("ant", "bee", "cat")) -> Path:
    """Sizes 12-40 px and five formats/modes: JPEG (RGB, L, CMYK), PNG (palette, RGBA)."""
    formats = [("jpg", "RGB"), ("jpg", "L"), ("png", "P"), ("jpg", "CMYK"), ("png", "RGBA")]
    k = 0
    for split, n in (("train", per_class), (test_dir, 2)):
        for c, cls in enumerate(classes):
            for i in range(n):
                ext, mode = formats[k % len(formats)]
                size = (12 + (7 * k) % 29, 14 + (11 * k) % 27)
                _save(root / split / cls / f"{i}.{ext}", size, c, k, mode)
                k += 1
    return root


def uniform_folder(root: Path, size: int = 8, per_class: int = 4) -> Path:
    for split, n in (("train", per_class), ("test", 2)):
        for c, cls in enumerate(("a", "b")):
            for i in range(n):
                _save(root / split / cls / f"{i}.png", (size, size), c, i + 10 * c)
    return root


# --------------------------------------------------------------------------- folders of any size


def test_mixed_sizes_and_formats_are_streamed_from_val(tmp_path: Path, cache_dir: Path) -> None:
    root = mixed_folder(tmp_path / "photos")
    ds = load_dataset(root, cache_dir=cache_dir)
    assert not ds.in_memory and ds.image_size is None
    assert "differ in size" in ds.why and ds.extra["test_dir"] == "val"
    assert ds.classes == ["ant", "bee", "cat"] and len(ds.train_labels) == 12 and len(ds.test_labels) == 6
    assert repr(ds).endswith("image=mixed sizes, streamed, source='" + str(root) + "')")
    loader = make_loader(ds, "test", batch_size=4, mean=MEAN, std=STD, input_size=16, workers=0)
    assert isinstance(loader, StreamLoader)
    batches = list(loader)
    assert [tuple(x.shape) for x, _ in batches] == [(4, 3, 16, 16), (2, 3, 16, 16)]
    assert torch.cat([y for _, y in batches]).tolist() == ds.test_labels.tolist()
    # every mode became RGB: the CMYK and palette files decode to 3 channels like the rest
    assert {ds.train_images.read(i).mode for i in range(12)} == {"RGB"}


def test_loader_choice_follows_one_size_and_the_cache_limit(tmp_path: Path, cache_dir: Path) -> None:
    root = uniform_folder(tmp_path / "u")
    ds = load_dataset(root, cache_dir=cache_dir)
    assert ds.in_memory and "every image is 8x8 and the data fits" in ds.why
    assert isinstance(make_loader(ds, "train", batch_size=4, mean=MEAN, std=STD, input_size=8), DeviceLoader)
    small = load_dataset(root, cache_dir=tmp_path / "c2", cache_limit="100")  # 12 x 8 x 8 x 3 bytes do not fit
    assert not small.in_memory and "does not fit" in small.why and small.image_size == (8, 8)
    loader = make_loader(small, "train", batch_size=4, mean=MEAN, std=STD, input_size=8, workers=0)
    assert isinstance(loader, StreamLoader) and loader.transforms.train == "pad-crop"
    # the same pixels either way
    a = torch.cat([x for x, _ in make_loader(ds, "train", batch_size=5, mean=MEAN, std=STD, input_size=8)])
    b = torch.cat([x for x, _ in loader])
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert parse_bytes("4G") == 4 << 30 and parse_bytes("1.5M") == 3 << 19 and parse_bytes(100) == 100
    with pytest.raises(DataError, match=r"--cache-limit must be a size like 4G"):
        load_dataset(root, cache_dir=cache_dir, cache_limit="lots")


def test_cached_images_larger_than_the_input_get_the_transforms(tmp_path: Path, cache_dir: Path) -> None:
    ds = load_dataset(uniform_folder(tmp_path / "u", size=20), cache_dir=cache_dir)
    assert ds.in_memory
    loader = make_loader(ds, "test", batch_size=10, mean=MEAN, std=STD, input_size=16, workers=0)
    assert isinstance(loader, StreamLoader) and isinstance(loader.source, TensorImages)
    assert next(iter(loader))[0].shape == (4, 3, 16, 16)


# --------------------------------------------------------------------------- transforms


def _normalise(hwc: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(np.array(hwc)).permute(2, 0, 1).float() / 255
    return (x - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)


def _reference_eval(path: str, crop: int, short: int) -> np.ndarray:
    im = Image.open(path).convert("RGBA" if path.endswith("png") else "RGB").convert("RGB")
    w, h = im.size
    if (w, h) == (crop, crop):
        return np.asarray(im)
    nw, nh = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
    im = im.resize((nw, nh), Image.BILINEAR)
    top, left = int(round((nh - crop) / 2)), int(round((nw - crop) / 2))
    return np.asarray(im)[top : top + crop, left : left + crop]


def _reference_train(path: str, crop: int, rng: np.random.Generator) -> np.ndarray:
    im = Image.open(path).convert("RGBA" if path.endswith("png") else "RGB").convert("RGB")
    width, height = im.size
    for _ in range(10):  # torchvision's RandomResizedCrop.get_params, drawn from rng in the same order
        area = width * height * rng.uniform(0.08, 1.0)
        aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        w, h = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
            break
    else:
        raise AssertionError("these test images always fit within ten tries")
    out = np.asarray(im.crop((left, top, left + w, top + h)).resize((crop, crop), Image.BILINEAR))
    return out[:, ::-1] if rng.random() < 0.5 else out


def test_transforms_match_a_per_sample_reference(tmp_path: Path, cache_dir: Path) -> None:
    ds = load_dataset(mixed_folder(tmp_path / "m"), cache_dir=cache_dir)
    paths = list(ds.train_images.paths)
    ev = StreamLoader(ds.train_images, ds.train_labels, transforms=Transforms(16, resize=20), batch_size=5,
                      mean=MEAN, std=STD, workers=0)
    got = torch.cat([x for x, _ in ev])
    for i, path in enumerate(paths):
        torch.testing.assert_close(got[i], _normalise(_reference_eval(path, 16, 20)), rtol=0, atol=1e-5)
    tr = StreamLoader(ds.train_images, ds.train_labels, transforms=Transforms(16), batch_size=5, mean=MEAN, std=STD,
                      shuffle=True, augment=True, seed=3, workers=0)
    x0, _ = next(iter(tr))
    order = torch.randperm(12, generator=torch.Generator().manual_seed(3))
    for k, i in enumerate(order[:5].tolist()):
        # Pillow's resize with a box equals crop-then-resize up to rounding at the box edges
        ref = _normalise(_reference_train(paths[i], 16, np.random.default_rng((3, 0, i))))
        assert (x0[k] - ref).abs().mean() < 0.05
    assert Transforms.for_input(224).short_side == 256 and Transforms.for_input(32, (32, 32)).train == "pad-crop"
    with pytest.raises(DataError, match=r"resize must be an integer of at least crop=224"):
        Transforms(224, resize=200)


def test_streamed_pad_crop_equals_the_cached_loader() -> None:
    images = torch.randint(0, 256, (23, 3, 8, 8), dtype=torch.uint8)
    labels = torch.arange(23) % 3
    kw = dict(batch_size=6, mean=MEAN, std=STD, shuffle=True, augment=True, seed=5)
    cached = DeviceLoader(images, labels, **kw)
    streamed = StreamLoader(TensorImages(images), labels, transforms=Transforms(8, train="pad-crop"), workers=0, **kw)
    for _ in range(2):  # two epochs: order, offsets and flips drawn alike
        for (xa, ya), (xb, yb) in zip(cached, streamed, strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)


# --------------------------------------------------------------------------- determinism and resume


def test_stream_order_is_seeded_independent_of_workers_and_resumes(tmp_path: Path, cache_dir: Path) -> None:
    ds = load_dataset(mixed_folder(tmp_path / "m"), cache_dir=cache_dir)
    kw = dict(transforms=Transforms(16), batch_size=5, mean=MEAN, std=STD, shuffle=True, augment=True, seed=11)
    serial = StreamLoader(ds.train_images, ds.train_labels, workers=0, **kw)
    parallel = StreamLoader(ds.train_images, ds.train_labels, workers=2, **kw)
    epochs = [[list(serial), list(parallel)] for _ in range(2)]
    for a, b in epochs:
        for (xa, ya), (xb, yb) in zip(a, b, strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(epochs[0][0][0][0], epochs[1][0][0][0])  # a new order and new crops each epoch
    resumed = StreamLoader(ds.train_images, ds.train_labels, workers=0, **{**kw, "seed": 0})
    resumed.load_state_dict({"epoch": 1, "seed": 11})
    for (xa, ya), (xb, yb) in zip(epochs[1][0], resumed, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_finetune_on_streamed_data_resumes_exactly(tmp_path: Path, cache_dir: Path) -> None:
    from autoprune.training import Recipe
    from autoprune.training._loop import Trainer

    ds = load_dataset(mixed_folder(tmp_path / "m"), cache_dir=cache_dir)

    def run(epochs_before_stop: int | None) -> dict:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                              nn.Linear(4, 3))
        loader = make_loader(ds, "train", batch_size=4, mean=MEAN, std=STD, shuffle=True, augment=True, seed=2,
                             drop_last=True, input_size=16, workers=0)
        trainer = Trainer(model, Recipe(epochs=3, lr=0.1), loader, torch.device("cpu"))
        if epochs_before_stop is not None:
            for _ in range(epochs_before_stop):
                trainer.train_epoch(progress=False)
            state = trainer.state_dict()
            torch.manual_seed(123)  # the interruption disturbs the global RNG; the state restores it
            return run_from(state)
        for _ in range(3):
            trainer.train_epoch(progress=False)
        return trainer.model.state_dict()

    def run_from(state: dict) -> dict:
        model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                              nn.Linear(4, 3))
        loader = make_loader(ds, "train", batch_size=4, mean=MEAN, std=STD, shuffle=True, augment=True, seed=2,
                             drop_last=True, input_size=16, workers=0)
        trainer = Trainer(model, Recipe(epochs=3, lr=0.1), loader, torch.device("cpu"))
        trainer.load_state_dict(state)
        while trainer.epoch < 3:
            trainer.train_epoch(progress=False)
        return trainer.model.state_dict()

    straight, resumed = run(None), run(1)
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key


# --------------------------------------------------------------------------- a user's Dataset


class ToyImages(torch.utils.data.Dataset):
    """uint8 [3, 32, 32] tensors; a float tensor for every third item (both forms are accepted)."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
        self.labels = [i % 10 for i in range(n)]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = self.images[i]
        return (image.float() / 255 if i % 3 == 0 else image), self.labels[i]


def test_user_dataset_through_the_search_entry_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from autoprune.models import create
    from autoprune.search import SearchConfig, search

    monkeypatch.setenv("AUTOPRUNE_CACHE", str(tmp_path / "cache"))
    ds = Dataset.from_torch(ToyImages(60, 0), ToyImages(20, 1), name="toy")
    assert not ds.in_memory and ds.num_classes == 10 and ds.classes[:2] == ["0", "1"]
    register_dataset("toy-images", lambda: ds)
    torch.manual_seed(0)
    torch.save({"state_dict": create("resnet20").state_dict()}, tmp_path / "r20.th")
    config = SearchConfig(arch="resnet20", data_dir="", dataset="toy-images", agent="uniform", targets=[0.5],
                          checkpoint=str(tmp_path / "r20.th"), holdout=20, reward_samples=10, recal_batches=1,
                          recal_batch_size=20, device="cpu", data_workers=0)
    result = search(config, tmp_path / "run")
    policy = result.policies[0.5]
    assert policy.dataset == "toy" and 0 <= policy.accuracy["test"] <= 1
    with pytest.raises(DataError, match=r"returned an image of torch.int64 \[3, 4, 4\]"):
        Dataset.from_torch([(torch.zeros(3, 4, 4, dtype=torch.int64), 0)], [(torch.zeros(3, 4, 4), 0)]).train_images.read(0)


# --------------------------------------------------------------------------- bad input


def _truncate(path: Path) -> None:
    """Cut the last 40 % of a (noise, so large) JPEG: its header stays readable, its pixels do not."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 3 // 5])


def test_truncated_image_is_named_or_skipped_and_counted(tmp_path: Path, cache_dir: Path) -> None:
    root = mixed_folder(tmp_path / "m")
    bad = root / "train" / "bee" / "1.jpg"  # the middle of the split
    _save(bad, (40, 36), 1, 99)
    _truncate(bad)
    ds = load_dataset(root, cache_dir=cache_dir)  # the header is intact: found when decoded
    loader = make_loader(ds, "train", batch_size=4, mean=MEAN, std=STD, input_size=16, workers=0)
    with pytest.raises(DataError, match=rf"Cannot read the image {bad}.*--skip-bad-images"):
        list(loader)
    ds = load_dataset(root, cache_dir=cache_dir, skip_bad_images=True)
    loader = make_loader(ds, "train", batch_size=4, mean=MEAN, std=STD, input_size=16, workers=0)
    with pytest.warns(UserWarning, match="Skipped an unreadable image"):
        total = sum(len(y) for _, y in loader)
    assert total == 11 and list(loader.skipped) == [str(bad)]


def test_unreadable_file_fails_the_load_or_is_skipped(tmp_path: Path, cache_dir: Path) -> None:
    root = uniform_folder(tmp_path / "u")
    bad = root / "train" / "b" / "2.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(DataError, match=rf"Cannot read the image {bad}.*--skip-bad-images"):
        load_dataset(root, cache_dir=cache_dir)
    with pytest.warns(UserWarning, match=r"Skipped 1 unreadable image"):
        ds = load_dataset(root, cache_dir=cache_dir, skip_bad_images=True)
    assert ds.in_memory and len(ds.train_labels) == 7 and "1 unreadable image(s) skipped" in ds.why


def test_truncated_image_in_the_cached_decode_is_skipped(tmp_path: Path, cache_dir: Path) -> None:
    root = tmp_path / "j"
    for split, n in (("train", 4), ("test", 2)):
        for c in ("a", "b"):
            for i in range(n):
                _save(root / split / c / f"{i}.jpg", (40, 40), 0, i)
    _truncate(root / "train" / "a" / "1.jpg")
    with pytest.raises(DataError, match=r"Cannot read the image .*a/1\.jpg"):
        load_dataset(root, cache_dir=cache_dir)
    with pytest.warns(UserWarning, match=r"Skipped 1 unreadable image"):
        ds = load_dataset(root, cache_dir=cache_dir, skip_bad_images=True)
    assert ds.in_memory and len(ds.train_labels) == 7


def test_val_classes_that_differ_are_named(tmp_path: Path, cache_dir: Path) -> None:
    root = mixed_folder(tmp_path / "m")
    (root / "val" / "cat").rename(root / "val" / "cow")
    with pytest.raises(DataError, match=r"only in train: \['cat'\]; only in val: \['cow'\]"):
        load_dataset(root, cache_dir=cache_dir)


def test_images_too_small_for_the_crop(tmp_path: Path, cache_dir: Path) -> None:
    ds = load_dataset(mixed_folder(tmp_path / "m"), cache_dir=cache_dir)
    with pytest.raises(DataError, match=r"too small for the model's 224x224 input: their median shorter side is"):
        make_loader(ds, "train", batch_size=4, mean=MEAN, std=STD, input_size=224)


def test_class_count_against_the_model() -> None:
    from autoprune.evaluate import check_classes
    from autoprune.models import create

    ds = Dataset.from_torch(ToyImages(4, 0), ToyImages(2, 0), classes=[str(i) for i in range(12)])
    with pytest.raises(AutopruneError, match=r"The model has 10 outputs but custom has 12 classes"):
        check_classes(create("resnet20"), "linear", ds)


def test_interrupted_decode_leaves_no_cache_file(tmp_path: Path, cache_dir: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    root = uniform_folder(tmp_path / "u")

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(_image_folder, "_decode_all", interrupted)
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C while decoding
        load_dataset(root, cache_dir=cache_dir)
    assert not list(cache_dir.glob("*.pt"))
    monkeypatch.undo()

    def half_written(obj: object, f) -> None:  # Ctrl-C in the middle of writing the cache file
        f.write(b"PK half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", half_written)
    with pytest.raises(KeyboardInterrupt):
        load_dataset(root, cache_dir=cache_dir)
    monkeypatch.undo()
    assert [p.name for p in cache_dir.iterdir() if not p.name.endswith(".survey.npz")] == []
    assert load_dataset(root, cache_dir=cache_dir).in_memory
    assert len(list(cache_dir.glob("*.pt"))) == 1


def test_data_command_reports_what_it_sees(tmp_path: Path, cache_dir: Path, capsys: pytest.CaptureFixture,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOPRUNE_CACHE", str(cache_dir))
    root = mixed_folder(tmp_path / "m")
    (root / "train" / "ant" / "9.png").write_bytes(b"garbage")
    assert main(["data", "--data-dir", str(root), "--arch", "resnet20"]) == 0
    out = capsys.readouterr().out
    assert "splits train/ and val/" in out and "classes: 3 (ant, bee, cat)" in out
    assert "train        13 images, 4..5 per class" in out
    assert "loader: streaming from disk: the images differ in size" in out
    assert "transforms for a 32-px model: evaluation resize shorter side to 37, centre-crop 32" in out
    assert "decode errors: 1 found by reading the headers" in out and "9.png" in out
    assert main(["data", "--data-dir", str(tmp_path / "nothing")]) == 2
