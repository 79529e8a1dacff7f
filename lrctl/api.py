"""lrctl from Python and Jupyter: :class:`Run`, the terminal's run driven by method calls.

A usage sketch (``net`` and the tensors are yours)::

    import lrctl
    run = lrctl.Run("demo")                  # the lesson workload in ./runs/demo; resumed if it exists
    run.fit(30, 0.03)                        # one chunk; the lr may be any expression of the prompt
    run.fit(30, "exp 0.05 gamma=0.95")
    run.history[-1]                          # {'step': 59, 'lr': ..., 'train': ..., 'test': ...}
    run.close()                              # or: with lrctl.Run("demo") as run: ...

    run = lrctl.Run("mine", model=net, data=(x_train, y_train, x_test, y_test))   # your own objects

Underneath is the command line's :class:`~lrctl.session.RunSession`, so a Run has the same guarantees:
one global epoch across chunks and sessions, the run directory with its journal and lock, exact resume
(in a new kernel ``lrctl.Run("mine", model=net, data=...)`` continues bit for bit), NaN rollback and
TensorBoard. A model or data given as objects is frozen into the run's config as a fingerprint (class
and parameter shapes; data shapes and a checksum), so reopening the run with other ones is refused
with the same diff as a changed config. Given as factories (``"module:function"`` or an importable
function), they are recorded by name and the command line can resume the run too.

In Jupyter, :meth:`Run.prompt` asks its questions with ``input()``, a chunk shows a progress bar in
the notebook and its rows as text, :meth:`Run.plot` draws inline, and the kernel's interrupt button
acts like Ctrl-C at the terminal: the first stops after the epoch, the second abandons it.
"""

from __future__ import annotations

import atexit
import dataclasses
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lrctl import config as config_mod
from lrctl._notebook import InputAsker, RunView, in_notebook, isatty
from lrctl.runops import read_frozen_config
from lrctl.runstore import DEFAULT_KEEP, HISTORY_DIR, RunError, RunStore
from lrctl.session import DEFAULT_SAVE_EVERY, ChunkOutcome, RunSession

_OPEN: dict[Path, Run] = {}  # the runs this process holds, by directory


@dataclass(frozen=True)
class Chunk:
    """What one :meth:`Run.fit` did. status: done | stopped (the rest is pending) | abandoned | diverged."""

    status: str
    start: int
    end: int
    records: list[dict[str, Any]]
    detail: str = ""

    def __repr__(self) -> str:
        last = self.records[-1] if self.records else None
        tail = f" · last: train {last['train']:.6g} test {last['test']:.6g}" if last else ""
        detail = f" ({self.detail})" if self.detail else ""
        return f"<lrctl chunk {self.status}{detail}: epochs {self.start}..{self.end - 1}{tail}>"


def _factory_spec(obj: Any) -> str | None:
    """'module:function' for a string spec or a function importable by that name (a command line can
    rebuild it); None for objects, lambdas, local functions and functions defined in __main__ (a notebook)."""
    if isinstance(obj, str):
        return obj
    if isinstance(obj, (tuple, list)) or not callable(obj) or not hasattr(obj, "__qualname__"):
        return None
    module, name = getattr(obj, "__module__", None), obj.__qualname__
    if not module or module == "__main__" or "<" in name or "." in name or isinstance(obj, type):
        return None
    found = getattr(sys.modules.get(module), name, None)
    return f"{module}:{name}" if found is obj else None


def _guess_task(data: Any, loss: str, metric: str) -> str:
    """Classification when the loss or metric says so, or the labels are integers; else regression."""
    import torch

    if loss in ("cross-entropy", "bce") or metric == "accuracy":
        return "classification"
    try:
        if isinstance(data, (tuple, list)) and len(data) == 4:
            label = data[1]
        else:
            first = data[0]
            dataset = getattr(first, "dataset", first)
            label = dataset[0][1]
        label = torch.as_tensor(label)
    except Exception:  # not data lrctl can read: from_objects says why
        return "regression"
    return "regression" if label.is_floating_point() else "classification"


def _load_config(config: Any) -> tuple[config_mod.RunConfig, str]:
    if isinstance(config, config_mod.RunConfig):
        return config, "a RunConfig given to lrctl.Run"
    return config_mod.load(Path(config))


