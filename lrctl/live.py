"""Live control of a running chunk: commands from keys or the control socket, applied at batch boundaries.

:class:`LiveControl` owns the queue of arriving commands, the pause, and the lr changes recorded
earlier in the chunk that a resumed chunk re-applies at the same global batch. An lr change goes
through one engine method (:meth:`lrctl.engine.Trainer.change_lr`) that replaces the schedule the
batch loop reads at every batch; this module journals it, records it with the pending chunk and
reports it. It never prints: it tells the session's observer.
"""

from __future__ import annotations

import queue
from typing import Any, Protocol

from lrctl.runstore import RunError, RunStore
from lrctl.schedules import ScheduleSpec, parse
from lrctl.stopping import StopState


class Host(Protocol):
    """What live control needs of the session that owns it (lrctl.session.RunSession is one)."""

    trainer: Any
    store: RunStore
    stop: StopState
    work: Any  # lrctl.work.PendingWork
    observer: Any
    group: Any
    writes: bool

    def log_intervention(self, text: str, step: int | None = None) -> None: ...
    def save_here(self) -> None: ...

class LiveControl:
    """The live commands of one session (``host``): its trainer, store, stop state and observer."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.scheduled: list[dict[str, Any]] = []  # recorded changes to re-apply at their global batch
        self.outbox: list[dict[str, Any]] = []  # rank 0 under torchrun: changes the other ranks must make
        self.running = False
        self.paused = False
        self.chunk_end = 0

    def submit(self, command: dict[str, Any]) -> None:
        """Queue a command; it is applied at the next batch boundary.

        ``command``: {"cmd": "lr"|"pause"|"resume"|"stop"|"checkpoint", "value"?, "mode"?, "source"?,
        "reply"?: a queue that receives the result}."""
        self.queue.put(command)

    def begin(self, chunk: dict[str, Any], here: int) -> None:
        """A chunk starts (or resumes) at global batch ``here``: its recorded changes after it happen again."""
        self.chunk_end = chunk["start"] + chunk["epochs"]
        self.scheduled = sorted((c for c in chunk.get("changes", []) if c["at_batch"] > here),
                                key=lambda c: c["at_batch"])
        self.running, self.paused = True, False

    def pending_work(self) -> bool:
        return bool(self.scheduled) or not self.queue.empty() or self.paused

    def apply_arrivals(self, done: int) -> None:
        """Recorded changes due by global batch ``done``, then (rank 0) queued commands; hold while paused."""
        host = self.host
        while self.scheduled and self.scheduled[0]["at_batch"] <= done:
            self.apply(self.scheduled.pop(0), done, replaying=True)
        if host.writes:
            self._drain(done, block=False)
            while self.paused and not host.stop.stop_after_epoch and not host.stop.abandon:
                self._drain(done, block=True)
                if host.stop.checkpoint_now and host.group is None:  # `c`, SIGUSR1 or the socket, while paused
                    host.stop.checkpoint_now = False
                    host.save_here()

    def _drain(self, done: int, block: bool) -> None:
        while True:
            try:
                command = self.queue.get(timeout=0.2) if block else self.queue.get_nowait()
            except queue.Empty:
                return
            try:
                result = self.apply(command, done)
            except (ValueError, RunError) as e:
                result = {"ok": False, "error": str(e)}
            reply = command.get("reply")
            if reply is not None:
                reply.put(result)
            block = False

    def end(self) -> None:
        """The chunk is over: what is still queued cannot be applied to it."""
        self.running, self.paused = False, False
        while True:
            try:
                command = self.queue.get_nowait()
            except queue.Empty:
                return
            if command.get("reply") is not None:
                command["reply"].put({"ok": False, "error": "the chunk ended before the command was applied"})

    def apply(self, command: dict[str, Any], done: int, replaying: bool = False) -> dict[str, Any]:
        """Carry out one command at global batch ``done``; ``replaying``: a recorded change, not journaled again."""
        host = self.host
        trainer, store, kind = host.trainer, host.store, command["cmd"]
        source = command.get("source", "?")
        step = trainer.global_step
        if kind == "lr":
            value = command["value"]  # a spec from keys and the socket; text from a recorded change
            spec = value if isinstance(value, ScheduleSpec) else parse(value)
            mode = trainer.change_lr(spec, command.get("mode") or "set", max(1, self.chunk_end - step))
            record = {"cmd": "lr", "value": spec.text, "mode": mode, "at_batch": done, "source": source}
            if not replaying and host.group is not None:
                self.outbox.append(record)
            if not replaying:
                store.journal("control", durable=True, step=step, **record)
                host.work.add_change(record)
            host.log_intervention(f"lr -> {spec.text} ({mode}, from {source}) at batch {done}", step)
            host.observer.message(f"lr -> {spec.text} ({mode}) from {source}, at batch {done}: now {trainer.lr:.6g}")
            return {"ok": True, "cmd": "lr", "value": spec.text, "mode": mode, "lr": trainer.lr,
                    "applied_at_batch": done, "global_step": step}
        if kind in ("pause", "resume"):
            self.paused = kind == "pause"
            store.journal(kind, step=step, at_batch=done, source=source)
            host.log_intervention(f"{kind} (from {source}) at batch {done}", step)
            host.observer.message(f"{'paused' if self.paused else 'continuing'} at epoch {step}, batch {done}"
                                  + (f" · p (or lrctl send {store.name} resume) continues"
                                     if self.paused and not command.get("brief") else ""))
        elif kind == "stop":
            host.stop.request("stop")
            store.journal("stop_requested", step=step, source=source)
            host.observer.message(f"stopping after epoch {step} (from {source})")
        elif kind == "checkpoint":
            host.stop.request("checkpoint")
            host.observer.message(f"checkpoint at the next batch (from {source})")
        else:
            raise ValueError(f"unknown command {kind!r}")
        return {"ok": True, "cmd": kind, "global_step": step, "paused": self.paused}
