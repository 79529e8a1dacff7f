"""``lrctl runs``: every run in a runs directory with where it stands, read without torch."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from lrctl.runstore import CONFIG_FILE, LOCK_FILE, PENDING_FILE, RunError, RunStore


@dataclass
class RunRow:
    name: str
    step: int | None
    metric: str
    train: float | None
    test: float | None
    lr: str  # the last epoch's lr and, where it differs, the next (lrctl.view.lr_now)
    modified: str
    state: str


def _state(store: RunStore) -> str:
    from filelock import FileLock, Timeout

    lock = FileLock(str(store.dir / LOCK_FILE), timeout=0)
    try:
        lock.acquire()
        lock.release()
    except Timeout:
        return f"locked by {store._holder()}"
    except OSError:
        pass
    chosen, problems = store.check_checkpoints()
    if chosen is None and problems:
        return "corrupt: " + "; ".join(problems)
    meta_problem = store.meta_problem()
    if meta_problem:
        return f"unverified: {meta_problem} (lrctl resume {store.name} rewrites it)"
    undo = store.interrupted_undo()
    if undo is not None:
        return (f"undo interrupted (epoch {undo.get('from_step')} to {undo.get('to_step')}): "
                f"opening the run finishes it")
    pending_problem = store.pending_problem()
    if pending_problem:
        return f"interrupted? {pending_problem}: lrctl resume {store.name} rebuilds the work from the journal"
    if not problems and store.pending_file_lost():  # (after a fallback the journal reaches past it anyway)
        return f"interrupted? {PENDING_FILE} is missing: lrctl resume {store.name} rebuilds the work from the journal"
    pending = store.read_pending()
    step = int(store.summary().get("global_step", 0))
    if pending is not None and pending.remaining(step) > 0:
        return f"interrupted ({pending.describe(step)})"
    if problems:
        return "ok (latest checkpoint damaged; previous one used)"
    return "ok"


def _loaded_summary(store: RunStore) -> tuple[dict, str | None]:
    """Without a checksum file the summary is unknown without loading: load (torch, weights_only)."""
    from lrctl.runops import state_summary

    try:
        loaded = store.load_checkpoint()
    except RunError as e:
        return {}, f"corrupt: {e}"
    refused = [w for w in loaded.warnings if "refused" in w]
    return state_summary(loaded.state, "mse"), ("refused: " + "; ".join(refused)) if refused else None


def _run_dirs(runs_dir: Path) -> list[tuple[str, Path]]:
    """(shown name, directory) of every run: the runs directory's own, and one level down the groups
    that ``lrctl compare`` makes (``runs/<name>/<plan>``, shown as ``<name>/<plan>``)."""
    found = []
    for path in sorted(Path(runs_dir).iterdir()):
        if (path / CONFIG_FILE).exists():
            found.append((path.name, path))
        elif path.is_dir() and not path.name.startswith("_"):  # _lr-find holds sweeps, not runs
            found += [(f"{path.name}/{sub.name}", sub) for sub in sorted(path.iterdir())
                      if (sub / CONFIG_FILE).exists()]
    return found


def list_runs(runs_dir: Path) -> list[RunRow]:
    rows = []
    if not Path(runs_dir).is_dir():
        return rows
    for shown, path in _run_dirs(Path(runs_dir)):
        try:
            store = RunStore(path.parent, path.name)
        except RunError:
            continue
        from lrctl.view import lr_now

        summary = store.summary()
        state = None
        if not summary and store.has_checkpoint():
            summary, state = _loaded_summary(store)
        last = summary.get("last") or {}
        modified = max((p.stat().st_mtime for p in path.iterdir()), default=path.stat().st_mtime)
        rows.append(RunRow(shown, summary.get("global_step"), summary.get("metric", "mse"), last.get("train"),
                           last.get("test"), lr_now(summary),
                           dt.datetime.fromtimestamp(modified).strftime("%Y-%m-%d %H:%M"), state or _state(store)))
    return rows


def render(rows: list[RunRow]) -> None:
    from rich.console import Console
    from rich.table import Table

    from lrctl.view import fmt_metric

    table = Table(box=None, pad_edge=False)
    for column in ("run", "epoch", "train", "test", "lr", "modified", "state"):
        table.add_column(column, justify="right" if column in ("epoch", "train", "test", "lr") else "left")
    for r in rows:
        table.add_row(r.name, "-" if r.step is None else str(r.step), f"{fmt_metric(r.train)} {r.metric}",
                      fmt_metric(r.test), r.lr, r.modified, r.state)
    import sys

    # A pipe has no width: don't let rich fold rows at 80 columns where scripts read them.
    width = None if sys.stdout.isatty() else 250
    Console(highlight=False, width=width).print(table)
