"""Command line entry point: ``lrctl`` and ``python -m lrctl``; the only place exit codes are decided.

::

    $ lrctl                                   # the interactive lesson run 'default' in ./runs
    $ lrctl --run demo --config configs/lesson.toml
    $ lrctl --run demo --plan "30@0.03;30@exp 0.05 gamma=0.95"   # no prompts
    $ lrctl resume demo                       # finish interrupted work, then prompt
    $ lrctl runs                              # a table of runs and their state
    $ lrctl schedule "cos 0.03 min=1e-4" --epochs 30
    $ lrctl find-lr --run demo                # lr range test from the run's state (run unchanged)
    $ lrctl plot demo other --png curves.png  # terminal chart (and a PNG)
    $ lrctl compare --plans "60@0.03" "30@0.03;30@0.01" --seeds 24,25
    $ lrctl fork demo demo-b --at 30          # a new run from a kept checkpoint
    $ lrctl export demo --csv demo.csv --model demo.pt
    $ lrctl tb                                # TensorBoard on 127.0.0.1
    $ lrctl send demo "lr 0.01"               # steer a running chunk (status, pause, resume, stop, ...)
    $ lrctl replay demo --to demo-replay      # re-execute the journal: a bit-identical run
    $ lrctl --nproc 2 --run big               # data-parallel on 2 processes (torchrun + DDP; rank 0 prompts)

Exit codes: 0 done, 1 error (message on stderr), 2 bad usage, 130 a --plan interrupted by Ctrl-C
(saved; ``lrctl resume`` finishes it).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading
from pathlib import Path

from lrctl import __version__
from lrctl import config as config_mod
from lrctl._numbers import parse_int
from lrctl.runstore import HISTORY_DIR, RunError, RunStore
from lrctl.schedules import ScheduleError
from lrctl.schedules import parse as parse_schedule

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
DEFAULT_CONFIG = Path("configs/lesson.toml")
DEFAULT_RUNS_DIR = Path("runs")
COMMANDS = ("train", "resume", "runs", "schedule", "find-lr", "plot", "compare", "fork", "export", "tb", "send",
            "replay")


def parse_plan(text: str) -> list[tuple[int, str]]:
    """``"30@0.03;30@exp 0.05 gamma=0.95"`` -> [(30, '0.03'), (30, 'exp 0.05 gamma=0.95')]."""
    chunks = []
    for i, part in enumerate(p for p in text.split(";") if p.strip()):
        epochs_text, at, expression = part.partition("@")
        if not at:
            raise ValueError(f"plan chunk {i + 1} {part.strip()!r}: expected EPOCHS@LR, e.g. 30@0.03")
        try:
            epochs = parse_int(epochs_text, "epochs")
            if epochs < 1:
                raise ValueError("epochs must be at least 1")
            spec = parse_schedule(expression)
        except (ValueError, ScheduleError) as e:
            raise ValueError(f"plan chunk {i + 1} {part.strip()!r}: {e}") from None
        chunks.append((epochs, spec.text))
    if not chunks:
        raise ValueError("the plan is empty; e.g. --plan \"30@0.03;30@0.01\"")
    return chunks


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs-dir", type=Path, default=DEFAULT_RUNS_DIR, help="where runs live (default ./runs)")
    p.add_argument("--save-every", type=float, default=None, metavar="SECONDS",
                   help="checkpoint at an epoch end when this many seconds have passed (default 5; 0 = every epoch)")
    p.add_argument("--keep-checkpoints", type=int, default=10, metavar="K",
                   help="keep the checkpoints of the last K chunk boundaries, for undo and fork --at (default 10)")
    p.add_argument("--tb", action="store_true", help="start TensorBoard beside the prompt (stopped on exit)")
    p.add_argument("--nproc", type=int, default=None, metavar="N",
                   help="train data-parallel on N processes of this machine (runs torchrun; rank 0 prompts)")
    p.add_argument("--max-restarts", type=int, default=0, metavar="K",
                   help="with --nproc: restart the processes up to K times if one dies (they resume the run)")
    p.add_argument("--dist-timeout", type=float, default=None, metavar="SECONDS",
                   help="under torchrun: how long a rank waits for the others in training before it gives up "
                        "with an error (default 300)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lrctl", description="Tune a PyTorch learning rate by hand, chunk by chunk.",
        epilog="With no command lrctl trains interactively: lrctl [--run NAME] [--config PATH] [--plan PLAN] "
               "[--tb] ... (lrctl train --help lists every option).")
    parser.add_argument("--version", action="version", version=f"lrctl {__version__}")
    sub = parser.add_subparsers(dest="command")
    train = sub.add_parser("train", help="train interactively (the default command)")
    train.add_argument("--run", default="default", help="run name: letters, digits, -_. (default 'default')")
    train.add_argument("--config", type=Path, default=None,
                       help=f"TOML config for a new run (default {DEFAULT_CONFIG}, else the built-in lesson)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value, e.g. --set train.batch_size=25 (repeatable)")
    train.add_argument("--plan", default=None, help='train these chunks without prompting: "30@0.03;30@0.01"')
    train.add_argument("--force-config", action="store_true",
                       help="continue a run with a config that differs from the one it was created with")
    _common(train)
    resume = sub.add_parser("resume", help="finish a run's interrupted work, then prompt as usual")
    resume.add_argument("run", help="run name")
    _common(resume)
    runs = sub.add_parser("runs", help="list runs with their state")
    runs.add_argument("--runs-dir", type=Path, default=DEFAULT_RUNS_DIR)
    schedule = sub.add_parser("schedule", help="print the lr of every epoch of a schedule expression")
    schedule.add_argument("expression", help='e.g. "exp 0.05 gamma=0.95"')
    schedule.add_argument("--epochs", type=int, required=True)
    schedule.add_argument("--batches-per-epoch", type=int, default=14)
    find = sub.add_parser("find-lr", help="lr range test from a run's current state; the run is not changed")
    find.add_argument("--run", default="default")
    find.add_argument("--runs-dir", type=Path, default=DEFAULT_RUNS_DIR)
    find.add_argument("--start", type=float, default=1e-6)
    find.add_argument("--end", type=float, default=1.0)
    find.add_argument("--batches", type=int, default=100)
    plot = sub.add_parser("plot", help="train/test metric and lr of runs against the global epoch")
    plot.add_argument("runs", nargs="+")
    plot.add_argument("--runs-dir", type=Path, default=DEFAULT_RUNS_DIR)
    plot.add_argument("--png", type=Path, default=None, help="also write the figure to this PNG file")
    compare = sub.add_parser("compare", help="train several plans from the same initial state, over seeds")
    compare.add_argument("--plans", nargs="+", default=None, help='e.g. "60@0.03" "30@0.03;30@0.01"')
    compare.add_argument("--seeds", default=None, help="model seeds, e.g. 24,25,26")
    compare.add_argument("--name", default="compare", help="the group's folder under the runs directory")
    compare.add_argument("--runs-dir", type=Path, default=DEFAULT_RUNS_DIR)
    compare.add_argument("--config", type=Path, default=None)
    compare.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    fork = sub.add_parser("fork", help="copy a run into a new one, from its latest or a kept checkpoint")
    fork.add_argument("run")
    fork.add_argument("new")
    fork.add_argument("--at", type=int, default=None, metavar="EPOCH", help="a kept chunk-boundary epoch")
    fork.add_argument("--runs-dir", type=Path, default=DEFAULT_RUNS_DIR)
    export = sub.add_parser("export", help="a run's per-epoch records as CSV and/or its model state_dict")
    export.add_argument("run")
    export.add_argument("--csv", type=Path, default=None)
    export.add_argument("--model", type=Path, default=None)
    export.add_argument("--runs-dir", type=Path, default=DEFAULT_RUNS_DIR)
    send = sub.add_parser("send", help="send a command to a running lrctl: status, lr VALUE [set|scale|restart], "
                                       "pause, resume, stop, checkpoint")
    send.add_argument("run")
    send.add_argument("words", nargs="+", metavar="COMMAND")
    send.add_argument("--runs-dir", type=Path, default=DEFAULT_RUNS_DIR)
    replay = sub.add_parser("replay", help="re-execute a run's journal into a new run (bit-identical)")
    replay.add_argument("run")
    replay.add_argument("--to", required=True, metavar="NEW")
    replay.add_argument("--runs-dir", type=Path, default=DEFAULT_RUNS_DIR)
    tb = sub.add_parser("tb", help="start TensorBoard for the runs directory on 127.0.0.1")
    tb.add_argument("--runs-dir", type=Path, default=DEFAULT_RUNS_DIR)
    tb.add_argument("--port", type=int, default=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:  # torchrun ... -m lrctl -- --run R (torchrun would read --run as its --run-path)
        argv = argv[1:]
    if not argv or argv[0] not in (*COMMANDS, "-h", "--help", "--version"):
        argv.insert(0, "train")
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        if args.command == "runs":
            return cmd_runs(args)
        if args.command == "schedule":
            return cmd_schedule(args)
        if args.command in ("find-lr", "plot", "compare", "fork", "export", "tb", "send", "replay"):
            from lrctl import tools

            return getattr(tools, "cmd_" + args.command.replace("-", "_"))(args)
        return cmd_train(args)
    except (RunError, config_mod.ConfigError) as e:
        print(f"lrctl: {e}", file=sys.stderr)
        return EXIT_ERROR


def cmd_schedule(args: argparse.Namespace) -> int:
    try:
        spec = parse_schedule(args.expression)
        if spec.name == "keep":
            raise ScheduleError("keep continues a run's schedule; give a schedule to print")
        if args.epochs < 1 or args.batches_per_epoch < 1:
            raise ScheduleError("--epochs and --batches-per-epoch must be at least 1")
    except ScheduleError as e:
        print(f"lrctl: {e}", file=sys.stderr)
        return EXIT_USAGE
    from lrctl.lr_runner import preview

    for epoch, lr in enumerate(preview(spec, args.epochs, args.batches_per_epoch)):
        print(f"{epoch} {lr:.10g}")
    return EXIT_OK


def _resolve_config(args: argparse.Namespace, store: RunStore) -> tuple[config_mod.RunConfig | None, str]:
    """The config the user asked for, or None to use the run's frozen one."""
    explicit = getattr(args, "config", None) is not None or getattr(args, "set", [])
    if store.exists and not explicit:
        return None, ""
    return load_config(getattr(args, "config", None), getattr(args, "set", []))


