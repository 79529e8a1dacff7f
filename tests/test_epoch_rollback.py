"""Abandon (Ctrl-C twice) and divergence go back to the exact state of the epoch's start: model, optimizer
(momentum), schedule, RNG; and what follows continues bit-identical to a run that was never interrupted.

The epoch boundary is held by reference and copied only when the next epoch starts
(:class:`lrctl.snapshot.EpochSnapshot`): these pin down that every place a second Ctrl-C can land (an
epoch's first batches, a later epoch of the chunk, the evaluation) and a divergence in a chunk's first or
second epoch still find the boundary as it was, with an optimizer whose state changes in place.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from lrctl.config import RunConfig, with_overrides
from lrctl.plan import requests
from lrctl.reports import Observer
from lrctl.session import RunSession
from tests.conftest import assert_states_equal, read_scalars

NEVER = float("inf")
# 5 batches an epoch; momentum: optimizer state that every step changes in place
OVERRIDES = ["data.rows=300", "train.momentum=0.9"]
PLAN = [(2, "0.003"), (3, "cos 0.01")]


class Recorder(Observer):
    """Each epoch boundary's state (a deep copy); raises KeyboardInterrupt, as the second Ctrl-C does,
    after batch ``at[1]`` of epoch ``at[0]``."""

    wants_batches = True

    def __init__(self, at: tuple[int, int] | None = None) -> None:
        self.session: RunSession | None = None
        self.at = at
        self.states: dict[int, dict[str, Any]] = {}

    def batch_done(self, batch: int, batches: int) -> None:
        if self.at is not None and (self.session.trainer.global_step, batch) == self.at:
            self.at = None
            raise KeyboardInterrupt

    def epoch_done(self, record, metric) -> None:
        trainer = self.session.trainer
        self.states[trainer.global_step] = copy.deepcopy(trainer.state_dict())


def _open(runs, name: str, at: tuple[int, int] | None = None, save_every: float = NEVER):
    observer = Recorder(at)
    session = RunSession.open(runs, name, with_overrides(RunConfig(), OVERRIDES), save_every=save_every,
                              observer=observer)
    observer.session = session
    session.load()
    return session, observer


def _reference(runs, plan=PLAN) -> tuple[dict[int, dict[str, Any]], dict[str, Any]]:
    session, observer = _open(runs, "ref")
    session.run_plan(requests(plan))
    final = copy.deepcopy(session.trainer.state_dict())
    session.close()
    return observer.states, final


def _same_training(a: dict[str, Any], b: dict[str, Any]) -> None:
    """Model, optimizer state (momentum buffers), RNG, step and history (the schedule object may differ)."""
    assert_states_equal({**a, "optimizer": a["optimizer"]["state"], "schedule": None},
                        {**b, "optimizer": b["optimizer"]["state"], "schedule": None})


@pytest.mark.parametrize("where", ["a chunk's first epoch, batch 1", "a later epoch of the chunk, batch 3",
                                   "the evaluation after the last batch"])
def test_an_abandoned_epoch_goes_back_exactly_and_the_chunk_then_ends_as_if_never_stopped(tmp_path, where):
    runs = tmp_path / "runs"
    states, final = _reference(runs)
    session, observer = _open(runs, "r", at={"a chunk's first epoch, batch 1": (2, 1),
                                             "a later epoch of the chunk, batch 3": (3, 3)}.get(where))
    if where.startswith("the evaluation"):
        evaluate = session.trainer.evaluate

        def interrupted_in_epoch_3():
            if session.trainer.global_step == 3 and not hasattr(session, "_h28_interrupted"):
                session._h28_interrupted = True
                raise KeyboardInterrupt
            return evaluate()

        session.trainer.evaluate = interrupted_in_epoch_3
    epoch = 2 if "first" in where else 3
    outcome = session.run_plan(requests(PLAN))
    assert (outcome.status, outcome.step, outcome.dropped) == ("abandoned", epoch, 0)
    assert_states_equal(session.trainer.state_dict(), states[epoch])
    assert session.finish_pending().status == "done"  # the rest of the command, from that epoch's start
    assert_states_equal(session.trainer.state_dict(), final)
    session.close()
    assert read_scalars(runs / "r") == read_scalars(runs / "ref")  # each epoch once, the same values


@pytest.mark.parametrize("epoch_of_chunk", [1, 2])
def test_a_divergence_goes_back_exactly_to_its_epochs_start_and_the_next_chunk_continues(tmp_path, epoch_of_chunk):
    """lr 1e4 in the chunk's first epoch, or after one epoch at 0.003 (piecewise) in its second."""
    runs = tmp_path / "runs"
    prefix = [(2, "0.003")] + ([(1, "0.003")] if epoch_of_chunk == 2 else [])
    states, final = _reference(runs, prefix + [(2, "0.001")])
    diverging = "1e4" if epoch_of_chunk == 1 else "piecewise 0.003:1 1e4"
    session, _ = _open(runs, "r", save_every=0)  # a checkpoint every epoch: the diverged one is never saved
    outcome = session.run_plan(requests([(2, "0.003"), (3, diverging)]))
    start = 1 + epoch_of_chunk
    assert (outcome.status, outcome.step) == ("diverged", start)
    _same_training(session.trainer.state_dict(), states[start])
    assert session.train(2, "0.001").status == "done"
    _same_training(session.trainer.state_dict(), final)
    session.close()
    again, _ = _open(runs, "r")  # and from disk
    _same_training(again.trainer.state_dict(), final)
    again.close()
    assert read_scalars(runs / "r") == read_scalars(runs / "ref")


