"""The benchmark: a row per path with its ratio to the bare loop, memory measured alone, a chunk cost >= 0."""

from __future__ import annotations

import dataclasses
import os

import pytest

from lrctl import bench


def _shorten(monkeypatch, epochs: int) -> None:
    """The benchmark's own paths with fewer epochs (the real ones run for seconds)."""
    real = bench.paths
    monkeypatch.setattr(bench, "paths", lambda workdir: [dataclasses.replace(p, epochs=epochs) for p in real(workdir)])


@pytest.fixture
def short_paths(monkeypatch):
    _shorten(monkeypatch, 2)


def test_a_row_per_path_with_its_ratio_to_the_bare_loop(short_paths, capsys):
    assert bench.main(["--paths", "csv", "--rounds", "1", "--no-prompt", "--no-memory", "--no-state-costs",
                       "--device", "cpu"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| tensors")]
    assert [r.split(" | ")[0] for r in rows] == ["| tensors: CSV file, 5,000 rows x 8 features, MLP 8-32-16-1"]
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        bare, mine, ratio = float(cells[2]), float(cells[3]), cells[4]
        assert float(ratio.rstrip("x")) == pytest.approx(mine / bare, rel=0.05, abs=0.01)  # from unrounded times
        assert float(cells[6]) >= 0


def test_the_chunk_cost_cannot_be_negative(tmp_path):
    from lrctl.config import RunConfig

    loop = bench.lrctl_loop(RunConfig(), tmp_path, "c", "0.01")
    cost = bench.chunk_cost_ms(loop, repeats=3)
    loop.session.close()
    assert 0 <= cost < 10_000


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="Linux: resets the high-water mark")
def test_peak_memory_counts_what_the_loop_adds():
    # In a fresh interpreter, as the benchmark measures it: one that ran other tests reuses freed pages.
    # Built, not trained (epochs=0): the 10M-parameter MLP's 38 MB of weights.
    import subprocess
    import sys

    code = ("import dataclasses\nfrom lrctl import bench\nreal = bench.paths\n"
            "bench.paths = lambda w: [dataclasses.replace(p, epochs=0) for p in real(w)]\n"
            "print(bench.memory_child('big', 'cpu', 'bare'))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    bare = float(result.stdout.strip().splitlines()[-1])
    assert 38 < bare < 200, result.stdout + result.stderr


def test_rounds_alternate_their_order():
    calls: list[str] = []
    loops = {name: (lambda epochs, name=name: calls.append(name)) for name in ("bare", "lrctl", "extra")}
    times = bench.measure(loops, epochs=1, rounds=3)
    assert calls == ["bare", "lrctl", "extra", "extra", "lrctl", "bare", "bare", "lrctl", "extra"]
    assert set(times) == set(loops) and all(t >= 0 for t in times.values())