def load_config(path: Path | None, assignments: list[str]) -> tuple[config_mod.RunConfig, str]:
    """``--config`` (default configs/lesson.toml, else the built-in lesson) with ``--set`` applied."""
    if path is None and DEFAULT_CONFIG.exists():
        path = DEFAULT_CONFIG
    cfg, origin = config_mod.load(path)
    if assignments:
        cfg = config_mod.with_overrides(cfg, assignments)
        origin += " with --set " + " ".join(assignments)
    return cfg, origin


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


def cmd_train(args: argparse.Namespace) -> int:
    run_name = args.run
    RunStore(args.runs_dir, run_name)  # validates the name before any file is touched
    plan = None
    if getattr(args, "plan", None) is not None:
        try:
            plan = parse_plan(args.plan)
        except ValueError as e:
            print(f"lrctl: --plan: {e}", file=sys.stderr)
            return EXIT_USAGE
    from lrctl import distributed

    if args.nproc is not None and distributed.world_size_from_env() <= 1:
        if args.nproc < 1 or args.max_restarts < 0:
            print("lrctl: --nproc must be at least 1 and --max-restarts at least 0", file=sys.stderr)
            return EXIT_USAGE
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
    cfg, _ = load_config(getattr(args, "config", None), getattr(args, "set", []))
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
        if session._stop:
            session.request_abandon()
        session.shutdown = True
        session.request_stop()

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
    if save_every < 0:
        print("lrctl: --save-every must be >= 0", file=sys.stderr)
        return None, None, origin
    if cfg is None:
        from lrctl.session import _read_frozen_config

        cfg, _ = _read_frozen_config(store)
    prebuilt = None
    if not store.exists and (cfg.data.source in ("csv", "factory") or cfg.model.kind == "factory"):
        # User data and models can fail in many ways: find out before the run directory exists.
        from lrctl.engine import Trainer

        prebuilt = Trainer(cfg)
    session = RunSession.open(args.runs_dir, run_name, cfg, force_config=getattr(args, "force_config", False),
                              save_every=save_every, observer=View(), config_origin=origin,
                              keep=args.keep_checkpoints, group=group)
    return session, prebuilt, origin


