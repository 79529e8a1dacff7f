"""The lesson workload's facts, determinism, the lesson's result, the sync-free batch loop, divergence."""

from __future__ import annotations

import inspect
import statistics

import pytest
import torch

from lrctl import data
from lrctl.config import RunConfig, with_overrides
from lrctl.engine import Diverged, Trainer
from lrctl.schedules import parse
from lrctl.session import Observer, RunSession
from tests.conftest import assert_states_equal, read_checkpoint, read_scalars


def fit(trainer: Trainer, plan):
    records = []
    for epochs, expression in plan:
        trainer.start_schedule(parse(expression), epochs)
        records += trainer.fit_rec(epochs)
    return records


def test_lesson_data_matches_the_reference_recipe():
    split = data.build_split(RunConfig())
    torch.manual_seed(420)
    x = torch.randn(1000, 5)
    noise = torch.randn(1000, 1) * 0.01
    y = (x**2) @ torch.tensor([[2.0], [-1.0], [3.0], [1.0], [2.0]]) + noise
    order = torch.randperm(1000)
    assert torch.equal(split.x_train, x[order[:700]]) and torch.equal(split.y_test, y[order[700:]])
    assert split.x_train.shape == (700, 5) and split.y_train.shape == (700, 1) and split.x_test.shape == (300, 5)
    assert split.y_train.dtype == torch.float32


def test_random_split_semantics():
    split = data.build_split(RunConfig())
    torch.manual_seed(420)
    x = torch.randn(1000, 5)
    torch.randn(1000, 1)
    subsets = torch.utils.data.random_split(torch.utils.data.TensorDataset(x), [700, 300])
    assert torch.equal(split.x_train, x[torch.tensor(subsets[0].indices)])


def test_lesson_model_and_batches():
    trainer = Trainer(RunConfig())
    assert trainer.n_params == 65
    assert trainer.batches_per_epoch == 14
    names = [n for n, _ in trainer.model.named_children() if n != "dropout"]
    assert names[:5] == ["linear1", "normalize1", "linear2", "normalize2", "linear3"]
    torch.manual_seed(24)
    reference = torch.nn.Linear(5, 4)
    assert torch.equal(trainer.model.linear1.weight, reference.weight)


def test_constant_predictor_mse_is_in_the_stated_range():
    """'About 34-38': the labels' variance is 38 in expectation (sum of w_i^2 * Var(x^2)); this draw gives ~34."""
    split = data.build_split(RunConfig())
    for y in (split.y_train, split.y_test):
        mse = ((y - y.mean()) ** 2).mean().item()
        assert 33.5 <= mse <= 38.5


def test_epoch_order_is_a_pure_function_of_seed_and_epoch():
    a = data.epoch_order(700, 0, 5)
    assert torch.equal(a, data.epoch_order(700, 0, 5))
    assert not torch.equal(a, data.epoch_order(700, 0, 6))
    assert not torch.equal(a, data.epoch_order(700, 1, 5))


def test_training_is_deterministic_for_fixed_seeds():
    a, b = (fit(Trainer(RunConfig()), [(5, "0.03")]) for _ in range(2))
    assert [r.history_entry() for r in a] == [r.history_entry() for r in b]


def test_lesson_result_lr_decay_beats_constant():
    def tail(plan):
        return statistics.mean(r.train for r in fit(Trainer(RunConfig()), plan)[-10:])

    assert tail([(30, "0.03"), (30, "0.01")]) < tail([(60, "0.03")])


def test_classification_sibling():
    cfg = with_overrides(RunConfig(), ["data.source=\"lesson-classification\""])
    trainer = Trainer(cfg)
    assert trainer.split.x_train.shape == (1050, 2) and trainer.split.y_train.dtype == torch.long
    records = fit(trainer, [(3, "0.1")])
    assert 0.3 < records[-1].train <= 1.0


SYNCING = ["item", "tolist", "__float__", "__int__", "__bool__", "cpu", "numpy", "__repr__", "__format__"]


def test_batch_loop_never_reads_tensors_back(monkeypatch):
    """A CPU-side equivalent of CUDA's sync debug mode: any host read inside _run_batches fails."""
    loop = Trainer._run_batches.__code__
    hits = []

    def guard(name):
        original = getattr(torch.Tensor, name)

        def wrapper(self, *args, **kwargs):
            frame = inspect.currentframe().f_back
            while frame is not None:
                if frame.f_code is loop:
                    hits.append(name)
                    raise AssertionError(f"Tensor.{name} called inside the batch loop")
                frame = frame.f_back
            return original(self, *args, **kwargs)

        return wrapper

    for name in SYNCING:
        monkeypatch.setattr(torch.Tensor, name, guard(name))
    for expression in ("0.03", "cyclic 0.001 0.03", "plateau 0.03"):
        trainer = Trainer(RunConfig())
        trainer.start_schedule(parse(expression), 2)
        trainer.fit_rec(2, on_batch_end=lambda b, n: None)
    assert hits == []


