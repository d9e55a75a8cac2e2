"""The evaluator: top-k counting, adaptive BN, and the real pretrained accuracies."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from autoprune.evaluate import Evaluator, evaluate, recalibrate_bn

from conftest import CIFAR_DIR, PRETRAINED_DIR, require


class Fixed(nn.Module):
    """Returns stored logits, one row per sample: a model whose accuracy we know."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits[x[:, 0, 0, 0].long()]


def test_top1_and_top5_counts():
    logits = torch.tensor([[9.0, 1, 2, 3, 4, 5, 0], [0.0, 9, 8, 7, 6, 5, 4], [0.0, 1, 2, 3, 4, 5, 6]])
    x = torch.arange(3.0).view(3, 1, 1, 1).expand(3, 1, 1, 1).contiguous()
    labels = torch.tensor([0, 6, 1])  # hit at rank 1; rank 7 (miss); rank 6 (miss)
    acc = evaluate(Fixed(logits), [(x[:2], labels[:2]), (x[2:], labels[2:])])
    assert acc.samples == 3 and acc.top1 == pytest.approx(1 / 3) and acc.top5 == pytest.approx(1 / 3)
    labels = torch.tensor([0, 4, 3])  # rank 1; rank 5 (top-5 hit); rank 4 (top-5 hit)
    acc = evaluate(Fixed(logits), [(x, labels)])
    assert acc.top1 == pytest.approx(1 / 3) and acc.top5 == 1.0


def test_recalibration_is_a_cumulative_average_and_restores_state():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, momentum=0.3)).eval()
    model[1].running_mean.fill_(5.0)
    batches = [(torch.randn(8, 3, 6, 6) * s + s, None) for s in (1.0, 3.0)]
    assert recalibrate_bn(model, batches) == 2
    with torch.no_grad():
        feats = [model[0](x) for x, _ in batches]
    mean = torch.stack([f.mean(dim=(0, 2, 3)) for f in feats]).mean(0)
    var = torch.stack([f.transpose(0, 1).flatten(1).var(dim=1, unbiased=True) for f in feats]).mean(0)
    assert torch.allclose(model[1].running_mean, mean, atol=1e-5)
    assert torch.allclose(model[1].running_var, var, atol=1e-4)
    assert model[1].momentum == 0.3 and not model.training


@pytest.mark.parametrize("workers", [2, 3])
def test_side_by_side_batches_give_the_statistics_and_counts_of_one_pass(workers):
    """Batches spread over threads (three workers: uneven shares) recalibrate to the one-pass averages and count
    the same hits; the caller's model, momentum and thread count come back as they were."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, momentum=0.3), nn.ReLU(), nn.Flatten(),
                          nn.LazyLinear(5)).eval()
    batches = [(torch.randn(8, 3, 6, 6) * s + s, torch.randint(0, 5, (8,))) for s in (1.0, 3.0, 0.5, 2.0, 1.5)]
    model(batches[0][0])  # materialises the lazy layer
    alone = [b.clone() for b in (model[1].running_mean, model[1].running_var)]
    threads = torch.get_num_threads()
    assert recalibrate_bn(model, batches) == 5
    one = [model[1].running_mean.clone(), model[1].running_var.clone()]
    assert recalibrate_bn(model, batches, workers=workers) == 5
    assert torch.allclose(model[1].running_mean, one[0], atol=1e-6) and not torch.equal(model[1].running_mean, alone[0])
    assert torch.allclose(model[1].running_var, one[1], atol=1e-5)
    assert int(model[1].num_batches_tracked) == 5 and model[1].momentum == 0.3 and not model.training
    assert evaluate(model, batches, workers=workers) == evaluate(model, batches)
    assert torch.get_num_threads() == threads


def test_a_failing_batch_stops_the_workers_and_raises_in_the_caller():
    def batches():
        yield torch.zeros(2, 3, 6, 6), torch.zeros(2, dtype=torch.long)
        raise RuntimeError("unreadable image")
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(5)).eval()
    model(torch.zeros(1, 3, 6, 6))
    with pytest.raises(RuntimeError, match="unreadable image"):
        evaluate(model, batches(), workers=2)
    with pytest.raises(RuntimeError, match="shape"):  # a worker's own error reaches the caller too
        evaluate(model, [(torch.zeros(2, 3, 6, 6), torch.zeros(2, dtype=torch.long)),
                         (torch.zeros(2, 3, 7, 7), torch.zeros(2, dtype=torch.long))], workers=2)


@pytest.mark.slow
def test_pretrained_resnet20_scores_its_published_accuracy():
    from autoprune.checkpoints import load_model
    from autoprune.data import load_dataset, make_splits
    from autoprune.models import get_model_info

    data = load_dataset(require(CIFAR_DIR))
    model, _ = load_model("resnet20", require(PRETRAINED_DIR / "resnet20-12fca82f.th"))
    info = get_model_info("resnet20")
    evaluator = Evaluator(data, make_splits(len(data.train_labels)), mean=info.mean, std=info.std)
    acc = evaluator.test(evaluator.prepare(model))
    assert acc.samples == 10_000 and round(100 * acc.top1, 2) == 91.73
