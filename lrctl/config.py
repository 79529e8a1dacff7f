"""Run configuration: frozen dataclasses, TOML loading, overrides and the frozen copy in a run.

A config has three sections, ``[data]``, ``[model]`` and ``[train]``. Every field has a default
and a one-line help text (the ``help`` metadata), so an empty file is the lesson workload.
Types come from the defaults; unknown keys and wrong types are errors that name the file and
the key, all of them at once. Nothing here imports torch.

>>> cfg = RunConfig()
>>> cfg.model.hidden, cfg.train.batch_size
((4, 4), 50)
>>> with_overrides(cfg, ["train.batch_size=25"]).train.batch_size
25
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import tomllib

BUILTIN_CONFIG_NAME = "built-in lesson config"


class ConfigError(ValueError):
    """A config file or override is wrong; the message lists every problem."""


def _f(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class DataConfig:
    """Where the examples come from and how they are split."""

    source: str = _f("lesson-regression", "lesson-regression | lesson-classification | csv | factory")
    task: str = _f("auto", "regression | classification; auto = from the lesson source (csv/factory: regression)")
    path: str = _f("", "csv: the file (relative paths are relative to the config file)")
    target: str = _f("", "csv: the target column name(s), comma-separated; the other columns are features")
    standardize: bool = _f(True, "csv: scale features to mean 0, std 1 using the training split's statistics")
    factory: str = _f("", "factory: 'package.module:function' returning (x_train, y_train, x_test, y_test) "
                          "tensors or (train, test) Datasets")
    seed: int = _f(420, "global torch seed set right before generating the data and the split")
    rows: int = _f(1000, "regression: number of examples")
    weights: tuple[float, ...] = _f((2.0, -1.0, 3.0, 1.0, 2.0), "regression: true weights, one per feature")
    degree: int = _f(2, "regression: each feature is raised to this power (no cross terms)")
    noise: float = _f(0.01, "regression: std of the Gaussian noise added to the labels")
    classes: int = _f(3, "classification: number of classes")
    rows_per_class: int = _f(500, "classification: examples drawn per class")
    features: int = _f(2, "classification: number of features")
    class_gap: float = _f(4.0, "classification: class i is centred at i*gap - gap*(classes-1)/2")
    class_std: float = _f(2.0, "classification: std of every class's Gaussian")
    train_fraction: float = _f(0.7, "fraction of rows in the training split (random_split semantics)")


@dataclass(frozen=True)
class ModelConfig:
    """The network: the built-in MLP."""

    kind: str = _f("mlp", "mlp (the built-in multi-layer perceptron) | factory")
    factory: str = _f("", "factory: 'package.module:function' returning an nn.Module; it may take "
                          "in_features= and out_features=")
    hidden: tuple[int, ...] = _f((4, 4), "hidden layer widths")
    activation: str = _f("tanh", "tanh | relu | sigmoid | gelu | identity")
    batch_norm: str = _f("pre", "pre (BN before the activation) | post (after it) | none")
    dropout: float = _f(0.0, "dropout probability after each hidden activation")
    seed: int = _f(24, "global torch seed set right before building the model")


@dataclass(frozen=True)
class TrainConfig:
    """Optimizer, loss, metric and batching."""

    optimizer: str = _f("sgd", "sgd | adam | adamw | rmsprop")
    momentum: float = _f(0.0, "sgd/rmsprop momentum")
    nesterov: bool = _f(False, "sgd: Nesterov momentum")
    weight_decay: float = _f(0.0, "L2 penalty passed to the optimizer")
    loss: str = _f("auto", "auto (mse for regression, cross-entropy for classification) | mse | cross-entropy"
                           " | l1 | huber")
    metric: str = _f("auto", "auto (mse for regression, accuracy for classification) | mse | accuracy | mae")
    batch_size: int = _f(50, "examples per optimizer step")
    shuffle_seed: int = _f(0, "the order of epoch e's batches is a pure function of (shuffle_seed, e)")
    threads: int = _f(0, "torch CPU threads; 0 = auto (1 for small models, where one thread is fastest)")
    device: str = _f("cpu", "cpu | cuda | cuda:N | auto (cuda when available)")
    checkpoint_every: int = _f(0, "also checkpoint every N epochs (0: only --save-every seconds, chunk ends, exit)")
    workers: int = _f(-1, "Dataset factories: DataLoader worker processes; -1 = measured (0 unless loading a "
                          "batch is slow and a core is free)")
    eval_batch_size: int = _f(0, "Dataset factories: rows per evaluation batch; 0 = as many as fit 16 MiB of input")
    pin_memory: str = _f("auto", "Dataset factories: auto (pin for CUDA) | true | false")


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a run; frozen into the run directory when the run is created."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        problems = validate(self)
        if problems:
            raise ConfigError("\n".join(problems))

    @property
    def task(self) -> str:
        """'classification' or 'regression': data.task, or from the lesson source."""
        if self.data.task != "auto":
            return self.data.task
        return "classification" if self.data.source == "lesson-classification" else "regression"

    @property
    def metric(self) -> str:
        if self.train.metric != "auto":
            return self.train.metric
        return "accuracy" if self.task == "classification" else "mse"

    @property
    def loss(self) -> str:
        if self.train.loss != "auto":
            return self.train.loss
        return "cross-entropy" if self.task == "classification" else "mse"

    def describe(self) -> str:
        """One line a person recognises: 'lesson regression, MLP 5-4-4-1 tanh+BN(pre), SGD, MSE'."""
        d, m = self.data, self.model
        if d.source.startswith("lesson-"):
            n_in: object = len(d.weights) if self.task == "regression" else d.features
            n_out: object = d.classes if self.task == "classification" else 1
            source = d.source.replace("lesson-", "lesson ")
        else:
            n_in, n_out = "in", "out"
            source = f"{d.source} {Path(d.path).name if d.source == 'csv' else d.factory} ({self.task})"
        if m.kind == "factory":
            model = f"model {m.factory}"
        else:
            sizes = "-".join(str(s) for s in (n_in, *m.hidden, n_out))
            bn = f"+BN({m.batch_norm})" if m.batch_norm != "none" else ""
            model = f"MLP {sizes} {m.activation}{bn}"
        return f"{source}, {model}, {self.train.optimizer.upper()}, {self.loss.upper()}"


SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}
_CHOICES = {
    ("data", "source"): {"lesson-regression", "lesson-classification", "csv", "factory"},
    ("data", "task"): {"auto", "regression", "classification"},
    ("model", "kind"): {"mlp", "factory"},
    ("model", "activation"): {"tanh", "relu", "sigmoid", "gelu", "identity"},
    ("model", "batch_norm"): {"pre", "post", "none"},
    ("train", "optimizer"): {"sgd", "adam", "adamw", "rmsprop"},
    ("train", "loss"): {"auto", "mse", "cross-entropy", "bce", "l1", "huber"},
    ("train", "metric"): {"auto", "mse", "accuracy", "mae"},
    ("train", "pin_memory"): {"auto", "true", "false"},
}


def validate(cfg: RunConfig) -> list[str]:
    """Every contradiction in ``cfg``, each naming its key."""
    problems = []
    for (section, key), allowed in _CHOICES.items():
        value = getattr(getattr(cfg, section), key)
        if value not in allowed:
            problems.append(f"{section}.{key}: {value!r} is not one of {', '.join(sorted(allowed))}")
    positive = [("data", "rows"), ("data", "degree"), ("data", "rows_per_class"), ("data", "features"),
                ("train", "batch_size")]
    for section, key in positive:
        if getattr(getattr(cfg, section), key) <= 0:
            problems.append(f"{section}.{key}: must be > 0")
    if not 0 < cfg.data.train_fraction < 1:
        problems.append("data.train_fraction: must be between 0 and 1 (exclusive)")
    if cfg.data.classes < 2:
        problems.append("data.classes: must be >= 2")
    if not cfg.data.weights:
        problems.append("data.weights: needs at least one weight")
    if any(h <= 0 for h in cfg.model.hidden):
        problems.append("model.hidden: widths must be > 0")
    if not 0 <= cfg.model.dropout < 1:
        problems.append("model.dropout: must be in [0, 1)")
    if cfg.train.checkpoint_every < 0:
        problems.append("train.checkpoint_every: must be >= 0 (0 = time-based only)")
    if cfg.train.threads < 0:
        problems.append("train.threads: must be >= 0 (0 = auto)")
    if cfg.train.workers < -1:
        problems.append("train.workers: must be >= 0, or -1 (measured)")
    if cfg.train.eval_batch_size < 0:
        problems.append("train.eval_batch_size: must be >= 0 (0 = auto)")
    dev = cfg.train.device
    if not (dev in {"cpu", "cuda", "auto", "mps"} or (dev.startswith("cuda:") and dev[5:].isdigit())):
        problems.append(f"train.device: {dev!r} is not cpu, cuda, cuda:N, mps or auto")
    if cfg.task == "regression" and (cfg.metric == "accuracy" or cfg.loss == "cross-entropy"):
        problems.append("train.metric/train.loss: accuracy and cross-entropy need a classification task "
                        "(data.task = \"classification\")")
    if cfg.task == "classification" and cfg.metric in ("mse", "mae") and cfg.loss == "cross-entropy":
        problems.append("train.metric: mse/mae compare numbers; a classification task with cross-entropy "
                        "uses accuracy")
    d, m = cfg.data, cfg.model
    if d.source == "csv" and (not d.path or not d.target):
        problems.append("data.path/data.target: a csv source needs path = \"file.csv\" and target = \"column\"")
    if d.source == "factory" and ":" not in d.factory:
        problems.append("data.factory: a factory source needs factory = \"package.module:function\"")
    if m.kind == "factory" and ":" not in m.factory:
        problems.append("model.factory: a factory model needs factory = \"package.module:function\"")
    return problems


def _coerce(section: str, key: str, value: Any, default: Any) -> tuple[Any, str | None]:
    """Convert a TOML value to the default's type, or say what was expected."""
    where = f"{section}.{key}"
    if isinstance(default, bool):
        return (value, None) if isinstance(value, bool) else (None, f"{where}: expected true/false, got {value!r}")
    if isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
        return (value, None) if ok else (None, f"{where}: expected an integer, got {value!r}")
    if isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return (float(value), None) if ok else (None, f"{where}: expected a number, got {value!r}")
    if isinstance(default, str):
        return (value, None) if isinstance(value, str) else (None, f"{where}: expected a string, got {value!r}")
    if isinstance(default, tuple):
        item_type = type(default[0]) if default else float
        if not isinstance(value, (list, tuple)):
            return None, f"{where}: expected a list, got {value!r}"
        items = []
        for item in value:
            converted, problem = _coerce(section, key, item, item_type())
            if problem:
                return None, f"{where}: expected a list of {item_type.__name__}s, got {value!r}"
            items.append(converted)
        return tuple(items), None
    raise TypeError(f"unsupported config type for {where}")


