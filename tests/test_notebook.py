"""examples/lesson.ipynb executed by a real Jupyter kernel (nbclient + ipykernel), its outputs checked against
the lesson's own code; and the kernel's interrupt button during ``run.fit`` acting like Ctrl-C."""

from __future__ import annotations

import pytest

from tests.conftest import REPO, read_checkpoint, read_scalars
from tests.lesson_code import EXPERIMENTS, experiment

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = REPO / "examples" / "lesson.ipynb"


def _text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


def _cell(nb, source_start: str):
    return next(c for c in nb.cells if c.cell_type == "code" and c.source.startswith(source_start))


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("nb")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(cwd)}})
    client.execute()
    return nb, cwd


def test_the_notebook_runs_and_prints_the_lessons_numbers(executed):
    nb, cwd = executed
    assert not [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    two_chunks, decay = experiment(EXPERIMENTS["30@0.03;30@0.01"]), experiment(EXPERIMENTS["60@exp 0.05 gamma=0.95"])
    second = _text(_cell(nb, "run.fit(30, 0.01)"))
    assert (f"epoch    59  lr 0.01       train_mse {two_chunks[0][-1]:<12.6g} test_mse {two_chunks[1][-1]:<12.6g}"
            in second)
    last_decay = f"train_mse {decay[0][-1]:<12.6g} test_mse {decay[1][-1]:<12.6g}"
    assert last_decay in _text(_cell(nb, "torch.manual_seed(24)\ndecay"))
    compare = _text(_cell(nb, "for r in (run, decay)"))
    for name, (train_l, test_l) in (("lesson", two_chunks), ("lesson-decay", decay)):
        assert (f"{name:<13} final train_mse {train_l[-1]:.5g} · final test_mse {test_l[-1]:.5g} "
                f"· best test_mse {min(test_l):.5g}") in compare
    state = read_checkpoint(cwd / "runs" / "lesson" / "checkpoint.pt")
    assert state["global_step"] == 60 and [h["test"] for h in state["history"]] == two_chunks[1]
    assert [s for s, _ in read_scalars(cwd / "runs" / "lesson")["test_mse"]] == list(range(60))


def test_the_notebook_shows_a_progress_bar_plots_inline_and_has_the_tensorboard_cell(executed):
    nb, _ = executed
    fit = _cell(nb, "run.fit(30, 0.03)")
    bars = [o for o in fit.outputs if o.output_type == "display_data" and "<progress" in o.data.get("text/html", "")]
    assert bars and 'value="420" max="420"' in bars[0].data["text/html"]  # updated in place to the end
    images = [o for o in _cell(nb, "run.plot()").outputs if "image/png" in o.get("data", {})]
    assert len(images) == 2
    board = _cell(nb, "%load_ext tensorboard")
    assert board.source == "%load_ext tensorboard\n%tensorboard --logdir runs"
    assert "skip-execution" in board.metadata.tags and not board.outputs  # CI starts no TensorBoard server


KERNEL_FIT = """
import lrctl
run = lrctl.Run("k", runs_dir={runs!r}, save_every=1e9)
run.fit(100000, 0.01)
"""


def test_the_kernels_interrupt_button_stops_after_the_epoch(tmp_path):
    """What the button does: the kernel manager sends SIGINT to the kernel during a cell's fit; the cell
    ends normally with the epoch finished, saved and the rest of the chunk pending."""
    jupyter_client = pytest.importorskip("jupyter_client")
    manager = jupyter_client.KernelManager(kernel_name="python3")
    manager.start_kernel(cwd=str(tmp_path))
    client = manager.client()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=60)
        msg_id = client.execute(KERNEL_FIT.format(runs=str(tmp_path / "runs")))
        out, interrupted = "", False
        while True:
            msg = client.get_iopub_msg(timeout=120)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "stream":
                out += msg["content"]["text"]
                if not interrupted and "epoch     3 " in out:
                    manager.interrupt_kernel()
                    interrupted = True
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                break
        reply = client.get_shell_msg(timeout=60)
        assert reply["content"]["status"] == "ok", out
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
    assert "stopping after this epoch" in out and "stopped at epoch" in out
    state = read_checkpoint(tmp_path / "runs" / "k" / "checkpoint.pt")
    assert 4 <= state["global_step"] < 100000 and (tmp_path / "runs" / "k" / "pending.json").exists()
