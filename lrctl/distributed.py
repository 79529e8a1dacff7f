"""Data-parallel training under ``torchrun``: the process group, rank 0's commands to the other ranks,
and the checks that make ranks fail together with a clear message instead of hanging.

::

    $ torchrun --standalone --nproc-per-node=2 -m lrctl --run big   # or: lrctl --nproc 2 --run big

Rank 0 owns the terminal and the run directory: it prompts, validates, journals, writes TensorBoard
and checkpoints. Every other rank builds the same model and data, receives rank 0's commands as
JSON bytes in a tensor (never a pickled object) and trains its share of every batch with
``DistributedDataParallel``. Whenever rank 0 loads a state (open, rollback, undo) it sends the
checkpoint bytes, which the others load with ``weights_only=True`` exactly as from the file, so a
run needs no shared filesystem and its checkpoint does not depend on the number of processes.

Two process groups: the default one (gloo on CPU, nccl on GPU) carries the training and has a short
timeout (``--dist-timeout``), so ranks that disagree fail with an error; a gloo group for commands
waits as long as a person takes to answer rank 0's prompt.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import sys
from collections.abc import Iterator
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from lrctl.runstore import Pending, RunError, check_run_name

if TYPE_CHECKING:
    import torch

DEFAULT_TIMEOUT = 300.0
# A command is whatever a person answers at rank 0's prompt: the other ranks wait for it without a limit
# that matters (a week), while training collectives keep the short timeout.
COMMAND_WAIT = timedelta(days=7)
LAUNCHER = ("-m", "torch.distributed.run")


class DistError(RunError):
    """The ranks cannot go on together (a rank missing, different data, a failed collective).

    ``shared``: every rank found the same problem, so only rank 0 reports it."""

    def __init__(self, message: str, shared: bool = False) -> None:
        super().__init__(message)
        self.shared = shared


def world_size_from_env() -> int:
    """How many processes torchrun started (1 outside torchrun)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


