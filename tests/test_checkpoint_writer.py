"""lrctl.checkpoint_writer: the state streamed into a synced temp file, hashed as written."""

from __future__ import annotations

import hashlib

import pytest
import torch
import torch.serialization

from lrctl import _faults
from lrctl.checkpoint_writer import write_checkpoint
from tests.conftest import direct_io_here, fail_nth_write


def _state() -> dict:
    g = torch.Generator().manual_seed(0)
    return {"model": {"w": torch.randn(300, 200, generator=g), "b": torch.randn(7, generator=g).double()},
            "step": 3, "history": [{"train": 0.5}], "rng": torch.get_rng_state()}


def test_the_file_loads_with_weights_only_and_its_sha_is_the_files(tmp_path):
    state = _state()
    tmp, sha = write_checkpoint(tmp_path / "checkpoint.pt", state)
    assert tmp.parent == tmp_path and tmp.name.endswith(".tmp")
    assert sha == hashlib.sha256(tmp.read_bytes()).hexdigest()
    loaded = torch.load(tmp, weights_only=True)
    assert torch.equal(loaded["model"]["w"], state["model"]["w"])
    assert torch.equal(loaded["model"]["b"], state["model"]["b"]) and loaded["model"]["b"].dtype == torch.float64
    assert torch.equal(loaded["rng"], state["rng"]) and loaded["history"] == state["history"]
    assert torch.serialization.get_crc32_options()  # torch's own setting is as it was


def test_the_same_state_gives_the_same_bytes(tmp_path):
    (a, sha_a), (b, sha_b) = (write_checkpoint(tmp_path / f"{n}.pt", _state()) for n in "ab")
    assert sha_a == sha_b and a.read_bytes() == b.read_bytes()


@pytest.mark.parametrize("where", ["write checkpoint.pt", "fsync checkpoint.pt"])
def test_a_kill_while_writing_leaves_no_temp_file(tmp_path, where):
    class Killed(BaseException):
        pass

    def hook(name: str) -> None:
        if name == where:
            raise Killed(name)

    _faults.install(hook)
    try:
        with pytest.raises(Killed):
            write_checkpoint(tmp_path / "checkpoint.pt", _state())
    finally:
        _faults.install(None)
    assert list(tmp_path.iterdir()) == []
    assert torch.serialization.get_crc32_options()


def _large_state() -> dict:
    """Several direct-write blocks, a size no block divides, and small records between large ones."""
    g = torch.Generator().manual_seed(1)
    return {"model": {"w1": torch.randn(1500, 1001, generator=g), "b1": torch.randn(13, generator=g),
                      "w2": torch.randn(2, 700_003, generator=g)}, "step": 9, "history": [{"train": 0.25}] * 50}


def _reference_bytes(state: dict) -> bytes:
    import io

    was = torch.serialization.get_crc32_options()
    torch.serialization.set_crc32_options(False)
    try:
        buf = io.BytesIO()
        torch.save(state, buf)
        return buf.getvalue()
    finally:
        torch.serialization.set_crc32_options(was)


def test_a_large_state_is_written_in_direct_blocks_byte_for_byte(tmp_path, monkeypatch):
    from lrctl import checkpoint_writer

    blocks: list[int] = []
    real = checkpoint_writer._HashingFile._write_block
    monkeypatch.setattr(checkpoint_writer._HashingFile, "_write_block",
                        lambda self, length: (blocks.append(length), real(self, length))[1])
    state = _large_state()
    tmp, sha = write_checkpoint(tmp_path / "checkpoint.pt", state)
    data = tmp.read_bytes()
    assert data == _reference_bytes(state) and sha == hashlib.sha256(data).hexdigest()
    assert torch.equal(torch.load(tmp, weights_only=True)["model"]["w2"], state["model"]["w2"])
    if direct_io_here(tmp_path):  # ext4, xfs, btrfs: the page cache is bypassed, in aligned blocks
        assert len(blocks) >= 3 and all(n % checkpoint_writer._ALIGN == 0 for n in blocks)


@pytest.mark.parametrize("how", ["no O_DIRECT here", "EINVAL on the second block"])
def test_without_direct_io_the_bytes_are_the_same(tmp_path, monkeypatch, how):
    """A file system without O_DIRECT (tmpfs, macOS), or a device that refuses the alignment midway."""
    from lrctl import checkpoint_writer

    if how == "no O_DIRECT here":
        monkeypatch.setattr(checkpoint_writer, "_set_direct", lambda fd, on: False)
    else:
        if not direct_io_here(tmp_path):
            pytest.skip("this file system has no O_DIRECT")
        fail_nth_write(monkeypatch, 2, OSError(22, "Invalid argument"))
    state = _large_state()
    tmp, sha = write_checkpoint(tmp_path / "checkpoint.pt", state)
    assert tmp.read_bytes() == _reference_bytes(state) and sha == hashlib.sha256(tmp.read_bytes()).hexdigest()
