"""One chunk of a run, trained: its schedule, what happens at every batch and epoch boundary, its outcome.

:class:`ChunkRun` is what :meth:`lrctl.session.RunSession.finish_pending` runs for each pending chunk
(or the rest of one). It starts the chunk's schedule (or keeps the one a checkpoint left), runs the
engine's ``fit_rec`` with the boundary callbacks, and settles how the chunk ended:

- at a batch boundary: recorded and queued lr changes (:mod:`lrctl.live`), the pause, a mid-epoch
  checkpoint when :mod:`lrctl.savetiming` says so, and a signal's save-and-leave;
- at an epoch end: TensorBoard (:mod:`lrctl.runlogs`), the in-memory epoch boundary, a checkpoint when due;
- at the end: done, stopped (the rest stays pending), abandoned (Ctrl-C twice: back one epoch) or
  diverged (back one epoch, the rest dropped), journaled and reported to the observer.

The session owns the state (trainer, store, logs, pending work); this module owns the order of
things within a chunk.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from lrctl.reports import ChunkOutcome, Observer
from lrctl.runstore import Pending, RunError, RunStore
from lrctl.schedules import ScheduleError, ScheduleSpec, parse
from lrctl.stopping import Shutdown, StopState

if TYPE_CHECKING:
    from lrctl.engine import Diverged, EpochRecord, Trainer
    from lrctl.live import LiveControl
    from lrctl.replication import Solo
    from lrctl.runlogs import RunLogs
    from lrctl.savetiming import SaveTiming
    from lrctl.work import PendingWork


class Session(Protocol):
    """What a chunk needs of the session that runs it (:class:`lrctl.session.RunSession` is one)."""

    trainer: Trainer
    store: RunStore
    stop: StopState
    observer: Observer
    ranks: Solo
    live: LiveControl
    logs: RunLogs
    timing: SaveTiming
    work: PendingWork
    writes: bool
    chunks: list[dict[str, Any]]
    saved_step: int | None
    typed_specs: dict[int, ScheduleSpec]

    @property
    def metric(self) -> str: ...
    def save(self, keep: bool = False, replace_latest: bool = False) -> None: ...
    def keep_here(self) -> None: ...
    def save_here(self) -> None: ...
    def save_unsaved(self) -> None: ...
    def mark_boundary(self) -> None: ...
    def epoch_starting(self) -> None: ...
    def rollback(self, diverged: bool = False) -> None: ...
    def drop_pending(self, reason: str, complete: bool = True) -> None: ...
    def log_intervention(self, text: str, step: int | None = None) -> None: ...


class ChunkRun:
    """Chunk ``chunk`` ({start, epochs, expr, changes?}) of ``session``, from its current step up to ``stop_at``."""

    def __init__(self, session: Session, chunk: dict[str, Any], stop_at: int | None = None) -> None:
        self.session, self.chunk, self.stop_at = session, chunk, stop_at
        self.trainer = session.trainer

    @classmethod
    def finishing_torn_epoch(cls, session: Session) -> ChunkRun | None:
        """The run that finishes the epoch a mid-epoch checkpoint stands in (its pending chunk, with its
        recorded changes; the schedule it had when its command was dropped), or None at an epoch boundary."""
        trainer = session.trainer
        if trainer is None or not trainer.batch_in_epoch:
            return None
        step = trainer.global_step
        chunk = session.work.covering(step)
        if chunk is None:  # its command was dropped: the epoch ends with the schedule it had
            start = session.chunks[-1]["start"] if session.chunks else step
            chunk = {"start": start, "epochs": step + 1 - start, "expr": "keep"}
        session.observer.message(f"epoch {step} was stopped after batch {trainer.batch_in_epoch} of "
                                 f"{trainer.batches_per_epoch}: finishing it first")
        return cls(session, chunk, stop_at=step + 1)

    def run(self) -> ChunkOutcome:
        from lrctl.engine import Diverged

        session, trainer, chunk = self.session, self.trainer, self.chunk
        store, stop = session.store, session.stop
        if (trainer.global_step == chunk["start"] and not trainer.batch_in_epoch and session.writes
                and chunk["start"] not in store.kept_steps()):
            session.save(keep=True)  # undo goes back to a chunk's start: keep it (a kill can come before its keep)
        session.mark_boundary()  # before the chunk's schedule is set: an abandoned first epoch goes back here
        self._start_schedule()
        end = chunk["start"] + chunk["epochs"]
        todo = min(end, self.stop_at if self.stop_at is not None else end) - trainer.global_step
        store.journal("chunk_start", step=trainer.global_step, end=end, expr=chunk["expr"])
        if not session.chunks or session.chunks[-1]["start"] != chunk["start"]:
            session.chunks.append({"start": chunk["start"], "end": chunk["start"], "expr": chunk["expr"]})
            session.log_intervention(f"chunk: {chunk['epochs']} epochs of `{chunk['expr']}`", chunk["start"])
        label = chunk["expr"]
        if label == "keep" and trainer.runner is not None:
            label = f"keep ({trainer.runner.spec.text})"
        session.timing.epoch_started()
        if session.saved_step == trainer.global_step and not trainer.batch_in_epoch:
            # Nothing is unsaved: the save cadence counts training since now, not the time spent at the
            # prompt (which left nothing to lose and made every chunk's first epoch save again).
            session.timing.saved()
        # Changes made mid-chunk before an interruption happen again at the same batch.
        session.live.begin(chunk, trainer.global_step * trainer.batches_per_epoch + trainer.batch_in_epoch)
        session.observer.chunk_started(trainer.global_step, todo, label, trainer.batches_per_epoch)
        try:
            session.in_epochs = True  # a second Ctrl-C abandons an epoch only while epochs run
            if stop.abandon and not session.ranks.shared:  # ... or pressed while the chunk was starting
                raise KeyboardInterrupt
            trainer.fit_rec(todo, on_epoch_end=self._epoch_done, on_batch_end=self._batch_boundary,
                            should_stop=lambda: session.ranks.any_stop(stop.stop_after_epoch, trainer),
                            on_epoch_start=session.epoch_starting)
        except KeyboardInterrupt:
            return self._ended(self._abandoned())
        except Diverged as e:
            return self._ended(self._diverged(e))
        finally:
            session.in_epochs = False
            session.live.end()
        session.keep_here()
        session.ranks.after_chunk(store, trainer)
        if stop.shutdown and not session.ranks.shared:  # a signal in the epoch's last batch: saved, now leave
            store.journal("interrupted", durable=True, how="shutdown", signal=stop.reasons[-1:] or None,
                          step=trainer.global_step, batch=0)
            raise Shutdown(stop.shutdown_signal, f"saved at epoch {trainer.global_step}")
        if trainer.global_step < end:
            left = Pending([chunk]).describe(trainer.global_step)
            outcome = ChunkOutcome("stopped", trainer.global_step, detail=left)
            store.journal("interrupted", durable=True, how="stop", step=trainer.global_step,
                          left=end - trainer.global_step)
        else:
            outcome = ChunkOutcome("done", trainer.global_step)
            last = trainer.history[-1]
            store.journal("chunk_end", step=trainer.global_step, train=last["train"], test=last["test"], lr=trainer.lr)
        return self._ended(outcome)

    def _start_schedule(self) -> None:
        """A new schedule at the chunk's first epoch; mid-chunk, the one the checkpoint (or a pause)
        left, its recorded changes included."""
        trainer, chunk = self.trainer, self.chunk
        # A recorded chunk that cannot run (written by an older lrctl, or edited) is named, with the way out.
        cannot = (f"the pending chunk from epoch {chunk['start']} ({chunk['epochs']} epochs of `{chunk['expr']}`) "
                  "cannot run: {}; to drop it, start the run at the prompt and answer n to 'Finish the "
                  "interrupted chunk?'")
        if chunk["expr"] == "keep" or trainer.global_step > chunk["start"] or trainer.batch_in_epoch:
            if trainer.runner is None:
                raise RunError(cannot.format("the run has no schedule to keep" if chunk["expr"] == "keep" else
                                             "the checkpoint holds no schedule state for it"))
            return
        # Typed when this process recorded the chunk; read back from pending.json, it is parsed here, once.
        spec = self.session.typed_specs.get(chunk["start"])
        try:
            if spec is None or spec.text != chunk["expr"]:
                spec = parse(chunk["expr"])
            trainer.start_schedule(spec, chunk["epochs"])
        except ScheduleError as e:
            raise RunError(cannot.format(e)) from None

    def _ended(self, outcome: ChunkOutcome) -> ChunkOutcome:
        self.session.observer.chunk_ended(outcome)
        return outcome

    def _abandoned(self) -> ChunkOutcome:
        """Ctrl-C twice: the epoch is dropped, and so are the lr changes made in it."""
        session, trainer = self.session, self.trainer
        was = trainer.global_step
        session.rollback()
        dropped = was - trainer.global_step
        lost = session.work.drop_changes_after(trainer.global_step * trainer.batches_per_epoch)
        session.store.journal("interrupted", durable=True, how="abandon", step=trainer.global_step,
                              dropped=dropped, dropped_changes=lost)
        session.save_unsaved()
        return ChunkOutcome("abandoned", trainer.global_step, dropped=dropped, batch=trainer.batch_in_epoch,
                            detail=f"{len(lost)} lr change(s) made in the abandoned epoch dropped" if lost else "")

    def _diverged(self, error: Diverged) -> ChunkOutcome:
        """The loss stopped being finite: back to the epoch's start; what was left is dropped."""
        session, trainer = self.session, self.trainer
        was = trainer.global_step + 1  # the diverged epoch is not counted in global_step
        session.rollback(diverged=True)
        dropped = was - trainer.global_step
        session.drop_pending("diverged", complete=False)
        record = error.record
        session.store.journal("diverged", durable=True, epoch=record.step, lr=record.lr, loss=str(error.loss),
                              rolled_back_to=trainer.global_step)
        session.save_unsaved()
        return ChunkOutcome("diverged", trainer.global_step, dropped=dropped, lr=record.lr,
                            detail=f"loss became {error.loss} in epoch {record.step} at lr {record.lr:g}")

    def _epoch_done(self, record: EpochRecord) -> None:
        session = self.session
        session.chunks[-1]["end"] = record.step + 1
        session.logs.epoch(record, self.trainer.batches_per_epoch)
        session.mark_boundary()
        # (a save due at the chunk's last epoch is written once: the chunk's end keeps it, see keep_here)
        if session.stop.checkpoint_now or session.timing.due_at_epoch_end(record.step):
            session.stop.checkpoint_now = False
            session.save()
        session.timing.epoch_started()
        session.observer.epoch_done(record, session.metric)

    def _batch_boundary(self, batch: int, batches: int) -> None:
        """Between two batches: re-apply recorded changes, apply queued commands, hold while paused,
        checkpoint when due or asked, leave when a signal asked."""
        session, trainer = self.session, self.trainer
        done = trainer.global_step * trainer.batches_per_epoch + batch
        if session.ranks.shared:
            session.ranks.batch_boundary(done, session.live, session.stop.abandon)
        else:
            if session.live.pending_work():
                session.live.apply_arrivals(done)
            self._mid_epoch_save(batch, batches)
        if session.observer.wants_batches:
            session.observer.batch_done(batch, batches)

    def _mid_epoch_save(self, batch: int, batches: int) -> None:
        """A signal ends the process: save here, mid-epoch, and leave. A long epoch: checkpoint on the
        ``save_every`` cadence (at least a second apart), so a crash loses at most that much."""
        session, stop = self.session, self.session.stop
        if batch >= batches:  # the epoch's end comes next: it checkpoints there
            if stop.shutdown:
                stop.checkpoint_now = True
            return
        if stop.shutdown:
            step = self.trainer.global_step
            if self.trainer.weights_finite():
                session.save()
                detail = f"saved at epoch {step}, batch {batch} of {batches}"
            else:
                detail = f"epoch {step} was diverging: the checkpoint at epoch {session.saved_step} stays"
            session.store.journal("interrupted", durable=True, how="shutdown", signal=stop.reasons[-1:] or None,
                                  step=step, batch=batch)
            raise Shutdown(stop.shutdown_signal, detail)
        if stop.checkpoint_now or session.timing.due_mid_epoch():
            stop.checkpoint_now = False
            session.save_here()  # a diverging epoch is never saved half way (it rolls back)