def from_dict(raw: dict[str, Any], origin: str = "config") -> RunConfig:
    """Build a RunConfig from parsed TOML, listing every unknown key and wrong type at once."""
    problems: list[str] = []
    sections: dict[str, Any] = {}
    for name in raw:
        if name not in SECTIONS:
            hint = difflib.get_close_matches(name, SECTIONS, n=1)
            problems.append(f"unknown section [{name}]" + (f" (did you mean [{hint[0]}]?)" if hint else "")
                            + f"; sections: {', '.join(SECTIONS)}")
    for name, cls in SECTIONS.items():
        table = raw.get(name, {})
        if not isinstance(table, dict):
            problems.append(f"[{name}] must be a table")
            continue
        defaults = {f.name: f.default for f in fields(cls)}
        values = {}
        for key, value in table.items():
            if key not in defaults:
                hint = difflib.get_close_matches(key, defaults, n=1)
                problems.append(f"{name}.{key}: unknown key" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                                + f"; keys: {', '.join(defaults)}")
                continue
            converted, problem = _coerce(name, key, value, defaults[key])
            if problem:
                problems.append(problem)
            else:
                values[key] = converted
        sections[name] = cls(**values)
    if problems:
        raise ConfigError(f"{origin}:\n  " + "\n  ".join(problems))
    try:
        return RunConfig(**sections)
    except ConfigError as e:
        raise ConfigError(f"{origin}:\n  " + str(e).replace("\n", "\n  ")) from None


