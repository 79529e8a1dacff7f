"""Where a run stands, as a person reads it: ``status``, the toolbar, the resume banner and ``lrctl runs``."""

from __future__ import annotations

import io

import pytest

from lrctl.config import RunConfig
from lrctl.session import RunSession
from lrctl.view import View, fmt_lr
from tests.test_repl import _feed


def test_status_summarises_the_run_and_the_toolbar_shows_last_and_next_lr(tmp_path):
    reason, session, out = _feed(tmp_path, "y\r3\rcos 0.03\rstatus\rn\r")
    last_lr = session.trainer.history[-1]["lr"]
    status = out[out.index("run 'r' at epoch 3"):]
    assert f"lr: {fmt_lr(last_lr)} in the last epoch, 0 next\nschedule: cos 0.03" in status
    assert "(the chunk from epoch 0, 3 epochs trained)" in status
    assert "pending: none" in status
    assert "checkpoint: epoch 3, saved 0 s ago" in status
    assert f"TensorBoard: tensorboard --logdir {tmp_path}" in status
    from lrctl.repl import Repl

    toolbar = Repl(session, View(file=io.StringIO()), None, lambda: None).toolbar()
    assert f"lr {fmt_lr(last_lr)} (next 0)" in toolbar  # not just 'lr 0' after a cos chunk


def test_resume_banner_and_runs_show_the_lr_used_after_a_socket_schedule_change(tmp_path, capsys):
    session = RunSession.open(tmp_path, "s", RunConfig(), save_every=1e9)
    session.load()
    session.submit({"cmd": "lr", "value": "cos 0.05", "source": "socket"})  # applied at the first batch boundary
    session.train(3, "0.03")
    lrs = [h["lr"] for h in session.trainer.history]
    next_lr = session.trainer.lr
    session.close()
    assert lrs[0] == pytest.approx(0.03) and lrs[1] != pytest.approx(0.03)  # the schedule took over
    expected = f"lr {fmt_lr(lrs[-1])} (next {fmt_lr(next_lr)})"
    out = io.StringIO()
    reopened = RunSession.open(tmp_path, "s", RunConfig())
    View(file=out, interactive=False).banner("s", False, reopened.store.summary(), "", str(tmp_path))
    reopened.close()
    assert expected in out.getvalue()

    from lrctl.cli import main

    assert main(["runs", "--runs-dir", str(tmp_path)]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("s "))
    assert f"{fmt_lr(lrs[-1])} (next {fmt_lr(next_lr)})" in row


def test_runs_lists_the_runs_compare_nests_in_a_group(tmp_path, capsys):
    from lrctl.cli import main

    for runs_dir, name in ((tmp_path, "top"), (tmp_path / "grp", "60x0.03")):
        session = RunSession.open(runs_dir, name, RunConfig(), save_every=1e9)
        session.load()
        session.train(1, "0.01")
        session.close()
    assert main(["runs", "--runs-dir", str(tmp_path)]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]]
    assert names == ["grp/60x0.03", "top"]
    assert main(["plot", "grp/60x0.03", "--runs-dir", str(tmp_path)]) == 0  # the name runs shows works elsewhere
