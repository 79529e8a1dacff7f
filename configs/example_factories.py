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
