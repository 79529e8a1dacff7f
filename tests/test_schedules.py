"""Schedules: the grammar, and the lrs used in training (read back from TensorBoard) against torch's own
schedulers or the formula, per epoch and per batch; keep; plateau; resume."""

from __future__ import annotations

import math

import pytest
import torch
from torch.optim import lr_scheduler as L

from lrctl.config import RunConfig
from lrctl.schedules import ScheduleError, parse
from lrctl.session import RunSession
from tests.conftest import read_checkpoint, read_scalars

BPE = 14  # the lesson: 700 training rows in batches of 50


def train(tmp_path, chunks, name="s"):
    session = RunSession.open(tmp_path, name, RunConfig(), save_every=1e9)
    session.load()
    for epochs, expression in chunks:
        outcome = session.train(epochs, expression)
        assert outcome.status == "done"
    session.close()
    return read_scalars(tmp_path / name), read_scalars(tmp_path / name / "batch")


def torch_sequence(make, steps, lr, per_metric=None):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = make(opt)
    out = []
    for i in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step(per_metric[i]) if per_metric is not None else sched.step()
    return out


def values(series):
    return [v for _, v in series]


EPOCHS = 12
PER_EPOCH = {
    "step 0.03 every=4 gamma=0.5": lambda o: L.StepLR(o, 4, 0.5),
    "multistep 0.03 at=3,7 gamma=0.1": lambda o: L.MultiStepLR(o, [3, 7], 0.1),
    "exp 0.05 gamma=0.9": lambda o: L.ExponentialLR(o, 0.9),
    "cos 0.03 min=0.001": lambda o: L.CosineAnnealingLR(o, EPOCHS, 0.001),
    "restarts 0.03 period=3 mult=2": lambda o: L.CosineAnnealingWarmRestarts(o, 3, 2),
    "linear 0.03 0.001": lambda o: L.LinearLR(o, 1.0, 0.001 / 0.03, EPOCHS),
}


@pytest.mark.parametrize("expression", list(PER_EPOCH))
def test_per_epoch_families_match_torch(tmp_path, expression):
    scalars, _ = train(tmp_path, [(EPOCHS, expression)])
    base = parse(expression).base_lr
    assert values(scalars["lr"]) == pytest.approx(torch_sequence(PER_EPOCH[expression], EPOCHS, base), rel=1e-6)


def test_power_and_piecewise_match_their_formulas(tmp_path):
    scalars, _ = train(tmp_path, [(8, "power 0.03 s=2 c=1.5"), (8, "piecewise 0.03:3 0.01:2 0.001")])
    power = [0.03 / (1 + t / 2) ** 1.5 for t in range(8)]
    piecewise = [0.03] * 3 + [0.01] * 2 + [0.001] * 3
    assert values(scalars["lr"]) == pytest.approx(power + piecewise, rel=1e-6)


@pytest.mark.parametrize("expression,make", [
    ("cyclic 0.001 0.03 period=2", lambda o: L.CyclicLR(o, 0.001, 0.03, step_size_up=BPE, step_size_down=BPE,
                                                        cycle_momentum=False)),
    ("cyclic 0.001 0.03 period=2 mode=triangular2",
     lambda o: L.CyclicLR(o, 0.001, 0.03, step_size_up=BPE, step_size_down=BPE, mode="triangular2",
                          cycle_momentum=False)),
    ("onecycle 0.05", lambda o: L.OneCycleLR(o, 0.05, total_steps=6 * BPE, cycle_momentum=False)),
])
def test_per_batch_families_match_torch_batch_by_batch(tmp_path, expression, make):
    scalars, batch = train(tmp_path, [(6, expression)])
    expected = torch_sequence(make, 6 * BPE, parse(expression).base_lr)
    assert [s for s, _ in batch["lr_batch"]] == list(range(6 * BPE))
    assert values(batch["lr_batch"]) == pytest.approx(expected, rel=1e-6)
    assert values(scalars["lr"]) == pytest.approx(expected[::BPE], rel=1e-6)  # each epoch's first batch


def test_warmup_then_schedule(tmp_path):
    scalars, _ = train(tmp_path, [(7, "warmup=3 exp 0.04 gamma=0.5")])
    assert values(scalars["lr"]) == pytest.approx([0.01, 0.02, 0.03, 0.04, 0.02, 0.01, 0.005], rel=1e-6)


def test_plateau_lowers_the_lr_after_patience_epochs_without_improvement(tmp_path):
    # A tiny lr makes a plateau: the test metric barely moves, so it stops improving by threshold.
    scalars, _ = train(tmp_path, [(12, "plateau 0.00001 factor=0.5 patience=2 threshold=0.01")])
    expected = torch_sequence(lambda o: L.ReduceLROnPlateau(o, factor=0.5, patience=2, threshold=0.01), 12,
                              1e-5, per_metric=values(scalars["test_mse"]))
    assert values(scalars["lr"]) == pytest.approx(expected, rel=1e-6)
    assert min(values(scalars["lr"])) < 1e-5  # it did react


