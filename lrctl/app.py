"""The training application: open a run, start TensorBoard and the control socket, run the REPL or the
plan, swap the session on a fork, tear everything down. The one place signal handlers are installed.

::

    $ lrctl --run demo                        # lrctl.cli parses, app.train runs it
    $ torchrun --nproc-per-node 2 -m lrctl -- --run demo    # rank 0 prompts, the others follow

Exit codes come from :mod:`lrctl.exits`; ``lrctl.cli`` checks options before anything here runs.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import signal
import sys
import threading
from pathlib import Path

from lrctl import config as config_mod
from lrctl.exits import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from lrctl.plan import check_plan, parse_plan
from lrctl.runstore import HISTORY_DIR, RunError, RunStore

DEFAULT_RUNS_DIR = Path("runs")


class _Loader:
    """Runs ``session.load()`` (torch import, model, checkpoint) in the background while the user answers."""

    def __init__(self, session, trainer=None) -> None:
        self.session, self.trainer, self.error = session, trainer, None
        self.thread = threading.Thread(target=self._run, name="lrctl-load", daemon=True)

    def start(self) -> None:
        """Begin loading (the REPL calls this once its first question is on screen)."""
        if not self.thread.is_alive() and self.thread.ident is None:
            self.thread.start()

    def _run(self) -> None:
        try:
            self.session.load(self.trainer)
        except BaseException as e:  # re-raised in the main thread by wait()
            self.error = e

    def wait(self) -> None:
        self.start()
        self.thread.join()
        if self.error is not None:
            raise self.error


def train(args: argparse.Namespace, plan: list[tuple[int, str]] | None) -> int:
    """``lrctl [train|resume]`` after its options were checked: launch torchrun, follow rank 0, or run."""
    run_name = args.run
    from lrctl import distributed

    if args.nproc is not None and distributed.world_size_from_env() <= 1:
        cfg, _ = _resolve_config(args, RunStore(args.runs_dir, run_name))  # refused before torchrun starts
        if cfg is not None:
            from lrctl.devices import check_device

            check_device(cfg.train.device)
        return distributed.launch(args.nproc, _without_launch_options(args.argv), args.max_restarts)
    timeout = distributed.DEFAULT_TIMEOUT if args.dist_timeout is None else args.dist_timeout
    group = distributed.Group.join(timeout) if distributed.world_size_from_env() > 1 else None
    together = False  # every rank got to the end normally (rank 0 told the others to quit)
    try:
        if group is not None and not group.is_main:
            try:
                code = _follow(args, group)
            except distributed.DistError as e:
                if e.shared:
                    return EXIT_ERROR  # rank 0 says it
                raise
        else:
            code = _train(args, plan, group)
        together = True
        return code
    except Exception as e:
        message = distributed.peer_lost_message(e, run_name) if group is not None else None
        if message is None:
            raise
        print(f"lrctl: rank {group.rank}: {message}", file=sys.stderr)  # not a traceback: a rank died
        return EXIT_ERROR
    finally:
        if group is not None:
            group.close(together)


def _without_launch_options(argv: list[str]) -> list[str]:
    """The command line for the workers: --nproc and --max-restarts are the launcher's."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("--nproc", "--max-restarts"):
            skip = True
        elif not arg.startswith(("--nproc=", "--max-restarts=")):
            out.append(arg)
    return out


def _given_config(args: argparse.Namespace, new_run: bool) -> dict | None:
    """What this rank's command line asks for (compared across ranks); None when the run's own config rules.

    File paths are left out (they may differ between machines; the data's checksum is compared instead),
    and so are runtime settings."""
    explicit = getattr(args, "config", None) is not None or getattr(args, "set", [])
    if not (explicit or new_run):
        return None
    cfg, _ = config_mod.load_config(getattr(args, "config", None), getattr(args, "set", []))
    raw = config_mod.to_dict(cfg)
    for section, key in (("data", "path"), ("data", "factory"), ("model", "factory"), *config_mod.RUNTIME_KEYS):
        raw.get(section, {}).pop(key, None)
    return raw