class Group:
    """This process's place in a torchrun job and the collectives lrctl needs.

    Use :meth:`join` (``None`` outside torchrun or with one process).
    """

    def __init__(self, rank: int, world_size: int, local_rank: int, timeout: float, backend: str) -> None:
        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank
        self.timeout, self.backend = timeout, backend
        self._commands: Any = None  # the gloo group for commands (set by join)

    @classmethod
    def join(cls, timeout: float = DEFAULT_TIMEOUT) -> Group | None:
        """Join the job torchrun started (env:// rendezvous); ``None`` when there is nothing to join.

        The run's device is not known yet (rank 0 sends the config later), so on a machine with CUDA
        the default group routes CPU tensors through gloo and CUDA tensors through nccl."""
        world = world_size_from_env()
        if world <= 1:
            return None
        import torch
        import torch.distributed as dist

        rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(local_rank)  # "cuda" then means this rank's own device
        group = cls(rank, world, local_rank, timeout, "cpu:gloo,cuda:nccl" if cuda else "gloo")
        try:
            dist.init_process_group(group.backend, store=_store(rank, world, timeout), rank=rank, world_size=world,
                                    timeout=timedelta(seconds=timeout))
            group._commands = dist.new_group(backend="gloo", timeout=COMMAND_WAIT)
        except Exception as e:  # torch raises several kinds (DistStoreError, RuntimeError, ValueError)
            raise DistError(f"rank {rank} of {world}: the processes did not all join within {timeout:g} s "
                            f"({_first_line(e)}). Is a rank missing? Start every rank with the same torchrun "
                            "command (or lrctl --nproc N)") from None
        return group

    # -- facts -------------------------------------------------------------------------------------
    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def restart_count(self) -> int:
        """How many times torchrun restarted this job's workers (``--max-restarts``)."""
        return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)

    @property
    def job(self) -> str:
        """Names this torchrun job across its restarts: its run id and the agent's pid."""
        return f"{os.environ.get('TORCHELASTIC_RUN_ID', 'none')}/{os.getppid()}"

    def describe(self) -> str:
        return f"data-parallel: {self.world_size} processes ({self.backend}), rank 0 prompts"

    # -- collectives -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        try:
            yield
        except DistError:
            raise
        except Exception as e:
            raise DistError(f"rank {self.rank}: {what} failed ({_first_line(e)}): another rank stopped, "
                            f"disagrees, or did not answer within {self.timeout:g} s") from None

    def _broadcast_bytes(self, data: bytes | None) -> bytes:
        """Rank 0's ``data`` on every rank (length first, then the bytes), over the command group."""
        import torch
        import torch.distributed as dist

        with self._guard("receiving rank 0's command"):
            size = torch.tensor([len(data) if data is not None else 0], dtype=torch.int64)
            dist.broadcast(size, src=0, group=self._commands)
            if self.is_main and data:
                payload = torch.frombuffer(bytearray(data), dtype=torch.uint8)
            else:
                payload = torch.empty(int(size), dtype=torch.uint8)
            if int(size):
                dist.broadcast(payload, src=0, group=self._commands)
        return payload.numpy().tobytes()

    def send(self, command: dict[str, Any]) -> None:
        """Rank 0: one command (plain JSON) to every other rank."""
        self._broadcast_bytes(json.dumps(command).encode())

    def receive(self) -> dict[str, Any]:
        """Other ranks: the next command from rank 0."""
        return json.loads(self._broadcast_bytes(None).decode())

    def share_state(self, state: dict[str, Any] | None) -> dict[str, Any]:
        """Rank 0's state (tensors and plain containers) on every rank, loaded with ``weights_only=True``."""
        import torch

        data = None
        if self.is_main:
            buffer = io.BytesIO()
            torch.save(state, buffer)
            data = buffer.getvalue()
        data = self._broadcast_bytes(data)
        if self.is_main:
            return state  # type: ignore[return-value]
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)

    def gather(self, value: dict[str, Any]) -> list[dict[str, Any]]:
        """Every rank's ``value`` (plain JSON), in rank order, on every rank."""
        import torch
        import torch.distributed as dist

        data = json.dumps(value, sort_keys=True).encode()
        with self._guard("comparing the ranks"):
            sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(self.world_size)]
            dist.all_gather(sizes, torch.tensor([len(data)], dtype=torch.int64), group=self._commands)
            longest = max(int(s) for s in sizes)
            padded = torch.zeros(longest, dtype=torch.uint8)
            padded[:len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
            parts = [torch.empty(longest, dtype=torch.uint8) for _ in range(self.world_size)]
            dist.all_gather(parts, padded, group=self._commands)
        return [json.loads(p[:int(s)].numpy().tobytes().decode()) for p, s in zip(parts, sizes, strict=True)]

    def any(self, flag: bool, device: torch.device | None = None) -> bool:
        """True on every rank when ``flag`` is true on any (the default group: bounded by the timeout)."""
        import torch
        import torch.distributed as dist

        with self._guard("agreeing to stop"):
            value = torch.tensor([int(flag)], dtype=torch.int64, device=device)
            dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def batch_exchange(self, outbox: int, abandon: bool) -> tuple[int, bool]:
        """At a batch boundary: the size of rank 0's message (0: none) and whether any rank abandons.

        On the command group: rank 0 may be paused here for as long as a person likes."""
        import torch
        import torch.distributed as dist

        with self._guard("the batch-boundary exchange"):
            value = torch.tensor([outbox if self.is_main else 0, int(abandon)], dtype=torch.int64)
            dist.all_reduce(value, op=dist.ReduceOp.MAX, group=self._commands)
        size, flag = value.tolist()
        return size, bool(flag)

    def batch_message(self, message: bytes | None) -> bytes:
        return self._broadcast_bytes(message)

    def sum(self, tensor: torch.Tensor) -> None:
        """In place: the sum over ranks (metrics; the default group)."""
        import torch.distributed as dist

        with self._guard("summing the metrics"):
            dist.all_reduce(tensor)

    def broadcast_buffers(self, module: Any) -> None:
        """Rank 0's buffers (batch-norm running statistics) everywhere: every rank evaluates one model."""
        import torch.distributed as dist

        with self._guard("sharing the batch-norm statistics"):
            for buffer in module.buffers():
                dist.broadcast(buffer, src=0)

    def agree(self, facts: dict[str, Any]) -> None:
        """Raise :class:`DistError` on every rank unless every rank's ``facts`` equal rank 0's."""
        everyone = self.gather(facts)
        problems = []
        for rank, theirs in enumerate(everyone[1:], start=1):
            if "error" in theirs:
                problems.append(f"rank {rank} could not build the model and data: {theirs['error']}")
                continue
            for key in sorted(set(everyone[0]) | set(theirs)):
                if key == "error":
                    continue
                if everyone[0].get(key) != theirs.get(key):
                    problems.append(f"{key}: rank 0 has {_short(everyone[0].get(key))}, "
                                    f"rank {rank} has {_short(theirs.get(key))}")
        if "error" in everyone[0]:
            problems.insert(0, f"rank 0 could not build the model and data: {everyone[0]['error']}")
        if problems:
            raise DistError("the ranks disagree, so none of them trains:\n  " + "\n  ".join(problems), shared=True)

    def close(self, together: bool = True) -> None:
        """Leave the job. ``together``: every rank is closing normally, so they first wait for each other
        (a rank tearing down its groups while a peer still talks to it can abort in gloo's C++)."""
        import torch.distributed as dist

        with contextlib.suppress(Exception):
            if together:
                dist.barrier()
            dist.destroy_process_group()


def _store(rank: int, world: int, timeout: float) -> Any:
    """The rendezvous store, with keys of their own for each torchrun restart.

    torchrun shares its agent's store with the workers and keeps it across restarts; a restarted
    rank would read the dead ranks' addresses (connection refused; pytorch/pytorch#135712), so the
    keys of each attempt get their own prefix."""
    import torch.distributed as dist

    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    try:
        host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    except (KeyError, ValueError):
        raise DistError("WORLD_SIZE is set but MASTER_ADDR/MASTER_PORT are not: start lrctl with torchrun") from None
    store = dist.TCPStore(host, port, world_size=world, is_master=not agent_store and rank == 0,
                          timeout=timedelta(seconds=timeout))
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"lrctl/attempt-{attempt}/", store)


