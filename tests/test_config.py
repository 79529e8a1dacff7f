"""Config: defaults, TOML loading with every problem named, overrides, the frozen copy in a run."""

from __future__ import annotations

from pathlib import Path

import pytest

from lrctl import config
from lrctl.config import ConfigError, RunConfig
from tests.conftest import REPO, run_lrctl


def test_shipped_lesson_config_is_the_default():
    cfg, origin = config.load(REPO / "configs" / "lesson.toml")
    assert cfg == RunConfig()


def test_toml_round_trip():
    cfg = config.with_overrides(RunConfig(), ["model.hidden=[8, 8, 8]", "train.optimizer=adam", "data.noise=0.5"])
    assert config.from_dict(config.tomllib.loads(config.to_toml(cfg))) == cfg


def test_python_3_10_reads_configs_with_tomli(tmp_path):
    """requires-python >= 3.10: without the standard library's tomllib (3.11+), tomli reads the same files."""
    import subprocess
    import sys

    from tests.conftest import lrctl_env

    code = ("import sys; sys.modules['tomllib'] = None\n"  # what Python 3.10 has: no tomllib
            "from lrctl import config\n"
            "cfg, _ = config.load(sys.argv[1])\n"
            "assert config.tomllib.__name__ == 'tomli' and cfg == config.RunConfig()\n"
            "assert config.with_overrides(cfg, ['train.batch_size=25']).train.batch_size == 25\n")
    result = subprocess.run([sys.executable, "-c", code, str(REPO / "configs" / "lesson.toml")],
                            capture_output=True, text=True, env=lrctl_env())
    assert result.returncode == 0, result.stderr


def test_every_problem_is_listed_with_file_and_key(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[data]\nrowz = 5\nseed = "x"\n[model]\nbatch_norm = "middle"\n[trian]\n')
    with pytest.raises(ConfigError) as info:
        config.load(path)
    message = str(info.value)
    assert str(path) in message
    assert "data.rowz: unknown key (did you mean 'rows'?)" in message
    assert "data.seed: expected an integer, got 'x'" in message
    assert "unknown section [trian] (did you mean [train]?)" in message


def test_contradictions_name_the_key():
    with pytest.raises(ConfigError, match="model.batch_norm: 'middle' is not one of none, post, pre"):
        config.with_overrides(RunConfig(), ["model.batch_norm=middle"])
    with pytest.raises(ConfigError, match="accuracy and cross-entropy need a classification"):
        config.with_overrides(RunConfig(), ["train.metric=accuracy"])
    with pytest.raises(ConfigError, match="expected section.key=value"):
        config.with_overrides(RunConfig(), ["batch_size=3"])


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        config.load(tmp_path / "nope.toml")
    (tmp_path / "x.toml").write_text("[data\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(tmp_path / "x.toml")


def test_config_error_exits_before_any_run_directory_exists(workdir):
    (workdir / "bad.toml").write_text("[model]\nhiden = [3]\n")
    result = run_lrctl(["--run", "x", "--config", "bad.toml", "--plan", "1@0.1"], workdir)
    assert result.returncode == 1
    assert "model.hiden: unknown key (did you mean 'hidden'?)" in result.stderr
    assert not (workdir / "runs").exists()


def test_a_run_refuses_a_different_config_with_a_diff_unless_forced(workdir):
    assert run_lrctl(["--run", "c", "--plan", "1@0.1"], workdir).returncode == 0
    result = run_lrctl(["--run", "c", "--set", "train.batch_size=25", "--plan", "1@0.1"], workdir)
    assert result.returncode == 1
    assert "train.batch_size: 50 (run) -> 25 (given)" in result.stderr
    result = run_lrctl(["--run", "c", "--set", "train.batch_size=25", "--force-config", "--plan", "1@0.1"], workdir)
    assert result.returncode == 0, result.stderr
    assert "batch_size = 25" in (workdir / "runs" / "c" / "config.toml").read_text()
    assert '"config_changed"' in (workdir / "runs" / "c" / "journal.jsonl").read_text()


def test_classification_config_logs_accuracy(workdir):
    result = run_lrctl(["--run", "cla", "--config", str(REPO / "configs" / "lesson-classification.toml"),
                        "--plan", "3@0.1"], workdir)
    assert result.returncode == 0, result.stderr
    from tests.conftest import read_scalars

    scalars = read_scalars(Path(workdir) / "runs" / "cla")
    assert {"train_accuracy", "test_accuracy", "lr"} <= scalars.keys()
    assert all(0 <= v <= 1 for _, v in scalars["test_accuracy"])