def _follow(args: argparse.Namespace, group) -> int:
    """A rank other than 0: build the same session, then do what rank 0 says; never read stdin or print."""
    import signal

    from lrctl.distributed import follow
    from lrctl.session import RunSession

    start = group.receive()
    if start.get("op") != "start":
        return EXIT_ERROR  # rank 0 could not open the run and says why
    session = RunSession.replica(start["run"], config_mod.from_dict(start["config"]), group)

    def stop(signum: int, frame: object) -> None:  # torchrun is ending the job: stop with rank 0
        if session.stop.stop_after_epoch:
            session.stop.request("abandon")
        session.stop.request("shutdown", signal.Signals(signum).name)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        session.given_config = _given_config(args, start["new"])
    except config_mod.ConfigError as e:
        session.given_config = {"error": str(e)}
    session.load()
    return follow(session)


def _train(args: argparse.Namespace, plan, group) -> int:
    """Rank 0, or the only process: open the run, prompt (or run the plan), close."""
    started = False
    try:
        session, prebuilt, origin = _open(args, group)
        if session is None:
            return EXIT_USAGE
        if group is not None:
            session.given_config = _given_config(args, session.is_new)
            group.send({"op": "start", "run": session.store.name, "new": session.is_new,
                        "config": config_mod.to_dict(session.cfg)})
        started = True
    finally:
        if group is not None and not started:
            with contextlib.suppress(Exception):
                group.send({"op": "abort"})
    return _serve(args, plan, group, session, prebuilt)


def _open(args: argparse.Namespace, group):
    """Settle the config, build user data early, lock the run. Returns (session or None on bad usage, prebuilt)."""
    from lrctl.session import DEFAULT_SAVE_EVERY, RunSession
    from lrctl.view import View

    run_name = args.run
    store = RunStore(args.runs_dir, run_name)
    if args.command == "resume" and not store.exists:
        raise RunError(f"no run '{run_name}' in {args.runs_dir}; start it with: lrctl --run {run_name}")
    cfg, origin = _resolve_config(args, store)
    save_every = DEFAULT_SAVE_EVERY if args.save_every is None else args.save_every
    if cfg is not None:  # a new run or an explicit config: the machine must offer its device (the run's
        from lrctl.devices import check_device  # own config is checked when it loads)

        check_device(cfg.train.device)
    if cfg is None:
        from lrctl.runops import read_frozen_config

        cfg, _ = read_frozen_config(store)
    problem = config_mod.rebuild_problem(cfg, run_name)  # made from Python objects: only Python can resume it
    if problem:
        raise RunError(problem)
    prebuilt = None
    if not store.exists and (cfg.data.source in ("csv", "factory") or cfg.model.kind == "factory"):
        # User data and models can fail in many ways: find out before the run directory exists.
        from lrctl.engine import Trainer

        prebuilt = Trainer(cfg)
    plan = parse_plan(args.plan) if getattr(args, "plan", None) is not None else None
    session = RunSession.open(args.runs_dir, run_name, cfg, force_config=getattr(args, "force_config", False),
                              save_every=save_every, observer=View(), config_origin=origin,
                              keep=args.keep_checkpoints, group=group, plan=plan)
    return session, prebuilt, origin


