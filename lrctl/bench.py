"""Benchmark: lrctl's engine against a bare PyTorch loop, the lesson's DataLoader loop and Lightning.

::

    $ python -m lrctl.bench                 # lesson workload at 1,000 and 20,000 rows, + first prompt
    $ python -m lrctl.bench --rounds 9 --rows 1000 --no-prompt
    $ python -m lrctl.bench --lr-finders    # the lr finders against the 10-epoch truth (lrctl.lrtruth)

All loops train the same model on the same data with the same batch size and the same full-set
evaluation after every epoch, in one process, in interleaved rounds (the VM is noisy: compare the
ratios from one run). lrctl is measured through a real :class:`~lrctl.session.RunSession` with its
default TensorBoard logging and checkpoint cadence on. Time to first prompt is measured through a
pseudo-terminal for a new and a resumed run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from lrctl.config import RunConfig, with_overrides
from lrctl.data import build_split, epoch_order
from lrctl.models import build_model


def _config(rows: int, device: str = "cpu") -> RunConfig:
    return with_overrides(RunConfig(), [f"data.rows={rows}", f"train.device=\"{device}\""])


def _evaluate(model: torch.nn.Module, split) -> None:
    """The baselines' per-epoch full-set MSE on train and test, read back as a user's loop would."""
    model.eval()
    with torch.no_grad():
        torch.nn.functional.mse_loss(model(split.x_train), split.y_train).item()
        torch.nn.functional.mse_loss(model(split.x_test), split.y_test).item()


def bare_loop(cfg: RunConfig) -> Callable[[int], None]:
    """The hand-written baseline: slice in-memory tensors, SGD, full-set MSE after each epoch."""
    device = torch.device(cfg.train.device)
    split = build_split(cfg).to(device)
    model = build_model(cfg, split.in_features).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.03)
    loss_fn = torch.nn.functional.mse_loss
    bs = cfg.train.batch_size
    n = len(split.x_train)
    state = {"epoch": 0}

    def run(epochs: int) -> None:
        for _ in range(epochs):
            order = epoch_order(n, 0, state["epoch"], device)
            xs, ys = split.x_train[order], split.y_train[order]
            model.train()
            for i in range(0, n, bs):
                loss = loss_fn(model(xs[i:i + bs]), ys[i:i + bs])
                opt.zero_grad()
                loss.backward()
                opt.step()
            _evaluate(model, split)
            state["epoch"] += 1

    return run


def dataloader_loop(cfg: RunConfig) -> Callable[[int], None]:
    """The lesson's ``fit_rec`` style: a shuffled DataLoader over a TensorDataset."""
    from torch.utils.data import DataLoader, TensorDataset

    split = build_split(cfg)
    model = build_model(cfg, split.in_features)
    opt = torch.optim.SGD(model.parameters(), lr=0.03)
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
            _evaluate(model, split)

    return run


def lrctl_engine(cfg: RunConfig, workdir: Path, name: str) -> Callable[[int], None]:
    """lrctl as a user runs it: a RunSession with TensorBoard logging and the default checkpoint cadence."""
    from lrctl.session import RunSession

    session = RunSession.open(workdir, name, cfg)
    session.load()

    def run(epochs: int) -> None:
        session.train(epochs, "0.03")

    run.session = session  # type: ignore[attr-defined]
    return run


def lightning_loop(cfg: RunConfig, idiomatic: bool = True) -> Callable[[int], None] | None:
    """The workload under Lightning. ``idiomatic``: as its docs write it, the full-set train and test
    metrics computed by Lightning's validation loop and recorded with ``self.log``; otherwise a lean
    variant that evaluates by hand in ``on_train_epoch_end``."""
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

        def on_train_epoch_end(self) -> None:
            if idiomatic:
                return
            self.net.eval()
            with torch.no_grad():
                torch.nn.functional.mse_loss(self.net(split.x_train), split.y_train).item()
                torch.nn.functional.mse_loss(self.net(split.x_test), split.y_test).item()
            self.net.train()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.03)

    module = Module()
    loader = DataLoader(TensorDataset(split.x_train, split.y_train), batch_size=cfg.train.batch_size, shuffle=True)
    full_sets = [DataLoader(TensorDataset(x, y), batch_size=len(x))
                 for x, y in ((split.x_train, split.y_train), (split.x_test, split.y_test))]

    def run(epochs: int) -> None:
        trainer = pl.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                             num_sanity_val_steps=0, limit_val_batches=1.0 if idiomatic else 0)
        trainer.fit(module, loader, full_sets if idiomatic else None)

    return run


def measure(loops: dict[str, Callable[[int], None]], epochs: int, rounds: int) -> dict[str, float]:
    """Median ms per epoch of each loop over interleaved rounds (after one warm-up round)."""
    times: dict[str, list[float]] = {name: [] for name in loops}
    for r in range(rounds + 1):
        for name, run in loops.items():
            started = time.perf_counter()
            run(epochs)
            if r > 0:
                times[name].append((time.perf_counter() - started) / epochs * 1000)
    return {name: statistics.median(v) for name, v in times.items()}