def test_ctrl_c_twice_while_a_chunk_starts_abandons_its_first_epoch_before_it_trains(tmp_path):
    """Both presses between 'training epochs ...' and the first batch (the chunk's keep save, the progress
    bars; a few hundred ms on a big model, found through a pseudo-terminal). Before: the second press was
    dropped, the first one trained a whole epoch and the chunk 'stopped at epoch 3'."""
    from lrctl.repl import ChunkInterrupts

    class Warnings:
        def __init__(self) -> None:
            self.said: list[str] = []

        def warn(self, text: str) -> None:
            self.said.append(text)

    runs = tmp_path / "runs"
    _, final = _reference(runs, [(2, "0.003"), (3, "0.001")])
    session, observer = _open(runs, "r")
    session.train(2, "0.003")
    before = copy.deepcopy(session.trainer.state_dict())
    view = Warnings()
    interrupts = ChunkInterrupts(session, view)
    observer.chunk_started = lambda *args: (interrupts.press(from_signal=True), interrupts.press(from_signal=True))
    outcome = session.train(3, "0.001")
    assert (outcome.status, outcome.step, outcome.dropped) == ("abandoned", 2, 0), view.said
    assert_states_equal(session.trainer.state_dict(), before)
    assert session.pending is not None and session.pending.chunks[0]["epochs"] == 3  # the command stays pending
    observer.chunk_started = lambda *args: None
    assert session.finish_pending().status == "done"
    assert_states_equal(session.trainer.state_dict(), final)
    session.close()
    assert read_scalars(runs / "r") == read_scalars(runs / "ref")


def test_a_divergence_in_an_epoch_resumed_mid_way_leaves_a_run_that_can_train_again(tmp_path):
    """A mid-epoch checkpoint in an epoch that is going to diverge (weights still finite at the save), a
    ``kill -9``, a resume: the epoch diverges. Its start was never in this process's memory; it goes back
    there through the chunk's kept start (before: to where it resumed, batch 1, and every later command
    first finished that torn epoch at lr 3000 and diverged again: the run could not train until an undo)."""
    from tests.test_lifecycle import SimKill, simulate_kill

    runs = tmp_path / "runs"
    session, observer = _open(runs, "r")

    def killed_after_a_mid_epoch_save(batch: int, batches: int) -> None:
        if (session.trainer.global_step, batch) == (2, 1):
            session.save_here()
            raise SimKill("after the mid-epoch save")

    observer.batch_done = killed_after_a_mid_epoch_save
    with pytest.raises(SimKill):
        session.run_plan(requests([(2, "0.003"), (3, "3e3")]))
    simulate_kill(session)
    session, _ = _open(runs, "r")
    assert (session.global_step, session.trainer.batch_in_epoch) == (2, 1)
    diverged = session.finish_pending()
    assert (diverged.status, diverged.step, session.trainer.batch_in_epoch) == ("diverged", 2, 0)
    states, _ = _reference(runs, [(2, "0.003")])
    assert_states_equal(session.trainer.state_dict(), states[2])  # the epoch's start, exactly
    outcome = session.train(1, "0.001")
    session.close()
    assert outcome.status == "done", outcome
    assert [step for step, _ in read_scalars(runs / "r")["train_mse"]] == [0, 1, 2]  # each epoch once


def _resumed_mid_epoch(runs, epoch: int, plan):
    """A run killed after a mid-epoch checkpoint at batch 1 of ``epoch``, reopened (as ``lrctl resume``)."""
    from tests.test_lifecycle import SimKill, simulate_kill

    session, observer = _open(runs, "r")

    def killed_after_a_mid_epoch_save(batch: int, batches: int) -> None:
        if (session.trainer.global_step, batch) == (epoch, 1):
            session.save_here()
            raise SimKill("after the mid-epoch save")

    observer.batch_done = killed_after_a_mid_epoch_save
    with pytest.raises(SimKill):
        session.run_plan(requests(plan))
    simulate_kill(session)
    session, observer = _open(runs, "r", at=(epoch, 3))
    assert (session.global_step, session.trainer.batch_in_epoch) == (epoch, 1)
    return session


def test_ctrl_c_twice_in_an_epoch_resumed_mid_way_goes_back_to_its_kept_start(tmp_path):
    """Epoch 2 is its chunk's start, so it is kept: back there exactly, and the command then ends as
    if never stopped."""
    runs = tmp_path / "runs"
    states, final = _reference(runs)
    session = _resumed_mid_epoch(runs, 2, PLAN)
    outcome = session.finish_pending()
    assert (outcome.status, outcome.step, outcome.batch) == ("abandoned", 2, 0)
    assert_states_equal(session.trainer.state_dict(), states[2])
    assert session.finish_pending().status == "done"
    assert_states_equal(session.trainer.state_dict(), final)
    session.close()
    assert read_scalars(runs / "r") == read_scalars(runs / "ref")


def test_ctrl_c_twice_in_an_epoch_resumed_mid_way_whose_start_is_not_kept_says_where_it_stays(tmp_path):
    """Epoch 3 is inside its chunk (not kept, not in memory): the run stays where it resumed the epoch,
    and says so (it used to say "back to where it began")."""
    from lrctl.view import View

    runs = tmp_path / "runs"
    _, final = _reference(runs)
    session = _resumed_mid_epoch(runs, 3, PLAN)
    outcome = session.finish_pending()
    assert (outcome.status, outcome.step, outcome.batch) == ("abandoned", 3, 1)
    said: list[str] = []
    view = View.__new__(View)
    view.progress, view.warn = None, said.append
    View.chunk_ended(view, outcome)
    assert said and "abandoned epoch 3: back to batch 1, where this session resumed it" in said[0]
    assert session.finish_pending().status == "done"
    assert_states_equal(session.trainer.state_dict(), final)
    session.close()
