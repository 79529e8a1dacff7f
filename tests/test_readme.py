"""The README's promises: its set-up commands are what CI runs, and its piped example works."""

from __future__ import annotations

import re

from tests.conftest import REPO, read_scalars, run_lrctl


def _readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Set-up on a fresh machine", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```\n(.+?)\n```", section)


def test_readme_has_two_setup_commands_and_ci_runs_the_test_one():
    install_and_run, install_and_test = _readme_commands()
    assert install_and_run.endswith("lrctl") and "torch==" in install_and_run
    assert "pytest" in install_and_test
    assert install_and_test in (REPO / ".ci" / "run").read_text()
    # torch is installed before the project so pip never resolves an unpinned (CUDA) torch
    assert install_and_test.index("torch==") < install_and_test.index("-e ")


def test_readme_cpu_only_variant_is_the_first_command_from_pytorchs_cpu_index():
    """On a fresh Linux machine PyPI's torch is the CUDA build: the README's CPU variant must stay in step."""
    install_and_run, _ = _readme_commands()
    text = " ".join((REPO / "README.md").read_text().split())
    cpu = re.search(r"`([^`]*download\.pytorch\.org/whl/cpu[^`]*)`", text).group(1)
    pin = re.search(r"torch==\S+", install_and_run).group(0)
    assert cpu == install_and_run.replace(pin, f"{pin} --index-url https://download.pytorch.org/whl/cpu")


def test_readme_piped_example(workdir):
    text = (REPO / "README.md").read_text()
    printf = re.search(r"`printf '([^']+)' \| lrctl --run demo`", text).group(1)
    result = run_lrctl(["--run", "demo"], workdir, stdin=printf.encode().decode("unicode_escape"))
    assert result.returncode == 0, result.stderr
    assert [s for s, _ in read_scalars(workdir / "runs" / "demo")["lr"]] == list(range(60))