def weights_digest(module: Any) -> str:
    """sha256 of every tensor of ``module``'s state_dict: equal on every rank, or the ranks drifted apart."""
    return state_digest(module.state_dict())


def state_digest(state: dict[str, Any]) -> str:
    """sha256 over a state_dict's names and tensor bytes, in order."""
    digest = hashlib.sha256()
    for name, tensor in state.items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class ReplicaStore:
    """What a rank other than 0 holds instead of the run's files: pending work in memory, nothing written."""

    def __init__(self, name: str) -> None:
        self.name = check_run_name(name)
        self.dir = None
        self._pending: Pending | None = None

    def journal(self, event: str, durable: bool = False, **fields: Any) -> None:
        pass

    def read_pending(self) -> Pending | None:
        return self._pending

    def write_pending(self, pending: Pending | None) -> None:
        self._pending = pending if pending is not None and pending.chunks else None

    def summary(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        pass


def follow(session: Any) -> int:
    """Ranks other than 0: do what rank 0 says until it says quit. Returns rank 0's exit code.

    ``session``: this rank's :class:`lrctl.session.RunSession` (the session imports this module, not
    the other way round)."""
    group = session.group
    assert group is not None
    while True:
        command = group.receive()
        kind = command.get("op")
        if kind == "quit":
            return int(command.get("code", 0))
        try:
            if kind == "finish":
                raw = command["pending"]
                session.work.replace(Pending(raw["chunks"], raw["source"]) if raw else None)
                session.finish_pending(command.get("stop_at"))
            elif kind == "undo":
                session.undo()
            else:
                raise DistError(f"rank {group.rank}: unknown command {kind!r} from rank 0 (different lrctl versions?)")
        except DistError:
            raise
        except RunError:
            continue  # rank 0 hit the same error and reports it at its prompt


def launch(nproc: int, argv: list[str], max_restarts: int = 0) -> int:
    """``lrctl --nproc N ...``: run ``torchrun --standalone --nproc-per-node=N -m lrctl ...`` on this node.

    The terminal's Ctrl-C reaches torchrun, which passes it to every worker; this process only waits."""
    import signal
    import subprocess

    command = [sys.executable, *LAUNCHER, "--standalone", f"--nproc-per-node={nproc}",
               f"--max-restarts={max_restarts}", "-m", "lrctl", "--", *argv]
    # torchrun warns when it has to pick OMP_NUM_THREADS itself; lrctl picks threads per rank anyway.
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    process = subprocess.Popen(command, env=env)
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        code = process.wait()
    finally:
        signal.signal(signal.SIGINT, old)
    return 130 if code < 0 else code


def _first_line(error: BaseException) -> str:
    """What went wrong in one short line: gloo's source location and advice are left out.

    >>> _first_line(RuntimeError("[/x/gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:5851: "
    ...                          "Connection reset by peer. This is typically caused by a remote worker hanging"))
    'Read error [127.0.0.1]:5851: Connection reset by peer'
    """
    text = str(error).strip().splitlines()
    if not text:
        return type(error).__name__
    line = re.sub(r"^\[[^\]]*\.(?:cc|cpp|h):\d+\]\s*", "", text[0])  # gloo's "[.../pair.cc:537] "
    line = line.split(". This is typically caused by", 1)[0]
    return line[:300]


# What torch says when a collective's peer is gone: gloo's transport, NCCL, the TCP store.
_PEER_LOST = ("gloo", "nccl", "connection reset by peer", "connection closed by peer", "broken pipe",
              "socket timeout", "timed out")


def peer_lost_message(error: BaseException, run_name: str) -> str | None:
    """One line for an error raised because another rank died (torch raises a plain RuntimeError from
    inside DDP's backward), or None if ``error`` is something else and should be raised as it is."""
    if isinstance(error, RunError):
        return None  # lrctl's own errors (DistError included) already say what happened in one line
    try:
        import torch.distributed as dist

        dist_error = isinstance(error, dist.DistError)
    except (ImportError, AttributeError):
        dist_error = False
    if not (dist_error or (isinstance(error, RuntimeError) and any(w in str(error).lower() for w in _PEER_LOST))):
        return None
    return (f"another process of the job stopped or stopped answering during training ({_first_line(error)}); "
            f"the run keeps its last checkpoint: torchrun restarts the job (--max-restarts) or "
            f"lrctl resume {run_name} finishes it")


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
    return text if len(text) <= 120 else text[:117] + "..."
