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
import queue
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lrctl import config as config_mod
from lrctl.runstore import DEFAULT_KEEP, Pending, RunError, RunStore
from lrctl.schedules import ScheduleSpec, parse

if TYPE_CHECKING:
    from lrctl.distributed import Group
    from lrctl.engine import EpochRecord, Trainer
    from lrctl.tblog import MetricLogger

DEFAULT_SAVE_EVERY = 5.0
BATCH_LOGDIR = "batch"


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
                 keep: int = DEFAULT_KEEP, group: Group | None = None) -> None:
        self.store, self.cfg, self.is_new, self.save_every, self.keep = store, cfg, is_new, save_every, keep
        # Data-parallel: every rank runs a session; only rank 0's writes files, and it tells the others
        # what to do (lrctl.distributed). ``given_config`` is what this rank's command line asked for.
        self.group = group
        self.writes = group is None or group.is_main
        self.given_config: dict[str, Any] | None = None
        self.shutdown = False  # torchrun is ending the job: stop after the epoch and quit
        self._abandon = False
        self._outbox: list[dict[str, Any]] = []
        self.chunks: list[dict[str, Any]] = []  # {start, end, expr} of every chunk trained, for plots and undo
        self.observer = observer or Observer()
        self.trainer: Trainer | None = None
        self.logger: MetricLogger | None = None
        self._batch_logger: MetricLogger | None = None
        self._opened_step = 0
        self.saved_step: int | None = None
        self._last_save = time.monotonic()
        self._stop = False
        self.in_critical = False
        self.abort_after_critical = False
        self.load_warnings: list[str] = []
        # Live control: commands from keys or the control socket, applied at the next batch boundary.
        self.controls: queue.SimpleQueue = queue.SimpleQueue()
        self._scheduled: list[dict[str, Any]] = []  # recorded changes to re-apply at their global batch
        self.running = False
        self.paused = False
        self._save_at_epoch_end = False
        self._chunk_end = 0

    # -- opening -------------------------------------------------------------------------------
    @classmethod
    def open(cls, runs_dir: Path, name: str, cfg: config_mod.RunConfig, *, force_config: bool = False,
             save_every: float = DEFAULT_SAVE_EVERY, observer: Observer | None = None,
             config_origin: str = "", keep: int = DEFAULT_KEEP, group: Group | None = None) -> RunSession:
        """Lock the run and settle its config. No torch. Raises RunError/RunLocked."""
        store = RunStore(runs_dir, name)
        is_new = not store.exists
        note = store.acquire()
        try:
            if is_new:
                store.write_config(config_mod.to_toml(cfg, header=f"lrctl run '{name}', created {_now()} "
                                                      f"from {config_origin or 'the built-in lesson config'}."))
            else:
                frozen, _ = _read_frozen_config(store)
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
        session = cls(store, cfg, is_new, save_every, observer, keep, group)
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

        had_events = any(p.name.startswith("events.out.tfevents") for p in self.store.dir.iterdir())
        if self.store.has_checkpoint():
            loaded = self.store.load_checkpoint()
            self.load_warnings += loaded.warnings
            trainer.load_state_dict(loaded.state)
            self.chunks = list(loaded.state.get("chunks") or [])
            self.saved_step = trainer.global_step
        self.trainer = trainer
        self._opened_step = trainer.global_step
        # Steps after the checkpoint (a crash, a kill) are hidden now and rewritten identically.
        self.logger = TensorBoardLogger(self.store.dir, purge_step=trainer.global_step if had_events else None)
        if self.saved_step is None:
            self.save(keep=True)  # the initial state: every later rollback, undo and resume has a base

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

    def save(self, keep: bool = False) -> None:
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
            self.store.save_checkpoint(state, {**self.summary(), "saved_at": _now()})
            if keep:
                self.store.keep_checkpoint(self.trainer.global_step, self.keep)
            self.saved_step = self.trainer.global_step
            self._last_save = time.monotonic()
        finally:
            self.in_critical = False
        if self.abort_after_critical:
            self.abort_after_critical = False
            raise KeyboardInterrupt

    def request_stop(self) -> None:
        """Stop the running chunk after the current epoch (everything kept)."""
        self._stop = True

    def request_abandon(self) -> None:
        """Data-parallel: abandon the epoch at the next batch boundary, on every rank together."""
        self._abandon = True

    def _tell(self, command: dict[str, Any]) -> None:
        """Rank 0: have the other ranks do the same (they are waiting in :func:`lrctl.distributed.follow`)."""
        if self.group is not None and self.writes:
            self.group.send(command)

    def _should_stop(self) -> bool:
        if self.group is None:
            return self._stop
        return self.group.any(self._stop or self.shutdown, self.trainer.device)

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
        start = self.global_step
        absolute = []
        for epochs, expression in chunks:
            absolute.append({"start": start, "epochs": epochs, "expr": parse(expression).text})
            start += epochs
        old = self.store.read_pending()
        if old is not None and old.remaining(self.global_step) > 0:
            self.store.journal("pending_replaced", durable=True, old=old.chunks, step=self.global_step)
        self.store.write_pending(Pending(absolute, source))
        job = {"job": self.group.job} if self.group is not None else {}
        self.store.journal("command", durable=True, source=source, chunks=absolute, **job)
        return self.finish_pending()

    def drop_pending(self, reason: str) -> None:
        self._scheduled = []
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
        self._stop = self._abandon = False
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
        if trainer.global_step > chunk["start"]:
            if runner is None:
                raise RunError(f"cannot resume the chunk started at epoch {chunk['start']}: no schedule state")
            return  # the chunk's own schedule, as the checkpoint (or a pause) left it, mid-chunk changes included
        trainer.start_schedule(spec, chunk["epochs"])

    def _run_chunk(self, chunk: dict[str, Any], stop_at: int | None = None) -> ChunkOutcome:
        from lrctl.engine import Diverged

        trainer, store = self.trainer, self.store
        self._prepare_schedule(chunk)
        end = chunk["start"] + chunk["epochs"]
        self._chunk_end = end
        here = trainer.global_step * trainer.batches_per_epoch
        # Changes made mid-chunk before an interruption happen again at the same batch.
        self._scheduled = sorted((c for c in chunk.get("changes", []) if c["at_batch"] > here),
                                 key=lambda c: c["at_batch"])
        todo = min(end, stop_at if stop_at is not None else end) - trainer.global_step
        store.journal("chunk_start", step=trainer.global_step, end=end, expr=chunk["expr"])
        if not self.chunks or self.chunks[-1]["start"] != chunk["start"]:
            self.chunks.append({"start": chunk["start"], "end": chunk["start"], "expr": chunk["expr"]})
            self.log_intervention(f"chunk: {chunk['epochs']} epochs of `{chunk['expr']}`", chunk["start"])
        label = chunk["expr"]
        if label == "keep" and trainer.runner is not None:
            label = f"keep ({trainer.runner.spec.text})"
        self.observer.chunk_started(trainer.global_step, todo, label, trainer.batches_per_epoch)
        self.running, self.paused = True, False
        try:
            trainer.fit_rec(todo, on_epoch_end=self._epoch_done, on_batch_end=self._batch_boundary,
                            should_stop=self._should_stop)
        except KeyboardInterrupt:
            dropped = trainer.global_step - (self.saved_step or 0)
            self._rollback()
            outcome = ChunkOutcome("abandoned", trainer.global_step, dropped=dropped)
            store.journal("interrupted", durable=True, how="abandon", step=trainer.global_step, dropped=dropped)
            self.observer.chunk_ended(outcome)
            return outcome
        except Diverged as e:
            dropped = trainer.global_step - (self.saved_step or 0)
            self._rollback()
            self.drop_pending("diverged")
            outcome = ChunkOutcome("diverged", trainer.global_step, dropped=dropped, lr=e.record.lr,
                                   detail=f"loss became {e.loss} in epoch {e.record.step} at lr {e.record.lr:g}")
            store.journal("diverged", durable=True, epoch=e.record.step, lr=e.record.lr, loss=str(e.loss),
                          rolled_back_to=trainer.global_step)
            self.observer.chunk_ended(outcome)
            return outcome
        finally:
            self._end_controls()
        self.save(keep=True)
        if self.group is not None:
            self._check_replicas()
        if trainer.global_step < end:
            outcome = ChunkOutcome("stopped", trainer.global_step, detail=f"{end - trainer.global_step} epochs left")
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
        every = self.cfg.train.checkpoint_every
        if (self._save_at_epoch_end or time.monotonic() - self._last_save >= self.save_every
                or (every and (record.step + 1) % every == 0)):
            self._save_at_epoch_end = False
            self.save()
        self.observer.epoch_done(record, metric)

    # -- live control ------------------------------------------------------------------------------
    def submit(self, command: dict[str, Any]) -> None:
        """Queue a control command (from keys or the socket); it is applied at the next batch boundary.

        ``command``: {"cmd": "lr"|"pause"|"resume"|"stop"|"checkpoint", "value"?, "mode"?, "source"?,
        "reply"?: a queue that receives the result}."""
        self.controls.put(command)

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
        elif self._scheduled or not self.controls.empty() or self.paused:
            self._apply_arrivals(self.trainer.global_step * self.trainer.batches_per_epoch + batch)
        if self.observer.wants_batches:
            self.observer.batch_done(batch, batches)

    def _batch_boundary_shared(self, batch: int) -> None:
        """Data-parallel: rank 0 applies what arrived and sends the lr changes it made, so every rank
        applies them at this same batch; a Ctrl-C that abandons the epoch is agreed on here too."""
        done = self.trainer.global_step * self.trainer.batches_per_epoch + batch
        self._apply_arrivals(done)
        message = None
        if self.writes and self._outbox:
            message = json.dumps(self._outbox).encode()
            self._outbox = []
        size, abandon = self.group.batch_exchange(len(message) if message else 0, self._abandon)
        if size:
            records = json.loads(self.group.batch_message(message).decode())
            if not self.writes:
                for record in records:
                    self._apply(record, done, replaying=True)
        if abandon:
            raise KeyboardInterrupt

    def _apply_arrivals(self, done: int) -> None:
        """Recorded changes due by global batch ``done``, then (rank 0) queued commands; hold while paused."""
        while self._scheduled and self._scheduled[0]["at_batch"] <= done:
            self._apply(self._scheduled.pop(0), done, replaying=True)
        if self.writes:
            self._drain(done, block=False)
            while self.paused and not self._stop and not self._abandon:
                self._drain(done, block=True)

    def _drain(self, done: int, block: bool) -> None:
        while True:
            try:
                command = self.controls.get(timeout=0.2) if block else self.controls.get_nowait()
            except queue.Empty:
                return
            try:
                result = self._apply(command, done)
            except (ValueError, RunError) as e:
                result = {"ok": False, "error": str(e)}
            reply = command.get("reply")
            if reply is not None:
                reply.put(result)
            block = False

    def _end_controls(self) -> None:
        """The chunk is over: what is still queued cannot be applied to it."""
        self.running, self.paused = False, False
        while True:
            try:
                command = self.controls.get_nowait()
            except queue.Empty:
                return
            if command.get("reply") is not None:
                command["reply"].put({"ok": False, "error": "the chunk ended before the command was applied"})

    def _apply(self, command: dict[str, Any], done: int, replaying: bool = False) -> dict[str, Any]:
        from lrctl.lr_runner import ScheduleRunner
        from lrctl.schedules import with_base

        trainer, kind = self.trainer, command["cmd"]
        source = command.get("source", "?")
        step = trainer.global_step
        if kind == "lr":
            spec = parse(command["value"])
            mode = command.get("mode") or "set"
            runner = trainer.runner
            remaining = max(1, self._chunk_end - step)
            args = (trainer.optimizer, step, remaining, trainer.batches_per_epoch, trainer.metric_mode)
            if spec.name == "keep":
                raise ValueError("keep is not a change; give a learning rate or a schedule")
            if spec.name != "const":
                mode = "schedule"  # a new schedule starts now, over the rest of the chunk
                trainer.runner = ScheduleRunner(spec, *args)
            elif mode == "scale" and runner is not None:
                runner.apply_scale(spec.args[0] / runner.lr)
            elif mode == "restart" and runner is not None:
                trainer.runner = ScheduleRunner(with_base(runner.spec, spec.args[0]), *args)
            elif mode in ("set", "scale", "restart"):
                mode = "set"
                trainer.runner = ScheduleRunner(spec, *args)
            else:
                raise ValueError(f"unknown lr mode {mode!r}: use set, scale or restart")
            record = {"cmd": "lr", "value": spec.text, "mode": mode, "at_batch": done, "source": source}
            if not replaying and self.group is not None:
                self._outbox.append(record)
            if not replaying:
                self.store.journal("control", durable=True, step=step, **record)
                pending = self.store.read_pending()
                if pending is not None and pending.chunks:
                    pending.chunks[0].setdefault("changes", []).append(record)
                    self.store.write_pending(pending)
            self.log_intervention(f"lr -> {spec.text} ({mode}, from {source}) at batch {done}", step)
            self.observer.message(f"lr -> {spec.text} ({mode}) from {source}, at batch {done}: now {trainer.lr:.6g}")
            return {"ok": True, "cmd": "lr", "mode": mode, "lr": trainer.lr, "applied_at_batch": done,
                    "global_step": step}
        if kind in ("pause", "resume"):
            self.paused = kind == "pause"
            self.store.journal(kind, step=step, at_batch=done, source=source)
            self.log_intervention(f"{kind} (from {source}) at batch {done}", step)
            self.observer.message(f"{'paused' if self.paused else 'continuing'} at epoch {step}, batch {done}"
                                  + (" · p (or lrctl send RUN resume) continues" if self.paused else ""))
        elif kind == "stop":
            self.request_stop()
            self.store.journal("stop_requested", step=step, source=source)
            self.observer.message(f"stopping after epoch {step} (from {source})")
        elif kind == "checkpoint":
            self._save_at_epoch_end = True
            self.observer.message(f"checkpoint at the end of epoch {step} (from {source})")
        else:
            raise ValueError(f"unknown command {kind!r}")
        return {"ok": True, "cmd": kind, "global_step": step, "paused": self.paused}

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
        """Go back to the last checkpoint (after an abandoned or diverged epoch)."""
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
        self.drop_pending("undo")
        self.logger.purge(target)
        if self._batch_logger is not None:
            self._batch_logger.purge(target * self.trainer.batches_per_epoch)
        self.save(keep=True)
        self.store.journal("undo", durable=True, from_step=current, to_step=target)
        self.log_intervention(f"undo: back from epoch {current} to {target}", target)
        return current, target

    def fork(self, name: str) -> RunSession:
        """Copy this run (state, history, TensorBoard) into a new run ``name`` and continue there.

        Returns the new session; this one is closed."""
        from lrctl.tblog import TensorBoardLogger

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
        new.logger = TensorBoardLogger(new_store.dir, purge_step=self.global_step)
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