def load(path: Path | None) -> tuple[RunConfig, str]:
    """Read a TOML config; ``None`` means the built-in lesson config. Returns (config, origin)."""
    if path is None:
        return RunConfig(), BUILTIN_CONFIG_NAME
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    cfg = from_dict(raw, origin=str(path))
    return _resolve_paths(cfg, Path(path).resolve().parent), str(path)


def _resolve_file(text: str, base: Path) -> str:
    """A relative file path (or 'file.py:function') made absolute against the config's directory."""
    target, colon, function = text.partition(":") if text.split(":")[0].endswith(".py") else (text, "", "")
    if target and not Path(target).is_absolute() and (target.endswith(".py") or "/" in target or
                                                      target.endswith(".csv") or (base / target).exists()):
        target = str((base / target).resolve())
    return target + colon + function


def _resolve_paths(cfg: RunConfig, base: Path) -> RunConfig:
    """Files named in a config are relative to the config file; the run keeps them absolute."""
    data = cfg.data
    if data.path:
        data = dataclasses.replace(data, path=_resolve_file(data.path, base))
    if data.factory.split(":")[0].endswith(".py"):
        data = dataclasses.replace(data, factory=_resolve_file(data.factory, base))
    model = cfg.model
    if model.factory.split(":")[0].endswith(".py"):
        model = dataclasses.replace(model, factory=_resolve_file(model.factory, base))
    return dataclasses.replace(cfg, data=data, model=model)


