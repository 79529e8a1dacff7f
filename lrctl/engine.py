"""The training engine: one persistent model and optimizer, trained chunk by chunk with ``fit_rec``.

The engine never prompts or prints. It reports through callbacks (``on_epoch_start``, before an
epoch touches the model or random streams; ``on_epoch_end``, ``on_batch_end``) and asks ``should_stop``
at every epoch end. The batch loop slices in-memory tensors and never forces a device-to-host sync:
metrics are computed on the device after the epoch and read once, with one ``tolist()``.

>>> from lrctl.config import RunConfig; from lrctl.schedules import parse
>>> trainer = Trainer(RunConfig())
>>> trainer.start_schedule(parse("0.03"), epochs=2)
>>> [r.step for r in trainer.fit_rec(2)]
[0, 1]
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lrctl import data as data_mod
from lrctl.config import RunConfig
from lrctl.devices import resolve_device
from lrctl.loaders import Loaders
from lrctl.lr_runner import ScheduleRunner
from lrctl.models import build_model
from lrctl.schedules import ScheduleSpec

# Below this many parameters one thread beats several: the per-op threading overhead dominates.
SMALL_MODEL_PARAMS = 200_000
EVAL_CONCAT_BYTES = 64 * 2**20


@dataclass(frozen=True)
class EpochRecord:
    """What one epoch produced. ``step`` is the global epoch index (the TensorBoard step)."""

    step: int
    lr: float
    train: float
    test: float
    seconds: float = 0.0
    batch_lrs: tuple[float, ...] | None = None

    def history_entry(self) -> dict[str, float | int]:
        """The deterministic part, as saved in checkpoints (no wall-clock time)."""
        return {"step": self.step, "lr": self.lr, "train": self.train, "test": self.test}


class Diverged(RuntimeError):
    """The training loss became NaN or inf during ``record``'s epoch."""

    def __init__(self, record: EpochRecord, loss: float) -> None:
        super().__init__(f"loss became {loss} in epoch {record.step} at lr {record.lr:g}")
        self.record, self.loss = record, loss