def chunk_overhead_ms(run: Callable[[int], None], epoch_ms: float, repeats: int = 7) -> float:
    """What a one-epoch chunk costs beyond its epoch: the durable command record and the chunk-end save."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run(1)
        times.append((time.perf_counter() - started) * 1000 - epoch_ms)
    return statistics.median(times)


def first_prompt_ms(workdir: Path, runs: int = 5) -> dict[str, float]:
    """Median time from starting ``lrctl`` to the first question on a pseudo-terminal."""
    import pexpect

    results: dict[str, list[float]] = {"new run": [], "resumed run": []}
    for i in range(runs):
        for kind in results:
            name = f"new{i}" if kind == "new run" else "resumed"
            started = time.perf_counter()
            child = pexpect.spawn(sys.executable, ["-m", "lrctl", "--run", name, "--runs-dir", str(workdir)],
                                  encoding="utf-8", timeout=120, dimensions=(30, 120))
            child.expect_exact("Continue training? [y/n]")
            results[kind].append((time.perf_counter() - started) * 1000)
            child.sendcontrol("d")
            child.expect(pexpect.EOF)
    return {k: statistics.median(v) for k, v in results.items()}


def checkpoint_cost(workdir: Path) -> tuple[int, float, float]:
    """(parameters, ms per epoch, ms per checkpoint) for a ~10M-parameter MLP on the lesson data."""
    from lrctl.session import RunSession

    cfg = with_overrides(RunConfig(), ["model.hidden=[2048, 2048, 2048]", "model.batch_norm=\"none\""])
    session = RunSession.open(workdir, "big", cfg, save_every=1e9)
    session.load()
    started = time.perf_counter()
    session.train(2, "0.001")
    epoch_ms = (time.perf_counter() - started) / 2 * 1000
    saves = []
    for _ in range(3):
        started = time.perf_counter()
        session.save()
        saves.append((time.perf_counter() - started) * 1000)
    n = session.trainer.n_params
    session.close()
    return n, epoch_ms, statistics.median(saves)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lrctl.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1000, 20000])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--no-prompt", action="store_true", help="skip the time-to-first-prompt measurement")
    parser.add_argument("--no-big", action="store_true", help="skip the 10M-parameter checkpoint measurement")
    parser.add_argument("--lr-finders", action="store_true",
                        help="only the lr finders against the 10-epoch truth (python -m lrctl.lrtruth)")
    args = parser.parse_args(argv)
    if args.lr_finders:
        from lrctl import lrtruth

        return lrtruth.main([])
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"torch {torch.__version__} · {torch.get_num_threads()} threads available · python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for device in devices:
            for rows in args.rows:
                cfg = _config(rows, device)
                epochs = max(3, 100_000 // rows)
                torch.set_num_threads(1)  # lrctl's choice for small models; the baselines get the same
                loops: dict[str, Callable[[int], None]] = {"bare loop": bare_loop(cfg),
                                                           "lrctl": lrctl_engine(cfg, workdir, f"{device}{rows}")}
                if device == "cpu":
                    loops["DataLoader loop"] = dataloader_loop(cfg)
                    lightning = lightning_loop(cfg)
                    if lightning is not None:
                        loops["Lightning"] = lightning
                        loops["Lightning, lean"] = lightning_loop(cfg, idiomatic=False)
                result = measure(loops, epochs, args.rounds)
                chunk_ms = chunk_overhead_ms(loops["lrctl"], result["lrctl"])
                loops["lrctl"].session.close()  # type: ignore[attr-defined]
                base = result["bare loop"]
                print(f"\n{device}, {rows} rows ({int(rows * 0.7)} train, batch 50), {epochs} epochs x "
                      f"{args.rounds} rounds, median ms/epoch:")
                for name, ms in result.items():
                    print(f"  {name:<16} {ms:8.2f} ms   {ms / base:5.2f}x bare")
                print(f"  lrctl's fixed cost per chunk (journal + pending fsync, chunk-end checkpoint): "
                      f"{chunk_ms:.1f} ms")
                if "Lightning" not in result and device == "cpu":
                    print("  (Lightning not installed: pip install lightning to include it)")
        if not args.no_big:
            n, epoch_ms, save_ms = checkpoint_cost(workdir)
            print(f"\n{n / 1e6:.1f}M-parameter MLP: {epoch_ms:.0f} ms/epoch, {save_ms:.0f} ms per checkpoint; at the "
                  f"default 5 s cadence that is {save_ms / max(5000, epoch_ms) * 100:.1f}% of training time")
        if not args.no_prompt:
            prompt = first_prompt_ms(workdir)
            print("\ntime to first prompt (pseudo-terminal, median of 5): "
                  + ", ".join(f"{k} {v:.0f} ms" for k, v in prompt.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
