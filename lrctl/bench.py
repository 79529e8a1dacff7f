"""Benchmark: every path a user can take through lrctl, each against its bare PyTorch equivalent.

::

    $ python -m lrctl.bench                     # every path, peak memory, chunk cost, first prompt
    $ python -m lrctl.bench --paths digits big --rounds 3 --no-prompt
    $ python -m lrctl.bench --device cuda       # the GPU rows (scripts/gpu-check runs this)
    $ python -m lrctl.bench --lr-finders        # the lr finders against the 10-epoch truth (lrctl.lrtruth)

Paths: in-memory tensors (the lesson's regression at 1,000 and 20,000 rows, its classification, a
CSV file), a Dataset with a per-item transform through a DataLoader without and with worker
processes (scikit-learn's digits and the 38k-parameter CNN of ``configs/digits.toml``), and a
10M-parameter MLP. Each bare loop is what a PyTorch user writes: shuffled batches, ``zero_grad``,
``backward``, ``step``, then the train and test metric over the whole sets read with ``.item()``;
the DataLoader loops use ``DataLoader(shuffle=True)`` and evaluate in batches of 1,000 (PyTorch's
MNIST example). lrctl runs through a real :class:`~lrctl.session.RunSession` with TensorBoard logging
and the default checkpoint cadence (every 5 s of training and at every chunk end). Each row's loops
train the same model on the same data in one process, in interleaved rounds whose order alternates
(the VM is noisy: compare the ratios within a run).

Peak memory is each loop's own: it is built and trained alone in a fresh interpreter after a warm-up,
and the rise of the resident high-water mark is reported (CPU, Linux; the training process only, not
DataLoader workers), or ``torch.cuda.max_memory_allocated`` on a GPU.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lrctl._bench_loops import (
    EXAMPLES,
    bare_dataloader,
    bare_tensors,
    digits_factories,
    lesson_dataloader,
    lightning_loop,
)
from lrctl.config import RunConfig, with_overrides

Loop = Callable[[int], None]


@dataclass
class Workload:
    """One path a user can take: lrctl's config, its lr, and the bare loop that does the same work."""

    name: str
    what: str
    overrides: list[str]
    epochs: int
    bare: Callable[[RunConfig, torch.device, float], Loop]
    lr: float = 0.01
    threads: int = 1
    devices: tuple[str, ...] = ("cpu", "cuda")
    extra: dict[str, Callable[[RunConfig], Loop | None]] = field(default_factory=dict)


# -- lrctl -----------------------------------------------------------------------------------------------
def lrctl_loop(cfg: RunConfig, workdir: Path, name: str, expression: str) -> Loop:
    """lrctl as a user runs it: a RunSession with TensorBoard logging and the default checkpoint cadence."""
    from lrctl.session import Observer, RunSession

    class Chunks(Observer):
        """Adds up the epochs' own durations: a chunk's fixed cost is its wall time minus them."""

        epoch_seconds = 0.0

        def epoch_done(self, record, metric) -> None:
            self.epoch_seconds += record.seconds

    chunks = Chunks()
    session = RunSession.open(workdir, name, cfg, observer=chunks)
    session.load()

    def run(epochs: int) -> None:
        session.train(epochs, expression)

    run.session, run.chunks = session, chunks  # type: ignore[attr-defined]
    return run


def chunk_cost_ms(run: Loop, repeats: int = 7) -> float:
    """Median cost of a one-epoch chunk beyond its epoch (the fsynced command record, the epoch's
    TensorBoard write, the chunk-end checkpoint): the chunk's wall time minus the epoch's own time,
    both measured around the same chunk, so it cannot come out negative."""
    costs = []
    chunks = run.chunks  # type: ignore[attr-defined]
    for _ in range(repeats):
        chunks.epoch_seconds = 0.0
        started = time.perf_counter()
        run(1)
        costs.append((time.perf_counter() - started - chunks.epoch_seconds) * 1000)
    return statistics.median(costs)


# -- the paths -------------------------------------------------------------------------------------------
def _csv_file(workdir: Path, rows: int = 5000) -> Path:
    """A regression CSV (8 features, one target) written once for the CSV path."""
    path = workdir / "bench.csv"
    if not path.exists():
        g = torch.Generator().manual_seed(0)
        x = torch.randn(rows, 8, generator=g)
        y = x @ torch.linspace(-2, 2, 8) + 0.1 * torch.randn(rows, generator=g)
        lines = [",".join([*(f"f{i}" for i in range(8)), "target"])]
        lines += [",".join(f"{v:.6f}" for v in (*xs.tolist(), t)) for xs, t in zip(x, y.tolist(), strict=True)]
        path.write_text("\n".join(lines) + "\n")
    return path


