"""Run directory safety: names, the one-writer lock, atomic checkpoints, corrupt and malicious files."""

from __future__ import annotations

import io
import json
import pickle

import pytest

from lrctl.runstore import RunError, RunLocked, RunStore, check_run_name
from tests.conftest import direct_io_here, fail_nth_write, read_checkpoint, run_main, start_lrctl


@pytest.mark.parametrize("name", ["../x", "/etc", "", ".", "..", "a/b", "x y", "é", "a" * 101])
def test_bad_run_names_are_refused(name):
    with pytest.raises(RunError, match="invalid run name"):
        check_run_name(name)


def test_good_run_names():
    for name in ("default", "demo-1", "a_b.c", "X9"):
        assert check_run_name(name) == name


def _tiny_state(step: int) -> dict:
    import torch

    return {"model": {"w": torch.full((2,), float(step))}, "global_step": step}


def test_checkpoint_round_trip_keeps_previous(tmp_path):
    store = RunStore(tmp_path, "r")
    store.acquire()
    store.save_checkpoint(_tiny_state(1), {"global_step": 1})
    store.save_checkpoint(_tiny_state(2), {"global_step": 2})
    assert store.load_checkpoint().state["global_step"] == 2
    assert read_checkpoint(tmp_path / "r" / "checkpoint.prev.pt")["global_step"] == 1
    assert not list((tmp_path / "r").glob("*.tmp"))
    store.close()


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_corrupt_latest_falls_back_to_previous_and_deletes_nothing(tmp_path, damage):
    store = RunStore(tmp_path, "r")
    store.acquire()
    store.save_checkpoint(_tiny_state(1), {"global_step": 1})
    store.save_checkpoint(_tiny_state(2), {"global_step": 2})
    latest = tmp_path / "r" / "checkpoint.pt"
    data = latest.read_bytes()
    latest.write_bytes({"truncate": data[: len(data) // 2], "flip": data[:100] + bytes([data[100] ^ 1]) + data[101:],
                        "garbage": b"not a checkpoint"}[damage])
    loaded = store.load_checkpoint()
    assert loaded.state["global_step"] == 1
    assert any("corrupt or truncated" in w for w in loaded.warnings)
    assert any("falling back to checkpoint.prev.pt (epoch 1)" in w for w in loaded.warnings)
    (tmp_path / "r" / "checkpoint.prev.pt").write_bytes(b"also bad")
    with pytest.raises(RunError, match="no loadable checkpoint.*Nothing was deleted"):
        store.load_checkpoint()
    assert latest.exists() and (tmp_path / "r" / "checkpoint.prev.pt").exists()
    store.close()


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch PWNED",))


def test_pickle_payload_is_refused_and_never_runs(tmp_path, monkeypatch):
    import torch

    monkeypatch.chdir(tmp_path)
    store = RunStore(tmp_path, "r")
    store.acquire()
    store.save_checkpoint(_tiny_state(1), {"global_step": 1})
    buffer = io.BytesIO()
    torch.save({"model": {}, "global_step": 5, "evil": _Evil()}, buffer)
    (tmp_path / "r" / "checkpoint.json").unlink()  # no checksum to catch it: only weights_only stands guard
    (tmp_path / "r" / "checkpoint.pt").write_bytes(buffer.getvalue())
    (tmp_path / "r" / "checkpoint.prev.pt").unlink(missing_ok=True)
    with pytest.raises(RunError, match="something other than plain tensors"):
        store.load_checkpoint()
    assert not (tmp_path / "PWNED").exists()
    store.close()


def test_failed_write_leaves_the_last_checkpoint_intact(tmp_path, monkeypatch):
    store = RunStore(tmp_path, "r")
    store.acquire()
    store.save_checkpoint(_tiny_state(1), {"global_step": 1})
    before = (tmp_path / "r" / "checkpoint.pt").read_bytes()
    real_open = open

    def full_disk(path, mode="r", *args, **kwargs):
        if "w" in mode and str(path).endswith(".tmp"):
            raise OSError(28, "No space left on device")
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", full_disk)
    with pytest.raises(RunError, match="No space left on device.*previous checkpoint is intact"):
        store.save_checkpoint(_tiny_state(2), {"global_step": 2})
    monkeypatch.undo()
    assert (tmp_path / "r" / "checkpoint.pt").read_bytes() == before
    assert store.load_checkpoint().state["global_step"] == 1
    store.close()


def test_a_disk_full_in_the_middle_of_a_large_checkpoint_leaves_the_last_one_intact(tmp_path, monkeypatch):
    """Past the first blocks of the writer's own writes (direct I/O where the file system has it)."""
    import torch


    store = RunStore(tmp_path, "r")
    store.acquire()
    store.save_checkpoint(_tiny_state(1), {"global_step": 1})
    before = (tmp_path / "r" / "checkpoint.pt").read_bytes()
    if not direct_io_here(tmp_path):
        pytest.skip("this file system has no O_DIRECT (the writer's blocks go through the file object)")
    fail_nth_write(monkeypatch, 2, OSError(28, "No space left on device"))
    big = {"model": {"w": torch.zeros(3_000_000)}, "global_step": 2}
    with pytest.raises(RunError, match="No space left on device.*previous checkpoint is intact"):
        store.save_checkpoint(big, {"global_step": 2})
    monkeypatch.undo()
    assert (tmp_path / "r" / "checkpoint.pt").read_bytes() == before
    assert not list((tmp_path / "r").glob(".*.tmp"))
    assert store.load_checkpoint().state["global_step"] == 1
    store.close()


def test_a_killed_saves_temp_file_is_removed_at_the_next_open(tmp_path):
    store = RunStore(tmp_path, "r")
    store.acquire()
    store.save_checkpoint(_tiny_state(1), {"global_step": 1})
    store.close()
    left = tmp_path / "r" / ".checkpoint.pt.4242.tmp"  # what a kill -9 inside a save leaves (38 MB at 10M)
    left.write_bytes(b"partial")
    other = tmp_path / "r" / ".pending.json.4242.tmp"
    other.write_bytes(b"{")
    store = RunStore(tmp_path, "r")
    store.acquire()
    assert not left.exists() and other.exists()  # only checkpoint temps: the others are small
    assert store.load_checkpoint().state["global_step"] == 1
    store.close()


def test_a_kept_checkpoints_staged_link_left_by_a_kill_is_removed_at_the_next_open(tmp_path):
    """A kill between ``os.link`` and the rename of a keep left ``kept/step-N.pt.tmp``: a hard link that held a
    replaced checkpoint's bytes on disk for good (only a later keep of the same epoch removed it)."""
    import os

    store = RunStore(tmp_path, "r")
    store.acquire()
    store.save_checkpoint(_tiny_state(1), {"global_step": 1})
    store.keep_checkpoint(1)
    staged = tmp_path / "r" / "kept" / "step-00000004.pt.tmp"
    os.link(tmp_path / "r" / "checkpoint.pt", staged)
    store.save_checkpoint(_tiny_state(2), {"global_step": 2})
    store.save_checkpoint(_tiny_state(3), {"global_step": 3})  # the linked file is no run's file any more
    store.close()
    store = RunStore(tmp_path, "r")
    store.acquire()
    assert not staged.exists() and store.kept_steps() == [1]
    assert store.load_kept(1)["global_step"] == 1
    store.close()


def test_unwritable_runs_dir_is_a_clear_error(workdir):
    (workdir / "runs").write_text("a file, not a directory")
    result = run_main(["--run", "r", "--plan", "1@0.1"], workdir)
    assert result.returncode == 1
    assert "cannot create run directory" in result.stderr and "Traceback" not in result.stderr


def test_second_writer_is_refused_while_the_first_runs_unharmed(workdir):
    first = start_lrctl(["--run", "busy"], workdir, stdin=__import__("subprocess").PIPE)
    assert first.stdout.readline().startswith("run 'busy' (new)")
    second = run_main(["--run", "busy", "--plan", "1@0.1"], workdir)
    assert second.returncode == 1
    assert f"run 'busy' is in use by pid {first.pid}" in second.stderr
    out, _ = first.communicate("y\n2\n0.01\nn\n", timeout=120)
    assert first.returncode == 0
    assert "saved run 'busy' at epoch 2" in out


def test_stale_lock_of_a_dead_process_is_taken_over(workdir):
    import signal

    proc = start_lrctl(["--run", "stale"], workdir, stdin=__import__("subprocess").PIPE)
    assert proc.stdout.readline().startswith("run 'stale' (new)")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    result = run_main(["--run", "stale", "--plan", "1@0.1"], workdir)
    assert result.returncode == 0, result.stderr
    assert f"took over the run from pid {proc.pid}" in result.stdout


def test_lock_is_held_in_process(tmp_path):
    a = RunStore(tmp_path, "r")
    a.acquire()
    # filelock locks are per file object: a second store in the same process is refused too
    with pytest.raises(RunLocked):
        RunStore(tmp_path, "r").acquire()
    a.close()
    b = RunStore(tmp_path, "r")
    b.acquire()
    b.close()


def test_runs_table_shows_states(workdir):
    run_main(["--run", "ok", "--plan", "2@0.03"], workdir)
    run_main(["--run", "bad", "--plan", "2@0.03"], workdir)
    run_main(["--run", "halfway", "--plan", "2@0.03"], workdir)
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        (workdir / "runs" / "bad" / name).write_bytes(b"junk")
    (workdir / "runs" / "halfway" / "pending.json").write_text(
        json.dumps({"chunks": [{"start": 2, "epochs": 5, "expr": "0.01"}], "source": "plan"}))
    result = run_main(["runs"], workdir)
    assert result.returncode == 0
    lines = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
    assert lines["ok"].split()[1] == "2" and lines["ok"].rstrip().endswith("ok")
    assert "corrupt" in lines["bad"]
    assert "interrupted (5 epochs left)" in lines["halfway"]


def test_pickle_module_is_what_torch_raises():
    assert issubclass(pickle.UnpicklingError, Exception)
