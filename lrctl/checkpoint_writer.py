"""Writing a checkpoint's bytes: ``torch.save`` straight into a synced temp file, hashed as it is written.

:meth:`lrctl.runstore.RunStore.save_checkpoint` owns the protocol around it (checksum file, renames,
the previous checkpoint); this module owns only the one expensive step, putting the state on disk,
and does it with as little work on the training thread as measured possible (the benchmark's
10M-parameter MLP, a 38 MB file, this project's 2-core VM, ext4):

==================================================================  ==============  ==========
way (median)                                                        CPU per save    wall
==================================================================  ==============  ==========
``torch.save`` into ``BytesIO``, sha256, write                      131 ms          156 ms
streamed to the file, hashed as written, no CRC-32 (session 4)      67 ms           94-210 ms
``O_DIRECT`` in 4 MiB aligned blocks, sha256 on a helper thread     ~45 ms          ~45 ms
==================================================================  ==============  ==========

Why ``O_DIRECT``: a write through the page cache needs a fresh page per 4 KiB, and on a VM a fresh
page costs kernel time (faults in the hypervisor): 38 MB took 110-130 ms of system time in training
(between saves the freed pages go back), wall 200 ms per save. Written directly, the file costs its
copy into the aligned block (~10 ms) and the device's time (~30 ms at 1.3 GB/s, no CPU), while the
sha256 (~41 ms, hashlib releases the GIL) runs beside it on the other core. Larger blocks or several
writes in flight did not help (the device is the limit). A state under one block is written through
the page cache (direct costs +0.3 ms on a few KB); so is every file where the file system refuses
``O_DIRECT`` (tmpfs, macOS), or when the device refuses the alignment midway.

torch's per-record CRC-32 is turned off while lrctl serializes: the sha256 of the whole file, which
lrctl checks before every load, already covers every byte, and files written without the CRC load
as before (``torch.load(weights_only=True)``).

Measured and not chosen: writing on a background thread while training goes on. The chunk's end
could not return earlier: every later write of the run (the journal's ``saved`` event,
``pending.json``, the kept link) must wait for the file to be durable, in order
(:mod:`lrctl.recovery` relies on it), and a kill at the prompt must find the chunk's end on disk.
A faster hash (blake3 9 ms, xxh3 2 ms for 38 MB) would not shorten the save either: the device is
as slow as the sha256, and the two run side by side.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import mmap
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

from lrctl.durable import write_synced

_BLOCK = 4 << 20  # bytes per direct write: large enough that the device, not the call, sets the pace
_ALIGN = 4096  # O_DIRECT wants offsets, lengths and memory aligned to the device's block; 4 KiB covers all common
_LARGE = 1 << 20  # records at least this size are hashed on a helper thread while they are written
_blocks: list[mmap.mmap] = []  # page-aligned buffers, reused by every save of the process


class _HashingFile:
    """The file-like object ``torch.save`` writes to: every record goes to the file and to the hash.

    The file is written with ``O_DIRECT`` where the file system allows it (see the module's
    docstring): records are gathered into a page-aligned block and written a block at a time; the
    last block is padded and the file cut back to its size. Elsewhere (tmpfs, macOS) it is written
    as any file. A large record is hashed on a helper thread while it is copied and written here.
    """

    def __init__(self, f: BinaryIO, hasher: ThreadPoolExecutor, direct: bool) -> None:
        self.f, self.fd, self.sha, self.hasher = f, f.fileno(), hashlib.sha256(), hasher
        self.size = self.fill = 0
        self.block = _take_block() if direct and _set_direct(self.fd, True) else None
        self.error: OSError | None = None  # torch reports a failed write as its own RuntimeError

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        # torch owns ``data`` only during this call: it is hashed and copied before returning
        hashing = self.hasher.submit(self.sha.update, view) if len(view) >= _LARGE else None
        try:
            if hashing is None:
                self.sha.update(view)
            self._put(view)
        except OSError as e:
            self.error = e
            raise
        finally:
            if hashing is not None:
                hashing.result()
        self.size += len(view)
        return len(view)

    def flush(self) -> None:
        if self.block is None:
            self.f.flush()

    def _put(self, view: memoryview) -> None:
        while len(view):
            if self.block is None:  # no O_DIRECT (or no longer)
                self.f.write(view)
                return
            n = min(len(view), _BLOCK - self.fill)
            self.block[self.fill:self.fill + n] = view[:n]
            self.fill, view = self.fill + n, view[n:]
            if self.fill == _BLOCK:
                self._write_block(_BLOCK)

    def _write_block(self, length: int) -> None:
        """Write the block's first ``length`` bytes (a multiple of the alignment; past ``fill`` is padding)."""
        assert self.block is not None
        out, done = memoryview(self.block)[:length], 0
        while done < length:
            try:
                done += os.write(self.fd, out[done:])
            except OSError as e:
                if e.errno != errno.EINVAL or not _set_direct(self.fd, False):
                    raise
                # the device wants another alignment: the rest goes through the page cache
                self.f.write(out[done:max(done, self.fill)])
                self._release()
                return
        self.fill = 0

    def finish(self) -> None:
        """Write what the block still holds (padded to the alignment, then cut back to the file's size)."""
        if self.block is not None and self.fill:
            padded = -(-self.fill // _ALIGN) * _ALIGN
            self.block[self.fill:padded] = bytes(padded - self.fill)
            self._write_block(padded)
        if self.block is not None:
            _set_direct(self.fd, False)
            self._release()
        self.f.flush()
        if os.fstat(self.fd).st_size != self.size:  # the padding of the last block
            os.ftruncate(self.fd, self.size)

    def _release(self) -> None:
        if self.block is not None:
            _blocks.append(self.block)
            self.block = None


def _tensor_bytes(obj: Any) -> int:
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.nbytes
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def _take_block() -> mmap.mmap:
    return _blocks.pop() if _blocks else mmap.mmap(-1, _BLOCK)


def _set_direct(fd: int, on: bool) -> bool:
    """Turn ``O_DIRECT`` on or off for ``fd``; False where the platform or file system has none."""
    direct = getattr(os, "O_DIRECT", 0)
    if not direct:
        return False
    try:
        import fcntl

        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, (flags | direct) if on else (flags & ~direct))
    except OSError:
        return False
    return True


