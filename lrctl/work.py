"""The pending work of an open run: one copy in memory, written through to ``pending.json``.

Every change to what is left goes through :class:`PendingWork`: a new command (recorded durably with
its journal line before its first epoch), a chunk finished, an lr change made mid-chunk (re-applied
at the same batch after a resume), the changes of an abandoned epoch dropped, the whole work dropped
(undo, divergence, a new command at the prompt). The session and live control share one instance,
so nothing reads back the file it has just written; the file is read once, when the run is loaded
(after :mod:`lrctl.recovery` has settled it).
"""

from __future__ import annotations

from typing import Any

from lrctl.runstore import Pending, RunStore


class PendingWork:
    """The work asked for and not finished yet, for one open run (``store``)."""

    def __init__(self, store: RunStore) -> None:
        self.store = store
        self._current: Pending | None = None
        self._read = False

    @property
    def current(self) -> Pending | None:
        """All the work left (its first chunk may be partly done); read from the file on first use."""
        if not self._read:
            self.reload()
        return self._current

    def reload(self) -> None:
        """Read ``pending.json`` again (at load, after :mod:`lrctl.recovery` settled it)."""
        self._current, self._read = self.store.read_pending(), True

    def left(self, step: int) -> Pending | None:
        """The work with epochs still to train from global epoch ``step``, or None."""
        pending = self.current
        if pending is not None and pending.remaining(step) <= 0:
            return None
        return pending

    def snapshot(self) -> dict[str, Any] | None:
        """What a checkpoint stores of the work (recovery rebuilds from it when ``pending.json`` is lost)."""
        pending = self.current
        return {"chunks": pending.chunks, "source": pending.source} if pending else None

    def _write(self, pending: Pending | None) -> None:
        self._current, self._read = (pending if pending is not None and pending.chunks else None), True
        self.store.write_pending(self._current)

    def record(self, chunks: list[dict[str, Any]], source: str, step: int, job: dict[str, str]) -> Pending:
        """A new command: it replaces what was left (journaled), and is durable before it runs.

        The journal line comes first: a kill between the two writes leaves a journal that names the
        command, from which a lost or never-written ``pending.json`` is rebuilt (the other order could
        leave the command only in a file that may then be lost without a trace)."""
        old = self.left(step)
        if old is not None:
            self.store.journal("pending_replaced", durable=True, old=old.chunks, step=step)
        self.store.journal("command", durable=True, source=source, chunks=chunks, **job)
        pending = Pending(chunks, source)
        self._write(pending)
        return pending

    def replace(self, pending: Pending | None) -> None:
        """Another rank's copy of the work (torchrun: rank 0 sends it before every command)."""
        self._write(pending)

    def chunk_done(self) -> None:
        """The first chunk is finished."""
        if self.current is not None:
            self._write(Pending(self.current.chunks[1:], self.current.source))

    def add_change(self, record: dict[str, Any]) -> None:
        """An lr change made in the running chunk, re-applied at its batch if the chunk is resumed."""
        if self.current is not None and self.current.chunks:
            self.current.chunks[0].setdefault("changes", []).append(record)
            self._write(self.current)

    def drop_changes_after(self, batch: int) -> list[dict[str, Any]]:
        """Forget the lr changes made after global batch ``batch`` (an abandoned epoch's); returns them."""
        lost: list[dict[str, Any]] = []
        if self.current is None:
            return lost
        for chunk in self.current.chunks:
            changes = chunk.get("changes") or []
            lost += [c for c in changes if c["at_batch"] > batch]
            chunk["changes"] = [c for c in changes if c["at_batch"] <= batch]
        if lost:
            self._write(self.current)
        return lost

    def drop(self, reason: str, step: int) -> None:
        """Give up what is left (journaled with the chunks, so nothing is lost without a trace)."""
        if self.current is not None:
            self.store.journal("pending_dropped", durable=True, reason=reason, chunks=self.current.chunks, step=step)
            self._write(None)

    def covering(self, step: int) -> dict[str, Any] | None:
        """The pending chunk that global epoch ``step`` belongs to, if any."""
        chunks = self.current.chunks if self.current else []
        return next((c for c in chunks if c["start"] <= step < c["start"] + c["epochs"]), None)
