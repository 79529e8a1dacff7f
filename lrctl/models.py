"""Model definitions: the lesson's MLP with batch norm before or after the activation.

>>> from lrctl.config import RunConfig
>>> model = build_model(RunConfig(), in_features=5)   # doctest: +SKIP
>>> sum(p.numel() for p in model.parameters())        # doctest: +SKIP
65
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lrctl.config import RunConfig

ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu, "sigmoid": torch.sigmoid,
               "gelu": nn.functional.gelu, "identity": lambda x: x}


class MLP(nn.Module):
    """linear1 -> [BN] act [BN] -> linear2 ... -> linearN, named as in the lesson (linear1, normalize1, ...).

    ``batch_norm='pre'`` normalises each hidden layer's pre-activation (tanh(BN(linear x))); ``'post'``
    normalises after the activation, on the next layer's input; ``'none'`` builds no BN modules.
    """

    def __init__(self, sizes: list[int], activation: str = "tanh", batch_norm: str = "pre",
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.batch_norm = batch_norm
        self.act = ACTIVATIONS[activation]
        self.n_hidden = len(sizes) - 2
        # Registration order matters: each Linear draws its initial weights from the global RNG.
        for i in range(self.n_hidden):
            self.add_module(f"linear{i + 1}", nn.Linear(sizes[i], sizes[i + 1]))
            if batch_norm != "none":
                self.add_module(f"normalize{i + 1}", nn.BatchNorm1d(sizes[i + 1]))
        self.add_module(f"linear{self.n_hidden + 1}", nn.Linear(sizes[-2], sizes[-1]))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None
        # The call sequence, resolved once: per-call module lookups by name cost more than the
        # arithmetic of a model this small.
        steps: list = []
        for i in range(1, self.n_hidden + 1):
            norm = getattr(self, f"normalize{i}", None)
            steps.append(getattr(self, f"linear{i}"))
            if batch_norm == "pre":
                steps.append(norm)
            steps.append(self.act)
            if batch_norm == "post":
                steps.append(norm)
            if self.dropout is not None:
                steps.append(self.dropout)
        steps.append(getattr(self, f"linear{self.n_hidden + 1}"))
        object.__setattr__(self, "_steps", tuple(steps))  # a plain tuple: not registered twice

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for step in self._steps:
            x = step(x)
        return x


def build_model(cfg: RunConfig, in_features: int, out_features: int = 1) -> nn.Module:
    """Seed the global RNG with ``model.seed`` and build the configured model (the lesson does the same)."""
    m = cfg.model
    if m.kind == "python":
        from lrctl.config import ConfigError

        raise ConfigError(f"model: this run's model was given to lrctl.Run in Python ({m.fingerprint}); "
                          "only lrctl.Run(..., model=...) can give it again")
    torch.manual_seed(m.seed)
    if m.kind == "factory":
        return _from_factory(m.factory, in_features, out_features)
    return MLP([in_features, *m.hidden, out_features], m.activation, m.batch_norm, m.dropout)


def _from_factory(spec: str, in_features: int, out_features: int) -> nn.Module:
    from lrctl._factory import load_callable

    return from_callable(load_callable(spec, "model.factory"), in_features, out_features,
                         f"model.factory: {spec!r}")


def from_callable(fn: Any, in_features: int, out_features: int, who: str) -> nn.Module:
    """Call a model factory with the ``in_features=``/``out_features=`` it accepts; check what it returns."""
    import inspect

    from lrctl.config import ConfigError

    params = inspect.signature(fn).parameters
    offered = {"in_features": in_features, "out_features": out_features}
    kwargs = {k: v for k, v in offered.items() if k in params or any(p.kind == p.VAR_KEYWORD for p in params.values())}
    model = fn(**kwargs)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{who} returned {type(model).__name__}; expected a torch.nn.Module")
    check_trainable(model, who)
    return model


def check_trainable(model: nn.Module, who: str) -> None:
    from lrctl.config import ConfigError

    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError(f"{who} returned a model with no trainable parameters")


def fingerprint(model: nn.Module) -> str:
    """The class and every parameter's name and shape (hashed): 'Net, 65 parameters in 10 tensors, shapes 1f0c…'.

    A run made from a model object is reopened only with a model of the same shapes."""
    import hashlib

    shapes = [(name, tuple(p.shape)) for name, p in model.named_parameters()]
    digest = hashlib.sha256(repr(shapes).encode()).hexdigest()[:16]
    count = sum(p.numel() for p in model.parameters())
    return f"{type(model).__name__}, {count} parameters in {len(shapes)} tensors, shapes {digest}"
