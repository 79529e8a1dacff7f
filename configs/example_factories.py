"""Example factories for lrctl configs: your own data and model in a few lines.

Used by ``custom-factory.toml`` (a model and data made here) and ``diabetes.toml`` (scikit-learn's
bundled diabetes data; ``pip install -e .[examples]``). A data factory returns
``(x_train, y_train, x_test, y_test)`` tensors (the fast, in-memory path) or ``(train, test)``
``torch.utils.data.Dataset`` objects; a model factory returns an ``nn.Module`` and may take
``in_features=`` and ``out_features=``.
"""

import torch
from torch import nn


def sine_data():
    """y = sin(3x) + noise on [-2, 2]: a curve a small network needs a good lr to fit."""
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(1200, 1, generator=generator) * 4 - 2
    y = torch.sin(3 * x) + 0.05 * torch.randn(1200, 1, generator=generator)
    return x[:900], y[:900], x[900:], y[900:]


def small_net(in_features: int, out_features: int) -> nn.Module:
    return nn.Sequential(nn.Linear(in_features, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(),
                         nn.Linear(32, out_features))


def diabetes():
    """scikit-learn's diabetes regression set (442 rows, 10 features), target scaled to unit variance."""
    from sklearn.datasets import load_diabetes

    x, y = load_diabetes(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32)
    y = torch.tensor(y, dtype=torch.float32).reshape(-1, 1)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x, y = x[order], y[order]
    x = (x - x.mean(0)) / x.std(0)
    y = (y - y.mean()) / y.std()
    n = int(len(x) * 0.7)
    return x[:n], y[:n], x[n:], y[n:]


# -- scikit-learn's handwritten digits: 8x8 images, 10 classes, 1,797 of them (digits.toml) -----------------
DIGITS_MEAN, DIGITS_STD = 4.88, 6.02  # of the 0..16 pixel values over the whole set


def _digits_split():
    """Images (N, 8, 8) as floats 0..16 and labels; a fixed 70/30 split (1,257 train, 540 test)."""
    from sklearn.datasets import load_digits

    images, labels = load_digits(return_X_y=True)
    images = torch.tensor(images, dtype=torch.float32).reshape(-1, 8, 8)
    labels = torch.tensor(labels, dtype=torch.long)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    n = int(len(images) * 0.7)
    return images[order[:n]], labels[order[:n]], images[order[n:]], labels[order[n:]]


def normalize(image: torch.Tensor) -> torch.Tensor:
    """The transform: an (8, 8) image of 0..16 to a (1, 8, 8) one with mean 0 and std 1 over the set."""
    return ((image - DIGITS_MEAN) / DIGITS_STD).unsqueeze(0)


class Digits(torch.utils.data.Dataset):
    """Images with a transform applied per item, the way torchvision's datasets work."""

    def __init__(self, images, labels, transform=normalize):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(self.images[i]), self.labels[i]


def digits():
    """(train, test) Datasets: the DataLoader path."""
    x_train, y_train, x_test, y_test = _digits_split()
    return Digits(x_train, y_train), Digits(x_test, y_test)


def digits_tensors():
    """The same data as (N, 1, 8, 8) tensors, normalised once: the in-memory path."""
    x_train, y_train, x_test, y_test = _digits_split()
    return normalize(x_train).transpose(0, 1), y_train, normalize(x_test).transpose(0, 1), y_test


def digits_cnn(out_features: int = 10) -> nn.Module:
    """Two 3x3 convolutions, a 2x2 max-pool and two linear layers: 38k parameters."""
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(),
                         nn.Linear(64, out_features))
