"""A run being trained: the engine, its run directory and its TensorBoard log, kept consistent.

:class:`RunSession` is what the REPL, ``--plan`` and ``resume`` drive. Every command is made
absolute ("from global epoch 60, 30 epochs of ``exp 0.05``") and recorded durably (journal +
``pending.json``, fsynced) before its first epoch runs; a checkpoint is written at an epoch end
whenever ``save_every`` seconds have passed, at every chunk end and on close, always after the
TensorBoard events it covers are on disk. A run reopened after any interruption purges the
TensorBoard steps after its checkpoint and recomputes them to the same bits.

It never prints or prompts: it reports through an :class:`Observer`.

Opening is split in two so the prompt can appear at once: :meth:`RunSession.open` (no torch:
lock, config check, journal) and :meth:`RunSession.load` (torch, model, checkpoint, TensorBoard),
which the CLI runs in a background thread while the first question waits for an answer.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lrctl import config as config_mod
from lrctl.live import LiveControl
from lrctl.recovery import restore
from lrctl.runops import read_frozen_config, state_summary
from lrctl.runstore import (
    BATCH_LOGDIR,
    DEFAULT_KEEP,
    EVENTS_PREFIX,
    Pending,
    RunError,
    RunStore,
)
from lrctl.schedules import ScheduleSpec, parse
from lrctl.stopping import Shutdown, StopState

if TYPE_CHECKING:
    from lrctl.distributed import Group
    from lrctl.engine import EpochRecord, EpochSnapshot, Trainer
    from lrctl.tblog import MetricLogger

DEFAULT_SAVE_EVERY = 5.0
MID_EPOCH_MIN_SECONDS = 1.0  # mid-epoch checkpoints come at most this often, whatever --save-every says


class Observer:
    """What a session reports. Subclass and override what you show; every method is optional."""

    def message(self, text: str) -> None: ...
    def chunk_started(self, start: int, epochs: int, spec_text: str, batches_per_epoch: int) -> None: ...
    def batch_done(self, batch: int, batches: int) -> None: ...
    def epoch_done(self, record: EpochRecord, metric: str) -> None: ...
    def chunk_ended(self, outcome: ChunkOutcome) -> None: ...

    wants_batches: bool = False


@dataclass
class ChunkOutcome:
    """How a command ended. status: done | stopped (kept, pending remains) | abandoned | diverged."""

    status: str
    step: int
    dropped: int = 0
    lr: float | None = None
    detail: str = ""


class RunSession:
    """One open run. Use :meth:`open`, then :meth:`load`, then commands, then :meth:`close`."""

    def __init__(self, store: RunStore, cfg: config_mod.RunConfig, is_new: bool,
                 save_every: float = DEFAULT_SAVE_EVERY, observer: Observer | None = None,
                 keep: int = DEFAULT_KEEP, group: Group | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store, self.cfg, self.is_new, self.save_every, self.keep = store, cfg, is_new, save_every, keep
        # Data-parallel: every rank runs a session; only rank 0's writes files, and it tells the others
        # what to do (lrctl.distributed). ``given_config`` is what this rank's command line asked for.
        self.group = group
        self.writes = group is None or group.is_main
        self.given_config: dict[str, Any] | None = None
        self.stop = StopState()  # every stop request (signals, keys, socket, closed pipe) lands here
        self.clock = clock  # when to checkpoint (injected by tests)
        self.chunks: list[dict[str, Any]] = []  # {start, end, expr} of every chunk trained, for plots and undo
        self.observer = observer or Observer()
        self.trainer: Trainer | None = None
        self.logger: MetricLogger | None = None
        self._batch_logger: MetricLogger | None = None
        self._opened_step = 0
        self.saved_step: int | None = None
        self._last_save = clock()
        self._epoch_started = clock()
        self.in_critical = False
        self.abort_after_critical = False
        self.load_warnings: list[str] = []
        self.live = LiveControl(self)  # commands from keys or the control socket, at batch boundaries
        self.busy = False  # a command is running: a signal is answered at its next batch boundary
        self.plan_recorded = False  # open() recorded the --plan with the new run: finish_pending() runs it
        self.saved_this_session = False
        # The last epoch boundary, where abandon and divergence go back to (made with the trainer: torch).
        self._boundary: EpochSnapshot | None = None
        self._boundary_chunks: list[dict[str, Any]] = []  # self.chunks as they were there

    # -- opening -------------------------------------------------------------------------------
    @classmethod
    def open(cls, runs_dir: Path, name: str, cfg: config_mod.RunConfig, *, force_config: bool = False,
             save_every: float = DEFAULT_SAVE_EVERY, observer: Observer | None = None,
             config_origin: str = "", keep: int = DEFAULT_KEEP, group: Group | None = None,
             plan: list[tuple[int, str]] | None = None,
             clock: Callable[[], float] = time.monotonic) -> RunSession:
        """Lock the run and settle its config. No torch. Raises RunError/RunLocked.

        ``plan``: for a new run, the command that creates it, recorded (pending work + journal, fsynced)
        before ``config.toml`` makes the run exist, so no run exists without it (a kill while torch
        loads leaves either no run or a run that ``lrctl resume`` finishes)."""
        store = RunStore(runs_dir, name)
        is_new = not store.exists
        note = store.acquire()
        plan_recorded = False
        try:
            if is_new:
                store.clear_unborn()
                if plan:
                    chunks = absolute_chunks(plan, 0)
                    store.write_pending(Pending(chunks, "plan"))
                    job = {"job": group.job} if group is not None else {}
                    store.journal("command", durable=True, source="plan", chunks=chunks, **job)
                    plan_recorded = True
                store.write_config(config_mod.to_toml(cfg, header=f"lrctl run '{name}', created {_now()} "
                                                      f"from {config_origin or 'the built-in lesson config'}."))
            else:
                frozen, _ = read_frozen_config(store)
                changes = config_mod.diff(frozen, cfg)
                runtime = config_mod.diff(frozen, cfg, runtime=True)
                if changes and not force_config:
                    raise RunError(f"run '{name}' was created with a different config:\n  " + "\n  ".join(changes)
                                   + "\nuse the run's own config (omit --config/--set), another --run name, "
                                     "or --force-config to change it")
                if changes:
                    store.write_config(config_mod.to_toml(cfg, header=f"lrctl run '{name}', config changed "
                                                          f"{_now()} with --force-config."))
                    store.journal("config_changed", durable=True, changes=changes)
                elif not force_config:
                    cfg = config_mod.with_runtime_of(frozen, cfg)
                if runtime:
                    store.journal("runtime_settings", changes=runtime)
        except BaseException:
            store.close()
            raise
        session = cls(store, cfg, is_new, save_every, observer, keep, group, clock=clock)
        session.plan_recorded = plan_recorded
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
        from lrctl.engine import Trainer

        if self.group is not None:
            trainer = self._join_ranks(trainer)
        trainer = trainer or Trainer(self.cfg)
        if self.writes:
            self._load_files(trainer)
        else:
            from lrctl.tblog import NullLogger

            self.trainer, self.logger = trainer, NullLogger()
        if self.group is not None:  # every rank starts from rank 0's state
            state = self._synced(lambda: {"trainer": trainer.state_dict(), "chunks": self.chunks})
            if not self.writes:
                trainer.load_state_dict(state["trainer"])
                self.chunks = list(state["chunks"])
                self.saved_step = self._opened_step = trainer.global_step

    def _join_ranks(self, trainer: Trainer | None) -> Trainer:
        """Build this rank's model and data, check every rank has the same, then wrap in DDP."""
        from lrctl.engine import Trainer

        facts: dict[str, Any]
        try:
            trainer = trainer or Trainer(self.cfg)
            facts = {**trainer.fingerprint(), "config": json.dumps(self.given_config, sort_keys=True)}
        except Exception as e:  # this rank's own problem: say it on every rank instead of hanging them
            trainer, facts = None, {"error": f"{type(e).__name__}: {e}"}
        self.group.agree(facts)
        trainer.attach(self.group)
        return trainer

    def _synced(self, load: Any) -> dict[str, Any]:
        """``load()`` on rank 0, its result on every rank (rank 0's failure is every rank's)."""
        if self.group is None:
            return load()
        if self.writes:
            try:
                state = load()
            except BaseException as e:
                self.group.share_state({"error": str(e)})
                raise
            return self.group.share_state(state)
        state = self.group.share_state(None)
        if "error" in state:
            raise RunError(f"rank 0: {state['error']}")
        return state

    def _load_files(self, trainer: Trainer) -> None:
        from lrctl.tblog import TensorBoardLogger
        from lrctl.tbplugins import run_layout

        had_events = any(p.name.startswith(EVENTS_PREFIX) for p in self.store.dir.iterdir())
        opened = restore(self.store, trainer)  # the latest good checkpoint; damage reported and settled
        if opened is not None:
            self.load_warnings += opened.warnings
            self.chunks = list(opened.chunks)
            self.saved_step = trainer.global_step
        self.trainer = trainer
        self._opened_step = trainer.global_step
        # Steps after the checkpoint (a crash, a kill) are hidden now and rewritten identically.
        self.logger = TensorBoardLogger(self.store.dir, purge_step=trainer.global_step if had_events else None,
                                        layout=run_layout(self.metric))
        if self.saved_step is None:
            # The initial state, every later rollback, undo and resume's base: written twice, so that the
            # run has two good checkpoint files (two inodes; kept/ files are hard links) from the start.
            self.save()
            self.save(keep=True)
        elif opened is not None and opened.heal:
            # two good checkpoints and a checksum file again, before anything else happens
            self.save(keep=opened.keep_again)

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
        pending = self.store.read_pending()
        if pending is not None and pending.remaining(self.global_step) <= 0:
            return None
        return pending

    def summary(self) -> dict[str, Any]:
        t = self.trainer
        if t is None:
            return self.store.summary()
        return state_summary({"global_step": t.global_step, "history": t.history,
                              "lr": t.lr if t.runner is not None else None}, self.metric)

    def save(self, keep: bool = False, replace_latest: bool = False) -> None:
        """Checkpoint now (TensorBoard events first, so the checkpoint never covers scalars not on disk).

        ``keep``: also keep it as this epoch's checkpoint (chunk boundaries: undo and fork --at use them)."""
        assert self.trainer is not None
        if not self.writes:
            return
        self.in_critical = True
        try:
            for logger in (self.logger, self._batch_logger):
                if logger is not None:
                    logger.flush(durable=True)
            state = self.trainer.state_dict()
            state["config"] = config_mod.to_dict(self.cfg)
            state["chunks"] = [dict(c) for c in self.chunks]
            pending = self.store.read_pending()
            state["pending"] = {"chunks": pending.chunks, "source": pending.source} if pending else None
            sha = self.store.save_checkpoint(state, {**self.summary(), "saved_at": _now()},
                                             replace_latest=replace_latest)
            mid = {"batch": self.trainer.batch_in_epoch} if self.trainer.batch_in_epoch else {}
            self.store.journal("saved", step=self.trainer.global_step, sha=sha, **mid)
            if keep and not self.trainer.batch_in_epoch:  # kept ones are epoch boundaries (undo, fork --at)
                self.store.keep_checkpoint(self.trainer.global_step, self.keep)
            self.saved_step = self.trainer.global_step
            self.saved_this_session = True
            self._last_save = self.clock()
        finally:
            self.in_critical = False
        if self.abort_after_critical:
            self.abort_after_critical = False
            raise KeyboardInterrupt

    def request_stop(self) -> None:
        """Stop the running chunk after the current epoch (everything kept)."""
        self.stop.request("stop")

    def request_abandon(self) -> None:
        """Data-parallel: abandon the epoch at the next batch boundary, on every rank together."""
        self.stop.request("abandon")

    @property
    def shutdown(self) -> bool:
        """The process is being ended (a signal): stop at the next batch boundary, save, quit."""
        return self.stop.shutdown

    def request_shutdown(self, signal_name: str = "SIGTERM") -> None:
        self.stop.request("shutdown", signal_name)

    def _tell(self, command: dict[str, Any]) -> None:
        """Rank 0: have the other ranks do the same (they are waiting in :func:`lrctl.distributed.follow`)."""
        if self.group is not None and self.writes:
            self.group.send(command)

    def _should_stop(self) -> bool:
        if self.group is None:
            return self.stop.stop_after_epoch
        return self.group.any(self.stop.stop_after_epoch, self.trainer.device)

    def check_expression(self, spec: ScheduleSpec, epochs: int) -> None:
        """Refuse what the run cannot do now: ``keep`` with nothing to keep, a warm-up as long as the chunk."""
        if spec.name == "keep" and self.trainer is not None and self.trainer.runner is None:
            raise ValueError("nothing to keep yet: the run has no schedule; type a learning rate")
        if spec.warmup and spec.family.chunk_length and spec.warmup >= epochs:
            raise ValueError(f"warmup={spec.warmup} leaves none of the chunk's {epochs} epochs for {spec.name}")

    # -- commands ------------------------------------------------------------------------------
    def train(self, epochs: int, expression: str, source: str = "repl") -> ChunkOutcome:
        """Train one chunk of ``epochs`` with the lr ``expression`` (a number or schedule)."""
        return self.run_plan([(epochs, expression)], source=source)

    def run_plan(self, chunks: list[tuple[int, str]], source: str = "plan") -> ChunkOutcome:
        """Record the chunks as pending work (durably), then train them."""
        finished = self.complete_torn_epoch()
        if finished is not None and finished.status != "done":
            return finished
        absolute = absolute_chunks(chunks, self.global_step)
        old = self.store.read_pending()
        if old is not None and old.remaining(self.global_step) > 0:
            self.store.journal("pending_replaced", durable=True, old=old.chunks, step=self.global_step)
        self.store.write_pending(Pending(absolute, source))
        job = {"job": self.group.job} if self.group is not None else {}
        self.store.journal("command", durable=True, source=source, chunks=absolute, **job)
        return self.finish_pending()

    def drop_changes_after(self, batch: int) -> list[dict[str, Any]]:
        """Forget the pending chunks' lr changes made after global batch ``batch`` (an abandoned epoch's)."""
        pending = self.store.read_pending()
        lost: list[dict[str, Any]] = []
        if pending is None:
            return lost
        for chunk in pending.chunks:
            changes = chunk.get("changes") or []
            lost += [c for c in changes if c["at_batch"] > batch]
            chunk["changes"] = [c for c in changes if c["at_batch"] <= batch]
        if lost:
            self.store.write_pending(pending)
        return lost

    def complete_torn_epoch(self) -> ChunkOutcome | None:
        """A run that stands inside an epoch (a mid-epoch checkpoint after a kill or a signal) finishes
        that epoch as it was going (the pending chunk, its recorded changes) before anything else: a new
        command, or dropping the pending work, always starts at an epoch boundary. None: nothing to do."""
        trainer = self.trainer
        if trainer is None or not trainer.batch_in_epoch:
            return None
        step = trainer.global_step
        pending = self.store.read_pending()
        covering = [c for c in (pending.chunks if pending else []) if c["start"] <= step < c["start"] + c["epochs"]]
        if covering:
            chunk = covering[0]
        else:  # its command was dropped: the epoch ends with the schedule it had
            start = self.chunks[-1]["start"] if self.chunks else step
            chunk = {"start": start, "epochs": step + 1 - start, "expr": "keep"}
        self.observer.message(f"epoch {step} was stopped after batch {trainer.batch_in_epoch} of "
                              f"{trainer.batches_per_epoch}: finishing it first")
        self.stop.clear()
        self.busy = True
        try:
            return self._run_chunk(chunk, stop_at=step + 1)
        finally:
            self.busy = False

    def drop_pending(self, reason: str, complete: bool = True) -> None:
        if complete:
            self.complete_torn_epoch()
        self.live.scheduled = []
        pending = self.store.read_pending()
        if pending is not None:
            self.store.journal("pending_dropped", durable=True, reason=reason, chunks=pending.chunks,
                               step=self.global_step)
            self.store.write_pending(None)

    def finish_pending(self, stop_at: int | None = None) -> ChunkOutcome:
        """Train whatever ``pending.json`` says is left, from the current global step (up to ``stop_at``)."""
        assert self.trainer is not None and self.logger is not None, "call load() first"
        pending = self.store.read_pending()
        self._tell({"op": "finish", "stop_at": stop_at,
                    "pending": {"chunks": pending.chunks, "source": pending.source} if pending else None})
        self.stop.clear()
        self.busy = True
        try:
            return self._finish(pending, stop_at)
        finally:
            self.busy = False

    def _finish(self, pending: Pending | None, stop_at: int | None) -> ChunkOutcome:
        outcome = ChunkOutcome("done", self.global_step)
        while pending is not None and pending.chunks:
            chunk = pending.chunks[0]
            end = chunk["start"] + chunk["epochs"]
            if stop_at is not None and self.global_step >= stop_at:
                return ChunkOutcome("stopped", self.global_step)
            if self.global_step < end:
                outcome = self._run_chunk(chunk, stop_at)
                if outcome.status != "done":
                    return outcome
            pending.chunks.pop(0)
            self.store.write_pending(pending)
            pending = self.store.read_pending()
        return outcome

    def _prepare_schedule(self, chunk: dict[str, Any]) -> None:
        trainer = self.trainer
        spec = parse(chunk["expr"])
        runner = trainer.runner
        if spec.name == "keep":
            if runner is None:
                raise RunError("nothing to keep: the run has no schedule yet")
            return
        if trainer.global_step > chunk["start"] or trainer.batch_in_epoch:
            if runner is None:
                raise RunError(f"cannot resume the chunk started at epoch {chunk['start']}: no schedule state")
            return  # the chunk's own schedule, as the checkpoint (or a pause) left it, mid-chunk changes included
        trainer.start_schedule(spec, chunk["epochs"])

    def _run_chunk(self, chunk: dict[str, Any], stop_at: int | None = None) -> ChunkOutcome:
        from lrctl.engine import Diverged

        trainer, store = self.trainer, self.store
        if (trainer.global_step == chunk["start"] and not trainer.batch_in_epoch and self.writes
                and chunk["start"] not in store.kept_steps()):
            self.save(keep=True)  # undo goes back to a chunk's start: keep it (a kill can come before its keep)
        self._mark_boundary()  # before the chunk's schedule is set: an abandoned first epoch goes back here
        self._prepare_schedule(chunk)
        end = chunk["start"] + chunk["epochs"]
        todo = min(end, stop_at if stop_at is not None else end) - trainer.global_step
        store.journal("chunk_start", step=trainer.global_step, end=end, expr=chunk["expr"])
        if not self.chunks or self.chunks[-1]["start"] != chunk["start"]:
            self.chunks.append({"start": chunk["start"], "end": chunk["start"], "expr": chunk["expr"]})
            self.log_intervention(f"chunk: {chunk['epochs']} epochs of `{chunk['expr']}`", chunk["start"])
        label = chunk["expr"]
        if label == "keep" and trainer.runner is not None:
            label = f"keep ({trainer.runner.spec.text})"
        self._epoch_started = self.clock()
        if self.saved_step == trainer.global_step and not trainer.batch_in_epoch:
            # Nothing is unsaved: the save cadence counts training since now, not the time spent at the
            # prompt (which left nothing to lose and made every chunk's first epoch save again).
            self._last_save = self._epoch_started
        # Changes made mid-chunk before an interruption happen again at the same batch.
        self.live.begin(chunk, trainer.global_step * trainer.batches_per_epoch + trainer.batch_in_epoch)
        self.observer.chunk_started(trainer.global_step, todo, label, trainer.batches_per_epoch)
        self._chunk_end = trainer.global_step + todo  # its last epoch is saved by the chunk's end, once
        try:
            trainer.fit_rec(todo, on_epoch_end=self._epoch_done, on_batch_end=self._batch_boundary,
                            should_stop=self._should_stop)
        except KeyboardInterrupt:
            was = trainer.global_step
            self._rollback()
            dropped = was - trainer.global_step
            lost = self.drop_changes_after(trainer.global_step * trainer.batches_per_epoch)
            outcome = ChunkOutcome("abandoned", trainer.global_step, dropped=dropped,
                                   detail=f"{len(lost)} lr change(s) made in the abandoned epoch dropped" if lost
                                   else "")
            store.journal("interrupted", durable=True, how="abandon", step=trainer.global_step, dropped=dropped,
                          dropped_changes=lost)
            self.observer.chunk_ended(outcome)
            return outcome
        except Diverged as e:
            was = trainer.global_step + 1  # the diverged epoch is not counted in global_step
            self._rollback()
            dropped = was - trainer.global_step
            self.drop_pending("diverged", complete=False)
            outcome = ChunkOutcome("diverged", trainer.global_step, dropped=dropped, lr=e.record.lr,
                                   detail=f"loss became {e.loss} in epoch {e.record.step} at lr {e.record.lr:g}")
            store.journal("diverged", durable=True, epoch=e.record.step, lr=e.record.lr, loss=str(e.loss),
                          rolled_back_to=trainer.global_step)
            self.observer.chunk_ended(outcome)
            return outcome
        finally:
            self.live.end()
        self.save(keep=True)
        if self.group is not None:
            self._check_replicas()
        elif self.stop.shutdown:  # a signal came in the epoch's last batch: saved at its end, now leave
            store.journal("interrupted", durable=True, how="shutdown", signal=self.stop.reasons[-1:] or None,
                          step=trainer.global_step, batch=0)
            raise Shutdown(self.stop.shutdown_signal, f"saved at epoch {trainer.global_step}")
        if trainer.global_step < end:
            left = Pending([chunk]).describe(trainer.global_step)
            outcome = ChunkOutcome("stopped", trainer.global_step, detail=left)
            store.journal("interrupted", durable=True, how="stop", step=trainer.global_step,
                          left=end - trainer.global_step)
        else:
            outcome = ChunkOutcome("done", trainer.global_step)
            last = trainer.history[-1]
            store.journal("chunk_end", step=trainer.global_step, train=last["train"], test=last["test"], lr=trainer.lr)
        self.observer.chunk_ended(outcome)
        return outcome

    def _epoch_done(self, record: EpochRecord) -> None:
        self.chunks[-1]["end"] = record.step + 1
        metric = self.metric
        self.logger.log_dict({f"train_{metric}": record.train, f"test_{metric}": record.test, "lr": record.lr},
                             record.step)
        if record.batch_lrs is not None:
            batch_logger = self._batch_log()
            base = record.step * self.trainer.batches_per_epoch
            for i, lr in enumerate(record.batch_lrs):
                batch_logger.log("lr_batch", lr, base + i)
            batch_logger.flush()
        self.logger.flush()
        self._mark_boundary()
        every = self.cfg.train.checkpoint_every
        if self.stop.checkpoint_now or (record.step + 1 < self._chunk_end and (
                self.clock() - self._last_save >= self.save_every or (every and (record.step + 1) % every == 0))):
            self.stop.checkpoint_now = False
            self.save()
        self._epoch_started = self.clock()
        self.observer.epoch_done(record, metric)

    def _mark_boundary(self) -> None:
        if self._boundary is None:
            from lrctl.engine import EpochSnapshot

            self._boundary = EpochSnapshot()
        self._boundary.take(self.trainer)
        self._boundary_chunks = [dict(c) for c in self.chunks]

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

    def _check_replicas(self) -> None:
        """After a chunk: every rank's weights must equal rank 0's (journaled, so a test can see it)."""
        from lrctl.distributed import DistError, weights_digest

        digests = [d["weights"] for d in self.group.gather({"weights": weights_digest(self.trainer.model)})]
        self.store.journal("replicas", step=self.global_step, weights=digests)
        if len(set(digests)) > 1:
            raise DistError(f"after epoch {self.global_step} the ranks' weights differ ({digests}); "
                            "training stopped rather than go on with replicas that drifted apart", shared=True)

    def _batch_boundary(self, batch: int, batches: int) -> None:
        """Between two batches: re-apply recorded changes, apply queued commands, hold while paused."""
        if self.group is not None:
            self._batch_boundary_shared(batch)
        else:
            if self.live.pending_work():
                self.live.apply_arrivals(self.trainer.global_step * self.trainer.batches_per_epoch + batch)
            self._mid_epoch_save(batch, batches)
        if self.observer.wants_batches:
            self.observer.batch_done(batch, batches)

    def save_here(self) -> None:
        """Checkpoint at this batch boundary (mid-epoch), unless the weights are no longer finite."""
        if self.trainer.weights_finite():
            self.save()

    def _mid_epoch_save(self, batch: int, batches: int) -> None:
        """A signal ends the process: save here, mid-epoch, and leave. A long epoch: checkpoint on the
        ``save_every`` cadence (at least a second apart), so a crash loses at most that much."""
        stop = self.stop
        if batch >= batches:  # the epoch's end comes next: it checkpoints there
            if stop.shutdown:
                stop.checkpoint_now = True
            return
        if stop.shutdown:
            step = self.trainer.global_step
            if self.trainer.weights_finite():
                self.save()
                detail = f"saved at epoch {step}, batch {batch} of {batches}"
            else:
                detail = f"epoch {step} was diverging: the checkpoint at epoch {self.saved_step} stays"
            self.store.journal("interrupted", durable=True, how="shutdown", signal=stop.reasons[-1:] or None,
                               step=step, batch=batch)
            raise Shutdown(stop.shutdown_signal, detail)
        now = self.clock()
        cadence = max(self.save_every, MID_EPOCH_MIN_SECONDS)
        if stop.checkpoint_now or (now - self._last_save >= cadence and now - self._epoch_started >= cadence):
            stop.checkpoint_now = False
            self.save_here()  # a diverging epoch is never saved half way (it rolls back)

    def _batch_boundary_shared(self, batch: int) -> None:
        """Data-parallel: rank 0 applies what arrived and sends the lr changes it made, so every rank
        applies them at this same batch; a Ctrl-C that abandons the epoch is agreed on here too."""
        done = self.trainer.global_step * self.trainer.batches_per_epoch + batch
        live = self.live
        live.apply_arrivals(done)
        message = None
        if self.writes and live.outbox:
            message = json.dumps(live.outbox).encode()
            live.outbox = []
        size, abandon = self.group.batch_exchange(len(message) if message else 0, self.stop.abandon)
        if size:
            records = json.loads(self.group.batch_message(message).decode())
            if not self.writes:
                for record in records:
                    live.apply(record, done, replaying=True)
        if abandon:
            raise KeyboardInterrupt

    def status(self) -> dict[str, Any]:
        """Where the run stands, for ``lrctl send RUN status``."""
        summary = self.summary()
        pending = self.pending
        return {"ok": True, "run": self.store.name, "global_step": self.global_step, "running": self.running,
                "paused": self.paused, "lr": self.trainer.lr if self.trainer is not None else summary.get("lr"),
                "metric": self.metric, "last": summary.get("last"),
                "pending": pending.describe(self.global_step) if pending else None}

    def _batch_log(self) -> MetricLogger:
        """Batch-indexed scalars live in their own TensorBoard run (``<run>/batch``): a purge at an
        epoch step must not hide them, and theirs is counted in batches."""
        if self._batch_logger is None and not self.writes:
            from lrctl.tblog import NullLogger

            self._batch_logger = NullLogger()
        if self._batch_logger is None:
            from lrctl.tblog import TensorBoardLogger

            logdir = self.store.dir / BATCH_LOGDIR
            had_events = logdir.is_dir() and any(logdir.iterdir())
            purge = self._opened_step * self.trainer.batches_per_epoch if had_events else None
            self._batch_logger = TensorBoardLogger(logdir, purge_step=purge)
        return self._batch_logger

    def _rollback(self) -> None:
        """Go back to the last epoch boundary (after an abandoned or diverged epoch): the in-memory copy
        taken there, or the last checkpoint when it is as recent."""
        boundary = self._boundary
        if boundary is not None and boundary.step is not None and boundary.step >= (self.saved_step or 0):
            boundary.restore(self.trainer)
            self.chunks = [dict(c) for c in self._boundary_chunks]
            if self.saved_step == self.trainer.global_step and self.writes:
                # The checkpoint on disk is from inside the dropped epoch: replace it, and keep it from
                # becoming the fallback (it is in no timeline).
                self.save(replace_latest=True)
        else:
            state = self._synced(lambda: self.store.load_checkpoint().state)
            self.trainer.load_state_dict(state)
            self.chunks = list(state.get("chunks") or [])
            self.saved_step = self.trainer.global_step
        self.logger.purge(self.trainer.global_step)
        self.logger.flush()
        if self._batch_logger is not None:
            self._batch_logger.purge(self.trainer.global_step * self.trainer.batches_per_epoch)
            self._batch_logger.flush()

    def log_intervention(self, text: str, step: int | None = None) -> None:
        """A human decision, as a TensorBoard text entry at its global step (the curves explain themselves)."""
        if self.logger is not None:
            self.logger.log_text("interventions", text, self.global_step if step is None else step)
            self.logger.flush()

    def undo(self) -> tuple[int, int]:
        """Roll back to where the last chunk began: model, optimizer, schedule, step; TensorBoard hides the rest.

        Returns (from_step, to_step)."""
        if not self.chunks:
            raise RunError("nothing to undo: no chunk has been trained yet")
        target, current = self.chunks[-1]["start"], self.global_step
        self._tell({"op": "undo"})
        state = self._synced(lambda: self.store.load_kept(target))
        self.trainer.load_state_dict(state)
        self.chunks = list(state.get("chunks") or [])
        self.drop_pending("undo", complete=False)
        self.store.prune_kept(target)  # the undone epochs' kept checkpoints are in no timeline now
        self.logger.purge(target)
        if self._batch_logger is not None:
            self._batch_logger.purge(target * self.trainer.batches_per_epoch)
        self.save(keep=True)
        self.save()  # twice: the fallback checkpoint is this state too, never one of the undone epochs
        self.store.journal("undo", durable=True, from_step=current, to_step=target)
        self.log_intervention(f"undo: back from epoch {current} to {target}", target)
        return current, target

    def fork(self, name: str) -> RunSession:
        """Copy this run (state, history, TensorBoard) into a new run ``name`` and continue there.

        Returns the new session; this one is closed."""
        from lrctl.tblog import TensorBoardLogger
        from lrctl.tbplugins import run_layout

        new_store = RunStore(self.store.runs_dir, name)
        if new_store.exists:
            raise RunError(f"run '{name}' exists already; pick another name")
        self.save(keep=True)
        new_store.acquire()
        try:
            self.store.copy_to(new_store)
            new_store.journal("forked", durable=True, source=self.store.name, step=self.global_step)
        except BaseException:
            new_store.close()
            raise
        self.store.journal("fork", to=name, step=self.global_step)
        self.log_intervention(f"fork: continued as run '{name}'")
        new = RunSession(new_store, self.cfg, False, self.save_every, self.observer, self.keep, self.group)
        new.given_config = self.given_config
        new.trainer, new.chunks, new.saved_step = self.trainer, self.chunks, self.saved_step
        new._opened_step = self.global_step
        new.logger = TensorBoardLogger(new_store.dir, purge_step=self.global_step, layout=run_layout(self.metric))
        new.log_intervention(f"forked from run '{self.store.name}' at epoch {self.global_step}")
        self.trainer = None  # now the new run's; closing this one must not save it here
        self.close("forked")
        return new

    # -- closing -------------------------------------------------------------------------------
    def close(self, reason: str = "quit") -> None:
        """Save if anything is unsaved, journal the end, release TensorBoard and the lock."""
        try:
            # Half an epoch's weights (an error escaped mid-epoch) are never saved: the checkpoint stays.
            if self.trainer is not None and self.saved_step != self.trainer.global_step and not self.trainer.torn:
                self.save()
            self.store.journal("session_end", reason=reason, step=self.global_step)
        finally:
            for logger in (self.logger, self._batch_logger):
                if logger is not None:
                    logger.close()
            self.store.close()


def absolute_chunks(plan: list[tuple[int, str]], start: int) -> list[dict[str, Any]]:
    """``[(30, "0.03"), (30, "0.01")]`` from epoch 60 -> chunks "from global epoch 60, 30 epochs of 0.03", ..."""
    chunks = []
    for epochs, expression in plan:
        chunks.append({"start": start, "epochs": epochs, "expr": parse(expression).text})
        start += epochs
    return chunks


def _now() -> str:
    from lrctl.runstore import now_iso

    return now_iso()