def to_dict(cfg: RunConfig) -> dict[str, dict[str, Any]]:
    return {name: dataclasses.asdict(getattr(cfg, name)) for name in SECTIONS}


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def to_toml(cfg: RunConfig, header: str = "") -> str:
    """The config as TOML text that :func:`from_dict` reads back to an equal config."""
    lines = [f"# {line}" for line in header.splitlines()]
    for name, table in to_dict(cfg).items():
        lines += ["", f"[{name}]"] + [f"{k} = {_toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines).lstrip("\n") + "\n"


def with_overrides(cfg: RunConfig, assignments: list[str]) -> RunConfig:
    """Apply ``section.key=value`` strings (values in TOML syntax; bare words are strings)."""
    raw = to_dict(cfg)
    problems = []
    for assignment in assignments:
        path, sep, text = assignment.partition("=")
        section, dot, key = path.strip().partition(".")
        if not sep or not dot:
            problems.append(f"--set {assignment!r}: expected section.key=value, e.g. train.batch_size=25")
            continue
        try:
            value = tomllib.loads(f"v = {text.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = text.strip()
        raw.setdefault(section, {})[key.strip()] = value
    if problems:
        raise ConfigError("\n".join(problems))
    return from_dict(raw, origin="--set")


# Where and how fast a run trains, not what it is: they may change between sessions freely.
RUNTIME_KEYS = {("train", "device"), ("train", "threads"), ("train", "checkpoint_every"), ("train", "workers"),
                ("train", "eval_batch_size"), ("train", "pin_memory")}


def diff(old: RunConfig, new: RunConfig, runtime: bool = False) -> list[str]:
    """Readable lines ``section.key: old -> new`` for every differing value that defines the run
    (``runtime=True``: only the differing runtime settings)."""
    a, b = to_dict(old), to_dict(new)
    return [f"{s}.{k}: {_toml_value(a[s][k])} (run) -> {_toml_value(b[s][k])} (given)"
            for s in a for k in a[s] if a[s][k] != b[s][k] and ((s, k) in RUNTIME_KEYS) == runtime]


def with_runtime_of(frozen: RunConfig, given: RunConfig) -> RunConfig:
    """``frozen`` with ``given``'s runtime settings (device, threads)."""
    train = dataclasses.replace(frozen.train, **{k: getattr(given.train, k) for s, k in RUNTIME_KEYS})
    return dataclasses.replace(frozen, train=train)
