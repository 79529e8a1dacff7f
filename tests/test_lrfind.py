"""The lr finder on the lesson, cheaply: where it lands, when it says it cannot tell, and that it changes nothing.

The full comparison with the 10-epoch truth on five workloads is a benchmark (``python -m lrctl.lrtruth``).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from lrctl.config import RunConfig, with_overrides
from lrctl.engine import Trainer
from lrctl.lrfind import STEP, Trial, _Probe, range_test, suggest
from lrctl.schedules import parse
from tests.conftest import assert_states_equal, read_scalars
from tests.test_repl import _feed


def test_fresh_lesson_finder_changes_nothing_and_suggests_from_its_trials():
    trainer = Trainer(RunConfig())  # the defaults users get: the lesson's own batch order
    state = copy.deepcopy(trainer.state_dict())
    result = range_test(trainer)
    assert_states_equal(trainer.state_dict(), state)  # weights, optimizer, schedule, step, RNG, order: untouched
    assert result.flat is None and result.low <= result.suggestion <= result.high
    assert len(result.trials) == 2
    winner = min(result.trials, key=lambda t: t.loss)
    assert result.suggestion == min(t.lr for t in result.trials if t.loss <= winner.loss + winner.noise + t.noise)
    assert [t.lr for t in result.trials][:2] == pytest.approx([result.knee, result.knee * STEP])
    assert result.knee <= result.best
    # 10 epochs at 0.02..0.1 end within ~10% of the best of a 1e-4..1 grid on most batch orders (lrtruth).
    assert 0.02 <= result.suggestion <= 0.1


def test_a_trial_trains_what_the_run_would_train_next():
    trainer = Trainer(RunConfig())
    state = copy.deepcopy(trainer.state_dict())
    probe = _Probe(trainer)
    trial = probe.trial(0.03)
    after_trial = probe.measure()  # the trainer stands where the trial ended until the probe restores it
    probe.restore()
    assert_states_equal(trainer.state_dict(), state)
    trainer.start_schedule(parse("0.03"), 2)
    trainer.fit_rec(2)  # the run's own next two epochs at the same lr
    assert probe.measure() == pytest.approx(after_trial, rel=1e-5)
    assert math.isfinite(trial.loss) and trial.noise >= 0


def test_a_flat_sweep_says_it_cannot_tell_and_why():
    result = range_test(Trainer(RunConfig()), start=1e-7, end=1e-5, batches=30)
    assert result.suggestion is None
    assert result.flat.startswith("flat from 1e-07 to 1e-05: the loss moved less than the sweep can tell")
    assert "any lr in that range is as good after one pass" in result.flat
    assert "sweep higher" in result.flat  # the whole range was flat: say where to look
    assert result.summary().startswith("no suggestion: flat from")


def test_suggestion_is_the_trial_that_trains_best_with_its_band():
    lrs = [10 ** (-4 + i / 10) for i in range(41)]  # 1e-4..1
    losses = [10 - 8 * min(1.0, (i / 30) ** 2) + (max(0, i - 33) ** 2) for i in range(41)]  # lowest at i=30..33
    trials = [Trial(0.05, 3.0, 0.1), Trial(0.02, 2.0, 0.1), Trial(0.01, 2.5, 0.1), Trial(0.005, 4.0, 0.1)]
    result = suggest(lrs, losses, 10.0, trials)
    assert result.best == pytest.approx(lrs[30], rel=0.3)
    assert result.knee == lrs[29]  # the first point 90% of the way down: 10 - 8 * (i / 30) ** 2 <= 10 - 0.9 * 8
    assert (result.suggestion, result.low, result.high, result.note) == (0.02, 0.02, 0.02, None)
    assert "2 epochs from here at 0.05 / 0.02 / 0.01 / 0.005 leave the loss at 3 / 2 / 2.5 / 4" in result.summary()
    assert result.marks() == {"suggested": 0.02}
    # Within each other's scatter: the band holds both, and the lower is suggested.
    alike = suggest(lrs, losses, 10.0, [Trial(0.05, 2.0, 0.3), Trial(0.02, 2.4, 0.3)])
    assert (alike.suggestion, alike.low, alike.high) == (0.02, 0.02, 0.05)
    assert "cannot tell 0.02 from 0.05 after 2 epochs" in alike.note and "(band 0.02..0.05)" in alike.summary()
    larger = suggest(lrs, losses, 10.0, [Trial(0.05, 1.0, 0.01), Trial(0.02, 2.0, 0.01)])
    assert larger.suggestion == 0.05 and "a larger one may do as well" in larger.note
    lower = suggest(lrs, losses, 10.0, [Trial(0.05, 2.0, 0.01), Trial(0.02, 1.0, 0.01)])
    assert lower.suggestion == 0.02 and "a lower one may do better still" in lower.note
    with pytest.raises(ValueError, match="every trial diverged"):
        suggest(lrs, losses, 10.0, [Trial(0.05, math.inf, math.inf), Trial(0.02, math.inf, math.inf)])


def test_trainer_batches_are_the_epochs_order_without_moving_the_step():
    # The seeded order (the point here): any epoch's order, out of turn, is a pure function of (seed, epoch).
    trainer = Trainer(with_overrides(RunConfig(), ['train.order="seeded"']))
    first = [x for x, _ in trainer.batches(3)]
    assert trainer.global_step == 0
    trainer.global_step = 3
    assert all(torch.equal(a, b) for a, b in zip(first, (x for x, _ in trainer._batches()), strict=True))
    assert not torch.equal(first[0], next(iter(trainer.batches(4)))[0])


def test_find_at_the_prompt_takes_the_find_lr_options(tmp_path):
    keys = "y\r2\rfind start=1e-7 end=1e-5\rfind end=0.1 batches=40\r\rn\r"
    _, session, out = _feed(tmp_path, keys, name="p")
    assert "no suggestion: flat from 1e-07 to 1e-05" in out
    line = next(x for x in out.splitlines() if x.startswith("suggested lr:"))
    suggestion = float(line.split()[2].rstrip(","))
    assert [h["lr"] for h in session.trainer.history] == pytest.approx([suggestion] * 2, rel=1e-6)
    sweep = read_scalars(tmp_path / "_lr-find" / "p-e0")["lr_find/lr"]
    assert len(sweep) == 40 and sweep[-1][1] == pytest.approx(0.1, rel=1e-6)


def test_the_finder_sweeps_a_dataset_source_and_restores_it(tmp_path):
    from lrctl.config import load
    from tests.test_sources import FACTORY

    (tmp_path / "mine.py").write_text(FACTORY)
    (tmp_path / "f.toml").write_text('[data]\nsource = "factory"\nfactory = "mine.py:dataset_data"\n'
                                     '[model]\nkind = "factory"\nfactory = "mine.py:model"\n')
    trainer = Trainer(load(tmp_path / "f.toml")[0])
    assert not trainer.split.in_memory  # the DataLoader path: rows gathered from the Dataset
    state = copy.deepcopy(trainer.state_dict())
    result = range_test(trainer, batches=20)
    assert_states_equal(trainer.state_dict(), state)
    assert len(result.lrs) >= 5 and result.start_loss == pytest.approx(trainer.evaluate()[2], rel=1e-5)
