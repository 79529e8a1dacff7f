"""A run being trained: the chunk loop that keeps the engine, the run directory and TensorBoard consistent.

:class:`RunSession` is what the REPL, ``--plan``, ``resume`` and the Python API drive. Every command
is made absolute ("from global epoch 60, 30 epochs of ``exp 0.05``") and recorded durably before its
first epoch runs; a checkpoint is written when :mod:`lrctl.savetiming` says, at every chunk end and on
close, always after the TensorBoard events it covers are on disk. A run reopened after any
interruption purges the TensorBoard steps after its checkpoint and recomputes them to the same bits.

The session is the chunk loop and the consistency points (save, rollback, undo, fork); what it
coordinates lives in collaborators, each in its own module:

- :class:`lrctl.chunkrun.ChunkRun` — one chunk trained: its batch and epoch boundaries, its outcome;
- :class:`lrctl.work.PendingWork` — the pending work, in memory and in ``pending.json``;
- :class:`lrctl.runlogs.RunLogs` — the TensorBoard logs (the logger factory is injected);
- :class:`lrctl.savetiming.SaveTiming` — when to checkpoint (the clock is injected);
- :class:`lrctl.live.LiveControl` — keys and socket commands at batch boundaries;
- :mod:`lrctl.replication` — what every torchrun rank does together (a no-op for one process);
- :mod:`lrctl.recovery` and :mod:`lrctl.runops` — loading after damage, config checks, fork copies.

It never prints or prompts: it reports through an :class:`Observer`. Opening is split in two so the
prompt can appear at once: :meth:`RunSession.open` (no torch: lock, config check, journal) and
:meth:`RunSession.load` (torch, model, checkpoint, TensorBoard), which the CLI runs in a background
thread while the first question waits for an answer.

Size: about 480 lines, over the project's 450: the consistency points (load with what it found, save,
rollback, undo and its completion after a kill, fork, close) each need the whole session at once;
everything that stands alone is already a collaborator above.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lrctl import config as config_mod
from lrctl import runops
from lrctl.chunkrun import ChunkRun
from lrctl.live import LiveControl
from lrctl.plan import ChunkRequest, absolute_chunks, check_plan, check_request, requests
from lrctl.recovery import restore
from lrctl.replication import for_group
from lrctl.reports import ChunkOutcome, Observer
from lrctl.runlogs import LoggerFactory, RunLogs, null_logger, tensorboard_logger
from lrctl.runstore import DEFAULT_KEEP, Pending, RunError, RunStore, now_iso
from lrctl.savetiming import DEFAULT_SAVE_EVERY, SaveTiming
from lrctl.schedules import ScheduleSpec
from lrctl.stopping import StopState
from lrctl.work import PendingWork

if TYPE_CHECKING:
    from lrctl.distributed import Group
    from lrctl.engine import Trainer
    from lrctl.snapshot import EpochSnapshot

__all__ = ["DEFAULT_SAVE_EVERY", "ChunkOutcome", "Observer", "RunSession"]  # reports: lrctl.reports


class RunSession:
    """One open run. Use :meth:`open`, then :meth:`load`, then commands, then :meth:`close`.

    Size: about 350 lines, over the project's ~300. What is left are the consistency points (save,
    rollback, undo, fork, close, load) that must see the trainer, the files, the logs and the pending
    work at once; every part that can stand alone is a collaborator (see the module's docstring)."""

    def __init__(self, store: RunStore, cfg: config_mod.RunConfig, is_new: bool,
                 save_every: float = DEFAULT_SAVE_EVERY, observer: Observer | None = None,
                 keep: int = DEFAULT_KEEP, group: Group | None = None,
                 clock: Callable[[], float] = time.monotonic, logger_factory: LoggerFactory | None = None) -> None:
        self.store, self.cfg, self.is_new, self.keep = store, cfg, is_new, keep
        # Data-parallel: every rank runs a session; only rank 0's writes files (lrctl.replication).
        self.group = group
        self.ranks = for_group(group)
        self.writes = self.ranks.writes
        self.given_config: dict[str, Any] | None = None  # what this rank's command line asked for
        self.stop = StopState()  # every stop request (signals, keys, socket, closed pipe) lands here
        self.timing = SaveTiming(save_every, cfg.train.checkpoint_every, clock)
        self.logs = RunLogs(store.dir, cfg.metric,
                            logger_factory or (tensorboard_logger if self.writes else null_logger))
        self.work = PendingWork(store)
        self.live = LiveControl(self)  # commands from keys or the control socket, at batch boundaries
        self.observer = observer or Observer()
        self.chunks: list[dict[str, Any]] = []  # {start, end, expr} of every chunk trained, for plots and undo
        self.trainer: Trainer | None = None
        self.saved_step: int | None = None
        self.saved_at_boundary = False  # the last checkpoint is of an epoch boundary (not mid-epoch)
        self.recovery_unsaid = False  # load journaled repairs the user has not been told of yet
        self.saved_this_session = False
        self.in_critical = False  # a checkpoint is being written: a Ctrl-C waits for its end
        self.abort_after_critical = False
        self.in_epochs = False  # ChunkRun is inside fit_rec: there is an epoch a second Ctrl-C can abandon
        self.load_warnings: list[str] = []
        self.busy = False  # a command is running: a signal is answered at its next batch boundary
        self.plan_recorded = False  # open() recorded the --plan with the new run: finish_pending() runs it
        # The last epoch boundary, where abandon and divergence go back to (made with the trainer: torch).
        self._boundary: EpochSnapshot | None = None
        self._boundary_chunks: list[dict[str, Any]] = []  # self.chunks as they were there
        self.typed_specs: dict[int, ScheduleSpec] = {}  # chunks this process recorded, typed, by start epoch

    # -- opening -------------------------------------------------------------------------------
    @classmethod
    def open(cls, runs_dir: Path, name: str, cfg: config_mod.RunConfig, *, force_config: bool = False,
             save_every: float = DEFAULT_SAVE_EVERY, observer: Observer | None = None,
             config_origin: str = "", keep: int = DEFAULT_KEEP, group: Group | None = None,
             plan: Sequence[ChunkRequest] | None = None, clock: Callable[[], float] = time.monotonic,
             logger_factory: LoggerFactory | None = None) -> RunSession:
        """Lock the run and settle its config. No torch. Raises RunError/RunLocked.

        ``plan``: for a new run, the command that creates it (see :func:`lrctl.runops.create_run`)."""
        store = RunStore(runs_dir, name)
        is_new = not store.exists
        chunks = absolute_chunks(plan, 0) if plan and is_new else None
        if chunks:  # a new run has no schedule to keep: refused before anything exists
            try:
                check_plan(plan, has_schedule=False)
            except ValueError as e:
                raise RunError(f"--plan: {e}") from None
        note = store.acquire()
        try:
            if is_new:
                removed = runops.create_run(store, cfg, config_origin, chunks, for_group(group).job)
                note = "; ".join(n for n in (note, removed) if n) or None
            else:
                cfg = runops.settle_config(store, cfg, force_config)
        except BaseException:
            store.close()
            raise
        session = cls(store, cfg, is_new, save_every, observer, keep, group, clock=clock,
                      logger_factory=logger_factory)
        if chunks:
            session.plan_recorded = True
            session.typed_specs = {c["start"]: r.spec for c, r in zip(chunks, plan, strict=True)}
        if note:
            session.load_warnings.append(note)
        store.journal("session_start", new=is_new, config=config_origin)
        return session

    @classmethod
    def replica(cls, name: str, cfg: config_mod.RunConfig, group: Group) -> RunSession:
        """A rank other than 0: the same session over no files, driven by :func:`lrctl.distributed.follow`."""
        from lrctl.distributed import ReplicaStore

        return cls(ReplicaStore(name), cfg, False, save_every=float("inf"), group=group)  # type: ignore[arg-type]

    def load(self, trainer: Trainer | None = None) -> None:
        """Import torch, build the model and data, restore the latest good checkpoint, open TensorBoard.

        ``trainer``: one already built from this config (the CLI builds user data/models before
        creating the run directory, to report their errors first)."""
        trainer = self.ranks.build(trainer, self.cfg, self.given_config)
        opened = None
        if self.writes:
            unsaid = self.store.unsaid_recovery()
            opened = restore(self.store, trainer)  # the latest good checkpoint; damage reported and settled
            if opened is not None:
                self.load_warnings += opened.warnings
                self.chunks = list(opened.chunks)
                self.saved_step = trainer.global_step
            # What the load found is journaled (``recovering``, by restore) until the user is told of it
            # (say_warnings): an open killed in between has its findings said by the next one.
            self.recovery_unsaid = bool(opened is not None and opened.warnings)
            if unsaid and not self.recovery_unsaid:  # that earlier open repaired the run, then was killed
                again = [f"{w} (found by an earlier start that ended before it could say so)" for w in unsaid]
                self.load_warnings += again
                self.store.journal("recovering", durable=True, warnings=again)
                self.recovery_unsaid = True
        self.trainer = trainer
        if self.writes and opened is not None:
            self.store.loaded_summary = self.summary()  # of the file that loaded (see save_checkpoint)
        self.work.reload()
        # Steps after the checkpoint (a crash, a kill) are hidden now and rewritten identically.
        self.logs.open(trainer.global_step)
        if self.writes and self.saved_step is None:
            # The initial state, every later rollback, undo and resume's base: written twice, so that the
            # run has two good checkpoint files (two inodes; kept/ files are hard links) from the start.
            self.save()
            self.save(keep=True)
        elif opened is not None and opened.heal:
            self.save(keep=opened.keep_again)  # two good checkpoints and a checksum file again, first
        if self.writes and opened is not None:
            self._finish_interrupted_undo()
        if self.ranks.shared:  # every rank starts from rank 0's state
            state = self.ranks.synced(lambda: {"trainer": trainer.state_dict(), "chunks": self.chunks})
            if not self.writes:
                trainer.load_state_dict(state["trainer"])
                self.chunks = list(state["chunks"])
                self.saved_step = trainer.global_step

    def say_warnings(self, emit: Callable[[str], None]) -> None:
        """Show what opening the run found, once (``emit``: e.g. the view's ``warn``); then journal that it
        was said, so that an open killed before this point has it said by the next one."""
        warnings, self.load_warnings = list(self.load_warnings), []
        for warning in warnings:
            emit(warning)
        if self.recovery_unsaid and self.writes:
            for stream in (sys.stdout, sys.stderr):  # said means on its way out, not in a buffer
                with contextlib.suppress(OSError, ValueError, AttributeError):
                    stream.flush()
            self.store.journal("recovery_said", durable=True)
            self.recovery_unsaid = False

    # -- state ---------------------------------------------------------------------------------
    @property
    def global_step(self) -> int:
        if self.trainer is not None:
            return self.trainer.global_step
        return int(self.store.summary().get("global_step", 0))

    @property
    def metric(self) -> str:
        return self.cfg.metric

    @property
    def pending(self) -> Pending | None:
        """The work still to train (None when there is none)."""
        return self.work.left(self.global_step)

    def summary(self) -> dict[str, Any]:
        t = self.trainer
        if t is None:
            return self.store.summary()
        summary = runops.state_summary({"global_step": t.global_step, "history": t.history,
                                        "lr": t.lr if t.runner is not None else None}, self.metric)
        if t.batch_in_epoch:  # a mid-epoch checkpoint: the banner says where inside the epoch it resumes
            summary.update(batch=t.batch_in_epoch, batches=t.batches_per_epoch)
        return summary

    def save(self, keep: bool = False, replace_latest: bool = False) -> None:
        """Checkpoint now (TensorBoard events first, so the checkpoint never covers scalars not on disk).

        ``keep``: also keep it as this epoch's checkpoint (chunk boundaries: undo and fork --at use them)."""
        assert self.trainer is not None
        if not self.writes:
            return
        trainer = self.trainer
        self.in_critical = True
        try:
            self.logs.flush(durable=True)
            state = trainer.state_dict()
            state["config"] = config_mod.to_dict(self.cfg)
            state["chunks"] = [dict(c) for c in self.chunks]
            state["pending"] = self.work.snapshot()
            sha = self.store.save_checkpoint(state, {**self.summary(), "saved_at": now_iso()},
                                             replace_latest=replace_latest)
            mid = {"batch": trainer.batch_in_epoch} if trainer.batch_in_epoch else {}
            self.store.journal("saved", step=trainer.global_step, sha=sha, **mid)
            if keep and not trainer.batch_in_epoch:  # kept ones are epoch boundaries (undo, fork --at)
                self.store.keep_checkpoint(trainer.global_step, self.keep)
            self.saved_step = trainer.global_step
            self.saved_at_boundary = not trainer.batch_in_epoch
            self.saved_this_session = True
            self.timing.saved()
        finally:
            self.in_critical = False
        if self.abort_after_critical:
            self.abort_after_critical = False
            raise KeyboardInterrupt

    def keep_here(self) -> None:
        """A chunk's end: kept for undo and ``fork --at``. Written only when the last checkpoint is not
        this very state already (an epoch-end checkpoint just before: no second write of the same bytes)."""
        trainer = self.trainer
        if self.writes and self.saved_step == trainer.global_step and self.saved_at_boundary \
                and not trainer.batch_in_epoch:
            self.store.keep_checkpoint(trainer.global_step, self.keep)
        else:
            self.save(keep=True)

    def save_unsaved(self) -> None:
        """Back at the prompt after an abandoned or diverged epoch: the epochs trained before it are
        checkpointed now unless they are already (with the pending work dropped after a divergence,
        a kill at the prompt would otherwise lose them)."""
        if self.saved_step != self.trainer.global_step:
            self.save()

    def save_here(self) -> None:
        """Checkpoint at this batch boundary (mid-epoch), unless the weights are no longer finite."""
        if self.trainer.weights_finite():
            self.save()

    def check_expression(self, spec: ScheduleSpec, epochs: int) -> None:
        """Refuse what the run cannot do now (:func:`lrctl.plan.check_request`)."""
        check_request(ChunkRequest(epochs, spec), self.trainer is None or self.trainer.runner is not None)

    # -- commands ------------------------------------------------------------------------------
    def train(self, epochs: int, lr: ScheduleSpec | str, source: str = "repl") -> ChunkOutcome:
        """Train one chunk of ``epochs`` with ``lr`` (a spec; text is parsed here, the Python edge)."""
        return self.run_plan(requests([(epochs, lr)]), source=source)

    def run_plan(self, plan: Sequence[ChunkRequest], source: str = "plan") -> ChunkOutcome:
        """Record the chunks as pending work (durably), then train them."""
        finished = self.complete_torn_epoch()
        if finished is not None and finished.status != "done":
            return finished
        chunks = absolute_chunks(plan, self.global_step)
        self.typed_specs.update({c["start"]: r.spec for c, r in zip(chunks, plan, strict=True)})
        pending = self.work.record(chunks, source, self.global_step, self.ranks.job)
        return self.finish_pending(pending=pending)

    def complete_torn_epoch(self) -> ChunkOutcome | None:
        """A run that stands inside an epoch (a mid-epoch checkpoint after a kill or a signal) finishes
        that epoch as it was going before anything else: a new command, or dropping the pending work,
        always starts at an epoch boundary. None: nothing to do."""
        run = ChunkRun.finishing_torn_epoch(self)
        if run is None:
            return None
        with self._command():
            return run.run()

    @contextlib.contextmanager
    def _command(self) -> Iterator[None]:
        """A command runs: earlier stop requests are spent, and a signal waits for its next batch boundary."""
        self.stop.clear()
        self.busy = True
        try:
            yield
        finally:
            self.busy = False

    def drop_pending(self, reason: str, complete: bool = True) -> None:
        """Give up the pending work (its epoch finished first, when the run stands mid-epoch)."""
        if complete:
            self.complete_torn_epoch()
        self.live.scheduled = []
        self.work.drop(reason, self.global_step)

    def finish_pending(self, stop_at: int | None = None, pending: Pending | None = None) -> ChunkOutcome:
        """Train the pending work from the current global step (up to ``stop_at``).

        ``pending``: the work just recorded (default: the run's own)."""
        assert self.trainer is not None, "call load() first"
        if pending is not None and pending is not self.work.current:
            self.work.replace(pending)
        pending = self.work.current
        self.ranks.tell({"op": "finish", "stop_at": stop_at,
                         "pending": {"chunks": pending.chunks, "source": pending.source} if pending else None})
        with self._command():
            outcome = ChunkOutcome("done", self.global_step)
            while pending is not None and pending.chunks:
                chunk = pending.chunks[0]
                if stop_at is not None and self.global_step >= stop_at:
                    return ChunkOutcome("stopped", self.global_step)
                if self.global_step < chunk["start"] + chunk["epochs"]:
                    outcome = ChunkRun(self, chunk, stop_at).run()
                    if outcome.status != "done":
                        return outcome
                self.work.chunk_done()
                pending = self.work.current
            return outcome

    # -- epoch boundaries -------------------------------------------------------------------
    def mark_boundary(self) -> None:
        """The trainer stands at an epoch boundary, where an abandoned or diverged epoch goes back to;
        copied when an epoch starts from it (:meth:`epoch_starting`)."""
        if self._boundary is None:
            from lrctl.snapshot import EpochSnapshot

            self._boundary = EpochSnapshot()
        self._boundary.mark(self.trainer)
        self._boundary_chunks = [dict(c) for c in self.chunks]

    def epoch_starting(self) -> None:
        """Before an epoch's first step: the boundary it starts from is copied now."""
        if self._boundary is not None:
            self._boundary.copy_marked()

    def rollback(self, diverged: bool = False) -> None:
        """Go back to the last epoch boundary (after an abandoned or diverged epoch): the in-memory copy
        taken there, or the last checkpoint when it is as recent."""
        boundary = self._boundary
        if boundary is not None and boundary.step is not None and boundary.step >= (self.saved_step or 0):
            boundary.restore(self.trainer)
            self.chunks = [dict(c) for c in self._boundary_chunks]
            if self.trainer.batch_in_epoch:
                self._to_kept_epoch_start(earlier=diverged)
            if self.saved_step is not None and self.saved_step >= self.trainer.global_step and self.writes:
                # The checkpoint on disk is from inside the dropped epoch: replace it, and keep it from
                # becoming the fallback (it is in no timeline).
                self.save(replace_latest=True)
        else:
            state = self.ranks.synced(lambda: self.store.load_checkpoint().state)
            self.trainer.load_state_dict(state)
            self.chunks = list(state.get("chunks") or [])
            self.saved_step = self.trainer.global_step
        self.logs.purge(self.trainer.global_step, self.trainer.batches_per_epoch)

    def _to_kept_epoch_start(self, earlier: bool) -> None:
        """The boundary in memory is inside an epoch: this process resumed the epoch from a mid-epoch
        checkpoint and never held its start. That start from its kept checkpoint (a chunk's start is
        kept); after a divergence, else the newest kept before it: the rest of the epoch cannot be
        trained at the lr that diverged, and every later command would first finish it there. Without
        one the run stays where this process resumed the epoch."""
        step = self.trainer.global_step
        for kept in reversed([s for s in self.store.kept_steps() if s == step or (earlier and s < step)]):
            try:
                state = self.ranks.synced(lambda kept=kept: self.store.load_kept(kept))
            except RunError:
                continue  # damaged: the one before it, or stay
            self.trainer.load_state_dict(state)
            self.chunks = list(state.get("chunks") or [])
            return

    # -- live control (lrctl.live) ---------------------------------------------------------------
    def submit(self, command: dict[str, Any]) -> None:
        """Queue a control command (keys, socket); applied at the next batch boundary (:mod:`lrctl.live`)."""
        self.live.submit(command)

    @property
    def paused(self) -> bool:
        return self.live.paused

    @property
    def running(self) -> bool:
        return self.live.running

    def log_intervention(self, text: str, step: int | None = None) -> None:
        """A human decision, as a TensorBoard text entry at its global step (the curves explain themselves)."""
        self.logs.intervention(text, self.global_step if step is None else step)

    # -- undo, fork, close -------------------------------------------------------------------------
    def undo(self) -> tuple[int, int]:
        """Roll back to where the last chunk began: model, optimizer, schedule, step; TensorBoard hides the rest.

        Returns (from_step, to_step)."""
        if not self.chunks:
            raise RunError("nothing to undo: no chunk has been trained yet")
        target, current = self.chunks[-1]["start"], self.global_step
        self.ranks.tell({"op": "undo"})
        state = self.ranks.synced(lambda: self.store.load_kept(target))
        # The intent first: a kill anywhere in what follows leaves an undo that the next open finishes.
        self.store.journal("undoing", durable=True, from_step=current, to_step=target)
        self._undo_to(state, current, target)
        return current, target

    def _undo_to(self, state: dict[str, Any], current: int, target: int) -> None:
        self.trainer.load_state_dict(state)
        self.chunks = list(state.get("chunks") or [])
        self.drop_pending("undo", complete=False)
        self.store.prune_kept(target)  # the undone epochs' kept checkpoints are in no timeline now
        self.logs.purge(target, self.trainer.batches_per_epoch)
        self.save(keep=True)
        self.save()  # twice: the fallback checkpoint is this state too, never one of the undone epochs
        self.store.journal("undo", durable=True, from_step=current, to_step=target)
        self.log_intervention(f"undo: back from epoch {current} to {target}", target)

    def _finish_interrupted_undo(self) -> None:
        """An undo the process did not finish (killed after its intent was journaled): finish it now,
        so the run is where the undo was asked to take it, never half undone."""
        undo = self.store.interrupted_undo()
        if undo is None:
            return
        asked_from, target = int(undo["from_step"]), int(undo["to_step"])
        trainer = self.trainer
        if trainer.global_step == target and not trainer.batch_in_epoch and self.work.current is None:
            # It got that far, perhaps not through its second save: the fallback may still be an undone epoch.
            self.save()
            self.store.journal("undo", durable=True, from_step=asked_from, to_step=target)
            # (said all the same: the killed process may not have said "undone" before it ended)
            self.load_warnings.append(f"an undo from epoch {asked_from} to {target} was interrupted (the process "
                                      "ended); it is finished now")
            return
        try:
            state = self.store.load_kept(target)
        except RunError as e:
            self.store.journal("undo_abandoned", durable=True, from_step=asked_from, to_step=target)
            self.load_warnings.append(f"an undo from epoch {asked_from} to {target} was interrupted and cannot be "
                                      f"finished ({e}); the run stays at epoch {trainer.global_step}")
            return
        self._undo_to(state, trainer.global_step, target)
        self.load_warnings.append(f"an undo from epoch {asked_from} to {target} was interrupted (the process "
                                  "ended); it is finished now")

    def fork(self, name: str) -> RunSession:
        """Copy this run (state, history, TensorBoard) into a new run ``name`` and continue there.

        Returns the new session; this one is closed."""
        if RunStore(self.store.runs_dir, name).exists:
            raise RunError(f"run '{name}' exists already; pick another name")
        self.save(keep=True)
        step = self.global_step
        notes: list[str] = []
        new_store = runops.copy_for_fork(self.store, name, step, notes)
        self.log_intervention(f"fork: continued as run '{name}'")
        new = RunSession(new_store, self.cfg, False, self.timing.save_every, self.observer, self.keep, self.group,
                         clock=self.timing.clock, logger_factory=self.logs.factory)
        new.given_config = self.given_config
        new.load_warnings += notes  # said by the caller, as at an open
        new.trainer, new.chunks, new.saved_step = self.trainer, self.chunks, self.saved_step
        new.typed_specs = self.typed_specs
        new.work.reload()
        new.logs.open(step, purge=True)
        new.log_intervention(f"forked from run '{self.store.name}' at epoch {step}")
        self.trainer = None  # now the new run's; closing this one must not save it here
        self.close("forked")
        return new

    def close(self, reason: str = "quit") -> None:
        """Save if anything is unsaved, journal the end, release TensorBoard and the lock."""
        try:
            # Half an epoch's weights (an error escaped mid-epoch) are never saved: the checkpoint stays.
            if self.trainer is not None and self.saved_step != self.trainer.global_step and not self.trainer.torn:
                self.save()
            if self.recovery_unsaid and self.writes:  # a session that ends normally had its findings to show
                self.store.journal("recovery_said", durable=True)
                self.recovery_unsaid = False
            self.store.journal("session_end", reason=reason, step=self.global_step)
        finally:
            self.logs.close()
            self.store.close()
