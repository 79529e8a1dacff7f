"""The lesson's own code, written from the workload spec (shared/lesson-workload.md), to check lrctl against.

This is how the exercise is taught: the data made and split with seed 420, the model built right after
``torch.manual_seed(24)``, and ``fit_rec`` iterating ``DataLoader(train, batch_size=50, shuffle=True)``
(which draws from the global torch RNG every epoch), evaluating the whole train and test sets after
each epoch. Nothing here imports lrctl.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset, random_split


def tensor_gen_reg(num_examples: int = 1000, w=(2.0, -1.0, 3.0, 1.0, 2.0), deg: int = 2) -> tuple:
    """The lesson's tensorGenReg(bias=False): features ~ N(0, 1), labels = (features**deg) @ w + noise."""
    features = torch.randn(num_examples, len(w))
    w_true = torch.tensor(w).reshape(-1, 1)
    labels = torch.mm(torch.pow(features, deg), w_true) + torch.randn(num_examples, 1) * 0.01
    return features, labels


class Net(nn.Module):
    """5 -> 4 -> 4 -> 1, batch norm before tanh."""

    def __init__(self, in_features: int = 5, n_hidden1: int = 4, n_hidden2: int = 4, out_features: int = 1):
        super().__init__()
        self.linear1 = nn.Linear(in_features, n_hidden1)
        self.normalize1 = nn.BatchNorm1d(n_hidden1)
        self.linear2 = nn.Linear(n_hidden1, n_hidden2)
        self.normalize2 = nn.BatchNorm1d(n_hidden2)
        self.linear3 = nn.Linear(n_hidden2, out_features)

    def forward(self, x):
        z1 = self.normalize1(self.linear1(x))
        p1 = torch.tanh(z1)
        z2 = self.normalize2(self.linear2(p1))
        p2 = torch.tanh(z2)
        return self.linear3(p2)


def split_loader(features, labels, batch_size: int = 50, rate: float = 0.7):
    """random_split 70/30, then DataLoaders: the training one shuffled every epoch."""
    data = TensorDataset(features, labels)
    num_train = int(len(data) * rate)
    train, test = random_split(data, [num_train, len(data) - num_train])
    return DataLoader(train, batch_size=batch_size, shuffle=True), DataLoader(test, batch_size=batch_size)


def mse_cal(data_loader, net):
    data = data_loader.dataset
    x, y = data[:][0], data[:][1]
    return F.mse_loss(net(x), y)


def fit(net, criterion, optimizer, batchdata, epochs: int = 3):
    for _ in range(epochs):
        for x, y in batchdata:
            yhat = net.forward(x)
            loss = criterion(yhat, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()


def fit_rec(net, criterion, optimizer, train_data, test_data, epochs: int = 3, scheduler=None):
    """Train ``epochs`` epochs; after each, the whole-set MSE of train and test (eval mode)."""
    train_l, test_l = [], []
    for _ in range(epochs):
        net.train()
        fit(net, criterion, optimizer, train_data, epochs=1)
        if scheduler is not None:
            scheduler.step()
        net.eval()
        train_l.append(mse_cal(train_data, net).item())
        test_l.append(mse_cal(test_data, net).item())
    return train_l, test_l


def experiment(plan: list[tuple[int, float | str]]) -> tuple[list[float], list[float]]:
    """One of the lesson's experiments: chunks of (epochs, lr) on one model; lr "exp" is 0.05 x0.95 per epoch."""
    torch.manual_seed(420)
    features, labels = tensor_gen_reg()
    train_loader, test_loader = split_loader(features, labels)
    torch.manual_seed(24)
    net = Net()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.03)
    train_l, test_l = [], []
    for epochs, lr in plan:
        scheduler = None
        if lr == "exp":
            optimizer.param_groups[0]["lr"] = 0.05
            scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.95)
        else:
            optimizer.param_groups[0]["lr"] = lr
        a, b = fit_rec(net, nn.MSELoss(), optimizer, train_loader, test_loader, epochs, scheduler)
        train_l += a
        test_l += b
    return train_l, test_l


# The lesson's experiments, as lrctl plans and as the lesson's code runs them.
EXPERIMENTS = {
    "30@0.03;30@0.01": [(30, 0.03), (30, 0.01)],
    "60@0.03": [(60, 0.03)],
    "60@0.01": [(60, 0.01)],
    "60@0.005": [(60, 0.005)],
    "60@0.001": [(60, 0.001)],
    "60@exp 0.05 gamma=0.95": [(60, "exp")],
}
