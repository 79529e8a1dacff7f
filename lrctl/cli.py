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

Exit codes: 0 done (also when the output pipe closed: ``lrctl ... | head``; saved), 1 error (message on
stderr), 2 bad usage, 130 a --plan interrupted by Ctrl-C (saved; ``lrctl resume`` finishes it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lrctl import __version__
from lrctl import config as config_mod
from lrctl.exits import EXIT_ERROR, EXIT_OK, EXIT_USAGE
from lrctl.plan import parse_plan
from lrctl.runstore import RunError, RunStore
from lrctl.schedules import ScheduleError, check_chunk, help_text
from lrctl.schedules import parse as parse_schedule

DEFAULT_CONFIG = config_mod.DEFAULT_CONFIG
DEFAULT_RUNS_DIR = Path("runs")
COMMANDS = ("train", "resume", "runs", "schedule", "find-lr", "plot", "compare", "fork", "export", "tb", "send",
            "replay")


RUNS_DIR_HELP = "where runs live (default ./runs)"
SEND_COMMANDS = """commands (applied at the next batch boundary of the running chunk; the reply is one JSON line):
  status                      where the run stands: epoch, lr, last metrics, paused, pending work
  lr VALUE [set|scale|restart]
                              a number or a schedule for the rest of the chunk; under a running schedule a
                              number means set (a flat lr), scale (the schedule scaled to VALUE now) or
                              restart (the schedule again from now with base VALUE); default set
  pause, resume               hold training at the batch boundary, continue
  stop                        stop after the current epoch (kept and saved)
  checkpoint                  checkpoint at the next batch boundary (mid-epoch if need be)
JSON lines work too: {"cmd": "lr", "value": "0.01", "mode": "scale"}"""


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs-dir", type=Path, default=DEFAULT_RUNS_DIR, help=RUNS_DIR_HELP)
    p.add_argument("--save-every", type=float, default=None, metavar="SECONDS",
                   help="checkpoint at an epoch end when this many seconds have passed (default 5; 0 = every epoch)")
    p.add_argument("--keep-checkpoints", type=int, default=10, metavar="K",
                   help="keep the checkpoints of the last K chunk boundaries, for undo and fork --at (default 10)")
    p.add_argument("--tb", action="store_true", help="start TensorBoard beside the prompt (stopped on exit)")
    p.add_argument("--tb-port", type=int, default=None, metavar="PORT",
                   help="with --tb: TensorBoard's port (default: a free one)")
    p.add_argument("--tb-args", default="", metavar="FLAGS",
                   help="with --tb: more tensorboard flags, e.g. --tb-args='--window_title demo' (write it with =)")
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
    runs.add_argument("--runs-dir", type=Path, default=DEFAULT_RUNS_DIR, help=RUNS_DIR_HELP)
    schedule = sub.add_parser("schedule", help="print the lr of every epoch of a schedule expression",
                              epilog=help_text(), formatter_class=argparse.RawDescriptionHelpFormatter)
    schedule.add_argument("expression", help='a number or a schedule, e.g. "exp 0.05 gamma=0.95" (families below)')
    schedule.add_argument("--epochs", type=int, required=True, help="how many epochs to print (the chunk's length)")
    schedule.add_argument("--batches-per-epoch", type=int, default=14,
                          help="batches per epoch, for per-batch schedules (cyclic, onecycle; default 14, the "
                               "lesson's)")
    find = sub.add_parser("find-lr", help="lr range test (a sweep, then a ladder of 2-epoch trials) from a run's "
                          "current state; the run is not changed")
    find.add_argument("--run", default="default", help="the run whose current state is swept (default 'default')")
    find.add_argument("--runs-dir", type=Path, default=DEFAULT_RUNS_DIR, help=RUNS_DIR_HELP)
    find.add_argument("--start", type=float, default=1e-4, help="the sweep's first lr (default 1e-4)")
    find.add_argument("--end", type=float, default=1.0, help="the sweep's last lr (default 1)")
    find.add_argument("--batches", type=int, default=None,
                      help="steps in the sweep, the lr growing geometrically from --start to --end "
                           "(default 40, or 4 epochs' worth when an epoch is shorter)")
    plot = sub.add_parser("plot", help="train/test metric and lr of runs against the global epoch")
    plot.add_argument("runs", nargs="+", help="run names (a compare run: GROUP/RUN)")
    plot.add_argument("--runs-dir", type=Path, default=DEFAULT_RUNS_DIR, help=RUNS_DIR_HELP)
    plot.add_argument("--png", type=Path, default=None, help="also write the figure to this PNG file")
    compare = sub.add_parser("compare", help="train several plans from the same initial state, over seeds")
    compare.add_argument("--plans", nargs="+", default=None,
                         help='plans as for --plan, e.g. "60@0.03" "30@0.03;30@0.01" (default: the lesson\'s six)')
    compare.add_argument("--seeds", default=None,
                         help="model seeds, e.g. 24,25,26: each plan runs once per seed and the table gives the "
                              "spread (default: the config's seed, one run per plan)")
    compare.add_argument("--name", default="compare", help="the group's folder under the runs directory")
    compare.add_argument("--runs-dir", type=Path, default=DEFAULT_RUNS_DIR, help=RUNS_DIR_HELP)
    compare.add_argument("--config", type=Path, default=None,
                         help=f"TOML config of every run (default {DEFAULT_CONFIG}, else the built-in lesson)")
    compare.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                         help="override a config value, e.g. --set train.batch_size=25 (repeatable)")
    fork = sub.add_parser("fork", help="copy a run into a new one, from its latest or a kept checkpoint")
    fork.add_argument("run", help="the run to copy")
    fork.add_argument("new", help="the new run's name")
    fork.add_argument("--at", type=int, default=None, metavar="EPOCH", help="a kept chunk-boundary epoch")
    fork.add_argument("--runs-dir", type=Path, default=DEFAULT_RUNS_DIR, help=RUNS_DIR_HELP)
    export = sub.add_parser("export", help="a run's per-epoch records as CSV and/or its model state_dict")
    export.add_argument("run", help="run name")
    export.add_argument("--csv", type=Path, default=None, metavar="FILE",
                        help="write one row per epoch: epoch, lr, train and test metric")
    export.add_argument("--model", type=Path, default=None, metavar="FILE",
                        help="write the model's state_dict (torch.save; load with torch.load(weights_only=True))")
    export.add_argument("--runs-dir", type=Path, default=DEFAULT_RUNS_DIR, help=RUNS_DIR_HELP)
    send = sub.add_parser("send", help="send a command to a running lrctl: status, lr VALUE [set|scale|restart], "
                                       "pause, resume, stop, checkpoint",
                          epilog=SEND_COMMANDS, formatter_class=argparse.RawDescriptionHelpFormatter)
    send.add_argument("run", help="the run being trained (its control socket is runs/<run>/control.sock)")
    send.add_argument("words", nargs="+", metavar="COMMAND", help="one of the commands below, with its arguments")
    send.add_argument("--runs-dir", type=Path, default=DEFAULT_RUNS_DIR, help=RUNS_DIR_HELP)
    replay = sub.add_parser("replay", help="re-execute a run's journal into a new run (bit-identical)")
    replay.add_argument("run", help="the run whose journal is replayed")
    replay.add_argument("--to", required=True, metavar="NEW", help="the new run's name")
    replay.add_argument("--runs-dir", type=Path, default=DEFAULT_RUNS_DIR, help=RUNS_DIR_HELP)
    tb = sub.add_parser("tb", help="start TensorBoard for the runs directory on 127.0.0.1",
                        usage="lrctl tb [-h] [--runs-dir RUNS_DIR] [--port PORT] [-- TENSORBOARD_FLAG ...]",
                        epilog="Every epoch is shown (--samples_per_plugin=scalars=1000000). Flags after -- go to "
                               "tensorboard, e.g. lrctl tb --port 6007 -- --window_title lesson")
    tb.add_argument("--runs-dir", type=Path, default=DEFAULT_RUNS_DIR, help=RUNS_DIR_HELP)
    tb.add_argument("--port", type=int, default=None, help="the port to serve on (default: a free one)")
    tb.add_argument("tensorboard_args", nargs="*", metavar="TENSORBOARD_FLAG", help=argparse.SUPPRESS)
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
        check_chunk(spec, args.epochs)  # a warm-up as long as --epochs: said here, not as a traceback
    except ScheduleError as e:
        print(f"lrctl: {e}", file=sys.stderr)
        return EXIT_USAGE
    from lrctl.lr_runner import preview

    for epoch, lr in enumerate(preview(spec, args.epochs, args.batches_per_epoch)):
        print(f"{epoch} {lr:.10g}")
    return EXIT_OK


