"""The Dataset path's DataLoaders: measured choices, evaluation over both sets, workers, ranks' shares."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from lrctl import loaders
from lrctl.config import RunConfig, with_overrides
from lrctl.data import Split, shard
from lrctl.engine import Trainer
from lrctl.schedules import parse


class Rows(torch.utils.data.Dataset):
    """A per-item Dataset over in-memory rows (the slow way a user often writes one)."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 3, generator=g)
        self.y = self.x @ torch.tensor([[1.0], [-2.0], [0.5]])

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


class BatchedRows(Rows):
    """One that fetches a whole batch at once (``__getitems__``): the loaders must use it."""

    calls = 0

    def __getitems__(self, rows):
        BatchedRows.calls += 1
        return [(self.x[i], self.y[i]) for i in rows]


def rows_sets():
    return Rows(230, 0), Rows(70, 1)


@pytest.fixture
def rows_factory(monkeypatch):
    module = types.ModuleType("lrctl_test_rows")
    module.sets = rows_sets
    monkeypatch.setitem(sys.modules, "lrctl_test_rows", module)
    return ['data.source="factory"', 'data.factory="lrctl_test_rows:sets"', 'model.batch_norm="none"']


def test_a_batch_that_loads_fast_gets_no_workers_and_a_slow_one_gets_them(monkeypatch):
    assert loaders.choose_workers(Rows(500, 0), 50) == 0  # ~0.1 ms a batch: shipping it would cost more
    monkeypatch.setattr(loaders, "load_seconds", lambda dataset, batch_size: 0.05)
    monkeypatch.setattr(loaders, "cores", lambda: 2)
    assert loaders.choose_workers(Rows(500, 0), 50) == 2
    monkeypatch.setattr(loaders, "cores", lambda: 1)
    assert loaders.choose_workers(Rows(500, 0), 50) == 0  # nowhere to run them


def test_evaluation_batches_are_large_but_bounded_by_the_input_size():
    assert loaders.eval_batch_size((torch.zeros(5), 0), 50) == loaders.EVAL_BATCH_ROWS
    assert loaders.eval_batch_size((torch.zeros(3, 224, 224), 0), 16) == 27  # 16 MiB of 588 KiB images
    assert loaders.eval_batch_size((torch.zeros(3, 224, 224), 0), 64) == 64  # never below the training batch


def test_workers_and_evaluation_batch_change_nothing_but_speed(rows_factory):
    results = []
    for settings in (["train.workers=0"], ["train.workers=2", "train.eval_batch_size=7"]):
        trainer = Trainer(with_overrides(RunConfig(), [*rows_factory, *settings]))
        trainer.start_schedule(parse("0.05"), 3)
        records = trainer.fit_rec(3)
        results.append((records, trainer.model.state_dict()))
    (a, weights_a), (b, weights_b) = results
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    for x, y in zip(a, b, strict=True):
        assert x.train == pytest.approx(y.train, rel=1e-6) and x.test == pytest.approx(y.test, rel=1e-6)


def test_ranks_evaluate_disjoint_shares_that_sum_to_the_whole_sets():
    BatchedRows.calls = 0
    split = Split(None, None, None, None, BatchedRows(103, 0), BatchedRows(41, 1))
    model = torch.nn.Linear(3, 1)
    mse = torch.nn.functional.mse_loss
    whole = loaders.Loaders(split, 10, torch.device("cpu"), workers=0, eval_batch=16)
    sums, counts = whole.evaluate(model, mse, mse)
    assert counts == [103, 41, 103] and BatchedRows.calls == 7 + 3  # 16 rows at a time, never both sets at once
    with torch.no_grad():
        expected = [mse(model(s.x), s.y) * len(s) for s in (split.train_set, split.test_set)]
    assert sums.tolist() == pytest.approx([expected[0].item(), expected[1].item(), expected[0].item()], rel=1e-5)
    shared = torch.zeros(3)
    for rank in range(3):
        part = loaders.Loaders(split, 10, torch.device("cpu"), workers=0, eval_batch=16)
        part.shard(shard(103, 10, rank, 3), rank, 3)
        rank_sums, rank_counts = part.evaluate(model, mse, mse)
        shared += rank_sums.detach()
    assert shared.tolist() == pytest.approx(sums.tolist(), rel=1e-5)


def test_a_sharded_epoch_trains_each_row_of_every_batch_once():
    sampler = loaders.EpochSampler(9, 4)
    order = list(range(100, 109))
    parts = []
    for rank in range(2):
        sampler.shard = shard(9, 4, rank, 2)
        sampler.set_order(order)
        parts.append(list(sampler))
    for b, whole in enumerate([order[0:4], order[4:8], order[8:9]]):
        mine = parts[0][b] + (parts[1][b] if shard(9, 4, 1, 2).scales[b] else [])
        assert sorted(set(mine)) == whole


def test_measuring_the_load_time_draws_nothing_from_the_generators():
    import random

    class Noisy(Rows):
        def __getitem__(self, i):
            return self.x[i] + torch.randn(3) + random.random(), self.y[i]

    torch.manual_seed(0)
    random.seed(0)
    expected = torch.rand(1), random.random()
    torch.manual_seed(0)
    random.seed(0)
    loaders.load_seconds(Noisy(100, 0), 10)
    assert (torch.rand(1), random.random()) == expected
