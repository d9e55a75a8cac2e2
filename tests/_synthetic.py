"""A learnable tiny dataset for the training tests: 4 classes of 16x16 noise images told apart by colour.

Random-noise datasets cannot show that training improves accuracy; here class
``c < 3`` raises colour channel ``c`` over the noise and class 3 raises none,
which survives the crop and flip augmentation and a resnet20 learns in a few
CPU-seconds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

CLASSES = 4


def make_colours(root: Path, train: int = 30, test: int = 10, size: int = 16) -> Path:
    """Write ``root/data/{train,test}/c<k>/*.png``, a random-init resnet20 ``root/base.th`` and two policies
    (``u50.json``: uniform at half the MACs, ``g70.json``: global L1 at 70 %)."""
    from autoprune.checkpoints import load_model
    from autoprune.models import create
    from autoprune.pruning import prune

    rng = np.random.default_rng(0)
    for split, n in (("train", train), ("test", test)):
        for c in range(CLASSES):
            folder = root / "data" / split / f"c{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 100, (size, size, 3), dtype=np.uint8)
                if c < 3:
                    img[..., c] += 100
                Image.fromarray(img).save(folder / f"{i}.png")
    torch.manual_seed(0)
    torch.save({"state_dict": create("resnet20", num_classes=CLASSES).state_dict()}, root / "base.th")
    model, sha = load_model("resnet20", root / "base.th", num_classes=CLASSES)
    for name, target, method in (("u50", 0.5, "uniform"), ("g70", 0.7, "global")):
        policy, _ = prune(model, "resnet20", target, method=method, checkpoint=sha)
        policy.save(root / f"{name}.json")
    return root
