"""Run configuration: frozen dataclasses, TOML loading, overrides and the frozen copy in a run.

A config has three sections, ``[data]``, ``[model]`` and ``[train]``. Every field has a default
and a one-line help text (the ``help`` metadata), so an empty file is the lesson workload.
Types come from the defaults; unknown keys and wrong types are errors that name the file and
the key, all of them at once. Nothing here imports torch.

Size: about 500 lines, over the project's ~450, so that a config key is one place: its field and
help text, its checks against the other keys, and how it reads from and writes to TOML.

>>> cfg = RunConfig()
>>> cfg.model.hidden, cfg.train.batch_size
((4, 4), 50)
>>> with_overrides(cfg, ["train.batch_size=25"]).train.batch_size
25
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: tomllib is tomli, added to the standard library in 3.11
    import tomli as tomllib

BUILTIN_CONFIG_NAME = "built-in lesson config"


class ConfigError(ValueError):
    """A config file or override is wrong; the message lists every problem."""


def _f(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class DataConfig:
    """Where the examples come from and how they are split."""

    source: str = _f("lesson-regression", "lesson-regression | lesson-classification | csv | factory | python "
                                          "(objects given to lrctl.Run)")
    task: str = _f("auto", "regression | classification; auto = from the lesson source (csv/factory: regression)")
    path: str = _f("", "csv: the file (relative paths are relative to the config file)")
    target: str = _f("", "csv: the target column name(s), comma-separated; the other columns are features")
    standardize: bool = _f(True, "csv: scale features to mean 0, std 1 using the training split's statistics")
    factory: str = _f("", "factory: 'package.module:function' returning (x_train, y_train, x_test, y_test) "
                          "tensors or (train, test) Datasets")
    fingerprint: str = _f("", "python: the shapes and checksum of the data given to lrctl.Run; reopening the run "
                              "needs the same data")
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

    kind: str = _f("mlp", "mlp (the built-in multi-layer perceptron) | factory | python (a model object given "
                          "to lrctl.Run)")
    factory: str = _f("", "factory: 'package.module:function' returning an nn.Module; it may take "
                          "in_features= and out_features=")
    fingerprint: str = _f("", "python: the class and parameter shapes of the model given to lrctl.Run; reopening "
                              "the run needs the same shapes")
    hidden: tuple[int, ...] = _f((4, 4), "hidden layer widths")
    activation: str = _f("tanh", "tanh | relu | sigmoid | gelu | identity")
    batch_norm: str = _f("pre", "pre (BN before the activation) | post (after it) | none")
    dropout: float = _f(0.0, "dropout probability after each hidden activation")
    seed: int = _f(24, "global torch seed set right before building the model")


@dataclass(frozen=True)
class TrainConfig:
    """Optimizer, loss, metric and batching."""

    optimizer: str = _f("sgd", "sgd | adam | adamw | rmsprop")
    momentum: float = _f(0.0, "sgd/rmsprop momentum, in [0, 1)")
    nesterov: bool = _f(False, "sgd: Nesterov momentum (needs momentum > 0)")
    weight_decay: float = _f(0.0, "L2 penalty passed to the optimizer, >= 0")
    loss: str = _f("auto", "auto (mse for regression, cross-entropy for classification) | mse | cross-entropy"
                           " | bce (two classes) | l1 | huber")
    metric: str = _f("auto", "auto (mse for regression, accuracy for classification) | mse | accuracy | mae")
    batch_size: int = _f(50, "examples per optimizer step")
    order: str = _f("lesson", "lesson (the order DataLoader(shuffle=True) draws from the global torch RNG after "
                              "the model is built: the lesson's numbers) | seeded (a pure function of "
                              "(shuffle_seed, epoch))")
    shuffle_seed: int = _f(0, "order = seeded: the order of epoch e's batches is a pure function of (shuffle_seed, e)")
    threads: int = _f(0, "torch CPU threads, 0..1024; 0 = auto (1 for small models, where one thread is fastest)")
    device: str = _f("cpu", "cpu | cuda | cuda:N | mps | auto (cuda when available)")
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
            n_out: object = d.classes if self.task == "classification" and self.loss != "bce" else 1
            source = d.source.replace("lesson-", "lesson ")
        else:
            n_in, n_out = _csv_sizes(self) if d.source == "csv" else ("in", "out")
            what = {"csv": Path(d.path).name, "python": "data"}.get(d.source, d.factory)
            source = f"{d.source} {what} ({self.task})"
        if m.kind == "python":
            model = f"model {m.fingerprint.split(',')[0]} (Python)"
        elif m.kind == "factory":
            model = f"model {m.factory}"
        else:
            sizes = "-".join(str(s) for s in (n_in, *m.hidden, n_out))
            bn = f"+BN({m.batch_norm})" if m.batch_norm != "none" else ""
            model = f"MLP {sizes} {m.activation}{bn}"
        return f"{source}, {model}, {self.train.optimizer.upper()}, {self.loss.upper()}"


def _csv_sizes(cfg: RunConfig) -> tuple[object, object]:
    """The model's input and output sizes for a CSV source, read from the file with the csv module (no torch);
    ("in", "out") when it cannot be read (the data loader reports why)."""
    import csv

    targets = [t.strip() for t in cfg.data.target.split(",") if t.strip()]
    try:
        with open(cfg.data.path, newline="", encoding="utf-8") as f:
            rows = [row for row in csv.reader(f) if any(cell.strip() for cell in row)]
        header = [h.strip() for h in rows[0]]
        n_in = len(header) - len(targets)
        if cfg.task != "classification":
            return n_in, len(targets)
        if cfg.loss == "bce":
            return n_in, 1
        labels = [row[header.index(targets[0])].strip() for row in rows[1:]]
        try:  # as lrctl.data numbers them: integer labels keep their value, others are counted
            n_out = max(int(label) for label in labels) + 1
        except ValueError:
            n_out = len(set(labels))
        return n_in, n_out
    except (OSError, IndexError, ValueError):
        return "in", "out"


SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}
_CHOICES = {
    ("data", "source"): {"lesson-regression", "lesson-classification", "csv", "factory", "python"},
    ("data", "task"): {"auto", "regression", "classification"},
    ("model", "kind"): {"mlp", "factory", "python"},
    ("model", "activation"): {"tanh", "relu", "sigmoid", "gelu", "identity"},
    ("model", "batch_norm"): {"pre", "post", "none"},
    ("train", "optimizer"): {"sgd", "adam", "adamw", "rmsprop"},
    ("train", "order"): {"lesson", "seeded"},
    ("train", "loss"): {"auto", "mse", "cross-entropy", "bce", "l1", "huber"},
    ("train", "metric"): {"auto", "mse", "accuracy", "mae"},
    ("train", "pin_memory"): {"auto", "true", "false"},
}


# The most CPU threads a run may ask for: beyond it torch overflows (and far fewer are ever useful).
MAX_THREADS = 1024
# x ** degree of N(0, 1) features: larger powers overflow float32 in the tails and the "divergence"
# that follows would blame the learning rate.
MAX_DEGREE = 20


def _split_sizes(n: int, fraction: float) -> tuple[int, int]:
    """Training and test rows of ``n`` examples, as ``data._random_split`` cuts them."""
    n_train = int(n * fraction)
    return n_train, n - n_train


def validate(cfg: RunConfig) -> list[str]:
    """Every contradiction in ``cfg``, each naming its key (all of them, so one run of lrctl shows all).

    Only what the config alone decides: no torch, no files, no machine (see ``lrctl.preflight``)."""
    problems = []
    for name, section in (("data", cfg.data), ("model", cfg.model), ("train", cfg.train)):
        for f in fields(section):  # nan and inf pass every range check below: refuse them first
            value = getattr(section, f.name)
            values = value if isinstance(value, tuple) else (value,)
            if any(isinstance(v, float) and not math.isfinite(v) for v in values):
                problems.append(f"{name}.{f.name}: must be a finite number, got {_toml_value(value)}")
    finite = {p.split(":")[0] for p in problems}
    for (section, key), allowed in _CHOICES.items():
        value = getattr(getattr(cfg, section), key)
        if value not in allowed:
            problems.append(f"{section}.{key}: {value!r} is not one of {', '.join(sorted(allowed))}")
    positive = [("data", "rows"), ("data", "degree"), ("data", "rows_per_class"), ("data", "features"),
                ("train", "batch_size")]
    for section, key in positive:
        if getattr(getattr(cfg, section), key) <= 0:
            problems.append(f"{section}.{key}: must be > 0")
    d, m, t = cfg.data, cfg.model, cfg.train

    def check(key: str, ok: bool, message: str) -> None:
        if not ok and key not in finite:
            problems.append(f"{key}: {message}")

    check("data.train_fraction", 0 < d.train_fraction < 1, "must be between 0 and 1 (exclusive)")
    check("data.classes", d.classes >= 2, "must be >= 2")
    check("data.weights", bool(d.weights), "needs at least one weight")
    check("data.degree", d.degree <= MAX_DEGREE, f"must be <= {MAX_DEGREE} (x**degree overflows float32)")
    check("data.noise", d.noise >= 0, "must be >= 0 (it is a standard deviation)")
    check("data.class_std", d.class_std >= 0, "must be >= 0 (it is a standard deviation)")
    check("model.hidden", all(h > 0 for h in m.hidden), "widths must be > 0")
    check("model.dropout", 0 <= m.dropout < 1, "must be in [0, 1)")
    check("train.momentum", 0 <= t.momentum < 1, "must be in [0, 1) (0 = none; 0.9 is usual)")
    if t.momentum and t.optimizer not in ("sgd", "rmsprop"):
        problems.append(f"train.momentum: {t.optimizer} has no momentum setting (sgd and rmsprop do); "
                        "leave it at 0")
    if t.nesterov and not (t.optimizer == "sgd" and t.momentum > 0):
        problems.append("train.nesterov: needs train.optimizer = \"sgd\" and train.momentum > 0")
    check("train.weight_decay", t.weight_decay >= 0, "must be >= 0 (0 = none)")
    check("train.checkpoint_every", t.checkpoint_every >= 0, "must be >= 0 (0 = time-based only)")
    check("train.threads", 0 <= t.threads <= MAX_THREADS, f"must be between 0 (auto) and {MAX_THREADS}")
    check("train.workers", t.workers >= -1, "must be >= 0, or -1 (measured)")
    check("train.eval_batch_size", t.eval_batch_size >= 0, "must be >= 0 (0 = auto)")
    dev = t.device
    if not (dev in {"cpu", "cuda", "auto", "mps"} or (dev.startswith("cuda:") and dev[5:].isdigit())):
        problems.append(f"train.device: {dev!r} is not cpu, cuda, cuda:N, mps or auto")
    if cfg.task == "regression" and (cfg.metric == "accuracy" or cfg.loss in ("cross-entropy", "bce")):
        problems.append("train.metric/train.loss: accuracy, cross-entropy and bce need a classification task "
                        "(data.task = \"classification\")")
    if cfg.task == "classification" and cfg.loss not in ("cross-entropy", "bce"):
        problems.append(f"train.loss: {cfg.loss} compares numbers; a classification task uses cross-entropy "
                        "(or bce for two classes)")
    if cfg.task == "classification" and cfg.metric in ("mse", "mae") and cfg.loss == "cross-entropy":
        problems.append("train.metric: mse/mae compare numbers; a classification task with cross-entropy "
                        "uses accuracy")
    if cfg.loss == "bce" and d.source == "lesson-classification" and d.classes != 2:
        problems.append(f"train.loss: bce is for two classes; data.classes is {d.classes} (use cross-entropy)")
    if d.source == "csv" and (not d.path or not d.target):
        problems.append("data.path/data.target: a csv source needs path = \"file.csv\" and target = \"column\"")
    if d.source == "factory" and ":" not in d.factory:
        problems.append("data.factory: a factory source needs factory = \"package.module:function\"")
    if m.kind == "factory" and ":" not in m.factory:
        problems.append("model.factory: a factory model needs factory = \"package.module:function\"")
    if d.source.startswith("lesson-") and not problems:  # the split sizes are known from the config alone
        regression = d.source == "lesson-regression"
        rows = d.rows if regression else d.rows_per_class * d.classes
        n_train, n_test = _split_sizes(rows, d.train_fraction)
        sizes = "data.rows" if regression else "data.rows_per_class"
        if min(n_train, n_test) < 1:
            problems.append(f"{sizes}/data.train_fraction: {rows} rows split into {n_train} training and "
                            f"{n_test} test rows; both need at least one")
        else:
            problems += batch_problems(cfg, n_train)
    return problems


def batch_problems(cfg: RunConfig, n_train: int) -> list[str]:
    """What batch norm cannot train on: a batch of one row (its variance is undefined)."""
    batch, m = cfg.train.batch_size, cfg.model
    if m.kind != "mlp" or m.batch_norm == "none":
        return []
    last = n_train % batch
    if min(batch, n_train) == 1 or last == 1:
        return [f"train.batch_size: {batch} over {n_train} training rows gives a batch of one row, which "
                f"model.batch_norm = \"{m.batch_norm}\" cannot train on; choose another batch size "
                "(or batch_norm = \"none\")"]
    return []


def python_objects(cfg: RunConfig) -> list[str]:
    """What of the run only the Python process that made it can give back: data and/or a model object."""
    objects = ["data"] if cfg.data.source == "python" else []
    return objects + (["a model object"] if cfg.model.kind == "python" else [])


def rebuild_problem(cfg: RunConfig, name: str) -> str | None:
    """Why the command line cannot rebuild run ``name`` (None when it can): it was made from Python objects."""
    objects = python_objects(cfg)
    if not objects:
        return None
    return (f"run '{name}' was made in Python with {' and '.join(objects)} given to lrctl.Run, which the command "
            f"line cannot rebuild; continue it from Python: lrctl.Run({name!r}, model=..., data=...) with the same "
            "model and data (or make such runs from factories, e.g. data='my_module:make_data', "
            "model='my_module:make_model', and the command line can resume them)")


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
    try:  # the checks between keys run on what could be read, so every mistake is listed at once
        cfg = RunConfig(**sections)
    except ConfigError as e:
        problems += str(e).splitlines()
    if problems:
        raise ConfigError(f"{origin}:\n  " + "\n  ".join(problems))
    return cfg


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


DEFAULT_CONFIG = Path("configs/lesson.toml")


def load_config(path: Path | None, assignments: list[str]) -> tuple[RunConfig, str]:
    """``--config`` (default configs/lesson.toml, else the built-in lesson) with ``--set`` applied."""
    if path is None and DEFAULT_CONFIG.exists():
        path = DEFAULT_CONFIG
    cfg, origin = load(path)
    if assignments:
        cfg = with_overrides(cfg, assignments)
        origin += " with --set " + " ".join(assignments)
    return cfg, origin