def paths(workdir: Path) -> list[Workload]:
    digits = ['data.source="factory"', f'data.factory="{EXAMPLES}:digits"', 'data.task="classification"',
              'model.kind="factory"', f'model.factory="{EXAMPLES}:digits_cnn"', "model.seed=0",
              'train.optimizer="adam"', "train.batch_size=32"]
    big_threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return [
        Workload("lesson", "tensors: lesson regression, 1,000 rows, MLP 5-4-4-1", [], 100, bare_tensors,
              extra={"DataLoader loop": lesson_dataloader, "Lightning": lightning_loop}),
        Workload("lesson-20k", "tensors: lesson regression, 20,000 rows", ["data.rows=20000"], 5, bare_tensors),
        Workload("classification", "tensors: lesson classification, 1,500 rows, 3 classes",
              ['data.source="lesson-classification"'], 60, bare_tensors),
        Workload("csv", "tensors: CSV file, 5,000 rows x 8 features, MLP 8-32-16-1",
              ['data.source="csv"', f'data.path="{_csv_file(workdir)}"', 'data.target="target"',
               "model.hidden=[32, 16]"], 20, bare_tensors),
        Workload("digits", "Dataset + DataLoader, 0 workers: digits, CNN 38k", [*digits, "train.workers=0"], 4,
                 bare_dataloader, lr=0.003),
        Workload("digits-workers", "Dataset + DataLoader, 2 workers: digits, CNN 38k", [*digits, "train.workers=2"],
                 4, bare_dataloader, lr=0.003),
        Workload("big", "tensors: 10M-parameter MLP 5-2240-2240-2240-1", ["model.hidden=[2240, 2240, 2240]",
                 'model.batch_norm="none"', f"train.threads={big_threads}"], 2, bare_tensors, lr=0.001,
                 threads=big_threads),
    ]


def _with_threads(threads: int, loop: Loop) -> Loop:
    """Every loop runs with its path's thread count (lrctl's own choice; torch's setting is process-wide)."""
    def run(epochs: int) -> None:
        torch.set_num_threads(threads)
        loop(epochs)

    run.__dict__.update(loop.__dict__)
    return run


def build_loops(p: Workload, device: str, workdir: Path, tag: str) -> dict[str, Loop]:
    cfg = with_overrides(RunConfig(), [*p.overrides, f'train.device="{device}"'])
    torch.set_num_threads(p.threads)
    loops = {"bare": p.bare(cfg, torch.device(device), p.lr),
             "lrctl": lrctl_loop(cfg, workdir, f"{p.name}-{device}-{tag}", f"{p.lr:g}")}
    if device == "cpu":
        for name, make in p.extra.items():
            loop = make(cfg)
            if loop is not None:
                loops[name] = loop
    return {name: _with_threads(p.threads, loop) for name, loop in loops.items()}


def measure(loops: dict[str, Loop], epochs: int, rounds: int) -> dict[str, float]:
    """Median ms per epoch of each loop over interleaved rounds, every other round in reverse order (no loop
    always runs right after the same one, in caches or load the one before left)."""
    times: dict[str, list[float]] = {name: [] for name in loops}
    for i in range(rounds):
        for name, run in list(loops.items())[::-1 if i % 2 else 1]:
            started = time.perf_counter()
            run(epochs)
            times[name].append((time.perf_counter() - started) / epochs * 1000)
    return {name: statistics.median(v) for name, v in times.items()}


def _resident_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024


def _warm_up(workdir: Path, p: Workload) -> None:
    """What any loop pays once per process (torch._dynamo on the first optimizer step, TensorBoard, the
    session's modules, scikit-learn), paid before memory is measured so that it is not counted."""
    lesson = next(w for w in paths(workdir) if w.name == "lesson")
    for loop in build_loops(lesson, "cpu", workdir, f"warm{os.getpid()}").values():
        loop(1)
        if hasattr(loop, "session"):
            loop.session.close()
    if p.name.startswith("digits"):
        digits_factories()[0]()


