"""The examples: the lesson's generators, CSV files, user factories; the split; each epoch's batch order.

In-memory data lives on the training device as tensors and is sliced, never fed through a
DataLoader. A factory may instead return ``torch.utils.data.Dataset`` objects that are not plain
tensor sets; those go through a DataLoader (lrctl.loaders). Epoch ``e``'s order of the examples is
either the one the lesson's ``DataLoader(shuffle=True)`` draws (a stream whose state is checkpointed)
or a pure function of ``(shuffle_seed, e)`` (:class:`EpochOrders`); either way an epoch recomputed
after a crash sees exactly the same batches, and a distributed rank can take a disjoint share of them.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lrctl.config import ConfigError, RunConfig, batch_problems

if TYPE_CHECKING:
    import torch


@dataclass
class Split:
    """Train and test tensors; ``y`` is float (N, k) for regression, long (N,) for classification.

    ``train_set``/``test_set`` hold Datasets instead when a factory returned ones that are not
    in-memory tensors (then the tensor fields are None).
    """

    x_train: torch.Tensor | None
    y_train: torch.Tensor | None
    x_test: torch.Tensor | None
    y_test: torch.Tensor | None
    train_set: Any = None
    test_set: Any = None
    n_classes: int = 0

    @property
    def in_memory(self) -> bool:
        return self.x_train is not None

    @property
    def in_features(self) -> int:
        x = self.x_train if self.in_memory else self.train_set[0][0]
        return int(x.shape[-1])

    @property
    def n_train(self) -> int:
        return len(self.x_train) if self.in_memory else len(self.train_set)

    def out_features(self, cfg: RunConfig) -> int:
        if cfg.task == "classification":
            return 1 if cfg.loss == "bce" else self.n_classes
        y = self.y_train if self.in_memory else self.train_set[0][1]
        return 1 if y.dim() <= 1 else int(y.shape[-1])

    def to(self, device: torch.device) -> Split:
        if not self.in_memory:
            return self
        moved = (t.to(device) for t in (self.x_train, self.y_train, self.x_test, self.y_test))
        return Split(*moved, n_classes=self.n_classes)


def lesson_regression(rows: int, weights: tuple[float, ...], degree: int, noise: float):
    """The lesson's ``tensorGenReg(bias=False)``: features ~ N(0,1), y = (x**deg) @ w + noise.

    Draws from the global RNG in the lesson's order: features, then noise.
    """
    import torch

    features = torch.randn(rows, len(weights))
    w_true = torch.tensor(weights, dtype=torch.float32).reshape(-1, 1)
    labels = torch.mm(torch.pow(features, degree), w_true) + torch.randn(rows, 1) * noise
    return features, labels


def lesson_classification(rows_per_class: int, features: int, classes: int, gap: float, std: float):
    """The lesson's ``tensorGenCla``: class i ~ N(i*gap - gap*(classes-1)/2, std), labels 0..classes-1."""
    import torch

    offset = gap * (classes - 1) / 2
    xs = [torch.normal(i * gap - offset, std, size=(rows_per_class, features)) for i in range(classes)]
    ys = [torch.full((rows_per_class,), i, dtype=torch.long) for i in range(classes)]
    return torch.cat(xs).float(), torch.cat(ys)


