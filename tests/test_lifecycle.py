"""The run lifecycle, simulated: random sequences of what users do to a run, against a reference model.

A Hypothesis state machine opens, trains, steers, interrupts, undoes, forks, crashes (a simulated
``kill -9`` at a random durable write: inside a chunk, an undo, a fork, or the load of a damaged run),
damages and resumes runs in-process, and after every step checks the promises lrctl makes:

1. TensorBoard shows the run's timeline: every epoch once with its surviving values, read by both of
   TensorBoard's loaders (``EventAccumulator`` and the multiplexer ``lrctl tb`` serves).
2. The state equals a fresh run that trains the reference model's timeline from scratch (bit for bit).
3. ``lrctl runs`` reports the true state (epoch, interrupted work).
4. Pending work is never silently lost: it is finished exactly, or dropped with a message naming it.
5. Every fallback or refusal is reported when the run is opened.
6. After a live ``set`` to a constant lr, every later batch of the chunk trains at that lr.
7. A kill inside an operation leaves the run before it or after it, never between: an undo is finished
   by the next open, a fork's new run is whole or absent (its name free), a load killed half-way ends,
   at the next open, where an uninterrupted load ends.

Profiles: ``ci`` (default, bounded for the suite's time) and ``long`` (thousands of steps):
``LRCTL_SIM_PROFILE=long pytest tests/test_lifecycle.py``.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import queue
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from lrctl import _faults
from lrctl.config import RunConfig, with_overrides
from lrctl.plan import requests
from lrctl.runstore import (
    CHECKPOINT_FILE,
    CHECKPOINT_META_FILE,
    JOURNAL_FILE,
    PENDING_FILE,
    PREVIOUS_CHECKPOINT_FILE,
    Pending,
    RunError,
    RunStore,
)
from lrctl.schedules import parse
from lrctl.session import Observer, RunSession
from tests.conftest import assert_states_equal, read_checkpoint

# Shrinking a sequence of trainings can take minutes: CI reports the failing sequence as found. CI runs the
# same sequences every time (derandomize: a red CI is never luck); `long` explores new ones on every run.
settings.register_profile("ci", max_examples=int(os.environ.get("LRCTL_SIM_EXAMPLES", "30")),
                          stateful_step_count=14, deadline=None, derandomize=True, database=None,
                          phases=[Phase.explicit, Phase.reuse, Phase.generate],
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
settings.register_profile("explore", max_examples=int(os.environ.get("LRCTL_SIM_EXAMPLES", "200")),
                          stateful_step_count=14, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate],
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
settings.register_profile("long", max_examples=int(os.environ.get("LRCTL_SIM_EXAMPLES", "3000")),
                          stateful_step_count=40, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
PROFILE = os.environ.get("LRCTL_SIM_PROFILE", "ci")
logging.getLogger("tensorboard").setLevel(logging.ERROR)  # its purge notices are what we ask of it

NEVER = float("inf")
EXPRESSIONS = ["0.03", "0.01", "exp 0.05 gamma=0.9", "cos 0.03", "cyclic 0.001 0.03 period=1", "onecycle 0.05",
               "keep"]
LIVE_VALUES = ["0.005", "0.02", "cyclic 0.001 0.02 period=1", "exp 0.02 gamma=0.8"]


class SteppingClock:
    """Each reading is ``step`` seconds after the last (the session's clock decides when to checkpoint)."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


class SimKill(BaseException):
    """A simulated ``kill -9``: nothing after this point runs (no finally, no close, no flush)."""


def small_config(checkpoint_every: int) -> RunConfig:
    # 210 training rows in batches of 50: 5 batches an epoch (the last one short), a few ms an epoch.
    return with_overrides(RunConfig(), ["data.rows=300", f"train.checkpoint_every={checkpoint_every}"])


def simulate_kill(session: RunSession) -> None:
    """What the kernel does to a killed process: unflushed buffers are lost, the lock is released."""
    files = [session.store._journal]
    for logger in session.logs.open_loggers():
        if logger is not None and hasattr(logger, "_file"):
            files.append(logger._file)
    for f in files:
        if f is None or f.closed:
            continue
        fd = f.fileno()
        os.close(fd)
        with contextlib.suppress(OSError, ValueError):
            f.close()
    session.store._journal = None
    if session.store._lock is not None:
        session.store._lock.release()
        session.store._lock = None


def kill_during(action: Callable[[], object], at: Callable[[str], bool]) -> None:
    """Run ``action`` with a simulated ``kill -9`` at the first durable write point that ``at`` names
    (the caller then does what the kernel does: :func:`simulate_kill`)."""

    def hook(name: str) -> None:
        if at(name):
            raise SimKill(name)

    _faults.install(hook)
    try:
        with pytest.raises(SimKill):
            action()
    finally:
        _faults.install(None)


def copy_keeping_hard_links(src: Path, dst: Path) -> None:
    """``cp -a`` in Python: kept checkpoints are hard links of checkpoint files, and whether a damaged
    file damaged them depends on that."""
    first: dict[tuple[int, int], Path] = {}
    for path in sorted(src.rglob("*")):
        target = dst / path.relative_to(src)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif path.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            key = (path.stat().st_dev, path.stat().st_ino)
            if key in first:
                os.link(first[key], target)
            else:
                shutil.copy2(path, target)
                first[key] = target


def release_locks_of_killed_process(root: Path) -> None:
    """The kernel releases every lock a killed process held: run stores the kill left open in this one."""
    import gc

    for obj in gc.get_objects():
        if isinstance(obj, RunStore) and obj._lock is not None and str(obj.dir).startswith(str(root)):
            if obj._journal is not None:
                with contextlib.suppress(OSError):
                    os.close(obj._journal.fileno())
                obj._journal = None
            obj._lock.release(force=True)
            obj._lock = None


# -- the reference model ------------------------------------------------------------------------------
@dataclass
class Segment:
    """A command's chunk trained from ``chunk['start']`` up to ``stop`` (a piece of the timeline)."""

    chunk: dict[str, Any]
    stop: int


@dataclass
class RunModel:
    """What a run should be: its timeline (segments), epoch, pending chunks, chunk boundaries."""

    segments: list[Segment] = field(default_factory=list)
    step: int = 0
    pending: list[dict[str, Any]] = field(default_factory=list)
    boundaries: set[int] = field(default_factory=lambda: {0})
    chunk_starts: list[int] = field(default_factory=list)  # the session's chunks, for undo
    damaged: bool = False  # a file was damaged: kept checkpoints linked to it may be gone
    crashed: bool = False  # a simulated kill: the journal holds work that was lost
    forked_at: bool = False  # made by fork --at: its journal is the source's, then the fork
    torn_chunk: dict[str, Any] | None = None  # the chunk of the epoch a mid-epoch checkpoint stands in
    recorded: dict[int, dict[str, Any]] = field(default_factory=dict)  # every command's chunks, by start

    def clone(self) -> RunModel:
        return copy.deepcopy(self)

    def truncate(self, step: int) -> None:
        """The timeline after ``step`` is gone (undo, rollback, a crash)."""
        kept = []
        for seg in self.segments:
            if seg.chunk["start"] < step:
                kept.append(Segment(seg.chunk, min(seg.stop, step)))
        self.segments = kept
        self.step = step
        self.boundaries = {b for b in self.boundaries if b <= step} | {step}
        self.chunk_starts = [s for s in self.chunk_starts if s < step]

    def trained(self, chunk: dict[str, Any], upto: int) -> None:
        if upto <= self.step:
            return
        self.boundaries.add(chunk["start"])  # a chunk's start is kept before it trains (undo goes there)
        if self.segments and self.segments[-1].chunk["start"] == chunk["start"]:
            self.segments[-1] = Segment(chunk, upto)
        else:
            self.segments.append(Segment(chunk, upto))
        if not self.chunk_starts or self.chunk_starts[-1] != chunk["start"]:
            self.chunk_starts.append(chunk["start"])
        self.step = upto

    def remaining(self) -> int:
        return Pending(self.pending).remaining(self.step)


class SimObserver(Observer):
    """Acts at a chosen batch of the chunk (a live change, pause, stop, abandon) and records each batch's lr."""

    wants_batches = True

    def __init__(self) -> None:
        self.session: RunSession | None = None
        self.action: tuple[int, str, Any] | None = None  # (batch index in the chunk, what, value)
        self.batch = 0
        self.lrs: list[float] = []  # the lr in force for each next batch, read at every boundary
        self.replies: list[dict[str, Any]] = []
        self.messages: list[str] = []

    def message(self, text: str) -> None:
        self.messages.append(text)

    def chunk_started(self, start: int, epochs: int, spec_text: str, batches_per_epoch: int) -> None:
        self.batch = 0
        self.lrs = []

    def batch_done(self, batch: int, batches: int) -> None:
        self.batch += 1
        self.lrs.append(self.session.trainer.optimizer.param_groups[0]["lr"])
        if self.action is None or self.batch != self.action[0]:
            return
        _, what, value = self.action
        self.action = None
        if what == "abandon":
            raise KeyboardInterrupt
        reply: queue.SimpleQueue = queue.SimpleQueue()
        if what == "lr":
            self.session.submit({"cmd": "lr", "value": value[0], "mode": value[1], "source": "sim", "reply": reply})
        elif what == "pause":
            self.session.submit({"cmd": "pause", "source": "sim"})
            self.session.submit({"cmd": "resume", "source": "sim", "reply": reply})
        else:
            self.session.submit({"cmd": what, "source": "sim", "reply": reply})
        self._pending_reply = reply

    def collect(self) -> None:
        reply = getattr(self, "_pending_reply", None)
        if reply is not None:
            with contextlib.suppress(queue.Empty):
                self.replies.append(reply.get_nowait())
            self._pending_reply = None


class FaultPlan:
    """Raises SimKill at the n-th durable write point after arming; records checkpoint saves."""

    def __init__(self) -> None:
        self.countdown: int | None = None
        self.hit: str | None = None

    def __call__(self, name: str) -> None:
        if self.countdown is None:
            return
        self.countdown -= 1
        if self.countdown <= 0:
            self.countdown = None
            self.hit = name
            raise SimKill(name)


# -- TensorBoard, as both of its loaders show it ----------------------------------------------------------
def tb_scalars_accumulator(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def tb_scalars_multiplexer(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """What ``tensorboard --load_fast=false`` (``lrctl tb``) serves: the plugin event multiplexer."""
    from tensorboard.backend.event_processing import plugin_event_multiplexer as pem
    from tensorboard.util import tensor_util

    mux = pem.EventMultiplexer(tensor_size_guidance={"scalars": 0}, purge_orphaned_data=True)
    mux.AddRun(str(logdir), name="run")
    mux.Reload()
    out = {}
    for tag in mux.Runs().get("run", {}).get("tensors", []):
        events = mux.Tensors("run", tag)
        if events and events[0].tensor_proto.dtype != 7:  # not text
            out[tag] = [(e.step, float(tensor_util.make_ndarray(e.tensor_proto))) for e in events]
    return out


def f32(x: float) -> float:
    import struct

    return struct.unpack("f", struct.pack("f", x))[0]


def check_tensorboard(run_dir: Path, history: list[dict[str, Any]], metric: str = "mse") -> None:
    expected = {f"train_{metric}": [(h["step"], f32(h["train"])) for h in history],
                f"test_{metric}": [(h["step"], f32(h["test"])) for h in history],
                "lr": [(h["step"], f32(h["lr"])) for h in history]}
    for name, loader in (("EventAccumulator", tb_scalars_accumulator), ("multiplexer", tb_scalars_multiplexer)):
        shown = loader(run_dir)
        for tag, series in expected.items():
            got = sorted(shown.get(tag, []))
            assert got == series, f"{name}: TensorBoard's {tag} is {got}, the run's timeline is {series}"


# -- the state machine ----------------------------------------------------------------------------------
class Lifecycle(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="lrctl-sim-"))
        self.runs = self.root / "runs"
        self.session: RunSession | None = None
        self.observer = SimObserver()
        self.models: dict[str, RunModel] = {}
        self.name = "r0"
        self.forks = 0
        self.faults = FaultPlan()
        _faults.install(self.faults)
        self.reports: list[str] = []
        self.expect_reports: list[str] = []

    @initialize(checkpoint_every=st.sampled_from([0, 2]), save_every=st.sampled_from([0.0, NEVER]))
    def setup(self, checkpoint_every: int, save_every: float) -> None:
        self.cfg = small_config(checkpoint_every)
        self.save_every = save_every
        self.clock = SteppingClock(0.35)
        self.models[self.name] = RunModel()
        self._open()

    # -- helpers ------------------------------------------------------------------------------------
    @property
    def model(self) -> RunModel:
        return self.models[self.name]

    def _open(self) -> None:
        # A clock that moves 0.35 s at every reading: with save_every 0, epochs "last" long enough for
        # mid-epoch checkpoints every few batches, so they meet every other operation too.
        self.session = RunSession.open(self.runs, self.name, self.cfg, save_every=self.save_every,
                                       observer=self.observer, clock=self.clock)
        self.observer.session = self.session
        self.session.load()
        self.reports = []
        self.session.say_warnings(self.reports.append)

    def _close(self) -> None:
        self.session.close("sim")
        self.session = None

    def _chunk(self, epochs: int, expression: str) -> dict[str, Any]:
        return {"start": self.model.step, "epochs": epochs, "expr": parse(expression).text}

    def _has_schedule(self) -> bool:
        return self.session.trainer.runner is not None

    def _note_torn_chunk(self) -> None:
        """The run stands inside an epoch: its chunk is the session's last one (undo goes to its start)."""
        m = self.model
        if not self.session.trainer.batch_in_epoch:
            m.torn_chunk = None
        else:
            covering = [c for c in m.pending if c["start"] <= m.step < c["start"] + c["epochs"]]
            running = self.session.chunks[-1] if self.session.chunks else None
            recorded = m.recorded.get(running["start"]) if running else None
            if covering:
                m.torn_chunk = covering[0]
            elif recorded is not None and recorded["expr"] == running["expr"]:
                # its work was dropped (a fallback): the checkpoint's own last chunk is the one it stands in
                m.torn_chunk = recorded
            last = self.session.chunks[-1]["start"] if self.session.chunks else None
            if last is not None and (not m.chunk_starts or m.chunk_starts[-1] != last):
                m.chunk_starts.append(last)

    def _complete_torn_epoch(self) -> None:
        """A run standing inside an epoch finishes it first (under its pending chunk, or as it was going)."""
        m, trainer = self.model, self.session.trainer
        if not trainer.batch_in_epoch:
            return
        step = m.step
        self.session.complete_torn_epoch()
        covering = [c for c in m.pending if c["start"] <= step < c["start"] + c["epochs"]]
        # Its pending chunk; or, when that work was dropped (a fork, a refusal), the chunk that was running.
        running = [g.chunk for g in m.segments if g.chunk["start"] <= step < g.chunk["start"] + g.chunk["epochs"]]
        chunk = covering[0] if covering else m.torn_chunk or running[-1]
        m.trained(chunk, step + 1)
        m.torn_chunk = None
        m.boundaries.add(step + 1)

    def _train(self, chunks: list[dict[str, Any]], action: tuple[int, str, Any] | None, crash_at: int | None) -> None:
        """Run a command and move the model as the command should have moved the run."""
        self._complete_torn_epoch()
        m = self.model
        chunks = [dict(c, start=c["start"] + (m.step - chunks[0]["start"])) for c in chunks]
        self.observer.action = action
        self.faults.countdown = crash_at
        m.pending = [dict(c, changes=[]) for c in chunks]
        m.recorded.update({c["start"]: c for c in m.pending})
        plan = [(c["epochs"], c["expr"]) for c in chunks]
        try:
            outcome = self.session.run_plan(requests(plan), source="sim")
        except SimKill:
            self._after_kill()
            return
        finally:
            self.faults.countdown = None
            self.observer.action = None
        self.observer.collect()
        self._follow(outcome)

    def _follow(self, outcome) -> None:
        """The model's account of a finished command, checked against the session's outcome."""
        m = self.model
        start = m.step
        changes = [r for r in self.observer.replies if r.get("cmd") == "lr"]
        self.observer.replies = []
        for reply in changes:  # the change joins the chunk it was made in (the pending chunk it belongs to)
            owner = next(c for c in m.pending if c["start"] <= reply["global_step"] < c["start"] + c["epochs"])
            owner["changes"].append(reply)
        end = outcome.step
        if outcome.status == "abandoned":
            # Abandon drops only the running epoch: back to the last epoch boundary, never further.
            assert end == self.session.global_step
        if m.pending and m.pending[0]["start"] == start and outcome.status in ("abandoned", "diverged"):
            m.boundaries.add(start)  # kept before it trained, though its first epoch was dropped
        for chunk in list(m.pending):
            chunk_end = chunk["start"] + chunk["epochs"]
            if end <= chunk["start"]:
                break
            m.trained(chunk, min(end, chunk_end))
            if end >= chunk_end:
                m.boundaries.add(chunk_end)
        m.step = end
        m.torn_chunk = None  # a command first finishes the epoch it stood in
        if outcome.status == "diverged":
            m.pending = []
        elif outcome.status == "stopped":  # a stopped chunk is kept at its end
            m.boundaries.add(end)
        m.pending = [c for c in m.pending if c["start"] + c["epochs"] > m.step]
        assert self.session.global_step == m.step, (start, outcome)

    def _after_kill(self) -> None:
        """The process died: reopen (as ``lrctl resume`` would) and find where the files say the run is."""
        simulate_kill(self.session)
        self.model.crashed = True
        self.session = None
        self.observer.replies = []
        self._open()
        m = self.model
        loaded = self.session.global_step
        # The command's epochs up to the checkpoint that survived are the timeline now.
        for chunk in m.pending:
            m.trained(chunk, min(loaded, chunk["start"] + chunk["epochs"]))
            if loaded >= chunk["start"] + chunk["epochs"]:
                m.boundaries.add(chunk["start"] + chunk["epochs"])
        assert loaded <= m.step
        m.truncate(loaded)
        pending = self.session.pending
        m.pending = [dict(c, changes=list(c.get("changes", []))) for c in (pending.chunks if pending else [])]
        self._note_torn_chunk()

    # -- rules ----------------------------------------------------------------------------------------
    @precondition(lambda self: self.session is not None)
    @rule(epochs=st.integers(1, 3), expression=st.sampled_from(EXPRESSIONS),
          action=st.one_of(st.none(), st.tuples(st.integers(1, 12), st.sampled_from(
              ["lr", "pause", "stop", "abandon", "checkpoint"]), st.tuples(st.sampled_from(LIVE_VALUES),
                                                                      st.sampled_from(["set", "scale", "restart"])))))
    def chunk(self, epochs: int, expression: str, action) -> None:
        self._complete_torn_epoch()
        if expression == "keep" and not self._has_schedule():
            expression = "0.02"
        start, bpe = self.model.step, self.session.trainer.batches_per_epoch
        total = epochs * bpe
        action = (action[0], action[1], action[2]) if action is not None else None
        self._train([self._chunk(epochs, expression)], action, None)
        expected = start + epochs
        if action is not None and action[0] <= total:
            k, what, value = action
            if what == "abandon":  # the running epoch is dropped, nothing before it
                expected = start + (k - 1) // bpe
            elif what == "stop" and k < total:  # applied at the next boundary: stop after that batch's epoch
                expected = min(start + epochs, start + k // bpe + 1)
            elif what == "lr" and value[1] == "set" and parse(value[0]).name == "const" and k < total:
                # Every batch after the change, to the chunk's end, trains at the value typed.
                after = self.observer.lrs[k:]
                assert after and all(lr == float(value[0]) for lr in after), (
                    f"lr {value[0]} set at batch {k + 1} of a `{expression}` chunk, then the batches trained at "
                    f"{after}")
        assert self.session.global_step == expected, (self.session.global_step, expected, action)

    @precondition(lambda self: self.session is not None)
    @rule(first=st.integers(1, 2), second=st.integers(1, 2), lrs=st.sampled_from([("0.03", "0.01"),
                                                                                  ("cos 0.03", "keep"),
                                                                                  ("onecycle 0.05", "0.01")]))
    def plan(self, first: int, second: int, lrs: tuple[str, str]) -> None:
        a = self._chunk(first, lrs[0])
        b = {"start": a["start"] + first, "epochs": second, "expr": parse(lrs[1]).text}
        self._train([a, b], None, None)

    @precondition(lambda self: self.session is not None)
    @rule(epochs=st.integers(1, 3), crash_at=st.integers(1, 30), expression=st.sampled_from(EXPRESSIONS[:-1]))
    def crash(self, epochs: int, crash_at: int, expression: str) -> None:
        self._train([self._chunk(epochs, expression)], None, crash_at)

    @precondition(lambda self: self.session is not None)
    @rule()
    def diverge(self) -> None:
        self._train([self._chunk(2, "1e6")], None, None)

    @precondition(lambda self: self.session is not None)
    @rule(epochs_before=st.integers(1, 2))
    def diverge_mid_chunk(self, epochs_before: int) -> None:
        """A live lr of 1e6 after some epochs of a chunk: back to the last finite epoch boundary, inside it."""
        self._complete_torn_epoch()
        bpe = self.session.trainer.batches_per_epoch
        self._train([self._chunk(3, "0.03")], (epochs_before * bpe, "lr", ("1e6", "set")), None)

    @precondition(lambda self: self.session is not None)
    @rule()
    def kill_at_prompt(self) -> None:
        """``kill -9`` while lrctl waits at the prompt: everything the run did is on disk already."""
        m, before = self.model, self.session.trainer.batch_in_epoch
        simulate_kill(self.session)
        m.crashed = True
        self.session = None
        self._open()
        assert (self.session.global_step, self.session.trainer.batch_in_epoch) == (m.step, before), (
            f"killed at the prompt at epoch {m.step}: the run opened at epoch {self.session.global_step}")

    @precondition(lambda self: self.session is not None and self.session.pending is not None)
    @rule()
    def decline(self) -> None:
        """'Finish the interrupted chunk? n': a torn epoch is finished first, the rest of the work dropped."""
        self._complete_torn_epoch()
        self.session.drop_pending("declined")
        self.model.pending = []

    @precondition(lambda self: self.session is not None and self.session.trainer.batch_in_epoch > 0)
    @rule(at=st.integers(1, 3))
    def interrupt_torn_epoch(self, at: int) -> None:
        """Ctrl-C twice while finishing an epoch resumed from a mid-epoch checkpoint (its start was never in
        this process's memory): back to its start through its chunk's kept checkpoint, else it stays where
        it resumed. (A divergence there is ``tests/test_epoch_rollback.py``'s: a live lr of 1e6 for the
        epoch's last batches does not always make the loss non-finite, and the model cannot tell when.)"""
        m, session = self.model, self.session
        trainer = session.trainer
        kept = [s for s in session.store.kept_steps() if s <= m.step]
        self.observer.action = (min(at, trainer.batches_per_epoch - trainer.batch_in_epoch), "abandon", None)
        try:
            outcome = session.complete_torn_epoch()
        finally:
            self.observer.action = None
        event(f"torn epoch abandoned, back to its start: {trainer.batch_in_epoch == 0}")
        assert outcome.status == "abandoned" and outcome.step == m.step, outcome
        if m.step in kept and not m.damaged:
            assert trainer.batch_in_epoch == 0 and outcome.batch == 0, outcome
        if trainer.batch_in_epoch == 0:  # at the epoch's start: as an abandon in a chunk's first epoch
            m.torn_chunk = None
            if m.chunk_starts and m.chunk_starts[-1] == m.step:
                m.chunk_starts.pop()

    @precondition(lambda self: self.session is not None and self.session.pending is not None)
    @rule()
    def finish(self) -> None:
        self._follow(self.session.finish_pending())

    @precondition(lambda self: self.session is not None)
    @rule(kill_at=st.one_of(st.none(), st.integers(1, 16)))
    def undo(self, kill_at: int | None = None) -> None:
        m = self.model
        if not m.chunk_starts:
            with pytest.raises(RunError):
                self.session.undo()
            return
        self.faults.countdown = kill_at
        try:
            current, target = self.session.undo()
        except RunError:
            # Its kept checkpoint went with a damaged file (a hard link of it: said at open), or is older
            # than the newest ``keep`` kept ones (a fork --at carries the source's window): refused.
            kept = RunStore(self.runs, self.name).kept_steps()
            assert m.chunk_starts[-1] not in kept and (m.damaged or (kept and m.chunk_starts[-1] < kept[0]))
            return
        except SimKill:
            self._after_killed_undo()
            return
        finally:
            self.faults.countdown = None
        assert (current, target) == (m.step, m.chunk_starts[-1])
        m.truncate(target)
        m.torn_chunk = None
        m.pending = []

    def _after_killed_undo(self) -> None:
        """A ``kill -9`` inside an undo: the next open finishes it (the run is at the chunk's start,
        its pending work dropped as the undo asked), whatever write the kill interrupted."""
        m = self.model
        target = m.chunk_starts[-1]
        began = self.faults.hit != "write journal.jsonl" or self.session.store.interrupted_undo() is not None
        simulate_kill(self.session)
        self.model.crashed = True
        self.session = None
        self._open()
        if not began:  # killed before its intent was written: the undo never began, nothing changed
            assert self.session.global_step == m.step and self.session.store.interrupted_undo() is None
            return
        assert self.session.global_step == target, (
            f"killed inside an undo to epoch {target}: the run opened at epoch {self.session.global_step}")
        assert self.session.pending is None
        m.truncate(target)
        m.torn_chunk = None
        m.pending = []

    @precondition(lambda self: self.session is not None)
    @rule(kill_at=st.one_of(st.none(), st.integers(1, 14)))
    def fork(self, kill_at: int | None = None) -> None:
        self.forks += 1
        new = f"f{self.forks}"
        old = self.name
        source = self.models[old]
        source.boundaries.add(source.step)
        self.faults.countdown = kill_at
        try:
            self.session = self.session.fork(new)
        except SimKill:
            # Killed while forking: the new run is whole or absent (its name free again); the source is intact.
            simulate_kill(self.session)
            release_locks_of_killed_process(self.root)
            source.crashed = True
            self.session = None
            if not RunStore(self.runs, new).exists:
                self._open()
                self.session = self.session.fork(new)  # the partial copy is removed, the fork made anew
            else:
                self.name = new
                self.models[new] = source.clone()
                self.models[new].pending = []
                self._open()
                self._note_torn_chunk()
                return
        finally:
            self.faults.countdown = None
        self.observer.session = self.session
        self.models[new] = source.clone()
        self.models[new].pending = []
        self.name = new

    @precondition(lambda self: self.session is not None)
    @rule(pick=st.integers(0, 100), kill_at=st.one_of(st.none(), st.integers(1, 14)))
    def fork_at(self, pick: int, kill_at: int | None = None) -> None:
        from lrctl.runops import fork_run

        self._close()
        kept = RunStore(self.runs, self.name).kept_steps()
        if not kept:  # every kept checkpoint went with a damaged file (said when the run was opened)
            assert self.model.damaged
            self._open()
            return
        at = kept[pick % len(kept)]
        self.forks += 1
        new = f"f{self.forks}"
        self.faults.countdown = kill_at
        try:
            step = fork_run(self.runs, self.name, new, at)
        except SimKill:
            release_locks_of_killed_process(self.root)
            step = at if RunStore(self.runs, new).exists else fork_run(self.runs, self.name, new, at)
        finally:
            self.faults.countdown = None
        assert step == at
        model = self.model.clone()
        model.truncate(at)
        model.pending = []
        model.forked_at = True
        self.models[new] = model
        self.name = new
        self._open()

    @precondition(lambda self: self.session is not None)
    @rule()
    def find(self) -> None:
        from lrctl.lrfind import range_test

        before = copy.deepcopy(self.session.trainer.state_dict())
        files = {p: p.read_bytes() for p in self.session.store.dir.rglob("*") if p.is_file() and p.name != "lock"}
        range_test(self.session.trainer, batches=20)
        assert_states_equal(before, self.session.trainer.state_dict())
        for path, data in files.items():
            assert path.read_bytes() == data, f"find changed {path.name}"

    @precondition(lambda self: self.session is not None)
    @rule()
    def reopen(self) -> None:
        self._close()
        self._open()
        self.model.pending = [c for c in self.model.pending if c["start"] + c["epochs"] > self.model.step]

    @precondition(lambda self: self.session is not None)
    @rule(target_file=st.sampled_from([CHECKPOINT_FILE, PREVIOUS_CHECKPOINT_FILE, CHECKPOINT_META_FILE,
                                       PENDING_FILE, JOURNAL_FILE]), how=st.sampled_from(["truncate", "delete"]),
          kill_while_loading=st.one_of(st.none(), st.integers(1, 24)))
    def damage(self, target_file: str, how: str, kill_while_loading: int | None = None) -> None:
        was_torn = bool(self.session.trainer.batch_in_epoch)
        self._close()
        self.model.damaged = True
        path = self.runs / self.name / target_file
        if not path.exists():
            self._open()
            return
        if target_file == JOURNAL_FILE:  # a torn last line
            data = path.read_bytes()
            path.write_bytes(data[: max(0, len(data) - 7)])
        elif how == "delete":
            path.unlink()
        else:
            path.write_bytes(path.read_bytes()[:20])
        if kill_while_loading is None:
            self._open()
        else:
            self._open_killed_while_loading(kill_while_loading)
        m = self.model
        loaded = self.session.global_step
        if target_file in (CHECKPOINT_FILE, CHECKPOINT_META_FILE) and loaded != m.step:
            assert self.reports, f"damaged {target_file}: loaded epoch {loaded} instead of {m.step}, not reported"
        if target_file == PENDING_FILE and m.remaining() > 0:
            pending = self.session.pending
            # Pending work comes back from the checkpoint and journal, or its loss is reported.
            assert (pending is not None and pending.remaining(loaded) == m.remaining()) or self.reports
        if loaded != m.step:
            assert self.reports, "the run went back without a word"
            m.truncate(loaded)
        elif was_torn and not self.session.trainer.batch_in_epoch:
            # The mid-epoch checkpoint is gone and the run stands at that epoch's start: the torn
            # epoch's chunk trained nothing that survives, so undo no longer goes to its start.
            m.truncate(loaded)
            m.torn_chunk = None
        pending = self.session.pending
        if pending is None and m.remaining() > 0:
            assert self.reports, "pending work dropped without a word"
        m.pending = [dict(c, changes=list(c.get("changes", []))) for c in (pending.chunks if pending else [])]
        self._note_torn_chunk()

    def _open_killed_while_loading(self, kill_at: int) -> None:
        """Open a damaged run with a ``kill -9`` at the n-th durable write of its load (the fallback
        rewrites the latest checkpoint, purges TensorBoard, rebuilds or drops work), then open it again:
        it must end where an uninterrupted open ends (checked on a copy), and say what that one says."""
        copy_root = Path(tempfile.mkdtemp(prefix="lrctl-sim-clean-"))
        try:
            copy_keeping_hard_links(self.runs, copy_root / "runs")
            clean = RunSession.open(copy_root / "runs", self.name, self.cfg, save_every=NEVER)
            clean.load()
            expected = (clean.global_step, clean.trainer.batch_in_epoch,
                        clean.pending.remaining(clean.global_step) if clean.pending else 0)
            expected_state = copy.deepcopy(clean.trainer.state_dict())
            expected_kept = RunStore(copy_root / "runs", self.name).kept_steps()
            clean_reported = bool(_substance(clean.load_warnings))
            clean.close("sim")
        finally:
            shutil.rmtree(copy_root, ignore_errors=True)
        self.session = RunSession.open(self.runs, self.name, self.cfg, save_every=self.save_every,
                                       observer=self.observer, clock=self.clock)
        self.observer.session = self.session
        self.faults.countdown = kill_at
        try:
            self.session.load()
            killed = False
        except SimKill:
            killed = True
        finally:
            self.faults.countdown = None
        if killed:
            simulate_kill(self.session)
            self.model.crashed = True
            self._open()
        else:
            self.reports = []
            self.session.say_warnings(self.reports.append)
        s = self.session
        got = (s.global_step, s.trainer.batch_in_epoch, s.pending.remaining(s.global_step) if s.pending else 0)
        assert got == expected, f"killed while loading (write {kill_at}): {got}, an uninterrupted open: {expected}"
        assert_states_equal(expected_state, s.trainer.state_dict())
        assert RunStore(self.runs, self.name).kept_steps() == expected_kept
        assert _substance(self.reports) or not clean_reported, (
            f"killed while loading (write {kill_at}): the next open did not say what an uninterrupted one says")

    # -- invariants -----------------------------------------------------------------------------------
    @invariant()
    def tensorboard_shows_the_timeline(self) -> None:
        if self.session is None:
            return
        self.session.logs.flush()
        check_tensorboard(self.runs / self.name, self.session.trainer.history)

    @invariant()
    def at_the_model_epoch(self) -> None:
        if self.session is None:
            return
        assert self.session.global_step == self.model.step
        pending = self.session.pending
        assert (pending.remaining(self.model.step) if pending else 0) == self.model.remaining()

    @invariant()
    def kept_checkpoints_are_in_the_timeline(self) -> None:
        if self.session is None:
            return
        kept = set(RunStore(self.runs, self.name).kept_steps())
        assert kept <= self.model.boundaries | {0}, (kept, self.model.boundaries)

    def teardown(self) -> None:
        _faults.install(None)
        try:
            if self.session is not None:
                self._complete_torn_epoch()  # the reference timeline is in whole epochs
                self.session.close("sim")
                self.session = None
                self._check_against_fresh_run()
                self._check_journal_replay()
                self._check_runs_table()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def _check_journal_replay(self) -> None:
        """(2) literally: ``lrctl replay`` of the journal gives the checkpoint, bit for bit (for timelines
        without kills, damage or ``fork --at``: their journals hold work that was lost or is another run's)."""
        from lrctl.replay import replay

        m = self.model
        if m.damaged or m.crashed or m.forked_at:
            return
        replay(self.runs, self.name, "journal-replay")
        assert_states_equal(read_checkpoint(self.runs / self.name / CHECKPOINT_FILE),
                            read_checkpoint(self.runs / "journal-replay" / CHECKPOINT_FILE))

    def _check_runs_table(self) -> None:
        from lrctl.runs_table import list_runs

        rows = {r.name: r for r in list_runs(self.runs)}
        row = rows[self.name]
        assert row.step == self.model.step, (row, self.model.step)
        if self.model.remaining() > 0:
            assert row.state.startswith("interrupted"), row.state
        else:
            assert row.state == "ok", row.state

    def _check_against_fresh_run(self) -> None:
        """The run's checkpoint equals a new run that trains the model's timeline from scratch."""
        m = self.model
        fresh = RunSession.open(self.runs, "fresh-replay", self.cfg, save_every=NEVER)
        fresh.load()
        try:
            for seg in m.segments:
                chunk = {k: seg.chunk[k] for k in ("start", "epochs", "expr")}
                chunk["changes"] = [{k: r[k] for k in ("cmd", "value", "mode", "at_batch", "source")} if "at_batch" in r
                                    else r for r in _changes_of(seg.chunk)]
                fresh.finish_pending(stop_at=seg.stop, pending=Pending([chunk], "replay"))
                assert fresh.global_step == seg.stop, (fresh.global_step, seg, m.segments)
            state = fresh.trainer.state_dict()
        finally:
            fresh.close("sim")
        saved = read_checkpoint(self.runs / self.name / CHECKPOINT_FILE)
        assert_states_equal(saved, state)


def _substance(warnings: list[str]) -> list[str]:
    """What opening a run said about the run itself (not that it took over a dead process's lock)."""
    return [w for w in warnings if not w.startswith("took over the run from")]


def _changes_of(chunk: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for change in chunk.get("changes", []):
        if "applied_at_batch" in change:  # a reply: turn it into the record the session keeps
            out.append({"cmd": "lr", "value": change["value"], "mode": change["mode"],
                        "at_batch": change["applied_at_batch"], "source": "sim"})
        else:
            out.append(change)
    return out


Lifecycle.TestCase.settings = settings.get_profile(PROFILE)
test_lifecycle = Lifecycle.TestCase