def memory_child(name: str, device: str, loop_name: str) -> float | None:
    """In a fresh interpreter: the resident memory one loop adds at its peak while built and trained."""
    import gc

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        p = next(w for w in paths(workdir) if w.name == name)
        _warm_up(workdir, p)
        gc.collect()
        try:  # reset the high-water mark to the current size (Linux >= 4.0)
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            return None
        start = _resident_mb("VmRSS")
        loop = build_loops(p, device, workdir, "mem")[loop_name]
        loop(p.epochs)
        peak = _resident_mb("VmHWM") - start
        if hasattr(loop, "session"):
            loop.session.close()
        return peak


def peak_memory_mb(p: Workload, device: str, workdir: Path, name: str) -> float | None:
    """Peak memory one loop adds while it is built and trained (None where it cannot be measured).

    CPU: in a fresh interpreter, after a warm-up, as the rise of its resident high-water mark (Linux;
    the training process only, not DataLoader workers). CUDA: ``torch.cuda.max_memory_allocated``.
    """
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        loop = build_loops(p, device, workdir, f"mem-{name}")[name]
        loop(p.epochs)
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
        if hasattr(loop, "session"):
            loop.session.close()
        return peak
    if not os.path.exists("/proc/self/clear_refs"):
        return None
    import subprocess

    result = subprocess.run([sys.executable, "-m", "lrctl.bench", "--memory-of", p.name, device, name],
                            capture_output=True, text=True, timeout=600)
    try:
        return float(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None


@dataclass
class Row:
    path: Workload
    device: str
    ms: dict[str, float]
    memory: dict[str, float | None]
    chunk_ms: float


def bench_path(p: Workload, device: str, workdir: Path, rounds: int, memory: bool) -> Row:
    mem = {name: peak_memory_mb(p, device, workdir, name) for name in ("bare", "lrctl")} if memory else {}
    loops = build_loops(p, device, workdir, "time")
    for loop in loops.values():  # warm-up: one-time imports and lazy initialisation happen here
        loop(p.epochs)
    ms = measure(loops, p.epochs, rounds)
    chunk_ms = chunk_cost_ms(loops["lrctl"])
    loops["lrctl"].session.close()  # type: ignore[attr-defined]
    return Row(p, device, ms, mem, chunk_ms)


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def print_table(rows: list[Row]) -> None:
    """The rows as a Markdown table (the README's)."""
    print("\n| path | device | bare ms/epoch | lrctl ms/epoch | lrctl/bare | peak MB bare / lrctl | chunk cost ms |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        bare, mine = r.ms["bare"], r.ms["lrctl"]
        print(f"| {r.path.what} | {r.device} | {bare:.1f} | {mine:.1f} | {mine / bare:.2f}x | "
              f"{_mb(r.memory.get('bare'))} / {_mb(r.memory.get('lrctl'))} | {r.chunk_ms:.1f} |")
    extras = [(r, name, ms) for r in rows for name, ms in r.ms.items() if name not in ("bare", "lrctl")]
    for r, name, ms in extras:
        print(f"\n{r.path.name} ({r.device}): {name} {ms:.1f} ms/epoch = {ms / r.ms['bare']:.2f}x bare, "
              f"lrctl {r.ms['lrctl'] / ms:.2f}x it")


def first_prompt_ms(workdir: Path, runs: int = 5) -> dict[str, float]:
    """Median time from starting ``lrctl`` to the first question on a pseudo-terminal."""
    import pexpect

    results: dict[str, list[float]] = {"new run": [], "resumed run": []}
    for i in range(runs):
        for kind in results:
            name = f"new{i}" if kind == "new run" else "resumed"
            started = time.perf_counter()
            child = pexpect.spawn(sys.executable, ["-m", "lrctl", "--run", name, "--runs-dir", str(workdir)],
                                  encoding="utf-8", timeout=120, dimensions=(30, 120))
            child.expect_exact("Continue training? [y/n]")
            results[kind].append((time.perf_counter() - started) * 1000)
            child.sendcontrol("d")
            child.expect(pexpect.EOF)
    return {k: statistics.median(v) for k, v in results.items()}


def main(argv: list[str] | None = None) -> int:
    names = ["lesson", "lesson-20k", "classification", "csv", "digits", "digits-workers", "big"]
    parser = argparse.ArgumentParser(prog="python -m lrctl.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--paths", nargs="+", choices=names, default=names, help="which paths (default: all)")
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all",
                        help="cpu, cuda, or all (cpu, and cuda when available; the default)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    parser.add_argument("--no-prompt", action="store_true", help="skip the time-to-first-prompt measurement")
    parser.add_argument("--no-state-costs", action="store_true",
                        help="skip the epoch-boundary copy and mid-epoch checkpoint costs (lesson and 10M)")
    parser.add_argument("--memory-of", nargs=3, metavar=("PATH", "DEVICE", "LOOP"), help=argparse.SUPPRESS)
    parser.add_argument("--lr-finders", action="store_true",
                        help="only the lr finders against the 10-epoch truth (python -m lrctl.lrtruth)")
    args = parser.parse_args(argv)
    if args.lr_finders:
        from lrctl import lrtruth

        return lrtruth.main([])
    if args.memory_of:  # a child of peak_memory_mb
        print(memory_child(*args.memory_of))
        return 0
    cuda = torch.cuda.is_available()
    devices = {"cpu": ["cpu"], "cuda": ["cuda"], "all": ["cpu"] + (["cuda"] if cuda else [])}[args.device]
    if "cuda" in devices and not cuda:
        print("no CUDA device: nothing to measure on cuda", file=sys.stderr)
        return 1
    print(f"torch {torch.__version__} · {torch.get_num_threads()} threads available · python {sys.version.split()[0]}"
          + (f" · {torch.cuda.get_device_name()}" if cuda else ""))
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        rows = []
        for device in devices:
            for p in paths(workdir):
                if p.name not in args.paths or device not in p.devices:
                    continue
                if p.name.startswith("digits") and not _have_digits():
                    print(f"{p.name}: skipped (needs scikit-learn and {EXAMPLES}: pip install -e '.[examples]')")
                    continue
                row = bench_path(p, device, workdir, args.rounds, not args.no_memory)
                rows.append(row)
                print(f"  {p.name} ({device}): bare {row.ms['bare']:.1f}, lrctl {row.ms['lrctl']:.1f} ms/epoch",
                      flush=True)
        print_table(rows)
        if "cpu" in devices and not args.no_state_costs:
            print("\nkeeping a run safe (median ms):")
            for label, hidden in (("lesson", [4, 4]), ("10M", [2240, 2240, 2240])):
                costs = state_costs_ms(workdir, hidden, label)
                print(f"  {label} ({costs['params']:,} parameters): epoch-boundary copy "
                      f"{costs['epoch-boundary copy']:.2f} ms, "
                      f"mid-epoch checkpoint {costs['mid-epoch checkpoint']:.1f} ms")
        if not args.no_prompt and "cpu" in devices:
            prompt = first_prompt_ms(workdir)
            print("\ntime to first prompt (pseudo-terminal, median of 5): "
                  + ", ".join(f"{k} {v:.0f} ms" for k, v in prompt.items()))
    return 0


def state_costs_ms(workdir: Path, hidden: list[int], label: str, repeats: int = 5) -> dict[str, float]:
    """What keeping a run safe costs at one model size: the in-memory copy taken at every epoch boundary
    (so Ctrl-C twice drops only the running epoch) and a checkpoint written between two batches
    (mid-epoch, on the --save-every cadence of a long epoch, or at SIGTERM/SIGUSR1), medians in ms."""
    from lrctl.session import Observer, RunSession
    from lrctl.snapshot import EpochSnapshot

    cfg = with_overrides(RunConfig(), [f"model.hidden={hidden}", 'model.batch_norm="none"', "data.rows=1000"])
    session = RunSession.open(workdir, f"state-costs-{label}", cfg, save_every=float("inf"))
    session.load()
    trainer, snapshot = session.trainer, EpochSnapshot()
    times: dict[str, list[float]] = {"epoch-boundary copy": [], "mid-epoch checkpoint": []}

    class AtBatch(Observer):
        wants_batches = True

        def batch_done(self, batch: int, batches: int) -> None:
            if batch == 2:
                start = time.perf_counter()
                session.save()
                times["mid-epoch checkpoint"].append(time.perf_counter() - start)

    session.observer = AtBatch()
    session.train(1, "0.0001")
    for _ in range(repeats):
        start = time.perf_counter()
        snapshot.take(trainer)
        times["epoch-boundary copy"].append(time.perf_counter() - start)
        session.train(1, "keep")
    session.close()
    params = sum(p.numel() for p in trainer.model.parameters())
    return {"params": params, **{k: statistics.median(v) * 1e3 for k, v in times.items()}}


def _have_digits() -> bool:
    try:
        import sklearn  # noqa: F401
    except ImportError:
        return False
    return EXAMPLES.exists()


if __name__ == "__main__":
    raise SystemExit(main())
