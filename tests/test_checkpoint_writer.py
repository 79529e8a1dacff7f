"""lrctl.checkpoint_writer: the state streamed into a synced temp file, hashed as written."""

from __future__ import annotations

import hashlib

import pytest
import torch
import torch.serialization

from lrctl import _faults
from lrctl.checkpoint_writer import write_checkpoint


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
