"""The training step's optimizers: their hyper-parameters and their update.

Each configuration names the state it keeps per parameter (:attr:`buffers`)
and applies one update through torch's own functional implementation
(``torch.optim.sgd.sgd``, ``torch.optim.adamw.adamw``) with a tensor learning
rate, so it traces into the compiled step as part of its one graph and a
change of rate never recompiles. Weight decay is the caller's choice per call
(:func:`~esper.optim.state.decays` keeps it off norms and biases).

Example::

    config = optimizer_config("adamw", lr=3e-4)
    config.update(params, grads, buffers, lr=torch.tensor(3e-4), weight_decay=0.01)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.optim.adamw import adamw as functional_adamw
from torch.optim.sgd import sgd as functional_sgd

from ..leyline.constants import (
    DEFAULT_ADAMW_BETAS,
    DEFAULT_ADAMW_EPS,
    DEFAULT_ADAMW_LR,
    DEFAULT_ADAMW_WEIGHT_DECAY,
    DEFAULT_MOMENTUM,
    DEFAULT_RUN_LR,
    DEFAULT_WEIGHT_DECAY,
    MAX_LEARNING_RATE,
    OPTIMIZERS,
)
from ..validation import check_finite

HOST_GROUP = "host"
SCALAR = "scalar"  # a buffer kind's shape: one float32 per parameter (AdamW's step count)


def _check_rates(config: Any) -> None:
    """The rules every optimizer shares: rates in (0, MAX], seed_lr optional, decay >= 0."""
    kind = type(config).__name__
    check_finite(f"{kind}.weight_decay", config.weight_decay, minimum=0.0)
    for name in ("lr", "seed_lr"):
        value = getattr(config, name)
        if value is None and name == "seed_lr":
            continue
        check_finite(f"{kind}.{name}", value, minimum=0.0)
        if not 0 < value <= MAX_LEARNING_RATE:
            raise ValueError(f"{kind}.{name} must lie in (0, {MAX_LEARNING_RATE:g}], got "
                             f"{value!r}: 0 trains nothing and a larger rate only diverges")


class _Rates:
    """What both configurations answer the same way (a mixin of frozen dataclasses)."""

    lr: float
    seed_lr: float | None
    name: ClassVar[str]
    buffers: ClassVar[Mapping[str, str]]

    def lr_for(self, group: str) -> float:
        """The learning rate of a group: ``seed_lr`` for a seed's, when set."""
        return self.lr if group == HOST_GROUP or self.seed_lr is None else self.seed_lr

    def fresh(self, param: Tensor) -> dict[str, Tensor]:
        """Zeroed state of each buffer kind for ``param`` (a new seed's first step)."""
        return {kind: (torch.zeros((), dtype=torch.float32, device=param.device)
                       if shape == SCALAR else
                       torch.zeros_like(param, memory_format=torch.preserve_format).detach())
                for kind, shape in self.buffers.items()}


@dataclass(frozen=True)
class SGDConfig(_Rates):
    """SGD with momentum (no dampening, no Nesterov); ``seed_lr`` defaults to ``lr``."""

    name: ClassVar[str] = "sgd"
    buffers: ClassVar[Mapping[str, str]] = {"momentum": "param"}

    lr: float = DEFAULT_RUN_LR
    momentum: float = DEFAULT_MOMENTUM
    weight_decay: float = DEFAULT_WEIGHT_DECAY
    seed_lr: float | None = None

    def __post_init__(self) -> None:
        _check_rates(self)
        check_finite("SGDConfig.momentum", self.momentum, minimum=0.0)
        if self.momentum >= 1:
            raise ValueError(f"SGDConfig.momentum must be < 1, got {self.momentum}")

    def update(self, params: list[Tensor], grads: list[Tensor],
               buffers: Mapping[str, list[Tensor]], lr: Tensor, weight_decay: float) -> None:
        """One in-place step of ``params`` and their buffers (``torch.optim.sgd.sgd``)."""
        functional_sgd(params, grads, list(buffers["momentum"]), foreach=False,
                            weight_decay=weight_decay, momentum=self.momentum, lr=lr,
                            dampening=0.0, nesterov=False, maximize=False)


@dataclass(frozen=True)
class AdamWConfig(_Rates):
    """AdamW (decoupled weight decay, no AMSGrad); ``seed_lr`` defaults to ``lr``."""

    name: ClassVar[str] = "adamw"
    buffers: ClassVar[Mapping[str, str]] = {"exp_avg": "param", "exp_avg_sq": "param",
                                            "step": SCALAR}

    lr: float = DEFAULT_ADAMW_LR
    betas: tuple[float, float] = DEFAULT_ADAMW_BETAS
    eps: float = DEFAULT_ADAMW_EPS
    weight_decay: float = DEFAULT_ADAMW_WEIGHT_DECAY
    seed_lr: float | None = None

    def __post_init__(self) -> None:
        _check_rates(self)
        object.__setattr__(self, "betas", tuple(self.betas))  # a list read from JSON
        if len(self.betas) != 2 or not all(
                isinstance(b, int | float) and 0 <= b < 1 for b in self.betas):
            raise ValueError(f"AdamWConfig.betas must be two numbers in [0, 1), got "
                             f"{self.betas!r}")
        check_finite("AdamWConfig.eps", self.eps, minimum=0.0, strict=True)

    def update(self, params: list[Tensor], grads: list[Tensor],
               buffers: Mapping[str, list[Tensor]], lr: Tensor, weight_decay: float) -> None:
        """One in-place step of ``params`` and their buffers (``torch.optim.adamw.adamw``).

        Compiled, it runs the capturable form: the step counts stay tensors
        and nothing syncs; eagerly, torch's ordinary single-tensor form.
        """
        functional_adamw(
            params, grads, list(buffers["exp_avg"]), list(buffers["exp_avg_sq"]), [],
            list(buffers["step"]), foreach=False,
            capturable=torch.compiler.is_compiling() or params[0].is_cuda,
            amsgrad=False, beta1=self.betas[0], beta2=self.betas[1], lr=lr,
            weight_decay=weight_decay, eps=self.eps, maximize=False)


OptimizerConfig = SGDConfig | AdamWConfig
"""The configuration of the training step's optimizer."""
CONFIGS: Mapping[str, type[SGDConfig] | type[AdamWConfig]] = {
    SGDConfig.name: SGDConfig, AdamWConfig.name: AdamWConfig}
assert tuple(CONFIGS) == OPTIMIZERS


def optimizer_config(name: str, **settings: Any) -> OptimizerConfig:
    """The configuration of the optimizer called ``name``; ``None`` settings take its defaults.

    Raises:
        ValueError: an unknown optimizer (the message lists the known ones), or a bad value.
        TypeError: a setting the optimizer does not have.
    """
    if name not in CONFIGS:
        raise ValueError(f"unknown optimizer {name!r}; known: {list(CONFIGS)}")
    return CONFIGS[name](**{k: v for k, v in settings.items() if v is not None})