@contextlib.contextmanager
def _without_crc32():
    """torch's per-record CRC-32 off for one save (process-wide setting; lrctl saves on one thread)."""
    import torch.serialization as ts

    get, set_ = getattr(ts, "get_crc32_options", None), getattr(ts, "set_crc32_options", None)
    if get is None or set_ is None:  # an older torch: it computes the CRC, that is all
        yield
        return
    was = get()
    set_(False)
    try:
        yield
    finally:
        set_(was)


def write_checkpoint(path: Path, state: dict[str, Any]) -> tuple[Path, str]:
    """Serialize ``state`` into a temp file beside ``path`` and fsync it; returns (temp path, sha256).

    The caller renames the temp file over ``path`` once its checksum is recorded. On any failure (disk
    full, a simulated kill) the temp file is removed and the error raised, as in
    :func:`lrctl.durable.write_synced`, which it writes through (with its fault points).
    """
    import torch

    hashed: list[_HashingFile] = []

    def serialize(f: BinaryIO) -> None:
        with ThreadPoolExecutor(1, thread_name_prefix="lrctl-hash") as hasher:
            # a state smaller than one block goes through the page cache (+0.3 ms direct, for a few KB)
            out = _HashingFile(f, hasher, direct=_tensor_bytes(state) >= _BLOCK)
            hashed.append(out)
            try:
                with _without_crc32():
                    torch.save(state, out)
                out.finish()
            except RuntimeError:
                if out.error is not None:  # disk full, I/O error: said as what it is
                    raise out.error from None
                raise
            finally:
                out._release()

    tmp = write_synced(path, serialize)
    return tmp, hashed[0].sha.hexdigest()
