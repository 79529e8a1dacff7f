"""A real ``kill -9`` inside a checkpoint written with direct I/O (:mod:`lrctl.checkpoint_writer`): the process
boundary is the point (what the kernel leaves of a half-written ``O_DIRECT`` file, a padded last block not
yet cut back), so the killed run is a real process; the resume and the reference run in this one.
"""

from __future__ import annotations

import io
import signal
import subprocess
import sys

import pytest

from tests.conftest import assert_states_equal, direct_io_here, lrctl_env, read_checkpoint, read_scalars, run_main

# ~1.4M parameters: 5.8 MB, twice that with momentum buffers (over 4 MiB: written in direct blocks);
# 300 rows: 5 batches an epoch
BIG = ["--set", "model.hidden=[1200, 1200]", "--set", 'model.batch_norm="none"', "--set", "train.momentum=0.9",
       "--set", "data.rows=300", "--save-every", "0"]

# Killed by the kernel right after the n-th block the writer wrote directly (with --save-every 0: the
# initial checkpoint is blocks 1-2, the chunk's kept start 3-4, epoch 0's end (momentum: 11.6 MB) 5-7).
_KILLED_AFTER_BLOCK = """
import os, signal, sys
from lrctl import checkpoint_writer
from lrctl.cli import main

real, written = checkpoint_writer._HashingFile._write_block, []

def write_block(self, length):
    real(self, length)
    written.append(length)
    if len(written) == int(sys.argv[1]):
        os.kill(os.getpid(), signal.SIGKILL)

checkpoint_writer._HashingFile._write_block = write_block
raise SystemExit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("block", [6, 7], ids=["after a full 4 MiB block", "after the padded last block"])
def test_a_kill_inside_a_direct_write_resumes_bit_identical_and_leaves_no_temp_file(tmp_path, block):
    import torch

    if not direct_io_here(tmp_path):
        pytest.skip("this file system has no O_DIRECT: the writer writes no blocks of its own")
    runs = tmp_path / "runs"
    plan = ["--runs-dir", str(runs), *BIG, "--plan", "2@0.001"]
    killed = subprocess.run([sys.executable, "-c", _KILLED_AFTER_BLOCK, str(block), "--run", "r", *plan],
                            cwd=tmp_path, env=lrctl_env(), capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    assert list(runs.glob("r/.checkpoint.pt.*.tmp"))  # what the kill left: the half-written file
    resumed = run_main(["resume", "r", "--runs-dir", str(runs)], tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    reference = run_main(["--run", "ref", *plan], tmp_path)
    assert reference.returncode == 0, reference.stdout + reference.stderr
    latest = runs / "r" / "checkpoint.pt"
    state = read_checkpoint(latest)
    assert_states_equal(state, read_checkpoint(runs / "ref" / "checkpoint.pt"))
    assert read_scalars(runs / "r") == read_scalars(runs / "ref")  # each epoch once, no gap
    assert not list(runs.rglob("*.tmp"))
    same = io.BytesIO()
    torch.save(state, same)
    assert latest.stat().st_size == len(same.getvalue())  # no padding of the last block left
