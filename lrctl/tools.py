"""The experiment commands around runs: find-lr, plot, compare, fork, export, tb (``lrctl <command>``)."""

from __future__ import annotations

import argparse
import csv

from lrctl.runstore import RunError, RunStore


def _existing(runs_dir, name: str) -> RunStore:
    store = RunStore(runs_dir, name)
    if not store.exists:
        raise RunError(f"no run '{name}' in {runs_dir}; start it with: lrctl --run {name}")
    return store


def _say(text: str) -> None:
    print(text, flush=True)  # noqa: T201 - these commands are command-line front ends


def cmd_find_lr(args: argparse.Namespace) -> int:
    from lrctl.commands import find_range_error
    from lrctl.engine import Trainer
    from lrctl.lrfind import log_sweep, range_test
    from lrctl.plots import lr_chart
    from lrctl.runops import read_frozen_config

    error = find_range_error(args.start, args.end, args.batches)
    if error:
        _say(f"lrctl: find-lr: {error.removeprefix('find ')} (--start, --end, --batches)")
        return 2
    store = _existing(args.runs_dir, args.run)
    cfg, _ = read_frozen_config(store)
    trainer = Trainer(cfg)
    if store.has_checkpoint():
        trainer.load_state_dict(store.load_checkpoint().state)
    try:
        result = range_test(trainer, args.start, args.end, args.batches)
    except ValueError as e:
        _say(f"lrctl: find-lr: {e}")
        return 1
    logdir = log_sweep(args.runs_dir, args.run, trainer.global_step, result)
    _say(lr_chart(result.lrs, result.losses, result.marks()))
    _say(f"swept {len(result.lrs)} batches from {args.start:g} to {result.lrs[-1]:.3g}, the loss measured on the "
         "same training rows after each" + (" (stopped: the loss exploded)" if result.stopped_early else ""))
    _say(result.summary())
    _say(f"run '{args.run}' is unchanged · sweep in TensorBoard: {logdir}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from lrctl.plots import chart_width, load_curves, save_png, terminal_chart

    curves = [load_curves(args.runs_dir, name) for name in args.runs]
    _say(terminal_chart(curves, width=chart_width()))
    if args.png is not None:
        save_png(curves, args.png)
        _say(f"wrote {args.png}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from lrctl.compare import LESSON_PLANS, chart, run_all, summarize
    from lrctl.config import load_config
    from lrctl.plan import check_plan, parse_plan

    texts = args.plans or LESSON_PLANS
    try:
        plans = [parse_plan(text) for text in texts]
        for text, plan in zip(texts, plans, strict=True):  # each plan trains a new run: no schedule to keep
            try:
                check_plan(plan, has_schedule=False)
            except ValueError as e:
                raise ValueError(f"plan {text!r}: {e}") from None
        seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
    except ValueError as e:
        _say(f"lrctl: compare: {e}")
        return 2
    if len(set(texts)) != len(texts):
        _say("lrctl: compare: a plan is given twice")
        return 2
    RunStore(args.runs_dir, args.name)  # the group name follows the run-name rules
    cfg, _ = load_config(args.config, args.set)
    _say(f"comparing {len(texts)} plans" + (f" over seeds {', '.join(map(str, seeds))}" if seeds else "")
         + f" · runs in {args.runs_dir / args.name} · tensorboard --logdir {args.runs_dir / args.name}")
    results = run_all(args.runs_dir, args.name, plans, texts, seeds, cfg, _say)
    _log_hparams(args.runs_dir / args.name, results, cfg.metric, seeds is not None)
    rows = summarize(results, texts, higher_is_better=cfg.metric == "accuracy")
    m = cfg.metric
    spread = seeds is not None and len(seeds) > 1  # one seed has no spread: no column of zeros
    _say(f"\n{'plan':<32} {'final train_' + m:>16} {'final test_' + m:>16} {'best test_' + m:>16}"
         + (f" {'spread':>9}" if spread else ""))
    for r in rows:
        if r.diverged == r.seeds:
            _say(f"{r.plan:<32} {'diverged':>16} {'diverged':>16} {'diverged':>16}" + (f" {'':>9}" if spread else ""))
            continue
        _say(f"{r.plan:<32} {r.final_train:>16.5g} {r.final_test:>16.5g} {r.best_test:>16.5g}"
             + (f" {r.spread_test:>9.3g}" if spread else "")
             + (f"  ({r.note}; means over the others)" if r.diverged else ""))
    _say("(spread: standard deviation of the final test metric over seeds)\n" if spread else
         f"(one seed, {cfg.model.seed}: --seeds 24,25,26 repeats every plan per seed and adds their spread)\n")
    _say(chart(results, texts, m))
    return 0


def _log_hparams(group_dir, results, metric: str, seeds: bool) -> None:
    """TensorBoard's HParams tab: plan and seed of every run against its final and best test metric."""
    from lrctl.tbplugins import write_experiment, write_trial

    write_experiment(group_dir, metric, seeds)
    best = max if metric == "accuracy" else min
    for r in results:
        if r.test:
            write_trial(group_dir / r.run, r.plan, r.seed, metric, best(r.test), len(r.test) - 1)


def cmd_fork(args: argparse.Namespace) -> int:
    from lrctl.runops import fork_run

    notes: list[str] = []
    step = fork_run(args.runs_dir, args.run, args.new, args.at, notes)
    for note in notes:
        _say(note)
    _say(f"forked run '{args.run}' at epoch {step} into '{args.new}' · continue with: lrctl --run {args.new}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from lrctl.runops import read_frozen_config

    if args.csv is None and args.model is None:
        _say("lrctl: export needs --csv FILE and/or --model FILE")
        return 2
    store = _existing(args.runs_dir, args.run)
    cfg, _ = read_frozen_config(store)
    state = store.load_checkpoint().state
    if args.csv is not None:
        with open(args.csv, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["epoch", "lr", f"train_{cfg.metric}", f"test_{cfg.metric}"])
            for h in state.get("history") or []:
                writer.writerow([h["step"], repr(h["lr"]), repr(h["train"]), repr(h["test"])])
        _say(f"wrote {len(state.get('history') or [])} epochs to {args.csv}")
    if args.model is not None:
        import torch

        torch.save(state["model"], args.model)
        _say(f"wrote the model's state_dict (epoch {state['global_step']}) to {args.model}")
    return 0


def cmd_tb(args: argparse.Namespace) -> int:
    from lrctl.tb import TensorBoard

    board = TensorBoard(args.runs_dir, args.port, args.tensorboard_args)
    try:  # until Ctrl-C, SIGTERM or SIGHUP (exit 0); TensorBoard is stopped either way
        ended_by = board.serve(lambda url: _say(f"TensorBoard for {args.runs_dir} at {url} · Ctrl-C stops it"))
    except RuntimeError as e:
        raise RunError(str(e)) from None
    if ended_by is None:
        raise RunError("TensorBoard exited by itself")
    return 0


def cmd_send(args: argparse.Namespace) -> int:
    import json

    from lrctl.control import ControlError, send

    RunStore(args.runs_dir, args.run)  # the name rules
    try:
        reply = send(args.runs_dir / args.run, " ".join(args.words))
    except ControlError as e:
        reply = {"ok": False, "error": str(e)}
    _say(json.dumps(reply))
    return 0 if reply.get("ok") else 1


def cmd_replay(args: argparse.Namespace) -> int:
    from lrctl.replay import replay

    step = replay(args.runs_dir, args.run, args.to)
    _say(f"replayed run '{args.run}' into '{args.to}' (epoch {step}) · compare: lrctl plot {args.run} {args.to}")
    return 0
