"""The examples: the lesson's generators, the train/test split, and the order of each epoch's batches.

Data lives in memory as tensors (on the training device) and is sliced, never fed through a
DataLoader. The order of epoch ``e``'s examples is a pure function of ``(shuffle_seed, e)``, so an
epoch recomputed after a crash sees exactly the same batches, and a distributed rank can take a
disjoint share of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from lrctl.config import RunConfig

if TYPE_CHECKING:
    import torch


@dataclass
class Split:
    """Train and test tensors; ``y`` is float (N, 1) for regression, long (N,) for classification."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    @property
    def in_features(self) -> int:
        return self.x_train.shape[1]

    def to(self, device: torch.device) -> Split:
        return Split(*(t.to(device) for t in (self.x_train, self.y_train, self.x_test, self.y_test)))


def lesson_regression(rows: int, weights: tuple[float, ...], degree: int, noise: float):
    """The lesson's ``tensorGenReg(bias=False)``: features ~ N(0,1), y = (x**deg) @ w + noise.

    Draws from the global RNG in the lesson's order: features, then noise.
    """
    import torch

    features = torch.randn(rows, len(weights))
    w_true = torch.tensor(weights, dtype=torch.float32).reshape(-1, 1)
    labels = torch.mm(torch.pow(features, degree), w_true) + torch.randn(rows, 1) * noise
    return features, labels


def lesson_classification(rows_per_class: int, features: int, classes: int, gap: float, std: float):
    """The lesson's ``tensorGenCla``: class i ~ N(i*gap - gap*(classes-1)/2, std), labels 0..classes-1."""
    import torch

    offset = gap * (classes - 1) / 2
    xs = [torch.normal(i * gap - offset, std, size=(rows_per_class, features)) for i in range(classes)]
    ys = [torch.full((rows_per_class,), i, dtype=torch.long) for i in range(classes)]
    return torch.cat(xs).float(), torch.cat(ys)


def build_split(cfg: RunConfig) -> Split:
    """Generate the configured data and split it the way ``torch.utils.data.random_split`` does."""
    import torch

    d = cfg.data
    torch.manual_seed(d.seed)
    if cfg.task == "classification":
        x, y = lesson_classification(d.rows_per_class, d.features, d.classes, d.class_gap, d.class_std)
    else:
        x, y = lesson_regression(d.rows, d.weights, d.degree, d.noise)
    n_train = int(len(x) * d.train_fraction)
    # random_split(lengths) draws one permutation from the global RNG: first n_train rows train.
    order = torch.randperm(len(x))
    train_idx, test_idx = order[:n_train], order[n_train:]
    return Split(x[train_idx], y[train_idx], x[test_idx], y[test_idx])


def epoch_order(n: int, shuffle_seed: int, epoch: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The permutation of ``n`` training rows used in global epoch ``epoch``."""
    import torch

    generator = torch.Generator().manual_seed((shuffle_seed * 1_000_003 + epoch) % (2**63))
    return torch.randperm(n, generator=generator).to(device)


def batches_per_epoch(n: int, batch_size: int) -> int:
    """Every row is used each epoch; a short last batch is kept (DataLoader's drop_last=False)."""
    return -(-n // batch_size)