def test_keep_continues_a_schedule_exactly(tmp_path):
    split, _ = train(tmp_path, [(5, "exp 0.05 gamma=0.9"), (5, "keep")], name="split")
    whole, _ = train(tmp_path, [(10, "exp 0.05 gamma=0.9")], name="whole")
    assert split == whole
    a, b = (read_checkpoint(tmp_path / n / "checkpoint.pt") for n in ("split", "whole"))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_keep_past_a_chunk_length_schedule_holds_its_final_lr(tmp_path):
    scalars, _ = train(tmp_path, [(4, "linear 0.04 0.01"), (3, "keep")])
    assert values(scalars["lr"]) == pytest.approx([0.04, 0.0325, 0.025, 0.0175, 0.01, 0.01, 0.01], rel=1e-6)
    scalars, _ = train(tmp_path, [(2, "onecycle 0.05"), (2, "keep")], name="one")
    assert values(scalars["lr"])[2] == values(scalars["lr"])[3]


def test_keep_across_sessions(tmp_path):
    session = RunSession.open(tmp_path, "k", RunConfig(), save_every=1e9)
    session.load()
    session.train(4, "exp 0.05 gamma=0.9")
    session.close()
    session = RunSession.open(tmp_path, "k", RunConfig(), save_every=1e9)
    session.load()
    session.train(3, "keep")
    session.close()
    assert values(read_scalars(tmp_path / "k")["lr"]) == pytest.approx([0.05 * 0.9**i for i in range(7)], rel=1e-6)


@pytest.mark.parametrize("text,message", [
    ("exp 0.05 gama=0.9", "unknown option 'gama' for exp (options: gamma)"),
    ("exp", "exp takes 1 number (lr), got 0"),
    ("cyclic 0.001", "cyclic takes 2 numbers (lo, hi), got 1"),
    ("multistep 0.03", "multistep needs at=EPOCHS"),
    ("frobnicate 0.1", "unknown schedule 'frobnicate'"),
    ("expo 0.1", "did you mean 'exp'"),
    ("exp -0.05", "must be > 0"),
    ("exp 0", "must be > 0"),
    ("exp nan", "finite"),
    ("exp 0.05 gamma=0", "gamma for exp must be > 0"),
    ("exp 0.05 gamma=1.5", "at most 1"),
    ("step 0.03 every=2.5", "whole number"),
    ("cos 0.03 min=0.05", "min must be below"),
    ("cyclic 0.03 0.001", "lo < hi"),
    ("cyclic 0.001 0.03 mode=sine", "mode for cyclic must be one of triangular, triangular2, exp_range"),
    ("piecewise 0.03:10", "piecewise needs lr:epochs pieces and a final lr"),
    ("piecewise 0.03:0 0.01", "piecewise epochs must be > 0"),
    ("warmup=0 exp 0.1", "warmup must be > 0"),
    ("warmup=3", "warmup needs a schedule"),
    ("0.1 0.2", "unexpected '0.2'"),
    ("exp 0.05 gamma=", "needs a value"),
    ("", "empty learning rate"),
])
def test_malformed_expressions_name_the_problem(text, message):
    with pytest.raises(ScheduleError) as info:
        parse(text)
    assert message in str(info.value)


def test_poly_is_an_alias_of_power():
    assert parse("poly 0.03 s=5") == parse("power 0.03 s=5")
    assert parse("POLY 0.03").text == "power 0.03"
    from lrctl.commands import completions

    assert completions("poly 0.03 ") == ["s=", "c="]


def test_canonical_text_round_trips():
    for text in ["0.03", "step 0.03 every=10 gamma=0.5", "warmup=5 cos 0.03 min=0.0001", "keep",
                 "piecewise 0.03:10 0.01:20 0.001", "cyclic 0.001 0.03 period=4 mode=exp_range gamma=0.99"]:
        spec = parse(text)
        assert parse(spec.text) == spec


def test_schedule_state_is_plain_data():
    import io

    from lrctl.lr_runner import ScheduleRunner

    for text in ["cyclic 0.001 0.03", "onecycle 0.05", "plateau 0.03", "power 0.03", "piecewise 0.03:2 0.01",
                 "warmup=2 restarts 0.03 period=3"]:
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        runner = ScheduleRunner(parse(text), opt, 0, 10, BPE)
        buffer = io.BytesIO()
        torch.save(runner.state_dict(), buffer)
        buffer.seek(0)
        state = torch.load(buffer, weights_only=True)
        assert ScheduleRunner.from_state(state, opt).spec == parse(text)
        assert not math.isnan(runner.lr)


def test_every_family_has_one_grammar_entry_and_one_torch_builder():
    """Adding a family: one entry in lrctl.schedules.FAMILIES, one in lrctl.lr_runner.BUILDERS."""
    from lrctl.lr_runner import BUILDERS
    from lrctl.schedules import FAMILIES

    assert set(BUILDERS) == set(FAMILIES) - {"keep"}


@pytest.mark.parametrize("family", sorted(set(__import__("lrctl.schedules").schedules.FAMILIES) - {"keep"}))
def test_each_familys_example_builds_and_previews(family):
    from lrctl.lr_runner import preview
    from lrctl.schedules import FAMILIES, parse

    lrs = preview(parse(FAMILIES[family].example), 12, 5)
    assert len(lrs) == 12 and all(lr >= 0 for lr in lrs)
