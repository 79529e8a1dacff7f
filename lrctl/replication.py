"""What a run does on every rank: one process (:class:`Solo`, every operation a no-op) or torchrun's
data-parallel ranks (:class:`Replicated`), behind the same small interface.

The session calls these at the few points where ranks must act together: building the model,
sharing rank 0's state, telling the other ranks what command comes next, agreeing to stop after an
epoch, exchanging lr changes at a batch boundary, and checking the replicas after a chunk. Every
name of a rank operation is here; :mod:`lrctl.distributed` owns the process group underneath, and
:func:`lrctl.distributed.follow` is the other ranks' command loop.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from lrctl.runstore import RunError

if TYPE_CHECKING:
    from lrctl.config import RunConfig
    from lrctl.distributed import Group
    from lrctl.engine import Trainer
    from lrctl.live import LiveControl
    from lrctl.runstore import RunStore


class Solo:
    """One process: it writes every file, and nobody else needs telling."""

    group: Group | None = None
    writes = True
    shared = False  # the batch boundary has nothing to exchange

    @property
    def job(self) -> dict[str, str]:
        """What a journaled command records about the job (nothing: no torchrun job)."""
        return {}

    def build(self, trainer: Trainer | None, cfg: RunConfig, given_config: dict[str, Any] | None) -> Trainer:
        from lrctl.engine import Trainer

        return trainer or Trainer(cfg)

    def synced(self, load: Callable[[], Any]) -> Any:
        return load()

    def tell(self, command: dict[str, Any]) -> None:
        pass

    def any_stop(self, wanted: bool, trainer: Trainer) -> bool:
        return wanted

    def after_chunk(self, store: RunStore, trainer: Trainer) -> None:
        pass

    def batch_boundary(self, done: int, live: LiveControl, abandon: bool) -> None:
        raise AssertionError("a single process has no batch exchange")


class Replicated(Solo):
    """torchrun's ranks: rank 0 writes files and decides; the others do what it says, at the same batch."""

    shared = True

    def __init__(self, group: Group) -> None:
        self.group = group
        self.writes = group.is_main

    @property
    def job(self) -> dict[str, str]:
        return {"job": self.group.job}

    def build(self, trainer: Trainer | None, cfg: RunConfig, given_config: dict[str, Any] | None) -> Trainer:
        """Build this rank's model and data, check every rank has the same, then wrap in DDP."""
        from lrctl.engine import Trainer

        facts: dict[str, Any]
        try:
            trainer = trainer or Trainer(cfg)
            facts = {**trainer.fingerprint(), "config": json.dumps(given_config, sort_keys=True)}
        except Exception as e:  # this rank's own problem: say it on every rank instead of hanging them
            trainer, facts = None, {"error": f"{type(e).__name__}: {e}"}
        self.group.agree(facts)
        trainer.attach(self.group)
        return trainer

    def synced(self, load: Callable[[], Any]) -> Any:
        """``load()`` on rank 0, its result on every rank (rank 0's failure is every rank's)."""
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

    def tell(self, command: dict[str, Any]) -> None:
        """Rank 0: have the other ranks do the same (they wait in :func:`lrctl.distributed.follow`)."""
        if self.writes:
            self.group.send(command)

    def any_stop(self, wanted: bool, trainer: Trainer) -> bool:
        return self.group.any(wanted, trainer.device)

    def after_chunk(self, store: RunStore, trainer: Trainer) -> None:
        """Every rank's weights must equal rank 0's (journaled, so a test can see it)."""
        from lrctl.distributed import DistError, weights_digest

        digests = [d["weights"] for d in self.group.gather({"weights": weights_digest(trainer.model)})]
        store.journal("replicas", step=trainer.global_step, weights=digests)
        if len(set(digests)) > 1:
            raise DistError(f"after epoch {trainer.global_step} the ranks' weights differ ({digests}); "
                            "training stopped rather than go on with replicas that drifted apart", shared=True)

    def batch_boundary(self, done: int, live: LiveControl, abandon: bool) -> None:
        """Rank 0 applies what arrived and sends the lr changes it made, so every rank applies them at
        this same batch; a Ctrl-C that abandons the epoch is agreed on here too."""
        live.apply_arrivals(done)
        message = None
        if self.writes and live.outbox:
            message = json.dumps(live.outbox).encode()
            live.outbox = []
        size, abandon = self.group.batch_exchange(len(message) if message else 0, abandon)
        if size:
            records = json.loads(self.group.batch_message(message).decode())
            if not self.writes:
                for record in records:
                    live.apply(record, done, replaying=True)
        if abandon:
            raise KeyboardInterrupt


def for_group(group: Group | None) -> Solo:
    return Solo() if group is None else Replicated(group)