def test_the_sync_guard_catches_a_syncing_loop(monkeypatch):
    """The guard above is real: a batch loop with a per-batch .item() trips it."""
    original = Trainer._run_batches

    def syncing(self, on_batch_end):
        def each(b, n):
            self.model.linear1.weight.sum().item()
        return original(self, each)

    trainer = Trainer(RunConfig())
    trainer.start_schedule(parse("0.03"), 1)
    calls = []
    real_item = torch.Tensor.item

    def spy(self):
        if any(f.f_code is original.__code__ for f in _frames()):
            calls.append(1)
        return real_item(self)

    monkeypatch.setattr(torch.Tensor, "item", spy)
    monkeypatch.setattr(Trainer, "_run_batches", syncing)
    trainer.fit_rec(1)
    assert len(calls) == 14


def _frames():
    frame = inspect.currentframe()
    while frame is not None:
        yield frame
        frame = frame.f_back


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_batch_loop_is_sync_free_on_cuda():
    trainer = Trainer(with_overrides(RunConfig(), ["train.device=\"cuda\""]))
    trainer.start_schedule(parse("cyclic 0.001 0.03"), 1)
    torch.cuda.set_sync_debug_mode("error")
    try:
        trainer._run_batches(None)
    finally:
        torch.cuda.set_sync_debug_mode(0)


def test_divergence_raises_and_records_nothing():
    trainer = Trainer(RunConfig())
    trainer.start_schedule(parse("1000"), 5)
    with pytest.raises(Diverged) as info:
        trainer.fit_rec(5)
    assert info.value.record.lr == 1000
    assert len(trainer.history) == info.value.record.step


def test_divergence_rolls_back_to_the_last_finite_checkpoint_and_continues(tmp_path):
    session = RunSession.open(tmp_path, "nan", RunConfig(), save_every=1e9)
    session.load()
    assert session.train(5, "0.03").status == "done"
    saved = {k: v.clone() for k, v in session.trainer.model.state_dict().items()}
    outcome = session.train(20, "1e6")
    assert outcome.status == "diverged" and outcome.lr == 1e6 and outcome.step == 5
    assert all(torch.equal(saved[k], v) for k, v in session.trainer.model.state_dict().items())
    assert session.pending is None
    assert session.train(3, "0.01").status == "done"
    session.close()
    scalars = read_scalars(tmp_path / "nan")
    assert [s for s, _ in scalars["lr"]] == list(range(8))
    assert [v for _, v in scalars["lr"]][5:] == pytest.approx([0.01] * 3)
    assert all(v == v and abs(v) < 1e30 for _, v in scalars["train_mse"])  # nothing non-finite logged


def test_an_error_mid_epoch_never_saves_the_half_trained_weights(tmp_path):
    session = RunSession.open(tmp_path, "torn", RunConfig(), save_every=1e9)
    session.load()
    assert session.train(2, "0.03").status == "done"
    saved = read_checkpoint(tmp_path / "torn" / "checkpoint.pt")
    class CrashInTheThirdEpoch(Observer):  # a user's callback (or model) failing at a batch boundary
        wants_batches = True
        calls = 0

        def batch_done(self, batch: int, batches: int) -> None:
            self.calls += 1
            if self.calls == 2 * session.trainer.batches_per_epoch + 3:  # two more epochs done, then 3 batches
                raise RuntimeError("a user model's bug")

    session.observer = CrashInTheThirdEpoch()
    with pytest.raises(RuntimeError):
        session.train(5, "0.03")
    assert session.trainer.global_step == 4 and session.trainer.torn
    session.close("crash")  # must not save epoch 4's number over weights three batches into epoch 4
    after = read_checkpoint(tmp_path / "torn" / "checkpoint.pt")
    assert after["global_step"] == 2
    assert_states_equal(saved, after)


def test_the_trainer_trains_with_its_own_thread_count_on_whichever_thread_trains():
    """torch's thread count is per OS thread: a trainer built on a loader thread (as the CLI builds it) still
    trains its small model on one thread on the main thread (it trained on all cores, and its numbers
    differed from the same run built on the main thread)."""
    import threading

    built = []
    loader = threading.Thread(target=lambda: built.append(Trainer(with_overrides(RunConfig(), ["data.rows=300"]))))
    loader.start()
    loader.join()
    trainer = built[0]
    torch.set_num_threads(2)  # what this thread had (all cores, by default)
    trainer.start_schedule(parse("0.03"), 1)
    seen = []
    trainer.fit_rec(1, on_batch_end=lambda b, n: seen.append(torch.get_num_threads()))
    assert trainer.threads == 1 and set(seen) == {1}