def state_summary(state: dict[str, Any], metric: str) -> dict[str, Any]:
    """What a person wants to know of a checkpoint: epoch, last metrics, lr."""
    history = state.get("history") or []
    last = history[-1] if history else None
    return {"global_step": int(state["global_step"]), "lr": state.get("lr") if last else None, "metric": metric,
            "last": {"train": last["train"], "test": last["test"]} if last else None}


def fork_run(runs_dir: Path, source: str, name: str, at: int | None = None) -> int:
    """``lrctl fork``: copy run ``source`` into new run ``name``, optionally from its kept checkpoint at epoch ``at``.

    Returns the new run's global epoch."""
    from lrctl.tblog import TensorBoardLogger

    src, dst = RunStore(runs_dir, source), RunStore(runs_dir, name)
    if not src.exists:
        raise RunError(f"no run '{source}' in {runs_dir}")
    if dst.exists:
        raise RunError(f"run '{name}' exists already; pick another name")
    src.acquire()
    try:
        dst.acquire()
        try:
            src.copy_to(dst)
            cfg, _ = _read_frozen_config(src)
            if at is None:
                step = int(src.load_checkpoint().state["global_step"])
            else:
                state = src.load_kept(at)
                for old in ("checkpoint.prev.pt", "checkpoint.json", "checkpoint.pt"):
                    (dst.dir / old).unlink(missing_ok=True)
                dst.save_checkpoint(state, state_summary(state, cfg.metric))
                for step_kept in dst.kept_steps():
                    if step_kept > at:
                        (dst.dir / "kept" / f"step-{step_kept:08d}.pt").unlink()
                step = at
            TensorBoardLogger(dst.dir, purge_step=step).close()  # TensorBoard hides the source's later steps now
            dst.journal("forked", durable=True, source=source, step=step)
        finally:
            dst.close()
    finally:
        src.close()
    return step


def _read_frozen_config(store: RunStore) -> tuple[config_mod.RunConfig, str]:
    import tomllib

    path = store.dir / "config.toml"
    try:
        raw = tomllib.loads(store.read_config_text())
        if isinstance(raw.get("train"), dict):  # frozen before train.order existed: those runs used the seeded order
            raw["train"].setdefault("order", "seeded")
        return config_mod.from_dict(raw, origin=str(path)), str(path)
    except (OSError, tomllib.TOMLDecodeError, config_mod.ConfigError) as e:
        raise RunError(f"run '{store.name}': its frozen config {path} cannot be read: {e}") from None


def _now() -> str:
    from lrctl.runstore import now_iso

    return now_iso()
