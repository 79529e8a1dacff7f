"""TensorBoard logging behind a small interface, with an in-memory fake for tests.

:class:`TensorBoardLogger` writes event files with tensorboard's own record writer rather than
torch's ``SummaryWriter`` for two reasons: file names must sort in the order sessions wrote them
(TensorBoard reads a run's files in name order, and SummaryWriter names them by whole seconds,
then pid), and a reopened run must purge the steps a crash left behind the last checkpoint
(``SessionLog.START`` at ``purge_step``, what ``SummaryWriter(purge_step=)`` writes).

>>> logger = MemoryLogger()
>>> logger.log_dict({"train_mse": 1.5, "lr": 0.03}, step=0)
>>> logger.scalars["lr"]
[(0, 0.03)]
"""

from __future__ import annotations

import os
import re
import socket
import time
from collections import defaultdict
from pathlib import Path
from typing import Protocol

from lrctl._faults import point as _fault_point

_EVENT_FILE = re.compile(r"events\.out\.tfevents\.(\d+)\.")


class MetricLogger(Protocol):
    def log(self, tag: str, value: float, step: int) -> None: ...
    def log_dict(self, values: dict[str, float], step: int) -> None: ...
    def log_text(self, tag: str, text: str, step: int) -> None: ...
    def purge(self, step: int) -> None: ...
    def flush(self, durable: bool = False) -> None: ...
    def close(self) -> None: ...


class MemoryLogger:
    """Keeps everything in lists; ``purge(step)`` mimics TensorBoard dropping steps >= step."""

    def __init__(self) -> None:
        self.scalars: dict[str, list[tuple[int, float]]] = defaultdict(list)
        self.texts: dict[str, list[tuple[int, str]]] = defaultdict(list)

    def log(self, tag: str, value: float, step: int) -> None:
        self.scalars[tag].append((step, value))

    def log_dict(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.log(tag, value, step)

    def log_text(self, tag: str, text: str, step: int) -> None:
        self.texts[tag].append((step, text))

    def purge(self, step: int) -> None:
        for series in (*self.scalars.values(), *self.texts.values()):
            series[:] = [(s, v) for s, v in series if s < step]

    def flush(self, durable: bool = False) -> None:
        pass

    def close(self) -> None:
        pass


class NullLogger:
    """Writes nothing: the logger of data-parallel ranks other than 0 (rank 0 writes TensorBoard)."""

    def log(self, tag: str, value: float, step: int) -> None: ...
    def log_dict(self, values: dict[str, float], step: int) -> None: ...
    def log_text(self, tag: str, text: str, step: int) -> None: ...
    def purge(self, step: int) -> None: ...
    def flush(self, durable: bool = False) -> None: ...
    def close(self) -> None: ...


def _next_file_time(logdir: Path) -> int:
    """Whole seconds for the new file's name, later than every existing file's so name order = write order."""
    latest = 0
    for name in os.listdir(logdir):
        m = _EVENT_FILE.match(name)
        if m:
            latest = max(latest, int(m.group(1)))
    return max(int(time.time()), latest + 1)


class TensorBoardLogger:
    """Scalars and text for one run directory, one event file per session.

    Args:
        logdir: the run directory (one TensorBoard run).
        purge_step: when reopening a run, the global step of the checkpoint being resumed: every
            event at or after it from earlier files is hidden, so nothing shows twice.
        layout: a Summary written at step 0 in every file and again after a purge back to step 0
            (``lrctl.tbplugins.run_layout``: the custom-scalars layout, which a purge would hide).
    """

    def __init__(self, logdir: Path, purge_step: int | None = None, layout=None) -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.summary.writer.record_writer import RecordWriter

        self._event_pb2, self._summary_pb2 = event_pb2, summary_pb2
        logdir = Path(logdir)
        logdir.mkdir(parents=True, exist_ok=True)
        first = not any(_EVENT_FILE.match(n) for n in os.listdir(logdir))
        name = f"events.out.tfevents.{_next_file_time(logdir):010d}.{socket.gethostname()}.{os.getpid()}.lrctl"
        self.path = logdir / name
        self._file = open(self.path, "wb")
        self._writer = RecordWriter(self._file)
        self._write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))
        # Two STARTs open every file. TensorBoard's multiplexer (what `tensorboard --load_fast=false` and
        # `lrctl tb` serve) ignores the first START it sees in a run and purges on every later one;
        # EventAccumulator purges on each. So a later purge (undo, rollback, reopen) is honoured by both,
        # even in a run whose older files have no START.
        # (A file that only adds to a run, purge_step None where events exist, writes no START.)
        self._layout = layout
        starts = 2 if purge_step is not None or first else 0
        for _ in range(starts):
            self.purge(purge_step or 0)  # at step 0 this also writes the layout
        if layout is not None and (purge_step or not starts):
            self.write_summary(layout, step=0)
        self.flush()

    def write_summary(self, summary, step: int) -> None:
        """A ready-made Summary proto (a plugin's data: layout, hparams) at ``step``."""
        self._write(self._event_pb2.Event(wall_time=time.time(), step=step, summary=summary))

    def _write(self, event) -> None:
        self._writer.write(event.SerializeToString())

    def purge(self, step: int) -> None:
        """Hide every event at or after ``step`` (after an undo or a rollback): they are rewritten later."""
        start = self._event_pb2.SessionLog(status=self._event_pb2.SessionLog.START)
        self._write(self._event_pb2.Event(wall_time=time.time(), step=step, session_log=start))
        if step == 0 and self._layout is not None:
            self.write_summary(self._layout, step=0)

    def log(self, tag: str, value: float, step: int) -> None:
        self.log_dict({tag: value}, step)

    def log_dict(self, values: dict[str, float], step: int) -> None:
        summary = self._summary_pb2.Summary(
            value=[self._summary_pb2.Summary.Value(tag=t, simple_value=v) for t, v in values.items()])
        self._write(self._event_pb2.Event(wall_time=time.time(), step=step, summary=summary))

    def log_text(self, tag: str, text: str, step: int) -> None:
        from tensorboard.compat.proto import tensor_pb2, tensor_shape_pb2, types_pb2

        plugin = self._summary_pb2.SummaryMetadata.PluginData(plugin_name="text")
        tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=[text.encode("utf-8")],
                                        tensor_shape=tensor_shape_pb2.TensorShapeProto(
                                            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=1)]))
        value = self._summary_pb2.Summary.Value(
            tag=tag, metadata=self._summary_pb2.SummaryMetadata(plugin_data=plugin), tensor=tensor)
        self._write(self._event_pb2.Event(wall_time=time.time(), step=step,
                                          summary=self._summary_pb2.Summary(value=[value])))

    def flush(self, durable: bool = False) -> None:
        """Make the events visible to TensorBoard; ``durable`` also forces them to disk (before a checkpoint)."""
        _fault_point("write events")
        self._file.flush()
        if durable:
            _fault_point("fsync events")
            os.fsync(self._file.fileno())

    def close(self) -> None:
        if not self._file.closed:
            self.flush(durable=True)
            self._file.close()
