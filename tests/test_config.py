"""Config: defaults, TOML loading with every problem named, overrides, the frozen copy in a run."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomllib

from lrctl import config
from lrctl.config import ConfigError, RunConfig
from tests.conftest import REPO, run_main


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
    with pytest.raises(ConfigError, match="need a classification task"):
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
    result = run_main(["--run", "x", "--config", "bad.toml", "--plan", "1@0.1"], workdir)
    assert result.returncode == 1
    assert "model.hiden: unknown key (did you mean 'hidden'?)" in result.stderr
    assert not (workdir / "runs").exists()


def test_a_run_refuses_a_different_config_with_a_diff_unless_forced(workdir):
    assert run_main(["--run", "c", "--plan", "1@0.1"], workdir).returncode == 0
    result = run_main(["--run", "c", "--set", "train.batch_size=25", "--plan", "1@0.1"], workdir)
    assert result.returncode == 1
    assert "train.batch_size: 50 (run) -> 25 (given)" in result.stderr
    result = run_main(["--run", "c", "--set", "train.batch_size=25", "--force-config", "--plan", "1@0.1"], workdir)
    assert result.returncode == 0, result.stderr
    assert "batch_size = 25" in (workdir / "runs" / "c" / "config.toml").read_text()
    assert '"config_changed"' in (workdir / "runs" / "c" / "journal.jsonl").read_text()


def test_classification_config_logs_accuracy(workdir):
    result = run_main(["--run", "cla", "--config", str(REPO / "configs" / "lesson-classification.toml"),
                        "--plan", "3@0.1"], workdir)
    assert result.returncode == 0, result.stderr
    from tests.conftest import read_scalars

    scalars = read_scalars(Path(workdir) / "runs" / "cla")
    assert {"train_accuracy", "test_accuracy", "lr"} <= scalars.keys()
    assert all(0 <= v <= 1 for _, v in scalars["test_accuracy"])


CLA = "data.source=lesson-classification"
# (assignments, the key the message must name): every key of every section, each out of its range.
BAD_SETTINGS = [
    (["data.source=mnist"], "data.source: 'mnist' is not one of"),
    (["data.task=clustering"], "data.task: 'clustering' is not one of"),
    (["data.source=csv"], "data.path/data.target: a csv source needs"),
    (["data.source=csv", "data.path=x.csv"], "data.path/data.target: a csv source needs"),
    (["data.standardize=1"], "data.standardize: expected true/false"),
    (["data.source=factory", "data.factory=nocolon"], "data.factory: a factory source needs"),
    (["data.seed=1.5"], "data.seed: expected an integer"),
    (["data.rows=0"], "data.rows: must be > 0"),
    (["data.rows=-5"], "data.rows: must be > 0"),
    (["data.rows=1"], "data.rows/data.train_fraction: 1 rows split into 0 training"),
    (["data.weights=[]"], "data.weights: needs at least one weight"),
    (["data.weights=[1.0, nan]"], "data.weights: must be a finite number"),
    (["data.degree=0"], "data.degree: must be > 0"),
    (["data.degree=21"], "data.degree: must be <= 20"),
    (["data.noise=-1"], "data.noise: must be >= 0"),
    (["data.noise=nan"], "data.noise: must be a finite number, got nan"),
    ([CLA, "data.classes=1"], "data.classes: must be >= 2"),
    ([CLA, "data.rows_per_class=0"], "data.rows_per_class: must be > 0"),
    ([CLA, "data.features=0"], "data.features: must be > 0"),
    ([CLA, "data.class_gap=inf"], "data.class_gap: must be a finite number, got inf"),
    ([CLA, "data.class_std=-1"], "data.class_std: must be >= 0"),
    (["data.train_fraction=1"], "data.train_fraction: must be between 0 and 1"),
    (["data.train_fraction=0.0"], "data.train_fraction: must be between 0 and 1"),
    (["data.train_fraction=nan"], "data.train_fraction: must be a finite number"),
    (["model.kind=cnn"], "model.kind: 'cnn' is not one of"),
    (["model.kind=factory", "model.factory=m.py"], "model.factory: a factory model needs"),
    (["model.hidden=[4, 0]"], "model.hidden: widths must be > 0"),
    (["model.hidden=[-1]"], "model.hidden: widths must be > 0"),
    (["model.hidden=4"], "model.hidden: expected a list"),
    (["model.activation=swish"], "model.activation: 'swish' is not one of"),
    (["model.batch_norm=middle"], "model.batch_norm: 'middle' is not one of"),
    (["model.dropout=1"], "model.dropout: must be in [0, 1)"),
    (["model.dropout=-0.1"], "model.dropout: must be in [0, 1)"),
    (["model.seed=x"], "model.seed: expected an integer"),
    (["train.optimizer=lbfgs"], "train.optimizer: 'lbfgs' is not one of"),
    (["train.momentum=-1"], "train.momentum: must be in [0, 1)"),
    (["train.momentum=1"], "train.momentum: must be in [0, 1)"),
    (["train.momentum=nan"], "train.momentum: must be a finite number, got nan"),
    (["train.optimizer=adam", "train.momentum=0.9"], "train.momentum: adam has no momentum"),
    (["train.nesterov=true"], "train.nesterov: needs train.optimizer = \"sgd\" and train.momentum > 0"),
    (["train.weight_decay=-0.1"], "train.weight_decay: must be >= 0"),
    (["train.weight_decay=inf"], "train.weight_decay: must be a finite number, got inf"),
    (["train.loss=hinge"], "train.loss: 'hinge' is not one of"),
    (["train.loss=bce"], "need a classification task"),
    ([CLA, "train.loss=l1"], "train.loss: l1 compares numbers"),
    ([CLA, "train.loss=bce"], "train.loss: bce is for two classes"),
    (["train.metric=f1"], "train.metric: 'f1' is not one of"),
    (["train.metric=accuracy"], "need a classification task"),
    ([CLA, "train.metric=mse"], "train.metric: mse/mae compare numbers"),
    (["train.batch_size=0"], "train.batch_size: must be > 0"),
    (["train.batch_size=-50"], "train.batch_size: must be > 0"),
    (["train.batch_size=1"], "train.batch_size: 1 over 700 training rows gives a batch of one row"),
    (["train.batch_size=699"], "train.batch_size: 699 over 700 training rows gives a batch of one row"),
    (["train.shuffle_seed=0.5"], "train.shuffle_seed: expected an integer"),
    (["train.threads=-1"], "train.threads: must be between 0 (auto) and 1024"),
    (["train.threads=99999999999"], "train.threads: must be between 0 (auto) and 1024"),
    (["train.device=tpu"], "train.device: 'tpu' is not cpu, cuda, cuda:N, mps or auto"),
    (["train.checkpoint_every=-1"], "train.checkpoint_every: must be >= 0"),
]


def _ids(case) -> str:
    return " ".join(case[0]) if isinstance(case, tuple) else str(case)


@pytest.mark.parametrize(("assignments", "message"), BAD_SETTINGS, ids=[_ids(c) for c in BAD_SETTINGS])
def test_from_dict_refuses_each_bad_setting_naming_its_key(assignments, message):
    raw = config.to_dict(RunConfig())
    for assignment in assignments:
        path, _, text = assignment.partition("=")
        section, key = path.split(".")
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text
        raw[section][key] = value
    with pytest.raises(ConfigError) as info:
        config.from_dict(raw, origin="test")
    assert message in str(info.value)


def test_every_problem_is_named_at_once():
    with pytest.raises(ConfigError) as info:
        config.with_overrides(RunConfig(), ["train.momentum=-1", "train.weight_decay=inf", "data.noise=nan",
                                            "model.dropout=2.0", "train.threads=-3"])
    lines = str(info.value).splitlines()
    assert lines[0] == "--set:" and len(lines) == 6
    for key in ("train.momentum", "train.weight_decay", "data.noise", "model.dropout", "train.threads"):
        assert sum(line.strip().startswith(key + ":") for line in lines) == 1


def test_good_settings_at_the_edges_are_accepted():
    edges = ["train.momentum=0.99", "train.nesterov=true", "train.weight_decay=0.5", "train.threads=1024",
             "data.noise=0", "model.dropout=0.0", "train.batch_size=700", "data.degree=20", "data.seed=-1",
             "train.checkpoint_every=0", "train.device=auto"]
    cfg = config.with_overrides(RunConfig(), edges)
    assert cfg.train.momentum == 0.99 and cfg.train.threads == 1024
    cla = config.with_overrides(RunConfig(), [CLA, "data.classes=2", "train.loss=bce"])
    assert cla.describe() == "lesson classification, MLP 2-4-4-1 tanh+BN(pre), SGD, BCE"


def _main_refuses(argv: list[str], tmp_path: Path, capsys, code: int = 1) -> str:
    """``lrctl.cli.main`` in-process: exit ``code``, no traceback, no run directory; returns stderr."""
    from lrctl.cli import main

    runs = tmp_path / "runs"
    before = sorted(p.name for p in runs.iterdir()) if runs.exists() else []
    assert main([*argv, "--runs-dir", str(runs), "--plan", "1@0.1"]) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("lrctl: ")
    assert (sorted(p.name for p in runs.iterdir()) if runs.exists() else []) == before
    return err


@pytest.mark.parametrize(("assignments", "message"), BAD_SETTINGS, ids=[_ids(c) for c in BAD_SETTINGS])
def test_cli_refuses_each_bad_setting_before_the_run_exists(assignments, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["--run", "x"] + [arg for a in assignments for arg in ("--set", a)]
    assert message in _main_refuses(argv, tmp_path, capsys)


@pytest.mark.parametrize("device", ["cuda:99", "mps", "cuda"])
def test_a_device_this_machine_lacks_is_refused_before_the_run_exists(device, tmp_path, capsys, monkeypatch):
    from lrctl.devices import device_problem

    if device_problem(device) is None:
        pytest.skip(f"this machine has {device}")
    monkeypatch.chdir(tmp_path)
    err = _main_refuses(["--run", "x", "--set", f"train.device={device}"], tmp_path, capsys)
    assert err.startswith(f"lrctl: train.device: '{device}' but ") and len(err.splitlines()) == 1


def test_a_run_whose_frozen_device_is_gone_says_so_and_is_kept(tmp_path, capsys, monkeypatch):
    from lrctl.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["--run", "g", "--runs-dir", "runs", "--plan", "1@0.1"]) == 0
    frozen = tmp_path / "runs" / "g" / "config.toml"
    frozen.write_text(frozen.read_text().replace('device = "cpu"', 'device = "cuda:99"'))
    capsys.readouterr()
    assert main(["--run", "g", "--runs-dir", "runs", "--plan", "1@0.1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("lrctl: train.device: 'cuda:99' but ") and "Traceback" not in err
    assert (tmp_path / "runs" / "g" / "checkpoint.pt").exists()
    assert main(["--run", "g", "--runs-dir", "runs", "--set", "train.device=cpu", "--plan", "1@0.1"]) == 0


def test_csv_data_that_leaves_a_one_row_batch_is_refused_before_the_run_exists(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d.csv").write_text("a,b,y\n" + "".join(f"{i},{i % 3},{2 * i}\n" for i in range(10)))
    (tmp_path / "c.toml").write_text('[data]\nsource = "csv"\npath = "d.csv"\ntarget = "y"\n'
                                     "[train]\nbatch_size = 6\n")
    err = _main_refuses(["--run", "x", "--config", "c.toml"], tmp_path, capsys)
    assert "train.batch_size: 6 over 7 training rows gives a batch of one row" in err


def test_a_bad_setting_is_refused_before_torchrun_starts(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("lrctl.distributed.launch", lambda *a: pytest.fail("torchrun was started"))
    err = _main_refuses(["--run", "x", "--nproc", "2", "--set", "train.momentum=-1"], tmp_path, capsys)
    assert "train.momentum: must be in [0, 1)" in err


@pytest.mark.parametrize(("options", "message"), [
    (["--save-every", "nan"], "--save-every: must be a finite number of seconds >= 0"),
    (["--save-every", "-1"], "--save-every: must be a finite number of seconds >= 0"),
    (["--keep-checkpoints", "-1"], "--keep-checkpoints: must be >= 0"),
    (["--dist-timeout", "0"], "--dist-timeout: must be a finite number of seconds > 0"),
    (["--dist-timeout", "inf"], "--dist-timeout: must be a finite number of seconds > 0"),
    (["--nproc", "0"], "--nproc: must be at least 1"),
    (["--nproc", "2", "--max-restarts", "-1"], "--max-restarts: must be at least 0"),
])
def test_cli_refuses_each_bad_option_naming_it(options, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert message in _main_refuses(["--run", "x", *options], tmp_path, capsys, code=2)


def test_unknown_keys_and_out_of_range_values_are_listed_together():
    """One run of lrctl shows every mistake: what cannot be read and what the checks between keys refuse."""
    from lrctl.config import ConfigError, RunConfig, with_overrides

    with pytest.raises(ConfigError) as caught:
        with_overrides(RunConfig(), ["foo.bar=1", "train.batch_size=-1", "data.rows=0", "model.hiden=[3]"])
    text = str(caught.value)
    for said in ("unknown section [foo]", "model.hiden: unknown key (did you mean 'hidden'?)",
                 "data.rows: must be > 0", "train.batch_size: must be > 0"):
        assert said in text, text


def test_configs_lesson_toml_lists_every_key_at_its_default():
    """``configs/lesson.toml`` says it lists every key at its default: a new key must appear there."""
    import dataclasses
    from pathlib import Path

    from lrctl.config import RunConfig, tomllib  # tomli on Python 3.10

    path = Path(__file__).resolve().parents[1] / "configs" / "lesson.toml"
    listed = tomllib.loads(path.read_text())
    keys = "\n".join(path.read_text().splitlines())
    defaults = RunConfig()
    for section in ("data", "model", "train"):
        for f in dataclasses.fields(getattr(defaults, section)):
            default = getattr(getattr(defaults, section), f.name)
            written = listed.get(section, {}).get(f.name)
            # a key with no TOML value by default (None) is shown commented out
            assert written is not None or f"# {f.name} =" in keys, f"configs/lesson.toml lacks {section}.{f.name}"
            if written is not None:
                assert written == (list(default) if isinstance(default, tuple) else default), (section, f.name)
