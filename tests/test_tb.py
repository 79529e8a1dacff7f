"""``lrctl tb`` / ``--tb``: the flags TensorBoard gets, checked against TensorBoard's own loader."""

from __future__ import annotations

import pytest

from lrctl.tb import DEFAULT_FLAGS, TensorBoard


def test_user_flags_come_after_lrctls_and_the_port_is_used(tmp_path):
    board = TensorBoard(tmp_path, 6123, ["--window_title", "lesson", "--samples_per_plugin=scalars=500"])
    command = board.command
    assert command[command.index("--port") + 1] == "6123" and board.url == "http://127.0.0.1:6123/"
    assert command[-3:] == ["--window_title", "lesson", "--samples_per_plugin=scalars=500"]
    assert command.index("--samples_per_plugin=scalars=1000000") < command.index("--samples_per_plugin=scalars=500")


def test_cli_passes_port_and_flags(monkeypatch, tmp_path):
    """``lrctl tb --port N -- FLAGS`` reaches TensorBoard as given (no server started here)."""
    from lrctl import cli, tb

    seen = {}

    def fake_start(self, timeout: float = 60.0, **kwargs) -> str:
        seen["command"] = self.command
        raise RuntimeError("not started in this test")

    monkeypatch.setattr(tb.TensorBoard, "start", fake_start)
    assert cli.main(["tb", "--runs-dir", str(tmp_path), "--port", "6124", "--", "--window_title", "x"]) == 1
    assert seen["command"][-2:] == ["--window_title", "x"] and "6124" in seen["command"]


def test_every_epoch_of_a_long_run_is_kept(tmp_path):
    """TensorBoard keeps 1,000 points per scalar tag by default; with lrctl's flag it keeps all 1,500."""
    from tensorboard.backend.event_processing import data_ingester, plugin_event_multiplexer
    from tensorboard.plugins.core.core_plugin import _parse_samples_per_plugin

    from lrctl.tblog import TensorBoardLogger

    logger = TensorBoardLogger(tmp_path / "long")
    for step in range(1500):
        logger.log("lr", 0.01, step)
    logger.close()
    flag = next(f for f in DEFAULT_FLAGS if f.startswith("--samples_per_plugin="))

    def kept(extra: dict[str, int]) -> int:
        guidance = {**data_ingester.DEFAULT_TENSOR_SIZE_GUIDANCE, **extra}  # what TensorBoard's server does
        mux = plugin_event_multiplexer.EventMultiplexer(tensor_size_guidance=guidance)
        mux.AddRunsFromDirectory(str(tmp_path))
        mux.Reload()
        return len(mux.Tensors("long", "lr"))

    hint = _parse_samples_per_plugin(flag.split("=", 1)[1])
    assert kept({}) == 1000
    assert kept(hint) == 1500
    assert hint["scalars"] >= 1500  # the server's scalars plugin also downsamples its answer to this (0: nothing)


@pytest.mark.slow
@pytest.mark.parametrize("load_fast", ["false", "true"])
def test_a_real_tensorboard_shows_the_timeline_right_after_undo(tmp_path, load_fast):
    """Both of TensorBoard's servers: the Python loader ``lrctl tb`` uses, and the Rust data server
    (``--load_fast=true``, plain ``tensorboard``'s default): each epoch once, the redone values."""
    import json
    import time
    import urllib.request

    from lrctl.config import RunConfig, with_overrides
    from lrctl.session import RunSession

    session = RunSession.open(tmp_path, "u", with_overrides(RunConfig(), ["data.rows=300"]), save_every=0)
    session.load()
    session.train(3, "0.03")
    session.train(3, "0.01")
    session.undo()
    session.train(2, "0.02")
    session.close()
    board = TensorBoard(tmp_path, None, [f"--load_fast={load_fast}", "--reload_interval=1"])
    board.start()
    try:
        # The server reads event files in the background after it answers; it has no "loaded" signal to
        # wait on, so ask again (bounded) until the run's 5 epochs are there.
        deadline, points = time.monotonic() + 60, []
        while len(points) < 5 and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(board.url + "data/plugin/scalars/scalars?run=u&tag=lr", timeout=30) as r:
                    points = json.loads(r.read())
            except OSError:  # the run is not known yet: 400
                points = []
            if len(points) < 5:
                time.sleep(0.2)
    finally:
        board.stop()
    assert [(step, round(lr, 6)) for _, step, lr in points] == [(0, 0.03), (1, 0.03), (2, 0.03), (3, 0.02), (4, 0.02)]


@pytest.mark.slow
def test_a_port_taken_before_tensorboard_binds_it_is_replaced(tmp_path, monkeypatch):
    """The free port lrctl picked is taken before TensorBoard binds it (CI saw this with two servers
    starting at once): lrctl starts it again on another free port instead of failing."""
    import socket

    from lrctl import tb

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        ports = iter([taken.getsockname()[1]])
        real_free_port = tb.free_port
        monkeypatch.setattr(tb, "free_port", lambda: next(ports, None) or real_free_port())
        board = tb.TensorBoard(tmp_path)
        assert board.port == taken.getsockname()[1]
        try:
            url = board.start()
            assert board.port != taken.getsockname()[1] and url == board.url
        finally:
            board.stop()


def test_a_port_the_user_chose_is_not_replaced(tmp_path):
    """``--port N`` already in use is an error naming it, not a silent move to another port."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        board = TensorBoard(tmp_path, port)
        with pytest.raises(RuntimeError, match="could not bind") as refused:
            board.start()
        assert board.port == port and board.process is None
        # the reason alone, not TensorBoard's log (with a run in the logdir it warns of each purge first)
        said = f"tensorboard exited: TensorBoard could not bind to port {port}, it was already in use"
        assert refused.value.args[0] == said


def test_a_busy_port_is_said_in_one_line_over_a_run_tensorboard_warns_about(tmp_path):
    """Found with a real `lrctl tb --port N` on a busy port beside a run: the error was the last 500 characters
    of TensorBoard's stderr, its purge warnings ("Detected out of order event.step ...") first."""
    import socket

    from lrctl.tblog import TensorBoardLogger

    logger = TensorBoardLogger(tmp_path / "r", purge_step=0)
    logger.log("train_mse", 1.0, 0)
    logger.close()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(RuntimeError) as refused:
            TensorBoard(tmp_path, port).start()
        said = f"tensorboard exited: TensorBoard could not bind to port {port}, it was already in use"
        assert refused.value.args[0] == said