class Run:
    """One lrctl run, trained from Python. See the module docstring.

    Args:
        name: the run's name (a folder under ``runs_dir``); an existing run is resumed.
        model: an ``nn.Module``, a function that makes one (it may take ``in_features=`` and
            ``out_features=``), or ``"module:function"``; None: the config's (the lesson's MLP).
        data: ``(x_train, y_train, x_test, y_test)`` tensors, ``(train, test)`` Datasets or DataLoaders
            (the train loader's batch size is used), a function returning one of those, or
            ``"module:function"``; None: the config's (the lesson's data).
        loss, metric, optimizer, batch_size, order, device: the ``[train]`` settings of the same names
            (None: the run's own, or the default for a new run).
        config: a TOML file or a :class:`~lrctl.config.RunConfig` to start from (None: the run's own
            config, or the built-in lesson config for a new run).
        overrides: ``"section.key=value"`` strings, as ``--set`` takes them.
        runs_dir: where runs live.
        save_every: checkpoint at an epoch end when this many seconds have passed (chunk ends always).
        keep: chunk-boundary checkpoints kept for undo.
        progress: False for rows only; None shows a progress bar in a notebook or on a terminal.
    """

    def __init__(self, name: str, model: Any = None, data: Any = None, *, loss: str | None = None,
                 metric: str | None = None, optimizer: str | None = None, batch_size: int | None = None,
                 order: str | None = None, device: str | None = None, config: Any = None,
                 overrides: Sequence[str] = (), runs_dir: str | Path = "runs", save_every: float = DEFAULT_SAVE_EVERY,
                 keep: int = DEFAULT_KEEP, progress: bool | None = None) -> None:
        store = RunStore(Path(runs_dir), name)  # checks the name before anything else
        self.view = RunView(progress)
        earlier = _OPEN.get(store.dir.resolve())
        if earlier is not None:  # a notebook cell run twice: the earlier object lets go of the run
            earlier.close()
            self.view.say(f"(closed the earlier lrctl.Run({name!r}) of this process)")
        settings = {"loss": loss, "metric": metric, "optimizer": optimizer, "batch_size": batch_size,
                    "order": order, "device": device}
        cfg, trainer, origin = self._settle(store, model, data, settings, config, list(overrides))
        session = RunSession.open(Path(runs_dir), name, cfg, save_every=save_every, observer=self.view,
                                  config_origin=origin, keep=keep)
        try:
            session.load(trainer)
        except BaseException:
            session.store.close()
            if session.is_new:  # never loaded, nothing trained: leave no run behind
                import shutil

                shutil.rmtree(session.store.dir, ignore_errors=True)
            raise
        self._session: RunSession | None = session
        _OPEN[session.store.dir.resolve()] = self
        self.view.banner(name, session.is_new, session.store.summary(), session.cfg.describe(),
                         str(session.store.dir))
        session.say_warnings(self.view.warn)
        pending = session.pending
        if pending is not None:
            self.view.warn(f"unfinished work: {pending.describe(session.global_step)} · run.finish() trains it; "
                           "the next fit replaces it")

    @staticmethod
    def _settle(store: RunStore, model: Any, data: Any, settings: dict[str, Any], config: Any,
                overrides: list[str]) -> tuple[config_mod.RunConfig, Any, str]:
        """The run's config (objects as fingerprints) and its trainer, built before any file is touched.
        Unset arguments keep the run's own values; a given one that differs is refused, as a changed config."""
        from lrctl import data as data_mod
        from lrctl import models
        from lrctl.engine import Trainer

        frozen = read_frozen_config(store)[0] if store.exists else None
        if config is not None:
            base, origin = _load_config(config)
        elif frozen is not None:
            base, origin = frozen, ""
        else:
            base, origin = config_mod.RunConfig(), config_mod.BUILTIN_CONFIG_NAME
        if overrides:
            base = config_mod.with_overrides(base, overrides)
        origin = "Python (lrctl.Run)" + (f" from {origin}" if origin else "")
        d, m, t = base.data, base.model, base.train

        data_objects = None
        if data is not None:
            spec = _factory_spec(data)
            if spec is not None:
                d = dataclasses.replace(d, source="factory", factory=spec, path="", fingerprint="")
            else:
                data_objects = data() if callable(data) else data
        model_object = None
        if model is not None:
            spec = _factory_spec(model)
            if spec is not None:
                m = dataclasses.replace(m, kind="factory", factory=spec, fingerprint="")
            else:
                model_object = model
        if data_objects is not None and settings["batch_size"] is None:
            first = data_objects[0] if isinstance(data_objects, (tuple, list)) and data_objects else None
            settings["batch_size"] = getattr(first, "batch_size", None)  # a DataLoader's
        t = dataclasses.replace(t, **{k: v for k, v in settings.items() if v is not None})
        if data_objects is not None:
            loss, metric = settings["loss"] or t.loss, settings["metric"] or t.metric
            task = d.task if d.task != "auto" else _guess_task(data_objects, loss, metric)
            d = dataclasses.replace(d, source="python", factory="", path="", task=task)
        if frozen is not None and data is None and frozen.data.source == "python":
            raise RunError(f"run '{store.name}' was made with data given in Python: pass the same data= again")
        if frozen is not None and model is None and frozen.model.kind == "python":
            raise RunError(f"run '{store.name}' was made with a model object: pass the same model= again")
        if model_object is not None:
            m = dataclasses.replace(m, kind="python", factory="")
        cfg = config_mod.RunConfig(data=d, model=m, train=t)

        split = None
        if data_objects is not None:
            split = data_mod.from_objects(cfg, data_objects, "lrctl.Run(data=...) got")
            cfg = dataclasses.replace(cfg, data=dataclasses.replace(d, fingerprint=data_mod.fingerprint(split)))
        if model_object is not None:
            if split is None:
                split = data_mod.build_split(cfg)
            from torch import nn

            if not isinstance(model_object, nn.Module):
                if not callable(model_object):
                    raise TypeError(f"lrctl.Run(model=...): expected an nn.Module, a function that makes one or "
                                    f"'module:function', got {type(model_object).__name__}")
                model_object = models.from_callable(model_object, split.in_features, split.out_features(cfg),
                                                    "lrctl.Run(model=...)")
            models.check_trainable(model_object, "lrctl.Run(model=...) got a model that")
            cfg = dataclasses.replace(cfg, model=dataclasses.replace(m, fingerprint=models.fingerprint(model_object)))
        if frozen is not None:
            changes = config_mod.diff(frozen, cfg)
            if changes:
                raise RunError(f"run '{store.name}' was made with other settings:\n  " + "\n  ".join(changes)
                               + "\ngive it what it was made with, or use another run name")
        return cfg, Trainer(cfg, model=model_object, split=split), origin

    # -- state ---------------------------------------------------------------------------------------
    def _live(self) -> RunSession:
        if self._session is None:
            raise RunError("this lrctl.Run is closed; open the run again with lrctl.Run(name, ...)")
        return self._session

    @property
    def name(self) -> str:
        return self._live().store.name

    @property
    def dir(self) -> Path:
        """The run directory (TensorBoard: ``tensorboard --logdir`` its parent)."""
        return self._live().store.dir

    @property
    def step(self) -> int:
        """The global epoch: how many epochs the run has trained, over all chunks and sessions."""
        return self._live().global_step

    @property
    def metric(self) -> str:
        return self._live().metric

    @property
    def model(self) -> Any:
        """The model being trained (the object you passed, with the run's weights)."""
        return self._live().trainer.model

    @property
    def history(self) -> list[dict[str, Any]]:
        """One record per epoch: ``{'step', 'lr', 'train', 'test'}`` (train/test: the run's metric)."""
        return [dict(h) for h in self._live().trainer.history]

    def __repr__(self) -> str:
        if self._session is None:
            return "<lrctl.Run (closed)>"
        s = self._session
        last = s.trainer.history[-1] if s.trainer.history else None
        where = (f" · train_{s.metric} {last['train']:.6g} test_{s.metric} {last['test']:.6g}" if last else "")
        return f"<lrctl.Run {s.store.name!r} at epoch {s.global_step}{where} · {s.store.dir}>"

    # -- training ------------------------------------------------------------------------------------
    def fit(self, epochs: int, lr: float | str) -> Chunk:
        """Train one chunk of ``epochs`` epochs; ``lr`` is a number or any expression of the prompt
        (``"exp 0.05 gamma=0.95"``, ``"cos 0.03"``, ``"keep"``...). Ctrl-C (the kernel's interrupt) stops
        after the epoch; a second abandons the epoch. A loss that is no longer finite rolls back."""
        from lrctl.schedules import parse

        session = self._live()
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs must be a whole number >= 1, not {epochs!r}")
        expression = repr(float(lr)) if isinstance(lr, (int, float)) and not isinstance(lr, bool) else str(lr)
        spec = parse(expression)
        session.check_expression(spec, epochs)
        return self._chunk(lambda: session.train(epochs, spec, source="python"))

    def finish(self) -> Chunk:
        """Train the work an interruption left (what ``lrctl resume`` finishes)."""
        session = self._live()
        if session.pending is None:
            raise RunError("nothing to finish: the run has no interrupted work")
        return self._chunk(session.finish_pending)

    def _chunk(self, command: Callable[[], ChunkOutcome]) -> Chunk:
        session = self._live()
        start = session.global_step
        if threading.current_thread() is threading.main_thread():
            from lrctl.repl import chunk_interrupts

            with chunk_interrupts(session, self.view):
                outcome = command()
        else:  # signal handlers only in the main thread: a KeyboardInterrupt there abandons the epoch
            outcome = command()
        records = [dict(h) for h in session.trainer.history if h["step"] >= start]
        return Chunk(outcome.status, start, session.global_step, records, outcome.detail)

    def prompt(self) -> str:
        """The terminal's questions (Continue? Epochs: Learning rate:) with every prompt command; on a
        terminal with prompt_toolkit, elsewhere (Jupyter) with ``input()``. Returns why it ended."""
        from lrctl.repl import Repl, TerminalAsker

        session = self._live()
        terminal = isatty(sys.stdin) and isatty(sys.stdout) and not in_notebook()
        repl = Repl(session, self.view, None, lambda: None)  # type: ignore[arg-type]
        repl.keys = terminal
        repl.asker = TerminalAsker(session.store.dir / HISTORY_DIR, repl.toolbar) if terminal else InputAsker()
        try:
            return repl.run()
        finally:
            self._adopt(repl.session)

    def _adopt(self, session: RunSession) -> None:
        """Train ``session`` from now on (a fork's)."""
        if session is not self._session:
            _OPEN.pop(self._session.store.dir.resolve(), None)
            self._session = session
            _OPEN[session.store.dir.resolve()] = self

    def find_lr(self, start: float = 1e-4, end: float = 1.0, batches: int | None = None) -> float | None:
        """The lr range test from the current state (the run is not changed); shows the chart and returns
        the suggested lr (where it cannot tell, it says why and this is the safe end of its band), or None
        when the whole swept range is flat (it says so)."""
        from lrctl.lrfind import log_sweep, range_test
        from lrctl.plots import lr_chart

        session = self._live()
        result = range_test(session.trainer, start, end, batches)
        logdir = log_sweep(session.store.runs_dir, session.store.name, session.global_step, result)
        self.view.say(lr_chart(result.lrs, result.losses, result.marks()))
        self.view.say(f"{result.summary()} · sweep in TensorBoard: {logdir}")
        return None if result.suggestion is None else float(f"{result.suggestion:.3g}")

    def undo(self) -> int:
        """Back to where the last chunk began (model, optimizer, schedule, step). Returns that epoch."""
        current, target = self._live().undo()
        self.view.say(f"undone: back from epoch {current} to {target}")
        return target

    def fork(self, name: str) -> Run:
        """Continue in a copy of the run named ``name``; this Run object trains the copy from now on."""
        session = self._live()
        old = session.store.name
        self._adopt(session.fork(name))
        self._session.say_warnings(self.view.warn)  # e.g. a killed fork's partial copy removed
        self.view.say(f"forked: run '{old}' stays at epoch {self.step}; this Run now trains '{name}'")
        return self

    def plot(self, png: str | Path | None = None) -> None:
        """The run's curves (metric and lr by global epoch, chunk starts marked): inline in a notebook,
        as a text chart elsewhere; ``png`` also writes the figure to that file."""
        from lrctl.plots import RunCurves, png_bytes, save_png, terminal_chart

        session = self._live()
        curves = [RunCurves(session.store.name, session.metric, session.trainer.history, session.chunks)]
        if png is not None:
            save_png(curves, Path(png))
        if in_notebook():
            from IPython.display import Image, display

            display(Image(png_bytes(curves)))
        else:
            self.view.say(terminal_chart(curves) if curves[0].history else "nothing to plot yet")

    # -- closing -------------------------------------------------------------------------------------
    def close(self) -> None:
        """Save and let go of the run (its lock). Closing twice is harmless."""
        session, self._session = self._session, None
        if session is None:
            return
        try:
            session.close("python")
        finally:
            if _OPEN.get(session.store.dir.resolve()) is self:
                del _OPEN[session.store.dir.resolve()]

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@atexit.register
def _close_all() -> None:
    """A script or kernel that ends without close(): save what is unsaved and release the locks."""
    for run in list(_OPEN.values()):
        try:
            run.close()
        except Exception:  # leaving anyway; the last checkpoint stays good
            pass