def _serve(args: argparse.Namespace, plan, group, session, prebuilt) -> int:
    """The open run: banner, TensorBoard, control socket, then the REPL or the plan; always closed."""
    run_name = session.store.name
    view = session.observer
    view.on_closed = session.request_stop
    logdir = str(args.runs_dir / run_name)
    board = None
    if args.tb:
        from lrctl.tb import TensorBoard

        board = TensorBoard(args.runs_dir)
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
    view.banner(run_name, session.is_new, session.store.summary(), session.cfg.describe(), logdir)
    if group is not None:
        view.say(group.describe() + (f" · restart {group.restart_count}" if group.restart_count else ""))
    if prebuilt is not None and prebuilt.data_loading:
        view.say(f"DataLoader: {prebuilt.data_loading}")
    for problem in session.store.check_checkpoints()[1]:
        view.warn(problem)
    loader = _Loader(session, prebuilt)
    code, reason = EXIT_OK, "quit"
    holder = [session, control]  # the REPL may continue in a fork
    # torchrun restarted the workers after one died: finish the interrupted work first, without asking.
    restarted = group is not None and group.restart_count > 0
    orderly = False  # the other ranks are told to quit only then: after an error they may be mid-collective
    try:
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
    finally:
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
    view.say(f"saved run '{run_name}' at epoch {step} · resume with: lrctl --run {run_name}{where}")
    return code