def _accuracy(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if pred.shape[-1] == 1:  # one logit: binary classification (bce)
        return ((pred > 0).float() == y).float().mean()
    return (pred.argmax(dim=1) == y).float().mean()


def _loss_fn(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    return {"mse": nn.functional.mse_loss, "cross-entropy": nn.functional.cross_entropy,
            "bce": nn.functional.binary_cross_entropy_with_logits,
            "l1": nn.functional.l1_loss, "huber": nn.functional.huber_loss}[name]


def _metric_fn(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    return {"mse": nn.functional.mse_loss, "mae": nn.functional.l1_loss, "accuracy": _accuracy}[name]


def build_optimizer(cfg: RunConfig, params: Any, lr: float = 0.01) -> torch.optim.Optimizer:
    t = cfg.train
    # foreach (one op over all parameters) on the CPU too, where torch defaults to a Python loop over them:
    # Adam on the digits CNN (10 tensors) steps in 1.05 instead of 1.4 ms. (torch picks it on CUDA anyway.)
    foreach = True
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=t.momentum, nesterov=t.nesterov, weight_decay=t.weight_decay,
                               foreach=foreach)
    if t.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, momentum=t.momentum, weight_decay=t.weight_decay, foreach=foreach)
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[t.optimizer]
    return cls(params, lr=lr, weight_decay=t.weight_decay, foreach=foreach)


class Trainer:
    """Persistent model + optimizer + schedule over one config's data.

    Size: ~360 lines (over ~300): the batch loop, evaluation and state are one hot path tuned together
    over the same fields; loaders, schedules, models and the epoch snapshot are modules of their own.

    Args:
        cfg: the run's config (data, model, optimizer, batching, device, threads).
        device: overrides ``cfg.train.device``.
        model: a model object to train instead of building the configured one (``lrctl.Run``).
        split: data to train on instead of building the configured data (``lrctl.Run``).
    """

    def __init__(self, cfg: RunConfig, device: str | None = None, *, model: nn.Module | None = None,
                 split: data_mod.Split | None = None) -> None:
        self.cfg = cfg
        self.device = resolve_device(device or cfg.train.device)  # lrctl.devices
        split = split if split is not None else data_mod.build_split(cfg)
        if model is None:
            model = build_model(cfg, split.in_features, split.out_features(cfg))
        self.model = model.to(self.device)
        # Made here, right after the model: the lesson's loop starts drawing batch orders from this RNG state.
        self.orders = data_mod.EpochOrders(cfg.train.order, split.n_train, cfg.train.shuffle_seed)
        self._order: tuple[int, torch.Tensor] | None = None  # (global step, that epoch's order)
        self._order_state_before: torch.Tensor | None = None  # the order stream before that epoch's draw
        self.split = split.to(self.device)
        self.n_params = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        self.threads = cfg.train.threads or (1 if self.n_params < SMALL_MODEL_PARAMS else torch.get_num_threads())
        torch.set_num_threads(self.threads)
        self.optimizer = build_optimizer(cfg, self.model.parameters())
        self._params = [p for group in self.optimizer.param_groups for p in group["params"]]
        d = self.optimizer.defaults
        # Plain SGD (the lesson's) is one fused update, p -= lr * g, for all parameters at once:
        # bit-identical to SGD.step() and ~15% faster per epoch here, because step()'s per-call
        # wrapper (hooks, profiler context, grad-mode switch) costs more than the arithmetic.
        self._plain_sgd = (isinstance(self.optimizer, torch.optim.SGD) and len(self.optimizer.param_groups) == 1
                           and d["momentum"] == 0 and d["weight_decay"] == 0 and not d["nesterov"]
                           and not d.get("maximize", False))
        self.loss_fn = _loss_fn(cfg.loss)
        self.metric_fn = _metric_fn(cfg.metric)
        self.metric_mode = "max" if cfg.metric == "accuracy" else "min"
        self.batch_size = cfg.train.batch_size
        self.batches_per_epoch = data_mod.batches_per_epoch(self.split.n_train, self.batch_size)
        # Eval mode is per-row, so train and test go through one forward pass (half the op dispatches,
        # which dominate for small models) unless the copy would be large.
        s = self.split
        small = s.in_memory and (s.x_train.numel() + s.x_test.numel()) * s.x_train.element_size() <= EVAL_CONCAT_BYTES
        self._x_eval = torch.cat([s.x_train, s.x_test]) if small else None
        t = cfg.train
        self._loaders = None if s.in_memory else Loaders(s, self.batch_size, self.device, t.workers,
                                                         t.eval_batch_size, t.pin_memory)
        self.data_loading = self._loaders.describe() if self._loaders is not None else ""  # what was chosen
        self._loss_is_metric = cfg.loss == cfg.metric
        # Data-parallel (see attach): the module the batches go through, and this rank's share.
        self.group: Any = None
        self.forward_model: nn.Module = self.model
        self._shard: data_mod.Shard | None = None
        self._positions: torch.Tensor | None = None
        self._has_buffers = any(True for _ in self.model.buffers())
        self.torn = False  # True while an epoch is half done: such weights are never saved...
        # ...except at a batch boundary (mid-epoch checkpoints): batches done in the current epoch, the
        # lr it started at and the lrs of its batches so far, so a resumed epoch records the same scalars.
        self.batch_in_epoch = 0
        self._epoch_start_lr = 0.0
        self._epoch_lrs: list[float] = []
        self._epoch_per_batch = False
        self.global_step = 0
        self.runner: ScheduleRunner | None = None
        self.history: list[dict[str, float | int]] = []

    def attach(self, group: Any) -> None:
        """Train data-parallel in ``group`` (a :class:`lrctl.distributed.Group`): DDP over the model,
        this rank's part of every batch, metrics summed over the ranks' parts of the sets."""
        import inspect

        from torch.nn.parallel import DistributedDataParallel

        self.group = group
        device_ids = [torch.cuda.current_device()] if self.device.type == "cuda" else None
        # Buffers (batch-norm statistics) are shared from rank 0 once per epoch, not at every forward.
        newer = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters  # torch >= 2.13
        no_sync = {"forward_sync_buffers" if newer else "broadcast_buffers": False}
        self.forward_model = DistributedDataParallel(self.model, device_ids=device_ids, **no_sync)
        self._shard = data_mod.shard(self.split.n_train, self.batch_size, group.rank, group.world_size)
        s = self.split
        if s.in_memory:
            self._positions = torch.tensor(self._shard.positions, device=self.device)
            (a, z), (c, d) = self._eval_rows = (data_mod.shard_range(len(s.x_train), group.rank, group.world_size),
                                                data_mod.shard_range(len(s.x_test), group.rank, group.world_size))
            self._x_eval = torch.cat([s.x_train[a:z], s.x_test[c:d]])  # this rank's rows, one forward pass
        else:
            self._loaders.shard(self._shard, group.rank, group.world_size)

    def fingerprint(self) -> dict[str, Any]:
        """What every rank must have the same of: data shapes and content, model shape, batching."""
        s = self.split
        facts: dict[str, Any] = {
            "train rows": s.n_train, "test rows": len(s.x_test) if s.in_memory else len(s.test_set),
            "features in/out": [s.in_features, s.out_features(self.cfg)],
            "model parameters": [list(p.shape) for p in self.model.parameters()],
            "batches per epoch": self.batches_per_epoch}
        if s.in_memory:  # a checksum of the data (rounded: summation order may differ between machines)
            tensors = (s.x_train, s.y_train, s.x_test, s.y_test)
            facts["data checksum"] = [f"{float(t.double().sum()):.6g}" for t in tensors]
        return facts

    # -- schedules ---------------------------------------------------------------------------
    def start_schedule(self, spec: ScheduleSpec, epochs: int) -> None:
        """Begin ``spec`` with its clock at 0 now (``keep`` leaves the current schedule running)."""
        if spec.name == "keep":
            if self.runner is None:  # nothing to continue: hold the current lr
                self.runner = None
            return
        self.runner = ScheduleRunner(spec, self.optimizer, self.global_step, epochs, self.batches_per_epoch,
                                     self.metric_mode)

    def change_lr(self, spec: ScheduleSpec, mode: str, remaining_epochs: int) -> str:
        """A live change, effective from the next batch: the batch loop reads ``self.runner`` every batch.

        ``mode``: 'set' (a constant, or a schedule starting now over the chunk's remaining epochs),
        'scale' (the running schedule multiplied so that its lr is the value now) or 'restart' (the
        running schedule begun again now with that base). Returns the mode in effect ('schedule' for a
        schedule expression; 'set' when there was nothing to scale or restart)."""
        from lrctl.schedules import check_change, with_base

        check_change(spec)
        if mode not in ("set", "scale", "restart", "schedule"):  # 'schedule': as recorded, replayed
            raise ValueError(f"unknown lr mode {mode!r}: use set, scale or restart")
        runner = self.runner
        args = (self.optimizer, self.global_step, remaining_epochs, self.batches_per_epoch, self.metric_mode)
        if spec.name != "const":
            self.runner = ScheduleRunner(spec, *args)  # a new schedule starts now, over the rest of the chunk
            return "schedule"
        if mode == "scale" and runner is not None:
            runner.apply_scale(spec.args[0] / runner.lr)
            return "scale"
        if mode == "restart" and runner is not None:
            self.runner = ScheduleRunner(with_base(runner.spec, spec.args[0]), *args)
            return "restart"
        self.runner = ScheduleRunner(spec, *args)
        return "set"

    def weights_finite(self) -> bool:
        """Whether every parameter is finite (one host sync: for mid-epoch checkpoints only)."""
        with torch.no_grad():
            return bool(torch.stack([p.isfinite().all() for p in self.model.parameters()]).all())

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    # -- training ----------------------------------------------------------------------------
    def batches(self, epoch: int):
        """Global epoch ``epoch``'s (x, y) training batches in its order, without training or moving the
        step (the lr finder sweeps over these)."""
        return self._batches(epoch)

    def _batches(self, epoch: int | None = None):
        """This epoch's (x, y) batches: slices of one gathered copy, or a DataLoader over a Dataset."""
        if epoch is None or epoch == self.global_step:
            order = self._epoch_order()
        else:  # another epoch's (the lr finder's sweep): lesson order draws the stream's next one
            order = self.orders.draw(epoch, self.device if self._loaders is None else "cpu")
        if self._loaders is not None:
            return self._loaders.train(order)
        if self._positions is not None:  # data-parallel: this rank's rows of every batch
            rows = order[self._positions]
            xs, ys = self.split.x_train[rows], self.split.y_train[rows]
            return ((xs[a:z], ys[a:z]) for a, z in self._shard.bounds)
        xs, ys = self.split.x_train[order], self.split.y_train[order]  # one gather, then contiguous slices
        bs = self.batch_size
        return ((xs[b * bs:(b + 1) * bs], ys[b * bs:(b + 1) * bs]) for b in range(self.batches_per_epoch))

    def _epoch_order(self) -> torch.Tensor:
        """This epoch's row order, drawn once per epoch (the lesson's order is a stream: drawing advances it)."""
        if self._order is None or self._order[0] != self.global_step:
            self._order_state_before = self.orders.state()
            order = self.orders.draw(self.global_step, self.device if self._loaders is None else "cpu")
            self._order = (self.global_step, order)
        return self._order[1]

    def step_on(self, x: torch.Tensor, y: torch.Tensor, lr: float) -> torch.Tensor:
        """One optimizer step on batch (x, y) at ``lr``, outside any epoch and taken as the batch loop takes
        it (the lr finder's sweep and trials); returns the batch's loss tensor (no host sync)."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss = self.loss_fn(self.model(x), y)
        for p in self._params:
            p.grad = None
        loss.backward()
        self._update(lr)
        return loss

    def _update(self, lr: float) -> None:
        """Apply the gradients: plain SGD as one fused update (bit-identical to SGD.step(), cheaper)."""
        params = self._params
        if self._plain_sgd:
            grads = [p.grad for p in params]
            if all(g is not None for g in grads):
                with torch.no_grad():
                    torch._foreach_add_(params, grads, alpha=-lr)
                return  # a parameter without a gradient this batch: SGD.step() below skips it properly
        self.optimizer.step()

    def _run_batches(self, on_batch_end: Callable[[int, int], None] | None) -> list[float] | None:
        """One epoch of optimizer steps. No host syncs in here (tests enforce it).

        The schedule is read from ``self.runner`` at every batch, not captured at the epoch's start:
        a live change (:meth:`set_runner`) made at a batch boundary governs every later batch."""
        model, optimizer, loss_fn = self.forward_model, self.optimizer, self.loss_fn
        scales = self._shard.scales if self._shard is not None else None
        nb = self.batches_per_epoch
        # Each batch's lr is a Python float already (no sync); kept when a per-batch schedule ran this epoch.
        # A resumed mid-epoch checkpoint continues the epoch: its first batches are skipped (same order).
        skip = self.batch_in_epoch
        batch_lrs = self._epoch_lrs = self._epoch_lrs if skip else []
        per_batch = (self._epoch_per_batch if skip else False) or (self.runner is not None and self.runner.per_batch)
        params, group = self._params, optimizer.param_groups[0]
        if self._plain_sgd:
            optimizer._opt_called = True  # what step() would mark: torch's schedulers check it to warn about order
        model.train()
        batches = self._batches()
        if skip:
            batches = itertools.islice(batches, skip, None)
        for b, (x, y) in enumerate(batches, start=skip):
            batch_lrs.append(group["lr"])
            loss = loss_fn(model(x), y)
            if scales is not None and scales[b] != 1.0:
                loss = loss * scales[b]  # a rank's uneven part of the batch: DDP's mean = the whole batch's loss
            # zero_grad(set_to_none=True) without its per-call profiler context: same effect, cheaper.
            for p in params:
                p.grad = None
            loss.backward()
            self._update(group["lr"])
            runner = self.runner
            if runner is not None:
                per_batch = per_batch or runner.per_batch
                runner.after_batch()
            self.batch_in_epoch, self._epoch_per_batch = b + 1, per_batch
            if on_batch_end is not None:
                on_batch_end(b + 1, nb)
        self.batch_in_epoch = 0
        return batch_lrs if per_batch else None

    def evaluate(self) -> tuple[float, float, float]:
        """(train metric, test metric, train loss) on the whole sets, in eval mode, read with one sync."""
        s = self.split
        if self.group is not None:
            return self._evaluate_shared()
        self.model.eval()
        with torch.inference_mode():
            if self._loaders is not None:
                sums, counts = self._loaders.evaluate(self.model, self.metric_fn, self.loss_fn)
                values = (sums / torch.tensor(counts, device=sums.device)).tolist()
            elif self._x_eval is not None:
                pred_train, pred_test = self.model(self._x_eval).split([len(s.x_train), len(s.x_test)])
            else:
                pred_train, pred_test = self.model(s.x_train), self.model(s.x_test)
            if self._loaders is None:
                train, test = self.metric_fn(pred_train, s.y_train), self.metric_fn(pred_test, s.y_test)
                loss = train if self._loss_is_metric else self.loss_fn(pred_train, s.y_train)
                values = torch.stack([train, test, loss]).tolist()
        self.model.train()
        return values[0], values[1], values[2]

    def _evaluate_shared(self) -> tuple[float, float, float]:
        """Each rank evaluates its part of both sets; the sums over ranks give the whole-set numbers."""
        s = self.split
        self.model.eval()
        with torch.inference_mode():
            if self._loaders is not None:
                sums, _ = self._loaders.evaluate(self.model, self.metric_fn, self.loss_fn)
                totals = [len(s.train_set), len(s.test_set), len(s.train_set)]
            else:
                (a, z), (c, d) = self._eval_rows
                zero = torch.zeros((), device=self.device)
                pred_train, pred_test = self.model(self._x_eval).split([z - a, d - c])
                y_train, y_test = s.y_train[a:z], s.y_test[c:d]
                train = self.metric_fn(pred_train, y_train) * (z - a) if z > a else zero
                test = self.metric_fn(pred_test, y_test) * (d - c) if d > c else zero
                loss = self.loss_fn(pred_train, y_train) * (z - a) if z > a else zero
                sums = torch.stack([train, test, loss])
                totals = [len(s.x_train), len(s.x_test), len(s.x_train)]
            self.group.sum(sums)  # in here: an inference tensor can only be changed in inference mode
        values = (sums / torch.tensor(totals, device=sums.device, dtype=sums.dtype)).tolist()
        self.model.train()
        return values[0], values[1], values[2]

    def fit_rec(self, epochs: int, *, on_epoch_end: Callable[[EpochRecord], None] | None = None,
                on_batch_end: Callable[[int, int], None] | None = None,
                should_stop: Callable[[], bool] | None = None,
                on_epoch_start: Callable[[], None] | None = None) -> list[EpochRecord]:
        """Train ``epochs`` epochs, recording train/test metric after each.

        Stops early (after a completed epoch) when ``should_stop()`` is true. Raises
        :class:`Diverged` when the loss is no longer finite; that epoch is not recorded.
        """
        records = []
        torch.set_num_threads(self.threads)  # per OS thread (OpenMP): the CLI builds the trainer on a loader thread
        for _ in range(epochs):
            if on_epoch_start is not None:
                on_epoch_start()
            started = time.perf_counter()
            if not self.batch_in_epoch:
                self._epoch_start_lr = self.lr
            lr = self._epoch_start_lr
            self.torn = True
            self._epoch_order()  # drawn before the batch loop: the lesson's order reads its seed on the host
            batch_lrs = self._run_batches(on_batch_end)
            if self.group is not None and self._has_buffers:
                self.group.broadcast_buffers(self.model)
            train, test, loss = self.evaluate()
            record = EpochRecord(self.global_step, lr, train, test, time.perf_counter() - started,
                                 tuple(batch_lrs) if batch_lrs is not None else None)
            if not (math.isfinite(loss) and math.isfinite(train) and math.isfinite(test)):
                raise Diverged(record, loss)
            if self.runner is not None:
                self.runner.after_epoch(test)
            self.global_step += 1
            self.torn = False
            self.history.append(record.history_entry())
            records.append(record)
            if on_epoch_end is not None:
                on_epoch_end(record)
            if should_stop is not None and should_stop():
                break
        return records

    # -- state -------------------------------------------------------------------------------
    def state_dict(self, history: bool = True) -> dict[str, Any]:
        """Everything needed to continue bit-for-bit (plain tensors and containers only)."""
        rng: dict[str, Any] = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state_all()
        if self.orders.generator is not None:
            # Mid-epoch, the stream as it was before this epoch's draw: a resumed epoch draws the same order.
            drawn = self._order is not None and self._order[0] == self.global_step
            rng["order"] = self._order_state_before if self.batch_in_epoch and drawn else self.orders.state()
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "schedule": self.runner.state_dict() if self.runner is not None else None,
                 "global_step": self.global_step, "rng": rng, "history": list(self.history) if history else None,
                 "lr": self.lr,
                 "batches_per_epoch": self.batches_per_epoch}
        if self.batch_in_epoch:  # taken at a batch boundary inside an epoch (see :meth:`fit_rec`)
            state["mid_epoch"] = {"batch": self.batch_in_epoch, "start_lr": self._epoch_start_lr,
                                  "batch_lrs": list(self._epoch_lrs), "per_batch": self._epoch_per_batch}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        # Rebuilding the scheduler touches the optimizer's lr, so the optimizer's own state goes last.
        self.runner = (ScheduleRunner.from_state(state["schedule"], self.optimizer)
                       if state.get("schedule") else None)
        self.optimizer.load_state_dict(state["optimizer"])
        self.global_step = int(state["global_step"])
        self.torn = False
        mid = state.get("mid_epoch") or {}
        self.batch_in_epoch = int(mid.get("batch", 0))
        self._epoch_start_lr = float(mid.get("start_lr", 0.0))
        self._epoch_lrs = [float(v) for v in mid.get("batch_lrs", [])]
        self._epoch_per_batch = bool(mid.get("per_batch", False))
        self.history = list(state.get("history", []))
        torch.set_rng_state(state["rng"]["torch"])
        self.orders.load_state(state["rng"].get("order"))
        self._order = None
        if "cuda" in state["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