def _serve(args: argparse.Namespace, plan, group, session, prebuilt) -> int:
    """The open run: banner, TensorBoard, control socket, then the REPL or the plan; always closed."""
    run_name = session.store.name
    view = session.observer
    view.on_closed = lambda: session.stop.request("stop")
    logdir = str(args.runs_dir / run_name)
    board = None
    if args.tb:
        from lrctl.tb import TensorBoard

        board = TensorBoard(args.runs_dir, args.tb_port, shlex.split(args.tb_args))
        try:
            logdir = board.start()
        except RuntimeError as e:
            view.warn(f"TensorBoard did not start: {e}")
            board = None
    from lrctl.control import ControlServer

    control = ControlServer(session)
    if control.start() is None:
        view.warn(f"no control socket for this run (lrctl send is unavailable): {session.store.dir} "
                  "is too long a path for a Unix socket, or the platform has none")
    store = session.store
    # A damaged file: what loads, and what it means for the run, is said before any question is asked.
    damaged = not session.is_new and store.damage_seen_without_torch()
    loader = _Loader(session, prebuilt)
    code, reason = EXIT_OK, "quit"
    holder = [session, control]  # the REPL may continue in a fork
    # torchrun restarted the workers after one died: finish the interrupted work first, without asking.
    restarted = group is not None and group.restart_count > 0
    orderly = False  # the other ranks are told to quit only then: after an error they may be mid-collective
    ended_by = None  # the Shutdown a signal raised
    signals = contextlib.nullcontext()
    if group is None:
        from lrctl.stopping import Shutdown, process_signals

        def end(signum: int) -> None:
            current = holder[0]
            current.stop.request("shutdown", signal.Signals(signum).name)
            if not current.busy:  # at a prompt, or loading: nothing is mid-epoch, leave now
                raise Shutdown(signum)

        def checkpoint() -> None:
            holder[0].stop.request("checkpoint", "SIGUSR1")

        signals = process_signals(end, checkpoint)
    try:
        signals.__enter__()
        if damaged:
            loader.wait()
        view.banner(run_name, session.is_new, session.summary() if damaged else store.summary(),
                    session.cfg.describe(), logdir)
        if group is not None:
            view.say(group.describe() + (f" · restart {group.restart_count}" if group.restart_count else ""))
        if prebuilt is not None and prebuilt.data_loading:
            view.say(f"DataLoader: {prebuilt.data_loading}")
        if damaged:
            session.say_warnings(view.warn)
        if plan is not None:
            code, reason = _run_plan(session, plan, loader, view, resume_only=restarted and _job_ran(session, group))
        else:
            code, reason = _run_repl(holder, loader, view, finish=args.command == "resume" or restarted,
                                     tb_url=board.url if board else None)
        orderly = True
    except KeyboardInterrupt:
        reason = "interrupt"
        code = EXIT_INTERRUPTED if plan is not None else EXIT_OK
        orderly = True
    except BaseException as e:
        from lrctl.stopping import Shutdown

        if not isinstance(e, Shutdown):
            raise
        reason, code, ended_by = "signal", e.exit_code, e
    finally:
        signals.__exit__(None, None, None)
        loader.start()  # even a session quit at once writes its initial checkpoint
        loader.thread.join()
        session = holder[0]
        if session.trainer is not None:
            session.close(reason)
        else:
            session.store.close()
            if session.is_new and loader.error is not None:  # never loaded, nothing trained: leave no run behind
                import shutil

                shutil.rmtree(session.store.dir, ignore_errors=True)
        if group is not None and orderly and loader.error is None:
            with contextlib.suppress(Exception):  # a rank may be gone already
                group.send({"op": "quit", "reason": reason, "code": code})
        if board is not None:
            board.stop()
        control.stop()
    if loader.error is not None:
        raise loader.error
    run_name = session.store.name
    step = session.global_step
    where = "" if args.runs_dir == DEFAULT_RUNS_DIR else f" --runs-dir {args.runs_dir}"
    said = "saved run" if session.saved_this_session else "run"
    if ended_by is not None:
        name = signal.Signals(ended_by.signum).name
        view.warn(f"{name}: {ended_by.detail or 'ending'} · run '{run_name}' saved · lrctl resume {run_name}{where} "
                  "finishes its work exactly")
        return code
    view.say(f"{said} '{run_name}' at epoch {step} · resume with: lrctl --run {run_name}{where}")
    return code