def _job_ran(session, group) -> bool:
    """Whether this torchrun job (before a restart) already recorded its --plan as the run's work."""
    return any(e.get("event") == "command" and e.get("job") == group.job for e in session.store.read_journal())


def _run_plan(session, plan, loader: _Loader, view, resume_only: bool = False) -> tuple[int, str]:
    from lrctl.repl import chunk_interrupts

    loader.wait()
    for warning in session.load_warnings:
        view.warn(warning)
    if resume_only:  # the plan is already the run's pending work: finish what is left of it
        view.say("the plan was started before the restart: finishing what is left of it")
        with chunk_interrupts(session, view):
            outcome = session.finish_pending()
        return _plan_result(session, outcome, view)
    pending = session.pending
    if pending is not None:
        view.warn(f"replacing the run's interrupted work ({pending.describe(session.global_step)}) with --plan")
    if parse_schedule(plan[0][1]).name == "keep" and session.trainer.runner is None:
        raise RunError("--plan starts with keep, but the run has no schedule to keep")
    with chunk_interrupts(session, view):
        outcome = session.run_plan(plan)
    return _plan_result(session, outcome, view)


def _plan_result(session, outcome, view) -> tuple[int, str]:
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
    loader.wait()
    return EXIT_OK, reason


def cmd_runs(args: argparse.Namespace) -> int:
    from lrctl.runs_table import list_runs, render

    rows = list_runs(args.runs_dir)
    if not rows:
        print(f"no runs in {args.runs_dir}")
        return EXIT_OK
    render(rows)
    return EXIT_OK
