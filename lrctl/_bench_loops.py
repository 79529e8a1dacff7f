"""The benchmark's bare loops: each path's training written the way a PyTorch user would, and Lightning's.

Used by :mod:`lrctl.bench`; each function returns ``run(epochs)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from lrctl.data import build_split
from lrctl.models import build_model

if TYPE_CHECKING:
    from collections.abc import Callable

    from lrctl.config import RunConfig

    Loop = Callable[[int], None]

EXAMPLES = Path(__file__).resolve().parents[1] / "configs" / "example_factories.py"


def _metric(cfg: RunConfig):
    if cfg.task == "classification":
        return lambda pred, y: (pred.argmax(1) == y).float().mean()
    return torch.nn.functional.mse_loss


def bare_tensors(cfg: RunConfig, device: torch.device, lr: float) -> Loop:
    """In-memory tensors: a fresh permutation each epoch, slices of it, SGD, full-set metric after each epoch."""
    split = build_split(cfg).to(device)
    model = build_model(cfg, split.in_features, split.out_features(cfg)).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    loss_fn = torch.nn.functional.cross_entropy if cfg.task == "classification" else torch.nn.functional.mse_loss
    metric = _metric(cfg)
    bs, n = cfg.train.batch_size, len(split.x_train)

    def run(epochs: int) -> None:
        for _ in range(epochs):
            order = torch.randperm(n, device=device)
            xs, ys = split.x_train[order], split.y_train[order]
            model.train()
            for i in range(0, n, bs):
                loss = loss_fn(model(xs[i:i + bs]), ys[i:i + bs])
                opt.zero_grad()
                loss.backward()
                opt.step()
            model.eval()
            with torch.no_grad():
                metric(model(split.x_train), split.y_train).item()
                metric(model(split.x_test), split.y_test).item()

    return run


def digits_factories():
    from lrctl._factory import load_callable

    return (load_callable(f"{EXAMPLES}:digits", "bench"), load_callable(f"{EXAMPLES}:digits_cnn", "bench"))


def bare_dataloader(cfg: RunConfig, device: torch.device, lr: float) -> Loop:
    """Datasets: DataLoader(shuffle=True) for training, batches of 1,000 for evaluation, Adam."""
    from torch.utils.data import DataLoader

    digits, cnn = digits_factories()
    train_set, test_set = digits()
    torch.manual_seed(cfg.model.seed)
    model = cnn(10).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    workers = cfg.train.workers if cfg.train.workers > 0 else 0
    common = {"num_workers": workers, "persistent_workers": workers > 0, "pin_memory": device.type == "cuda"}
    loader = DataLoader(train_set, batch_size=cfg.train.batch_size, shuffle=True, **common)
    evals = [DataLoader(s, batch_size=1000, **common) for s in (train_set, test_set)]

    def run(epochs: int) -> None:
        for _ in range(epochs):
            model.train()
            for x, y in loader:
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                loss = torch.nn.functional.cross_entropy(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
            model.eval()
            with torch.no_grad():
                for eval_loader in evals:
                    correct = 0
                    for x, y in eval_loader:
                        x, y = x.to(device), y.to(device)
                        correct += (model(x).argmax(1) == y).sum().item()

    return run


def lesson_dataloader(cfg: RunConfig) -> Loop:
    """The lesson's ``fit_rec`` style: a shuffled DataLoader over a TensorDataset (an extra row)."""
    from torch.utils.data import DataLoader, TensorDataset

    split = build_split(cfg)
    model = build_model(cfg, split.in_features)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_fn = torch.nn.functional.mse_loss
    loader = DataLoader(TensorDataset(split.x_train, split.y_train), batch_size=cfg.train.batch_size, shuffle=True)

    def run(epochs: int) -> None:
        for _ in range(epochs):
            model.train()
            for x, y in loader:
                loss = loss_fn(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
            model.eval()
            with torch.no_grad():
                loss_fn(model(split.x_train), split.y_train).item()
                loss_fn(model(split.x_test), split.y_test).item()

    return run


def lightning_loop(cfg: RunConfig) -> Loop | None:
    """The lesson workload as Lightning's docs write it (metrics from its validation loop), if installed."""
    import logging
    import warnings

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="lightning")
    warnings.filterwarnings("ignore", module="pytorch_lightning")
    try:
        import lightning.pytorch as pl
    except ImportError:
        try:
            import pytorch_lightning as pl
        except ImportError:
            return None
    from torch.utils.data import DataLoader, TensorDataset

    split = build_split(cfg)
    net = build_model(cfg, split.in_features)

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def training_step(self, batch, _):
            x, y = batch
            return torch.nn.functional.mse_loss(self.net(x), y)

        def validation_step(self, batch, _, dataloader_idx=0):
            x, y = batch
            self.log(("train_mse", "test_mse")[dataloader_idx], torch.nn.functional.mse_loss(self.net(x), y),
                     add_dataloader_idx=False)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    module = Module()
    loader = DataLoader(TensorDataset(split.x_train, split.y_train), batch_size=cfg.train.batch_size, shuffle=True)
    full_sets = [DataLoader(TensorDataset(x, y), batch_size=len(x))
                 for x, y in ((split.x_train, split.y_train), (split.x_test, split.y_test))]

    def run(epochs: int) -> None:
        trainer = pl.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, accelerator="cpu", num_sanity_val_steps=0)
        trainer.fit(module, loader, full_sets)

    return run
