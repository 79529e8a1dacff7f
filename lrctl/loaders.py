"""DataLoaders for Datasets that are not in-memory tensors: each epoch's batches, and evaluation.

A factory that returns ``(train, test)`` Datasets (an image set with a transform, say) is read through
``torch.utils.data.DataLoader``. The batch order is still :func:`lrctl.data.epoch_order`'s, a pure
function of (seed, epoch), handed to the loader by a batch sampler iterated in the main process, so
workers hold no state and an interrupted epoch is recomputed exactly.

How the data is loaded is chosen from measurement, not by rule (``train.workers``,
``train.eval_batch_size`` and ``train.pin_memory`` override each choice):

- workers: loading a few batches in this process is timed first. Worker processes only pay when a
  batch takes longer to load than it costs to ship it back from a worker (``WORKER_BREAK_EVEN_S``);
  otherwise none (on the benchmark's 2-core machine, 0 workers was 4-6x faster than 1 or 2 for a
  per-item ``__getitem__`` of in-memory rows).
- evaluation batch: ``EVAL_BATCH_ROWS`` (fewer if their inputs pass ``EVAL_BATCH_BYTES``), never below
  the training batch: evaluation has no optimizer step, so big batches amortise the per-call overhead.
- pinning: only for a CUDA device, where it lets the copy to the GPU overlap the next batch's load.

With workers, a transform that draws random numbers draws them from the workers' generators, which a
resume starts afresh; with 0 workers it draws from the main process's, which the checkpoint holds,
so such a run resumes bit-exactly only with 0 workers.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader, Sampler

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from torch import nn

    from lrctl.data import Shard, Split

# Shipping one batch from a worker (pickle, shared memory, queue) costs about this much in the main
# process; a batch that loads faster than this is cheaper to load here.
WORKER_BREAK_EVEN_S = 2e-3
EVAL_BATCH_BYTES = 16 * 2**20
# Rows per evaluation batch at most: a per-item Dataset makes a tensor per row, and past a few thousand
# live rows Python's garbage collector makes a batch cost more than linear (20,000 rows of 5 features:
# 29 ms per pass in batches of 1,000, 203 ms in one batch of 14,000).
EVAL_BATCH_ROWS = 1024
PROBE_BATCHES = 5


def cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def load_seconds(dataset: Any, batch_size: int, batches: int = PROBE_BATCHES) -> float:
    """The fastest of a few timed fetch-and-collate batches of ``dataset`` in this process: the least
    disturbed by other processes (a busy machine once made a median of digits' 0.5 ms batches pass 2 ms).

    A random transform's draws here leave the generators as they were: measuring changes no result."""
    import random

    from torch.utils.data import default_collate

    n = len(dataset)
    times = []
    python_state = random.getstate()
    with torch.random.fork_rng(devices=[]):
        for b in range(batches):
            rows = [(b * batch_size + i) % n for i in range(batch_size)]
            started = time.perf_counter()
            default_collate([dataset[i] for i in rows])
            times.append(time.perf_counter() - started)
    random.setstate(python_state)
    return min(times)


def choose_workers(dataset: Any, batch_size: int) -> int:
    """0 when a batch loads in this process faster than ``WORKER_BREAK_EVEN_S``; else one worker per core (<= 4).

    Measured on 2 cores (a 5-32-32-1 MLP, batch 50, 3,600 rows with an artificial per-row cost; ms per
    epoch for 0 / 1 / 2 workers): 0.13 ms per batch: 234 / 848 / 1356; 2.5 ms: 425 / 496 / 363;
    14 ms: 1127 / 1289 / 1032. One worker never paid: the main process waits for each batch it ships.
    """
    if cores() < 2 or load_seconds(dataset, batch_size) < WORKER_BREAK_EVEN_S:
        return 0
    return min(cores(), 4)


def eval_batch_size(example: Any, batch_size: int) -> int:
    """``EVAL_BATCH_ROWS``, or fewer when their inputs would pass ``EVAL_BATCH_BYTES``; at least the training batch."""
    x = example[0] if isinstance(example, (tuple, list)) else example
    per_row = x.numel() * x.element_size() if isinstance(x, torch.Tensor) else 1024
    return max(batch_size, min(EVAL_BATCH_ROWS, EVAL_BATCH_BYTES // max(1, per_row)))


class EpochSampler(Sampler):
    """Yields the batches (lists of row indices) set for the current epoch; iterated in the main process,
    so workers need no state."""

    def __init__(self, n: int, batch_size: int) -> None:
        self.n, self.batch_size = n, batch_size
        self.shard: Shard | None = None
        self.batches: list[list[int]] = []

    def set_order(self, order: list[int]) -> None:
        if self.shard is not None:
            mine = [order[p] for p in self.shard.positions]
            self.batches = [mine[a:z] for a, z in self.shard.bounds]
        else:
            bs = self.batch_size
            self.batches = [order[i:i + bs] for i in range(0, self.n, bs)]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class _Batch(list):
    """Row indices of one evaluation batch, and which set they index (0 train, 1 test)."""

    def __init__(self, rows: range, which: int) -> None:
        super().__init__(rows)
        self.which = which


class _BothSets(torch.utils.data.Dataset):
    """Train and test as one Dataset for one evaluation loader (one worker pool); each batch says which set
    it reads, so no per-row lookup (``ConcatDataset``'s bisect) is paid."""

    def __init__(self, train: Any, test: Any) -> None:
        self.sets = (train, test)

    def __len__(self) -> int:
        return sum(len(s) for s in self.sets)

    def __getitems__(self, batch: _Batch) -> list:
        dataset = self.sets[batch.which]
        getitems = getattr(dataset, "__getitems__", None)
        return getitems(list(batch)) if getitems else [dataset[i] for i in batch]


class EvalSampler(Sampler):
    """This rank's rows of the training set, then of the test set, ``batch_size`` at a time."""

    def __init__(self, ranges: list[tuple[int, int]], batch_size: int) -> None:
        self.batches = [_Batch(range(i, min(i + batch_size, stop)), which)
                        for which, (start, stop) in enumerate(ranges) for i in range(start, stop, batch_size)]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class Loaders:
    """The training loader (this epoch's order) and one evaluation loader over both sets.

    Args:
        split: a Split holding ``train_set`` and ``test_set``.
        batch_size: the training batch (rows per optimizer step).
        device: where batches go.
        workers: worker processes; -1 measures (see :func:`choose_workers`).
        eval_batch: rows per evaluation batch; 0 picks the largest that fits (see :func:`eval_batch_size`).
        pin_memory: "auto" (pin for CUDA), "true" or "false".
    """

    def __init__(self, split: Split, batch_size: int, device: torch.device, workers: int = -1, eval_batch: int = 0,
                 pin_memory: str = "auto") -> None:
        self.device, self.split = device, split
        train_set, test_set = split.train_set, split.test_set
        self.workers = choose_workers(train_set, batch_size) if workers < 0 else workers
        self.eval_batch = eval_batch or eval_batch_size(train_set[0], batch_size)
        self.pin = device.type == "cuda" if pin_memory == "auto" else pin_memory == "true"
        self.common = {"num_workers": self.workers, "persistent_workers": self.workers > 0, "pin_memory": self.pin}
        self.sampler = EpochSampler(len(train_set), batch_size)
        self.train_loader = DataLoader(train_set, batch_sampler=self.sampler, **self.common)
        self.both = _BothSets(train_set, test_set)
        self._eval_ranges([(0, len(train_set)), (0, len(test_set))])

    def _eval_ranges(self, ranges: list[tuple[int, int]]) -> None:
        self.eval_sampler = EvalSampler(ranges, self.eval_batch)
        self.eval_loader = DataLoader(self.both, batch_sampler=self.eval_sampler, **self.common)

    def describe(self) -> str:
        """'0 workers, evaluation in batches of 1797, no pinning': what was chosen."""
        return (f"{self.workers} worker{'s' * (self.workers != 1)}, evaluation in batches of {self.eval_batch}, "
                f"{'pinned' if self.pin else 'no pinning'}")

    def shard(self, shard: Shard, rank: int, world: int) -> None:
        """Train on this rank's part of every batch; evaluate this rank's part of each set."""
        from lrctl.data import shard_range

        self.sampler.shard = shard
        self._eval_ranges([shard_range(len(self.split.train_set), rank, world),
                           shard_range(len(self.split.test_set), rank, world)])

    def train(self, order: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.sampler.set_order(order.tolist())
        device, pin = self.device, self.pin
        if device.type == "cpu":  # .to() would return the same tensors: skip the call
            yield from self.train_loader
            return
        for x, y in self.train_loader:
            yield x.to(device, non_blocking=pin), y.to(device, non_blocking=pin)

    def evaluate(self, model: nn.Module, metric_fn: Callable, loss_fn: Callable) -> tuple[torch.Tensor, list[int]]:
        """Sums over the sets of per-batch means weighted by batch size (train, test, train loss), and the
        row counts; no host sync."""
        zero = torch.zeros((), device=self.device)
        metric = [zero, zero]
        loss = zero
        counts = [0, 0]
        sets = [batch.which for batch in self.eval_sampler.batches]
        for b, (x, y) in enumerate(self.eval_loader):
            if self.device.type != "cpu":
                x, y = x.to(self.device, non_blocking=self.pin), y.to(self.device, non_blocking=self.pin)
            pred = model(x)
            s, rows = sets[b], len(x)
            metric[s] = metric[s] + metric_fn(pred, y) * rows
            if s == 0:
                loss = loss + loss_fn(pred, y) * rows
            counts[s] += rows
        return torch.stack([metric[0], metric[1], loss]), [counts[0], counts[1], counts[0]]