def option_problems(args: argparse.Namespace) -> list[str]:
    """Every numeric option out of its range, each naming the option (nan and inf included)."""
    import math

    problems = []
    if args.save_every is not None and not (math.isfinite(args.save_every) and args.save_every >= 0):
        problems.append(f"--save-every: must be a finite number of seconds >= 0 (0 = every epoch), "
                        f"got {args.save_every}")
    if args.keep_checkpoints < 0:
        problems.append(f"--keep-checkpoints: must be >= 0 (0 = keep all), got {args.keep_checkpoints}")
    if args.dist_timeout is not None and not (math.isfinite(args.dist_timeout) and args.dist_timeout > 0):
        problems.append(f"--dist-timeout: must be a finite number of seconds > 0, got {args.dist_timeout}")
    if args.nproc is not None and args.nproc < 1:
        problems.append(f"--nproc: must be at least 1, got {args.nproc}")
    if args.max_restarts < 0:
        problems.append(f"--max-restarts: must be at least 0, got {args.max_restarts}")
    return problems


def cmd_train(args: argparse.Namespace) -> int:
    """Train (the REPL, a --plan, resume): options checked here, the run itself in :mod:`lrctl.app`."""
    RunStore(args.runs_dir, args.run)  # validates the name before any file is touched
    problems = option_problems(args)
    if problems:
        print("\n".join(f"lrctl: {problem}" for problem in problems), file=sys.stderr)
        return EXIT_USAGE
    plan = None
    if getattr(args, "plan", None) is not None:
        try:
            plan = parse_plan(args.plan)
        except ValueError as e:
            print(f"lrctl: --plan: {e}", file=sys.stderr)
            return EXIT_USAGE
    from lrctl import app

    return app.train(args, plan)


def cmd_runs(args: argparse.Namespace) -> int:
    from lrctl.runs_table import list_runs, render

    rows = list_runs(args.runs_dir)
    if not rows:
        print(f"no runs in {args.runs_dir}")
        return EXIT_OK
    render(rows)
    return EXIT_OK
