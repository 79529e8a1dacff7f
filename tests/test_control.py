"""Live control: keys through a pseudo-terminal, the control socket, exact resume and replay with changes,
and TensorBoard text entries for every intervention."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading

import pytest

from lrctl.control import ControlError, parse_control
from tests.conftest import (
    answer_chunk,
    assert_states_equal,
    lrctl_env,
    read_checkpoint,
    read_scalars,
    run_main,
    spawn_tty,
    start_lrctl,
)


def journal(run) -> list[dict]:
    return [json.loads(line) for line in (run / "journal.jsonl").read_text().splitlines()]


def texts(run) -> list[tuple[int, str]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run), size_guidance={"tensors": 0})
    acc.Reload()
    return [(e.step, e.tensor_proto.string_val[0].decode()) for e in acc.Tensors("interventions")]


def _wait_for_epoch(proc, epoch: int) -> str:
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith(f"epoch {epoch:>5} "):
            return "".join(seen)
    raise AssertionError("".join(seen))


def test_parse_control_accepts_text_and_json_and_names_problems():
    def typed(text):  # the value is parsed once, here: a schedule spec
        command = parse_control(text)
        return {**command, "value": command["value"].text}

    assert typed("lr 0.01 scale") == {"cmd": "lr", "value": "0.01", "mode": "scale"}
    assert typed('{"cmd": "lr", "value": 0.02}') == {"cmd": "lr", "value": "0.02"}
    assert typed("lr cos 0.01") == {"cmd": "lr", "value": "cos 0.01"}
    assert parse_control("pause") == {"cmd": "pause"}
    for bad, message in [("{x", "malformed JSON"), ("jump", "unknown command"), ("lr", "needs a value"),
                         ("lr nan", "finite"), ('{"cmd": "lr", "value": "0.1", "mode": "up"}', "mode must be")]:
        with pytest.raises(ControlError, match=message):
            parse_control(bad)


def test_send_steers_a_running_plan_and_garbage_harms_nothing(workdir):
    proc = start_lrctl(["--run", "s", "--plan", "100000@0.01"], workdir)
    _wait_for_epoch(proc, 3)
    run = workdir / "runs" / "s"
    status = json.loads(run_main(["send", "s", "status"], workdir).stdout)
    assert status["ok"] and status["running"] and status["global_step"] >= 4
    changed = run_main(["send", "s", "lr", "0.002"], workdir)
    assert changed.returncode == 0, changed.stdout
    reply = json.loads(changed.stdout)
    assert reply["lr"] == 0.002 and reply["mode"] == "set"
    with socket.socket(socket.AF_UNIX) as client:  # garbage, then a client that leaves mid-line
        client.connect(str(run / "control.sock"))
        client.sendall(b"{not json\n")
        assert json.loads(client.recv(4096))["ok"] is False
        client.sendall(b'{"cmd": "lr", "val')
    bad = run_main(["send", "s", "lr", "-1"], workdir)
    assert bad.returncode == 1 and "must be > 0" in bad.stdout
    later = json.loads(run_main(["send", "s", "status"], workdir).stdout)
    assert later["running"] and later["lr"] == 0.002 and later["global_step"] >= reply["global_step"]
    stop = json.loads(run_main(["send", "s", "stop"], workdir).stdout)
    proc.wait(timeout=120)
    assert stop["ok"] and proc.returncode == 130
    lrs = read_scalars(run)["lr"]
    changed_at = reply["global_step"]
    assert all(v == pytest.approx(0.01) for s, v in lrs if s <= changed_at)
    assert all(v == pytest.approx(0.002) for s, v in lrs if s > changed_at)
    control = [e for e in journal(run) if e["event"] == "control"]
    assert control == [{**control[0], "cmd": "lr", "value": "0.002", "mode": "set", "source": "socket"}]
    assert (changed_at, f"lr -> 0.002 (set, from socket) at batch {control[0]['at_batch']}") in texts(run)


def test_socket_is_owner_only_and_commands_need_a_running_chunk(workdir):
    proc = start_lrctl(["--run", "idle"], workdir, stdin=__import__("subprocess").PIPE)
    assert proc.stdout.readline().startswith("run 'idle' (new)")
    sock = workdir / "runs" / "idle" / "control.sock"
    assert sock.stat().st_mode & 0o777 == 0o600
    reply = json.loads(run_main(["send", "idle", "lr", "0.1"], workdir).stdout)
    assert reply["ok"] is False and "no chunk is running" in reply["error"]
    assert json.loads(run_main(["send", "idle", "status"], workdir).stdout)["running"] is False
    proc.communicate("n\n", timeout=120)
    assert not sock.exists()


@pytest.mark.slow
def test_kill_after_a_mid_chunk_change_then_resume_is_identical_to_the_replay(workdir):
    proc = start_lrctl(["--run", "k", "--plan", "40@exp 0.05 gamma=0.97", "--save-every", "0.05"], workdir)
    _wait_for_epoch(proc, 5)
    reply = json.loads(run_main(["send", "k", "lr", "0.02", "scale"], workdir).stdout)
    assert reply["ok"] and reply["mode"] == "scale"
    _wait_for_epoch(proc, reply["global_step"] + 3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run = workdir / "runs" / "k"
    assert read_checkpoint(run / "checkpoint.pt")["global_step"] < 40
    assert run_main(["resume", "k"], workdir).returncode == 0
    result = run_main(["replay", "k", "--to", "k2"], workdir)
    assert result.returncode == 0, result.stderr
    a, b = (read_checkpoint(workdir / "runs" / n / "checkpoint.pt") for n in ("k", "k2"))
    assert a["global_step"] == 40
    assert_states_equal(a, b)
    sa, sb = read_scalars(run), read_scalars(workdir / "runs" / "k2")
    assert sa == sb
    assert [s for s, _ in sa["lr"]] == list(range(40))
    lrs = dict(sa["lr"])
    step = reply["global_step"]
    # scale multiplies the schedule so the lr is 0.02 at the change; the schedule goes on from there
    assert lrs[step + 2] == pytest.approx(0.02 * 0.97**2, rel=1e-5)  # and the change survived the kill


def test_replay_of_a_session_with_undo_stop_and_divergence_is_bit_identical(tmp_path):
    from lrctl.config import RunConfig
    from lrctl.replay import replay
    from lrctl.session import RunSession

    session = RunSession.open(tmp_path, "orig", RunConfig(), save_every=1e9)
    session.load()
    session.train(4, "0.03")
    session.train(3, "1e6")  # diverges, rolls back
    session.train(3, "cyclic 0.001 0.03 period=2")
    session.undo()
    session.train(5, "exp 0.05 gamma=0.9")
    session.close()
    replay(tmp_path, "orig", "copy")
    assert_states_equal(read_checkpoint(tmp_path / "orig" / "checkpoint.pt"),
                        read_checkpoint(tmp_path / "copy" / "checkpoint.pt"))
    assert read_scalars(tmp_path / "orig") == read_scalars(tmp_path / "copy")


def test_keys_pause_change_lr_and_stop_through_a_terminal(workdir):
    pexpect = pytest.importorskip("pexpect")
    child = spawn_tty(["--run", "keys"], workdir, columns=140)
    answer_chunk(child, "100000", "0.01")
    child.expect(r"epoch\s+2 ")
    child.send("p")
    child.expect(r"paused at epoch (\d+)")
    child.send("p")
    child.expect_exact("continuing at epoch")
    child.send("l")
    child.expect_exact("New learning rate")
    child.sendline("0.001")
    child.expect(r"lr -> 0.001 \(set\) from key, at batch \d+: now 0.001")
    child.expect(r"epoch\s+\d+\s+lr 0.001 ")
    child.send("s")
    child.expect(r"stopped at epoch (\d+)")
    child.expect_exact("Continue training? [y/n]")
    child.sendline("n")
    child.expect(pexpect.EOF)
    run = workdir / "runs" / "keys"
    events = journal(run)
    pause = next(e for e in events if e["event"] == "pause")
    resume = next(e for e in events if e["event"] == "resume" and e["source"] == "key")
    assert pause["step"] == resume["step"]  # no epoch trained while paused
    change = next(e for e in events if e["event"] == "control")
    lrs = dict(read_scalars(run)["lr"])
    assert lrs[change["step"]] == pytest.approx(0.01)  # the epoch it happened in began at the old lr
    assert lrs[change["step"] + 1] == pytest.approx(0.001)  # the logged lr changes from the next epoch
    logged = texts(run)
    assert (0, "chunk: 100000 epochs of `0.01`") in logged
    assert any(s == pause["step"] and t.startswith("pause (from key) at batch") for s, t in logged)
    assert any(s == resume["step"] and t.startswith("resume (from key)") for s, t in logged)
    assert any(s == change["step"] and t.startswith("lr -> 0.001 (set, from key)") for s, t in logged)


@pytest.fixture
def session(tmp_path):
    """A real run opened (not loaded: status needs no torch), closed at the end."""
    from lrctl.config import RunConfig
    from lrctl.session import RunSession

    opened = RunSession.open(tmp_path / "runs", "c", RunConfig())
    yield opened
    opened.store.close()


def _reply(client: socket.socket) -> list[dict]:
    """Every JSON line the server sends until it closes the connection."""
    data = b""
    while chunk := client.recv(4096):
        data += chunk
    return [json.loads(line) for line in data.decode().splitlines()]


def _client(path) -> socket.socket:
    client = socket.socket(socket.AF_UNIX)
    client.settimeout(30)  # a hung server fails the test instead of hanging it
    client.connect(str(path))
    return client


def test_a_stale_socket_is_replaced_and_a_live_one_left_alone(session):
    from lrctl.control import SOCKET_FILE, ControlServer, send

    path = session.store.dir / SOCKET_FILE
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(path))  # what a killed process leaves: a socket file nobody listens on
    dead.close()
    with pytest.raises(ControlError, match="no lrctl is running"):
        send(session.store.dir, "status")
    server = ControlServer(session)
    assert server.start() == path
    try:
        assert send(session.store.dir, "status")["run"] == "c"
        assert ControlServer(session).start() is None  # someone answers: not removed, not taken over
        assert send(session.store.dir, "status")["ok"]
    finally:
        server.stop()
    assert not path.exists()
    server.stop()  # twice is harmless


def test_the_socket_is_removed_when_the_process_fails_before_stop(tmp_path):
    code = ("import sys; from lrctl.config import RunConfig; from lrctl.session import RunSession; "
            "from lrctl.control import ControlServer; "
            f"s = RunSession.open({str(tmp_path)!r}, 'f', RunConfig()); "
            "print(ControlServer(s).start(), flush=True); raise RuntimeError('teardown failed')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=lrctl_env(),
                            timeout=60)
    assert "RuntimeError: teardown failed" in result.stderr
    assert result.stdout.strip() == str(tmp_path / "f" / "control.sock")
    assert not (tmp_path / "f" / "control.sock").exists()


def test_an_idle_connection_is_told_and_closed(session):
    from lrctl.control import ControlServer

    server = ControlServer(session, idle_timeout=0.2)
    path = server.start()
    try:
        with _client(path) as client:
            client.sendall(b"status\n")  # a line resets nothing: the connection may idle after answers too
            replies = _reply(client)
        assert replies[0]["ok"] and replies[0]["run"] == "c"
        assert replies[1] == {"ok": False, "error": "idle for 0.2 s; connection closed"}
    finally:
        server.stop()


def test_connections_are_capped_and_a_freed_slot_is_served(session):
    from lrctl.control import MAX_CLIENTS, ControlServer, send

    server = ControlServer(session, idle_timeout=60)
    path = server.start()
    def client_threads() -> int:
        return sum(t.name == "lrctl-control-client" for t in threading.enumerate())

    idle = [_client(path) for _ in range(MAX_CLIENTS)]
    try:
        for client in idle:  # each is being served (a line answered), then idles
            client.sendall(b"status\n")
            assert json.loads(client.recv(4096))["ok"]
        assert client_threads() == MAX_CLIENTS
        for _ in range(3):
            with _client(path) as extra:
                assert _reply(extra) == [{"ok": False, "error": f"too many connections (at most {MAX_CLIENTS}); "
                                                                 "try again"}]
        assert client_threads() == MAX_CLIENTS
        leaving = idle.pop()
        leaving.shutdown(socket.SHUT_WR)
        assert _reply(leaving) == []  # the server saw it leave and freed its slot before closing
        leaving.close()
        assert send(session.store.dir, "status")["ok"]
    finally:
        for client in idle:
            client.close()
        server.stop()


def test_send_to_a_run_that_does_not_exist_says_so(tmp_path):
    from lrctl.control import send

    with pytest.raises(ControlError, match=r"there is no run 'nosuch' in .*lrctl runs lists them"):
        send(tmp_path / "runs" / "nosuch", "status")
