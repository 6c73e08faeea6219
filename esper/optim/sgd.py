"""A functional SGD with momentum whose state follows the model's topology.

State is keyed by parameter name and grouped by slot: the host's parameters
form group ``"host"``, each seed's (gate included) the group named after its
slot. A germinated seed joins with fresh momentum, a pruned seed's group and
buffers leave, and nothing else is touched (:meth:`OptimizerState.synced`).
The update itself runs inside the compiled training step (see ``step.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..leyline.constants import (
    DEFAULT_MOMENTUM,
    DEFAULT_RUN_LR,
    DEFAULT_WEIGHT_DECAY,
    MAX_LEARNING_RATE,
)
from ..leyline.names import slot_of
from ..validation import check_finite

HOST_GROUP = "host"


def group_of(parameter_name: str) -> str:
    """The optimizer group of a model parameter: ``"host"`` or its slot's name."""
    slot = slot_of(parameter_name)
    return HOST_GROUP if slot is None else slot


@dataclass(frozen=True)
class SGDConfig:
    """Hyper-parameters: ``seed_lr`` defaults to ``lr``."""

    lr: float = DEFAULT_RUN_LR
    momentum: float = DEFAULT_MOMENTUM
    weight_decay: float = DEFAULT_WEIGHT_DECAY
    seed_lr: float | None = None

    def __post_init__(self) -> None:
        for name in ("lr", "momentum", "weight_decay", "seed_lr"):
            value = getattr(self, name)
            if name == "seed_lr" and value is None:
                continue
            check_finite(f"SGDConfig.{name}", value, minimum=0.0)
        for name in ("lr", "seed_lr"):
            value = getattr(self, name)
            if value is not None and not 0 < value <= MAX_LEARNING_RATE:
                raise ValueError(f"SGDConfig.{name} must lie in (0, {MAX_LEARNING_RATE:g}], got "
                                 f"{value!r}: 0 trains nothing and a larger rate only diverges")
        if self.momentum >= 1:
            raise ValueError(f"SGDConfig.momentum must be < 1, got {self.momentum}")

    def lr_for(self, group: str) -> float:
        """The learning rate of a group."""
        return self.lr if group == HOST_GROUP or self.seed_lr is None else self.seed_lr


@dataclass(frozen=True)
class OptimizerState:
    """Momentum buffers by parameter name and the parameter names of each group."""

    config: SGDConfig = field(default_factory=SGDConfig)
    groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    momenta: Mapping[str, Tensor] = field(default_factory=dict)

    def synced(self, model: nn.Module) -> OptimizerState:
        """Groups and buffers matching ``model``'s parameters now.

        New groups (a germinated seed) start with zero momentum; groups whose
        parameters are gone (a pruned seed) leave with their buffers; existing
        buffers are kept as they are.
        """
        named = dict(model.named_parameters())
        groups: dict[str, list[str]] = {}
        for name in named:
            groups.setdefault(group_of(name), []).append(name)
        momenta = {name: self.momenta[name] if name in self.momenta
                   else torch.zeros_like(p, memory_format=torch.preserve_format).detach()
                   for name, p in named.items()}
        return OptimizerState(self.config, {g: tuple(n) for g, n in groups.items()}, momenta)

    def learning_rates(self, device: torch.device | str = "cpu") -> dict[str, Tensor]:
        """Parameter name -> 0-d learning-rate tensor (tensors, so lr changes never recompile)."""
        return {name: torch.tensor(self.config.lr_for(group), device=device)
                for group, names in self.groups.items() for name in names}


def sgd_update(params: Mapping[str, Tensor], grads: Mapping[str, Tensor],
               momenta: Mapping[str, Tensor], lrs: Mapping[str, Tensor],
               momentum: float, weight_decay: float,
               ok: Mapping[str, Tensor] | None = None) -> None:
    """In-place SGD with momentum and weight decay (runs inside the compiled step).

    Arguments:
        ok: parameter name -> 0-d bool; where false, that parameter and its
            momentum keep their values bit for bit (a device-side select, no
            host sync). ``None`` updates everything.
    """
    with torch.no_grad():
        for name, p in params.items():
            grad = grads[name]
            if weight_decay:
                grad = grad.add(p, alpha=weight_decay)
            buffer = momenta[name]
            if ok is None:
                buffer.mul_(momentum).add_(grad)
                p.sub_(lrs[name] * buffer)
                continue
            new_buffer = buffer * momentum + grad
            buffer.copy_(torch.where(ok[name], new_buffer, buffer))
            p.copy_(torch.where(ok[name], p - lrs[name] * new_buffer, p))