def read_csv(cfg: RunConfig) -> tuple[list[list[float]], list[list[Any]], list[str]]:
    """Feature rows, target rows and feature names; ConfigError names the file, row and column."""
    d = cfg.data
    targets = [t.strip() for t in d.target.split(",") if t.strip()]
    try:
        with open(d.path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except OSError as e:
        raise ConfigError(f"data.path: cannot read {d.path}: {e.strerror or e}") from None
    if len(rows) < 3:
        raise ConfigError(f"data.path: {d.path} needs a header row and at least 2 data rows")
    header = [h.strip() for h in rows[0]]
    missing = [t for t in targets if t not in header]
    if missing:
        raise ConfigError(f"data.target: {d.path} has no column {', '.join(map(repr, missing))}; "
                          f"columns: {', '.join(header)}")
    t_idx = [header.index(t) for t in targets]
    f_idx = [i for i in range(len(header)) if i not in t_idx]
    if not f_idx:
        raise ConfigError(f"data.target: {d.path} has no feature columns left besides the target")
    features, labels = [], []
    for line_no, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise ConfigError(f"data.path: {d.path} line {line_no} has {len(row)} fields, the header {len(header)}")
        try:
            features.append([_number(row[i]) for i in f_idx])
        except ValueError as e:
            raise ConfigError(f"data.path: {d.path} line {line_no}: {e}") from None
        if cfg.task == "classification":
            labels.append([row[i].strip() for i in t_idx])
        else:
            try:
                labels.append([_number(row[i]) for i in t_idx])
            except ValueError as e:
                raise ConfigError(f"data.path: {d.path} line {line_no}: {e} (a regression target must be numeric; "
                                  "set data.task = \"classification\" for labels)") from None
    return features, labels, [header[i] for i in f_idx]


def _number(text: str) -> float:
    value = float(text)  # a data file, not typed input: Python's float grammar is the CSV convention
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not a finite number")
    return value


def _class_indices(labels: list[str]) -> tuple[list[int], int]:
    """Labels to 0..k-1: integer labels keep their value; other labels are numbered in sorted order."""
    try:
        ints = [int(label) for label in labels]
        if min(ints) >= 0:
            return ints, max(ints) + 1
    except ValueError:
        pass
    names = sorted(set(labels))
    return [names.index(label) for label in labels], len(names)


def _random_split(x, y, fraction: float):
    """torch.utils.data.random_split semantics: one permutation from the global RNG, first part trains."""
    import torch

    n_train = int(len(x) * fraction)
    order = torch.randperm(len(x))
    return x[order[:n_train]], y[order[:n_train]], x[order[n_train:]], y[order[n_train:]]


def _from_factory(cfg: RunConfig) -> Split:
    from lrctl._factory import load_callable

    spec = cfg.data.factory
    return from_objects(cfg, load_callable(spec, "data.factory")(), f"data.factory: {spec!r} returned")


def _tensors_of(dataset: Any) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(x, y) of a dataset that is in-memory tensors after all: a TensorDataset, or a Subset of one
    (what ``random_split`` returns); None for any other dataset."""
    import torch
    from torch.utils.data import Subset, TensorDataset

    if isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2:
        return dataset.tensors[0], dataset.tensors[1]
    if isinstance(dataset, Subset):
        inner = _tensors_of(dataset.dataset)
        if inner is not None:
            rows = torch.as_tensor(list(dataset.indices), dtype=torch.long)
            return inner[0][rows], inner[1][rows]
    return None


def from_objects(cfg: RunConfig, result: Any, who: str) -> Split:
    """The split from Python objects: (x_train, y_train, x_test, y_test) tensors, or (train, test) Datasets
    or DataLoaders (their datasets). ``who`` starts every error message ("data.factory: 'f' returned")."""
    import torch
    from torch.utils.data import DataLoader, Dataset

    what = "(x_train, y_train, x_test, y_test) tensors or (train, test) Datasets or DataLoaders"
    if isinstance(result, (tuple, list)) and len(result) == 2:
        sets = [r.dataset if isinstance(r, DataLoader) else r for r in result]
        if not all(isinstance(s, Dataset) for s in sets):
            raise ConfigError(f"{who} {type(result[0]).__name__}, {type(result[1]).__name__}; expected {what}")
        tensors = [_tensors_of(s) for s in sets]
        if all(t is not None for t in tensors):
            result = (*tensors[0], *tensors[1])  # in memory after all: the fast path
        else:
            train_set, test_set = sets
            labels = [int(train_set[i][1]) for i in range(min(len(train_set), 10_000))] \
                if cfg.task == "classification" else []
            return Split(None, None, None, None, train_set, test_set, n_classes=max(labels, default=0) + 1)
    if not (isinstance(result, (tuple, list)) and len(result) == 4
            and all(isinstance(t, torch.Tensor) for t in result)):
        raise ConfigError(f"{who} {type(result).__name__}; expected {what}")
    x_train, y_train, x_test, y_test = (t.detach() for t in result)
    for name, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        if x.dim() < 2 or len(x) != len(y) or len(x) == 0:  # (N, features) or (N, channels, h, w), ...
            raise ConfigError(f"{who} {name} features of shape {tuple(x.shape)} and labels {tuple(y.shape)}; "
                              "features must be (N, features) or (N, ...) with one label per row")
    return _finish(cfg, x_train.float(), y_train, x_test.float(), y_test)


def fingerprint(split: Split) -> str:
    """The data's shapes and a checksum of its exact bytes: a run made from Python data is reopened only
    with the same data. Datasets that are not in memory: their lengths and first and last examples."""
    import hashlib

    import torch

    digest = hashlib.sha256()

    def add(t: Any) -> None:
        t = torch.as_tensor(t).detach().cpu().contiguous().clone()  # clone: exactly its own bytes
        digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
        digest.update(bytes(t.untyped_storage()))

    def shape(t: Any) -> str:
        return "x".join(str(d) for d in torch.as_tensor(t).shape) or "1"

    if split.in_memory:
        tensors = (split.x_train, split.y_train, split.x_test, split.y_test)
        for t in tensors:
            add(t)
        shapes = "train {} -> {}, test {} -> {}".format(*(shape(t) for t in tensors))
    else:
        for dataset in (split.train_set, split.test_set):
            for i in (0, len(dataset) - 1):
                for part in dataset[i][:2]:
                    add(part)
        x, y = split.train_set[0][:2]
        shapes = (f"Datasets of {len(split.train_set)} and {len(split.test_set)} examples of {shape(x)} -> "
                  f"{shape(y)}")
    return f"{shapes}, sha256 {digest.hexdigest()[:16]}"


def _finish(cfg: RunConfig, x_train, y_train, x_test, y_test) -> Split:
    """Labels to the task's dtype and shape; class count."""
    if cfg.task == "classification":
        y_train, y_test = y_train.reshape(-1).long(), y_test.reshape(-1).long()
        n_classes = int(max(y_train.max(), y_test.max())) + 1
        if cfg.loss == "bce" and (n_classes > 2 or int(min(y_train.min(), y_test.min())) < 0):
            raise ConfigError(f"train.loss: bce is for two classes (labels 0 and 1); the data has {n_classes} "
                              "(use cross-entropy)")
        if cfg.loss == "bce":
            y_train, y_test = y_train.float().reshape(-1, 1), y_test.float().reshape(-1, 1)
        return Split(x_train, y_train, x_test, y_test, n_classes=n_classes)
    y_train, y_test = y_train.float(), y_test.float()
    if y_train.dim() == 1:
        y_train, y_test = y_train.reshape(-1, 1), y_test.reshape(-1, 1)
    return Split(x_train, y_train, x_test, y_test)


def build_split(cfg: RunConfig) -> Split:
    """Generate or load the configured data and split it the way ``random_split`` does.

    A ConfigError names what the data and the config cannot do together (an empty split, a batch of
    one row under batch norm): these are known only once a csv or factory source is read."""
    split = _build_split(cfg)
    n_test = len(split.x_test) if split.in_memory else len(split.test_set)
    if split.n_train < 1 or n_test < 1:
        raise ConfigError(f"data.train_fraction: the data split into {split.n_train} training and {n_test} test "
                          "rows; both need at least one")
    problems = batch_problems(cfg, split.n_train)
    if problems:
        raise ConfigError("\n".join(problems))
    return split


def _build_split(cfg: RunConfig) -> Split:
    import torch

    d = cfg.data
    if d.source == "python":
        raise ConfigError("data: this run's data was given to lrctl.Run in Python (" + d.fingerprint + "); "
                          "only lrctl.Run(..., data=...) can give it again")
    torch.manual_seed(d.seed)
    if d.source == "factory":
        return _from_factory(cfg)
    if d.source == "csv":
        features, labels, _ = read_csv(cfg)
        x = torch.tensor(features, dtype=torch.float32)
        if cfg.task == "classification":
            indices, _ = _class_indices([row[0] for row in labels])
            y = torch.tensor(indices, dtype=torch.long)
        else:
            y = torch.tensor(labels, dtype=torch.float32)
        x_train, y_train, x_test, y_test = _random_split(x, y, d.train_fraction)
        if d.standardize:
            mean, std = x_train.mean(0), x_train.std(0).clamp_min(1e-12)
            x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
        return _finish(cfg, x_train, y_train, x_test, y_test)
    if cfg.task == "classification":
        x, y = lesson_classification(d.rows_per_class, d.features, d.classes, d.class_gap, d.class_std)
    else:
        x, y = lesson_regression(d.rows, d.weights, d.degree, d.noise)
    x_train, y_train, x_test, y_test = _random_split(x, y, d.train_fraction)
    if cfg.loss == "bce":  # one logit: labels as float (N, 1), as for a csv or factory source
        return _finish(cfg, x_train, y_train, x_test, y_test)
    return Split(x_train, y_train, x_test, y_test, n_classes=d.classes if cfg.task == "classification" else 0)


def epoch_order(n: int, shuffle_seed: int, epoch: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The permutation of ``n`` training rows used in global epoch ``epoch`` (``train.order = "seeded"``)."""
    import torch

    generator = torch.Generator().manual_seed((shuffle_seed * 1_000_003 + epoch) % (2**63))
    return torch.randperm(n, generator=generator).to(device)


def loader_order(n: int, generator: torch.Generator) -> torch.Tensor:
    """The permutation one pass of ``DataLoader(train, batch_size, shuffle=True)`` takes (``train.order = "lesson"``).

    ``generator`` stands in for the global torch RNG the loader draws from, and is advanced exactly as
    that RNG is: creating the loader's iterator draws its workers' base seed, then its RandomSampler
    draws the seed of a fresh generator that makes the permutation (torch/utils/data/dataloader.py,
    ``_BaseDataLoaderIter.__init__``; sampler.py, ``RandomSampler.__iter__``). The result equals,
    bit for bit, the batches of the lesson's loop on the installed torch.
    """
    import torch

    torch.empty((), dtype=torch.int64).random_(generator=generator)  # the iterator's base seed
    seed = int(torch.empty((), dtype=torch.int64).random_(generator=generator).item())  # the sampler's
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


ORDERS = ("lesson", "seeded")


class EpochOrders:
    """Each epoch's order of the training rows, as ``train.order`` says.

    ``lesson``: the order a ``DataLoader(shuffle=True)`` draws from the global torch RNG, starting
    from the RNG's state when this object is made (the engine makes it right after building the
    model, where the lesson's loop starts). The stream's state is part of the engine's checkpoint,
    so resume, undo, fork, replay and every torchrun rank continue it exactly; it is a private
    generator, so nothing else that draws random numbers in the process moves it.
    ``seeded``: a pure function of ``(shuffle_seed, epoch)`` (:func:`epoch_order`), independent of
    the model and of everything before the epoch.
    """

    def __init__(self, kind: str, n: int, shuffle_seed: int) -> None:
        import torch

        self.kind, self.n, self.shuffle_seed = kind, n, shuffle_seed
        self.generator: torch.Generator | None = None
        if kind == "lesson":
            self.generator = torch.Generator()
            self.generator.set_state(torch.get_rng_state())

    def draw(self, epoch: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """Epoch ``epoch``'s permutation (``lesson``: the next one of the stream; call once per epoch)."""
        if self.generator is None:
            return epoch_order(self.n, self.shuffle_seed, epoch, device)
        return loader_order(self.n, self.generator).to(device)

    def state(self) -> torch.Tensor | None:
        return self.generator.get_state() if self.generator is not None else None

    def load_state(self, state: torch.Tensor | None) -> None:
        if self.generator is not None and state is not None:
            self.generator.set_state(state)


def batches_per_epoch(n: int, batch_size: int) -> int:
    """Every row is used each epoch; a short last batch is kept (DataLoader's drop_last=False)."""
    return -(-n // batch_size)


@dataclass(frozen=True)
class Shard:
    """One rank's share of every epoch, the same for every epoch (only the row order changes).

    ``positions``: which places of the epoch's order this rank trains on, batch after batch;
    ``bounds``: where each batch's rows start and end within them; ``scales``: what each batch's
    loss is multiplied by so that DDP's mean over ranks equals the loss of the whole batch."""

    positions: list[int]
    bounds: list[tuple[int, int]]
    scales: list[float]


def shard(n: int, batch_size: int, rank: int, world: int) -> Shard:
    """Split every batch of the single-process epoch into ``world`` disjoint contiguous parts.

    The batch size stays the global one, so there are as many optimizer steps per epoch as with one
    process, and an lr (or a per-batch schedule) means the same thing on any number of processes.
    A rank whose part of a short last batch is empty trains on one row with weight 0 (DDP needs
    every rank in every step).

    >>> shard(5, 4, 0, 2)  # batches [0..3] and [4]: rank 0 gets rows 0-1, then none of the last
    Shard(positions=[0, 1, 4], bounds=[(0, 2), (2, 3)], scales=[1.0, 0.0])
    >>> shard(5, 4, 1, 2)  # the last batch's one row counts twice: DDP halves it
    Shard(positions=[2, 3, 4], bounds=[(0, 2), (2, 3)], scales=[1.0, 2.0])
    """
    positions: list[int] = []
    bounds, scales = [], []
    for b in range(batches_per_epoch(n, batch_size)):
        lo, hi = b * batch_size, min(n, (b + 1) * batch_size)
        size = hi - lo
        first, last = lo + size * rank // world, lo + size * (rank + 1) // world
        start = len(positions)
        if last > first:
            positions.extend(range(first, last))
            scales.append((last - first) * world / size)
        else:
            positions.append(lo)
            scales.append(0.0)
        bounds.append((start, len(positions)))
    return Shard(positions, bounds, scales)


def shard_range(n: int, rank: int, world: int) -> tuple[int, int]:
    """The rows ``[start, stop)`` of an ``n``-row set that ``rank`` evaluates."""
    return n * rank // world, n * (rank + 1) // world
