"""The interactive loop: ask, parse (``lrctl.commands``), dispatch to the session, show (``lrctl.view``).

::

    Continue training? [y/n] y
    Epochs: 30
    Learning rate: 0.03
    ...
    Continue training? [y/n] n

On a terminal each question is a prompt_toolkit prompt with its own history (up-arrow), tab
completion of schedules at ``Learning rate:`` and a bottom toolbar; from a pipe the same
questions are read line by line with plain output. End of input is ``n``. Ctrl-C at a prompt
saves and exits; during a chunk it stops after the epoch, and a second one abandons the epoch.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol, TextIO

from lrctl import commands
from lrctl.commands import Question
from lrctl.schedules import ScheduleSpec
from lrctl.session import ChunkOutcome, RunSession
from lrctl.view import View, fmt_metric, lr_now


class Asker(Protocol):
    def ask(self, question: Question, text: str, placeholder: str | None = None,
            on_shown: Callable[[], None] | None = None) -> str:
        """Return the typed line; raise EOFError at end of input, KeyboardInterrupt on Ctrl-C.

        ``on_shown`` runs once the question is on screen (the CLI starts loading torch then)."""
        ...


class PlainAsker:
    """Reads answers line by line (a pipe, a file); echoes them so the output reads as a transcript."""

    def __init__(self, stdin: TextIO, out: TextIO, unbuffered: bool = False) -> None:
        self.stdin, self.out, self.unbuffered = stdin, out, unbuffered

    def _readline(self) -> str:
        """One line; unbuffered reads take no byte past it, so a process started after this one dies
        (torchrun restarting the workers) reads the answers that are left."""
        if not self.unbuffered:
            return self.stdin.readline()
        import os

        data = b""
        while not data.endswith(b"\n"):
            byte = os.read(self.stdin.fileno(), 1)
            if not byte:
                break
            data += byte
        return data.decode(errors="replace")

    def ask(self, question: Question, text: str, placeholder: str | None = None,
            on_shown: Callable[[], None] | None = None) -> str:
        self._write(text)
        if on_shown is not None:
            on_shown()
        line = self._readline()
        if not line:
            self._write("\n")
            raise EOFError
        line = line.rstrip("\r\n")
        self._write(line + "\n")
        return line

    def _write(self, text: str) -> None:
        with contextlib.suppress(OSError, ValueError):  # a closed stdout must not stop the answers
            self.out.write(text)
            self.out.flush()


class TerminalAsker:
    """prompt_toolkit prompts: one history file per question in the run directory, completion, toolbar.

    ``input``/``output`` let tests drive it with ``create_pipe_input()`` and ``DummyOutput()``.
    """

    def __init__(self, history_dir: Path, toolbar: Callable[[], str], input: Any = None, output: Any = None) -> None:
        self.history_dir, self.toolbar = history_dir, toolbar
        self.input, self.output = input, output
        self._sessions: dict[Question, Any] = {}

    def _session(self, question: Question) -> Any:
        from prompt_toolkit import PromptSession
        from prompt_toolkit.completion import Completer, Completion
        from prompt_toolkit.history import FileHistory, InMemoryHistory

        if question not in self._sessions:
            class ScheduleCompleter(Completer):
                def get_completions(self, document, complete_event):
                    word = document.get_word_before_cursor(WORD=True)
                    for option in commands.completions(document.text_before_cursor):
                        yield Completion(option, start_position=-len(word))

            try:
                self.history_dir.mkdir(parents=True, exist_ok=True)
                history: Any = FileHistory(str(self.history_dir / question.name.lower()))
            except OSError:
                history = InMemoryHistory()
            self._sessions[question] = PromptSession(
                history=history, bottom_toolbar=self.toolbar, input=self.input, output=self.output,
                completer=ScheduleCompleter() if question is Question.LR else None, complete_while_typing=False)
        return self._sessions[question]

    def ask(self, question: Question, text: str, placeholder: str | None = None,
            on_shown: Callable[[], None] | None = None) -> str:
        from prompt_toolkit.formatted_text import FormattedText

        hint = FormattedText([("fg:ansibrightblack", placeholder)]) if placeholder else None
        pre_run = None
        if on_shown is not None:
            # pre_run fires before the first draw; call_soon runs once the loop idles, after it.
            def pre_run() -> None:
                asyncio.get_running_loop().call_soon(on_shown)
        return self._session(question).prompt(text, placeholder=hint, pre_run=pre_run)


class ChunkInterrupts:
    """What Ctrl-C means during a chunk: the first stops after the epoch, the second abandons it at once.

    Data-parallel, nothing is raised from a handler (a rank must not leave a collective half-way): the
    ranks agree at the next batch boundary. A *signal* there comes from torchrun ending the job (the
    terminal's Ctrl-C reaches torchrun; on a terminal rank 0 reads Ctrl-C as a key), so the session
    also quits after the chunk."""

    def __init__(self, session: RunSession, view: View) -> None:
        self.session, self.view, self.presses = session, view, 0

    def press(self, from_signal: bool = False, signal_name: str = "SIGINT") -> None:
        session = self.session
        data_parallel = session.group is not None
        if from_signal and data_parallel:
            session.stop.request("shutdown", signal_name)
        self.presses += 1
        if self.presses == 1:
            session.stop.request("stop")
            self.view.warn("stopping after this epoch (everything kept) · Ctrl-C again abandons the epoch")
            return
        if data_parallel:
            session.stop.request("abandon")
            self.view.warn("abandoning this epoch on every rank at the next batch")
            return
        if not session.in_epochs:
            # The chunk is starting (its keep save, PyTorch's first batches not begun) or ending: nothing to
            # tear now. Starting, its first epoch is abandoned before it trains (before: this press was lost,
            # and the first one trained a whole epoch); ending, the request is spent with the command.
            session.stop.request("abandon")
            return
        if session.in_critical:  # never tear a checkpoint write; abandon right after it
            session.abort_after_critical = True
            return
        raise KeyboardInterrupt


@contextlib.contextmanager
def chunk_interrupts(session: RunSession, view: View) -> Iterator[ChunkInterrupts]:
    """Ctrl-C (SIGINT) and SIGTERM during a chunk, as :class:`ChunkInterrupts` says."""
    interrupts = ChunkInterrupts(session, view)

    def handler(signum: int, frame: object) -> None:
        interrupts.press(from_signal=True, signal_name=signal.Signals(signum).name)

    # SIGTERM on one process is the process's end (lrctl.stopping), not a Ctrl-C; under torchrun it is
    # how the launcher ends the job, and the ranks agree on it at the epoch's end.
    handled = (signal.SIGINT, signal.SIGTERM) if session.group is not None else (signal.SIGINT,)
    old = {signum: signal.signal(signum, handler) for signum in handled}
    try:
        yield interrupts
    finally:
        for signum, previous in old.items():
            signal.signal(signum, previous)


class _Quit(Exception):
    pass


class Repl:
    """The question loop over one open session.

    Args:
        session: the open run (possibly still loading).
        view: where results go.
        asker: how questions are asked.
        ready: blocks until the session has loaded (torch, model, checkpoint).
    """

    def __init__(self, session: RunSession, view: View, asker: Asker, ready: Callable[[], None],
                 on_first_prompt: Callable[[], None] | None = None) -> None:
        self.session, self.view, self.asker, self.ready = session, view, asker, ready
        self.on_first_prompt = on_first_prompt
        self.tb_url: str | None = None
        self.keys = True  # read single keys during chunks (on a terminal only)
        self.control: Any = None  # the control socket server, moved along on fork
        self.last_epochs: int | None = None
        self.last_spec: ScheduleSpec | None = None
        self.last_continue: bool | None = None

    def toolbar(self) -> str:
        s = self.session.summary()
        metric = self.session.metric
        last = s.get("last") or {}
        return (f" {self.session.store.name} · epoch {s.get('global_step', 0)} · train_{metric} "
                f"{fmt_metric(last.get('train'))} · test_{metric} {fmt_metric(last.get('test'))} · "
                f"lr {lr_now(s)} · " + (f"TensorBoard {self.tb_url} · " if self.tb_url else "")
                + "help: ? ")

    def run(self, finish_pending: bool = False) -> str:
        """Ask until the user is done. Returns why it ended: quit, eof, interrupt or closed."""
        try:
            self._offer_pending(finish_pending)
            while not self.view.closed:
                self.last_continue = self._ask(Question.CONTINUE, previous=self.last_continue)
                if not self.last_continue:
                    return "quit"
                epochs = self._ask(Question.EPOCHS, previous=self.last_epochs)
                spec = self._ask_schedule(epochs)
                self.last_epochs, self.last_spec = epochs, spec
                self._train(lambda e=epochs, s=spec: self.session.train(e, s))
            return "closed"
        except _Quit:
            return "quit"
        except EOFError:
            return "eof"
        except KeyboardInterrupt:
            self.view.say("")
            return "interrupt"

    def _offer_pending(self, finish: bool) -> None:
        pending = self.session.pending
        if pending is None:
            return
        detail = pending.describe(self.session.global_step)
        if not finish:
            finish = self._ask(Question.FINISH, text=Question.FINISH.value.format(detail=detail))
        if finish:
            self.view.say(f"finishing the interrupted work ({detail})")
            self._train(self.session.finish_pending)
        else:
            self.session.drop_pending("declined at the prompt")
            self.view.say(f"dropped the interrupted work ({detail}); the journal keeps a record of it")

    def _train(self, command: Callable[[], ChunkOutcome]) -> ChunkOutcome:
        from lrctl.keys import KEYS_HELP, KeyReader, keys_active

        self._wait()
        use_keys = self.keys and keys_active()
        self.view.keys_help = KEYS_HELP if use_keys else ""
        with chunk_interrupts(self.session, self.view) as interrupts:
            if not use_keys:
                outcome = command()
            else:
                # Under torchrun the terminal's Ctrl-C would go to torchrun (the foreground process),
                # which ends the job; read as a key here it means what it means on one process.
                ctrl_c = interrupts.press if self.session.group is not None else None
                with KeyReader(self.session, self.view, on_ctrl_c=ctrl_c):
                    outcome = command()
        if self.session.stop.shutdown:  # torchrun is ending the job (a signal reached every rank): no more prompts
            self.view.warn(f"torchrun is ending the job: saved at epoch {self.session.global_step}")
            raise _Quit
        return outcome

    def _wait(self) -> None:
        if self.session.trainer is None:
            self.view.say("(loading PyTorch and the model…)")
        self.ready()
        self.session.say_warnings(self.view.warn)

    def _ask_schedule(self, epochs: int) -> ScheduleSpec:
        while True:
            spec = self._ask(Question.LR, previous=self.last_spec)
            self._wait()
            try:
                self.session.check_expression(spec, epochs)
                return spec
            except ValueError as e:
                self.view.warn(str(e))

    def _ask(self, question: Question, previous: Any = None, text: str | None = None) -> Any:
        placeholder = None if previous is None else ("y" if previous else "n") if isinstance(previous, bool) \
            else previous.text if isinstance(previous, ScheduleSpec) else str(previous)
        while True:
            hook, self.on_first_prompt = self.on_first_prompt, None
            typed = self.asker.ask(question, text or question.value, placeholder, hook)
            self.session.store.journal("answer", question=question.name.lower(), text=typed)
            command = commands.parse(question, typed, previous)
            if isinstance(command, commands.Answer):
                return command.value
            if isinstance(command, commands.Quit):
                raise _Quit
            if isinstance(command, commands.Invalid):
                self.view.warn(command.message)
            elif isinstance(command, commands.Help):
                self.view.say(command.text)
            elif isinstance(command, commands.Status):
                from lrctl.status import status_lines

                self.view.say("\n".join(status_lines(self.session, self.tb_url)))
            elif isinstance(command, commands.Preview):
                self._preview(command)
            elif isinstance(command, commands.Find):
                suggestion = self._find(command)
                if suggestion is not None:
                    previous, placeholder = commands.parse_schedule(suggestion), suggestion
            else:
                self._run_command(command)

    def _run_command(self, command: commands.Command) -> None:
        """undo, fork NAME, plot: available at every prompt."""
        from lrctl.runstore import RunError

        self._wait()
        try:
            if isinstance(command, commands.Undo):
                current, target = self.session.undo()
                self.view.say(f"undone: back from epoch {current} to {target}, where the last chunk began "
                              f"(TensorBoard hides epochs {target}..{current - 1} until they are trained again)")
            elif isinstance(command, commands.Fork):
                old = self.session.store.name
                self.session = self.session.fork(command.name)
                if self.control is not None:
                    self.control.stop()
                    self.control.session = self.session
                    self.control.start()
                self.session.say_warnings(self.view.warn)  # e.g. a killed fork's partial copy removed
                self.view.say(f"forked: run '{old}' stays at epoch {self.session.global_step}; you now train "
                              f"run '{command.name}' (TensorBoard: both, sharing history up to here)")
            elif isinstance(command, commands.Plot):
                from lrctl.plots import RunCurves, chart_width, terminal_chart

                curves = RunCurves(self.session.store.name, self.session.metric, self.session.trainer.history,
                                   self.session.chunks)
                self.view.say(terminal_chart([curves], width=chart_width()) if curves.history
                              else "nothing to plot yet")
        except RunError as e:
            self.view.warn(str(e))

    def _find(self, command: commands.Find) -> str | None:
        """The lr range test from the current state; returns the suggestion as the lr prompt's default."""
        self._wait()
        from lrctl.lrfind import log_sweep, range_test
        from lrctl.plots import lr_chart

        trainer = self.session.trainer
        try:
            result = range_test(trainer, command.start, command.end, command.batches)
        except ValueError as e:
            self.view.warn(str(e))
            return None
        logdir = log_sweep(self.session.store.runs_dir, self.session.store.name, trainer.global_step, result)
        self.view.say(lr_chart(result.lrs, result.losses, result.marks()))
        self.view.say(result.summary())
        if result.suggestion is None:
            self.view.say(f"Sweep in TensorBoard: {logdir}")
            return None
        self.view.say(f"Press Enter to use the suggestion. Sweep in TensorBoard: {logdir}")
        return f"{result.suggestion:.3g}"

    def _preview(self, command: commands.Preview) -> None:
        self._wait()
        from lrctl.lr_runner import preview

        spec = commands.parse_schedule(command.expression)
        self.view.say(f"preview of '{spec.text}' over {command.epochs} epochs (lr of each epoch's first batch):")
        self.view.lr_table(preview(spec, command.epochs, self.session.trainer.batches_per_epoch))