def _job_ran(session, group) -> bool:
    """Whether this torchrun job (before a restart) already recorded its --plan as the run's work."""
    return any(e.get("event") == "command" and e.get("job") == group.job for e in session.store.read_journal())


def _run_plan(session, plan, loader: _Loader, view, resume_only: bool = False) -> tuple[int, str]:
    from lrctl.repl import chunk_interrupts

    loader.wait()
    session.say_warnings(view.warn)
    if session.plan_recorded:  # a new run: its plan was recorded with it, before torch loaded
        with chunk_interrupts(session, view):
            outcome = session.finish_pending()
        return _plan_result(session, outcome, view)
    if resume_only:  # the plan is already the run's pending work: finish what is left of it
        view.say("the plan was started before the restart: finishing what is left of it")
        with chunk_interrupts(session, view):
            outcome = session.finish_pending()
        return _plan_result(session, outcome, view)
    pending = session.pending
    if pending is not None:
        view.warn(f"replacing the run's interrupted work ({pending.describe(session.global_step)}) with --plan")
    try:
        check_plan(plan, has_schedule=session.trainer.runner is not None)
    except ValueError as e:
        raise RunError(f"--plan: {e}") from None
    with chunk_interrupts(session, view):
        outcome = session.run_plan(plan)
    return _plan_result(session, outcome, view)


def _plan_result(session, outcome, view) -> tuple[int, str]:
    if view.closed:  # output into a closed pipe (lrctl ... | head): saved, the rest pending, a quiet 0
        return EXIT_OK, "closed"
    if outcome.status in ("stopped", "abandoned"):
        view.say(f"interrupted; the rest of the plan is saved: lrctl resume {session.store.name}")
        return EXIT_INTERRUPTED, "interrupt"
    if outcome.status == "diverged":
        return EXIT_ERROR, "diverged"
    return EXIT_OK, "plan done"


def _run_repl(holder: list, loader: _Loader, view, finish: bool, tb_url: str | None) -> tuple[int, str]:
    from lrctl.repl import PlainAsker, Repl, TerminalAsker

    session = holder[0]
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    repl = Repl(session, view, None, loader.wait, on_first_prompt=loader.start)  # type: ignore[arg-type]
    repl.tb_url = tb_url
    repl.control = holder[1]
    if interactive:
        repl.asker = TerminalAsker(session.store.dir / HISTORY_DIR, repl.toolbar)
    else:
        repl.asker = PlainAsker(sys.stdin, sys.stdout, unbuffered=session.group is not None)
    try:
        reason = repl.run(finish_pending=finish)
    finally:
        holder[0] = repl.session
    if loader.thread.is_alive():  # Ctrl-C or Ctrl-D at once: the run is saved when torch has loaded
        view.say(f"saving run '{repl.session.store.name}' once PyTorch has finished loading (a few seconds)…")
    loader.wait()
    # What loading found (e.g. a missing pending.json, rebuilt from the journal) is said before a chunk;
    # a user who quit at the first question has not seen it yet.
    repl.session.say_warnings(view.warn)
    return EXIT_OK, reason


def _resolve_config(args: argparse.Namespace, store: RunStore) -> tuple[config_mod.RunConfig | None, str]:
    """The config the user asked for, or None to use the run's frozen one.

    ``--set`` on an existing run without ``--config`` changes the run's own config (not the defaults:
    ``--set train.momentum=0.9`` must not also put back every other key the run was created with)."""
    config_path, assignments = getattr(args, "config", None), getattr(args, "set", []) or []
    if store.exists and config_path is None:
        if not assignments:
            return None, ""
        from lrctl.runops import read_frozen_config

        frozen, path = read_frozen_config(store)
        return config_mod.with_overrides(frozen, assignments), f"{path} with --set"
    return config_mod.load_config(config_path, assignments)
