"""Terminal behaviour through a real pseudo-terminal (pexpect): prompts, progress, Ctrl-C, history."""

from __future__ import annotations

import pytest

pexpect = pytest.importorskip("pexpect")

from tests.conftest import answer_chunk, read_checkpoint  # noqa: E402
from tests.conftest import spawn_tty as spawn  # noqa: E402


def test_terminal_session_with_ctrl_c_during_a_chunk(workdir):
    child = spawn(["--run", "tty"], workdir)
    child.expect_exact("run 'tty' (new)")
    answer_chunk(child, "100000", "0.01")
    child.expect(r"epoch\s+3 ")
    child.sendintr()
    child.expect_exact("stopping after this epoch")
    child.expect(r"stopped at epoch (\d+)")
    stopped = int(child.match.group(1))
    child.expect_exact("Continue training? [y/n]")
    child.sendline("n")
    child.expect_exact(f"saved run 'tty' at epoch {stopped}")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert read_checkpoint(workdir / "runs" / "tty" / "checkpoint.pt")["global_step"] == stopped


def test_second_ctrl_c_abandons_the_epoch_and_says_what_it_dropped(workdir):
    # Long epochs (100k rows), so the second Ctrl-C lands inside one; no checkpoint after the initial one.
    child = spawn(["--run", "tty2", "--save-every", "1000", "--set", "data.rows=100000"], workdir)
    answer_chunk(child, "100000", "0.01")
    child.expect(r"epoch\s+1 ")
    child.sendintr()
    child.expect_exact("stopping after this epoch")  # two presses at once would reach Python as one
    child.sendintr()
    # Only the running epoch goes: the two finished ones stay, though no checkpoint was written since epoch 0.
    child.expect(r"abandoned epoch (\d+): back to where it began \(no finished epoch dropped")
    running = int(child.match.group(1))
    assert running >= 2
    child.expect_exact("Continue training? [y/n]")
    child.sendcontrol("c")  # Ctrl-C at a prompt: save and exit 0
    child.expect_exact(f"saved run 'tty2' at epoch {running}")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_up_arrow_recalls_answers_from_an_earlier_session(workdir):
    from tests.conftest import run_lrctl

    for answers in ("y\n2\n0.004\nn\n",):
        run_lrctl(["--run", "hist"], workdir, stdin=answers)  # piped answers are not terminal history
    child = spawn(["--run", "hist"], workdir)
    answer_chunk(child, "3", "0.002")
    child.expect_exact("chunk done at epoch 5")
    child.expect_exact("Continue training? [y/n]")  # keys typed during a chunk are the chunk's keys
    child.sendline("n")
    child.expect(pexpect.EOF)
    child = spawn(["--run", "hist"], workdir)
    child.expect_exact("Continue training? [y/n]")
    child.sendline("y")
    child.expect_exact("Epochs:")
    child.send("\x1b[A")
    child.expect_exact("3")
    child.send("\r")
    child.expect_exact("Learning rate:")
    child.send("\x1b[A\r")
    child.expect_exact("training epochs 5..7 · lr 0.002")
    child.expect_exact("Continue training? [y/n]")
    child.sendline("n")
    child.expect(pexpect.EOF)


def test_ctrl_d_at_a_prompt_saves_and_exits(workdir):
    child = spawn(["--run", "tty3"], workdir)
    child.expect_exact("Continue training? [y/n]")
    child.sendcontrol("d")
    child.expect_exact("saved run 'tty3' at epoch 0")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def _screen(raw: str, columns: int = 120, lines: int = 30) -> list[str]:
    """What a terminal shows after ``raw`` (pyte, a VT100 emulator)."""
    import pyte

    screen = pyte.Screen(columns, lines)
    pyte.Stream(screen).feed(raw)
    return [line.rstrip() for line in screen.display]


def test_l_key_prompts_on_its_own_line_and_every_epoch_row_is_printed(workdir):
    import io
    import re

    child = spawn(["--run", "keys"], workdir)
    child.logfile_read = raw = io.StringIO()
    answer_chunk(child, "100000", "0.01")
    child.expect(r"epoch\s+3 ")
    child.expect_exact("keys: p pause")
    keys_line = next(line for line in _screen(raw.getvalue()) if "keys: p pause" in line)
    assert keys_line.lstrip().startswith("keys: p pause") and "0/?" not in keys_line  # no stray empty bar
    child.send("l")
    child.expect_exact("New learning rate")
    shown = _screen(raw.getvalue())
    prompt = next(i for i, line in enumerate(shown) if "New learning rate" in line)
    assert shown[prompt].startswith("New learning rate (a number or a schedule; empty cancels):")
    paused = [line for line in shown[:prompt] if line.startswith("paused at epoch")]
    assert paused and "p (or lrctl send" not in paused[-1]  # training's line came first; l itself continues
    child.sendline("0.005")
    child.expect(r"lr -> 0.005 \(set\) from key")
    child.expect(r"epoch\s+\d+\s+lr 0.005 ")
    child.send("s")
    child.expect(r"stopped at epoch (\d+)")
    stopped = int(child.match.group(1))
    child.expect_exact("Continue training? [y/n]")
    child.sendline("n")
    child.expect(pexpect.EOF)
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw.getvalue())
    rows = [int(n) for n in re.findall(r"epoch\s+(\d+)\s+lr \d", plain)]
    assert sorted(set(rows)) == list(range(stopped))  # no row lost around the prompt
