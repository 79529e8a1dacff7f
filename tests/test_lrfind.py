"""The lr finder on the lesson, cheaply: where it lands, when it says it cannot tell, and that it changes nothing;
its rules (the ladder, the horizon rung, "cannot tell") on made-up numbers.

The full comparison with the 10-epoch truth on five workloads is a benchmark (``python -m lrctl.lrtruth``).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from lrctl.config import RunConfig, with_overrides
from lrctl.engine import Trainer
from lrctl.lrfind import (
    EARLY,
    NOISY,
    SAME,
    STEEP,
    STEP,
    Trial,
    _Probe,
    first_trial,
    flat_and_early,
    ladder,
    range_test,
    scout,
    suggest,
)
from lrctl.schedules import parse
from tests.conftest import assert_states_equal, read_scalars
from tests.test_repl import _feed


def test_fresh_lesson_finder_changes_nothing_and_says_two_epochs_cannot_rank_its_lrs():
    trainer = Trainer(RunConfig())  # the defaults users get: the lesson's own batch order
    state = copy.deepcopy(trainer.state_dict())
    result = range_test(trainer)
    assert_states_equal(trainer.state_dict(), state)  # weights, optimizer, schedule, step, RNG, order: untouched
    assert result.flat is None
    assert 3 <= len(result.trials) <= 5  # a ladder that brackets the two-epoch best (and, here, no scout)
    lrs = sorted(t.lr for t in result.trials)
    assert all(b / a == pytest.approx(1 / STEP) for a, b in zip(lrs, lrs[1:], strict=False))  # a third of a decade
    winner = min(result.trials, key=lambda t: t.loss)
    assert result.high == winner.lr and result.suggestion == result.low == pytest.approx(winner.lr * STEP)
    assert result.knee <= min(lrs) / STEP ** 2 and max(lrs) >= result.knee  # the ladder starts near the knee
    # Two epochs take the MSE from 90 to about 30 and the rungs around the best end within 10% of it: the
    # fresh lesson's ten-epoch result jumps by +-15% with a 1.2x change of lr there (lrtruth), and it says so.
    assert flat_and_early(result.trials, winner, result.start_loss)
    assert result.cannot_tell.startswith("the trials from ")
    assert "this early in training their ranking says nothing about where ten epochs end" in result.cannot_tell
    assert 0.02 <= result.suggestion <= 0.1  # still a fair start: 0.02..0.1 end within ~15% of the grid's best
    assert result.summary().startswith("cannot tell: the trials from ")
    assert f"\nsuggested lr: {result.suggestion:.3g}, only as the safe end · 2 epochs from here at " in result.summary()


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


LRS = [10 ** (-4 + i / 10) for i in range(41)]  # a made-up sweep 1e-4..1, lowest at i=30..33
LOSSES = [10 - 8 * min(1.0, (i / 30) ** 2) + (max(0, i - 33) ** 2) for i in range(41)]


def rungs(top: float, losses: list[float], noise: float = 0.01) -> list[Trial]:
    """Made-up trials a rung apart from ``top`` down, with these losses (the winner's scatter small)."""
    return [Trial(top * STEP ** i, loss, noise) for i, loss in enumerate(losses)]


def test_the_suggestion_is_a_rung_below_the_two_epoch_winner_with_the_band_up_to_it():
    result = suggest(LRS, LOSSES, 10.0, rungs(0.1, [3.0, 2.0, 2.5]))
    assert result.best == pytest.approx(LRS[30], rel=0.3)
    assert result.knee == LRS[29]  # the first point 90% of the way down: 10 - 8 * (i / 30) ** 2 <= 10 - 0.9 * 8
    assert (result.suggestion, result.low, result.high) == pytest.approx((0.1 * STEP ** 2,) * 2 + (0.1 * STEP,))
    assert (result.cannot_tell, result.note) == (None, None)
    assert result.marks() == {"suggested": result.suggestion, "2-epoch best": result.high}
    assert "2 epochs from here at 0.1 / 0.046 / 0.022 leave the loss at 3 / 2 / 2.5 (it is 10)" in result.summary()
    assert "0.046 trained best over 2 epochs" in result.summary()
    with pytest.raises(ValueError, match="every trial diverged"):
        suggest(LRS, LOSSES, 10.0, rungs(0.1, [math.inf, math.inf], math.inf))


def test_it_cannot_tell_where_the_suggestion_is_a_lottery_or_the_ladder_did_not_bracket_the_best():
    # The trial at the suggestion still jumps by more than NOISY of its loss between its last steps.
    noisy = rungs(0.1, [3.0, 2.0, 2.5])
    noisy[2].noise = 2.5 * NOISY * 1.1
    result = suggest(LRS, LOSSES, 10.0, noisy)
    assert result.suggestion == pytest.approx(noisy[2].lr)  # still given: the band's safe end
    assert result.cannot_tell.startswith("between 0.022 and 0.046 where ten epochs end depends on the batch order")
    assert f"jumps by ±{1.1 * NOISY:.0%}" in result.cannot_tell
    assert result.summary().startswith("cannot tell: between 0.022 and 0.046")
    assert "\nsuggested lr: 0.0215, only as the safe end · 2 epochs" in result.summary()
    # The rung below ended more than STEEP above the winner (custom-factory: 12..115%; elsewhere at most 31%).
    steep = suggest(LRS, LOSSES, 10.0, rungs(0.1, [0.16, 0.12, 0.12 * (1 + STEEP) * 1.1]))
    assert steep.suggestion == pytest.approx(0.1 * STEP ** 2)  # still the rung below, as the safer end
    assert steep.cannot_tell.startswith("over 2 epochs the loss at 0.022 (0.198) ended 65% above that at 0.046 (0.12)")
    assert suggest(LRS, LOSSES, 10.0, rungs(0.1, [0.16, 0.12, 0.12 * (1 + STEEP) * 0.9])).cannot_tell is None
    # Still improving at the top of the ladder, below the end asked for: the best lies above.
    up = suggest(LRS, LOSSES, 10.0, rungs(0.1, [1.0, 2.0, 2.5]), end=1.0)
    assert up.suggestion == pytest.approx(0.1 * STEP)
    assert "still improving at the largest lr tried (0.1)" in up.cannot_tell
    # ... unless the next rung is past the end: then it only says a larger lr may do as well.
    at_end = suggest(LRS, LOSSES, 10.0, rungs(0.1, [1.0, 1.2, 1.5]), end=0.1)
    assert at_end.cannot_tell is None and "(0.1, the end of the range) trained best" in at_end.note
    down = suggest(LRS, LOSSES, 10.0, rungs(0.1, [3.0, 2.0, 1.0]))
    assert "still improving at the lowest lr tried (0.022)" in down.cannot_tell
    assert down.suggestion == pytest.approx(0.1 * STEP ** 3)  # a rung below, untried (it says so)
    # A scout far above the ladder trained best: the sweep's lowest point was a plateau.
    plateau = suggest(LRS, LOSSES, 10.0, [Trial(0.05, 1.0, 0.01), *rungs(0.004, [2.0, 1.9, 2.1])])
    assert plateau.cannot_tell.startswith("a trial at 0.05, near the top of the sweep's usable range, trained better")
    assert plateau.suggestion == pytest.approx(0.05 * STEP)


def test_it_cannot_tell_where_three_rungs_end_alike_early_in_training():
    def three(spread: float) -> list[Trial]:
        """Three rungs from 0.1 down, the middle one best at 31, its neighbours ``spread`` worse."""
        return rungs(0.1, [31 * (1 + spread), 31.0, 31 * (1 + spread)])

    # The fresh lesson: two epochs took the MSE from 90 to 31 and three rungs end within 10% of each other.
    lottery = suggest(LRS, LOSSES, 90.0, three(SAME / 2))
    assert lottery.suggestion == pytest.approx(0.1 * STEP ** 2)  # still the rung below, as a fair start
    assert lottery.cannot_tell.startswith("the trials from 0.022 to 0.1 end within 10% of each other after 2 epochs, "
                                          "which took the loss from 90 to 31: this early in training")
    assert lottery.summary().startswith("cannot tell: the trials from 0.022")
    # Near its floor (the lesson after 20 epochs: flat too, but little left to fall): every lr of the band is as good.
    near_floor = 31.0 / (1 - EARLY) * 0.99  # two epochs took the loss down by a little less than EARLY
    assert suggest(LRS, LOSSES, near_floor, three(SAME / 2)).cannot_tell is None
    # Early, but the rungs are told apart (diabetes, classification): the ranking holds.
    assert suggest(LRS, LOSSES, 90.0, three(2 * SAME)).cannot_tell is None
    # A neighbour missing (the top of the range, or the ladder stopped at the winner): no claim.
    two = three(SAME / 2)[:2]
    assert not flat_and_early(two, two[1], 90.0)
    trials = three(SAME / 2)
    assert flat_and_early(trials, trials[1], 90.0)


def test_the_ladder_climbs_toward_the_two_epoch_best_and_stops_where_it_turns_or_at_its_limits():
    def trial_of(best: float):
        tried = []

        def trial(lr: float) -> Trial:
            tried.append(lr)
            return Trial(lr, (math.log10(lr / best)) ** 2, 0.001)
        return trial, tried

    trial, tried = trial_of(0.01)
    ladder(1.0, trial)  # down from 1: 1, 0.46, 0.22, 0.1 -- the limit of four, still improving
    assert tried == pytest.approx([STEP ** i for i in range(4)])
    trial, tried = trial_of(0.01)
    ladder(0.03, trial)  # down: 0.03, 0.014, 0.0064 (worse than 0.014): bracketed
    assert tried == pytest.approx([0.03, 0.03 * STEP, 0.03 * STEP ** 2])
    trial, tried = trial_of(0.5)
    trials = ladder(0.1, trial, end=0.5)  # up from 0.1 (0.046 is worse) to 0.22 and 0.46; 1.0 is past the end
    assert tried == pytest.approx([0.1, 0.1 * STEP, 0.1 / STEP, 0.1 / STEP ** 2])
    assert len(trials) == 4
    trial, tried = trial_of(0.01)
    ladder(0.02, lambda lr: Trial(lr, math.inf, math.inf) if lr > 0.015 else trial(lr))  # diverged at the start
    assert tried == pytest.approx([0.02 * STEP, 0.02 * STEP ** 2])  # goes down, and stops where it turns


def test_where_the_ladder_starts_and_when_a_scout_goes_above_it():
    start = first_trial(LRS, LOSSES, 10.0)
    assert start == pytest.approx(math.sqrt(LRS[29] * LRS[30]), rel=0.3)  # between the knee and the lowest point
    flat = [10.0 - 0.01 * (i % 2) for i in range(30)] + [10.5, 11, 12, 14, 20]
    assert first_trial(LRS[:35], flat, 10.0) == LRS[29]  # the top of the flat range (median of 5): then it rises
    assert first_trial(LRS[:30], flat[:30], 10.0) is None  # flat to the end: nothing to start from
    # The sweep's loss stays under its start up to i=35 (0.32): a scout two rungs below, when above the ladder.
    assert scout(LRS, LOSSES, 10.0, rungs(0.004, [2.0, 1.9, 2.1])) == pytest.approx(LRS[35] * STEP ** 2)
    assert scout(LRS, LOSSES, 10.0, rungs(0.1, [2.0, 1.9, 2.1])) is None  # not more than a rung above 0.1


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
