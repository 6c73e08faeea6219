"""bind: a morphogenetic model's seeds in the user's own ``torch.optim`` optimizer.

After ``binding = bind(optimizer, model)``, every seed that germinates gets a param
group of its own (its parameters and its blend gate's) that copies the host's group,
scheduler keys and current ``lr`` included; a pruned seed's group leaves the optimizer
with its state; a fossilized seed keeps its group. Seed groups follow the host's
groups, in the model's slot order whatever the order of germination, so a fresh
model, optimizer and scheduler bound the same way load a saved ``state_dict`` position
for position (see :func:`bind`).

The model is duck-typed (``seed_slots``, ``get_seed_parameters``,
``get_host_parameters``): this package does not import ``esper.nn``.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from torch import Tensor, nn
from torch.optim import Optimizer

from ..errors import (
    FastModeBindError,
    HostNotInOptimizerError,
    SharedParameterError,
    UnboundSeedWarning,
)
from ..leyline import EventType
from ..validation import check_finite

# Group keys that hold a learning rate (the schedulers' included): an ``seed_lr`` scales them.
LR_KEYS = ("lr", "initial_lr", "max_lr", "min_lr")
# Scheduler attributes that hold one entry per param group (torch 2.x).
PER_GROUP = ("base_lrs", "_last_lr", "lr_lambdas", "min_lrs", "max_lrs", "base_momentums",
             "max_momentums")
_SCALED = ("base_lrs", "_last_lr", "min_lrs", "max_lrs")


class BindableModel(Protocol):
    """What :func:`bind` needs of a model (``MorphogeneticModel`` has it)."""

    seed_slots: Any

    def get_seed_parameters(self, slot: str | None = None) -> Iterable[nn.Parameter]: ...

    def get_host_parameters(self) -> Iterable[nn.Parameter]: ...


class _Chained:
    """A slot's telemetry callback: the binding follows the event, then the callback it
    replaced (if any) receives it."""

    def __init__(self, binding: Binding, slot: str, previous: Any) -> None:
        self.binding, self.slot, self.previous = binding, slot, previous

    def __call__(self, event: Any) -> None:
        try:
            self.binding._on_event(self.slot, event)
        finally:
            if self.previous is not None:
                self.previous(event)


def _ids(groups: Iterable[dict[str, Any]]) -> dict[int, int]:
    """Parameter id -> index of the group holding it."""
    return {id(p): i for i, group in enumerate(groups) for p in group["params"]}


def _copy(value: Any) -> Any:
    return value.detach().clone() if isinstance(value, Tensor) else copy.copy(value)


class Binding:
    """Keeps ``optimizer`` (and ``schedulers``) in step with the seeds of ``model``.

    Built by :func:`bind`. Attributes: ``optimizer``, ``model``, ``schedulers``,
    ``host_group`` (the index of the group whose hyper-parameters seeds copy).
    """

    def __init__(self, optimizer: Optimizer, model: BindableModel, *, seed_lr: float | None,
                 seed_weight_decay: float | None, schedulers: Sequence[Any]) -> None:
        self.optimizer, self.model = optimizer, model
        self.schedulers = list(schedulers)
        self.seed_lr, self.seed_weight_decay = seed_lr, seed_weight_decay
        where = _ids(optimizer.param_groups)
        self.host_group = min((where[id(p)] for p in model.get_host_parameters()), default=0)
        self._host_groups = len(optimizer.param_groups)
        self._params: dict[str, list[nn.Parameter]] = {}

    # ------------------------------------------------------------------ public

    def sync(self) -> None:
        """Make the seed groups match the live seeds: add a group for each new seed, remove
        the group (and optimizer state) of each seed that is gone or was re-created (by
        ``model.load_state_dict`` after binding: call ``sync()`` then)."""
        for name in self.model.seed_slots:
            live = list(self.model.get_seed_parameters(name))
            bound = self._params.get(name)
            if bound is not None and [id(p) for p in bound] != [id(p) for p in live]:
                self._remove(name)
            if live and name not in self._params:
                self._add(name, live)

    def group(self, slot: str) -> dict[str, Any] | None:
        """The param group of the seed in ``slot`` (``None``: no bound seed there)."""
        index = self._index(slot)
        return None if index is None else self.optimizer.param_groups[index]

    def unbind(self) -> None:
        """Stop following the model: each slot gets its own callback back; groups stay."""
        for slot in self.model.seed_slots.values():
            if isinstance(slot.on_telemetry, _Chained) and slot.on_telemetry.binding is self:
                slot.on_telemetry = slot.on_telemetry.previous

    # ------------------------------------------------------------------ events

    def _on_event(self, slot: str, event: Any) -> None:
        self.sync()
        if (event.type == EventType.SEED_STAGE_CHANGED and event.payload["from"] == "TRAINING"
                and slot in self._params):
            held = _ids(self.optimizer.param_groups)
            missing = sum(id(p) not in held for p in self._params[slot])
            if missing:
                warnings.warn(f"the seed in slot {slot!r} left TRAINING with {missing} "
                              "parameter(s) the optimizer does not hold: it did not train; "
                              "keep the groups bind() added", UnboundSeedWarning, stacklevel=2)

    # ------------------------------------------------------------------ groups

    def _index(self, slot: str) -> int | None:
        params = self._params.get(slot)
        if not params:
            return None
        return _ids(self.optimizer.param_groups).get(id(params[0]))

    def _seed_group(self, params: list[nn.Parameter]) -> tuple[dict[str, Any], float]:
        """A group of ``params`` with the host group's hyper-parameters, and the LR ratio."""
        host = self.optimizer.param_groups[self.host_group]
        group = {key: _copy(value) for key, value in host.items() if key != "params"}
        ratio = 1.0
        if self.seed_lr is not None:
            base = float(host.get("initial_lr", host["lr"]))
            ratio = self.seed_lr / base if base else 0.0
            for key in LR_KEYS:
                if key in group:
                    group[key] = group[key] * ratio if ratio else self.seed_lr
        if self.seed_weight_decay is not None:
            group["weight_decay"] = self.seed_weight_decay
        group["params"] = params
        return group, ratio

    def _add(self, slot: str, params: list[nn.Parameter]) -> None:
        order = list(self.model.seed_slots)
        before = sum(order.index(name) < order.index(slot) for name in self._params)
        index = self._host_groups + before
        count = len(self.optimizer.param_groups)
        group, ratio = self._seed_group(params)
        self.optimizer.add_param_group(group)
        groups = self.optimizer.param_groups
        groups.insert(index, groups.pop())
        self._params[slot] = params
        for scheduler in self.schedulers:
            _insert(scheduler, index, count, groups[index], self.host_group, ratio)

    def _remove(self, slot: str) -> None:
        index = self._index(slot)
        params = self._params.pop(slot)
        for p in params:
            self.optimizer.state.pop(p, None)
        if index is None:
            return
        count = len(self.optimizer.param_groups)
        del self.optimizer.param_groups[index]
        for scheduler in self.schedulers:
            for name in PER_GROUP:
                values = getattr(scheduler, name, None)
                if isinstance(values, list) and len(values) == count:
                    del values[index]


def _insert(scheduler: Any, index: int, count: int, group: dict[str, Any], host: int,
            ratio: float) -> None:
    """Give ``scheduler`` the entries of a group inserted at ``index`` (``count`` before)."""
    for name in PER_GROUP:
        values = getattr(scheduler, name, None)
        if not isinstance(values, list) or len(values) != count:
            continue
        if name == "base_lrs":
            value = _copy(group.get("initial_lr", group["lr"]))
        elif name == "_last_lr":
            value = _copy(group["lr"])
        elif name in _SCALED and not callable(values[host]):
            value = values[host] * ratio if ratio != 1.0 else _copy(values[host])
        else:
            value = values[host]
        values.insert(index, value)


def _check(optimizer: Optimizer, model: BindableModel) -> None:
    """Refuse a model or optimizer that cannot be bound (nothing is changed)."""
    slots = model.seed_slots
    fast = [name for name, slot in slots.items() if getattr(slot, "fast_mode", False)]
    if fast:
        raise FastModeBindError(
            f"slots {fast} run in fast_mode and deliver no lifecycle events, so the optimizer "
            "could not follow their seeds: build the model with fast_mode=False to bind it")
    if any(isinstance(slot.on_telemetry, _Chained) for slot in slots.values()):
        raise SharedParameterError("the model is already bound to an optimizer: bind it once "
                                   "(binding.unbind() first to bind it to another)")
    held = _ids(optimizer.param_groups)
    host = list(model.get_host_parameters())
    missing = sum(id(p) not in held for p in host)
    if missing:
        raise HostNotInOptimizerError(
            f"the optimizer holds {len(host) - missing} of the host's {len(host)} parameters: "
            f"{missing} are missing; build it from model.get_host_parameters() (or "
            "model.parameters() before any seed germinates)")
    for name in slots:
        shared = [held[id(p)] for p in model.get_seed_parameters(name) if id(p) in held]
        if shared:
            raise SharedParameterError(
                f"{len(shared)} parameter(s) of the seed in slot {name!r} are already in the "
                f"optimizer's param group {shared[0]}: build the optimizer from "
                "model.get_host_parameters(); bind() gives each seed a group of its own")


def bind(optimizer: Optimizer, model: BindableModel, *, seed_lr: float | None = None,
         seed_weight_decay: float | None = None, schedulers: Sequence[Any] = ()) -> Binding:
    """Put the model's seeds in ``optimizer`` now and whenever one germinates; take them out
    (with their optimizer state) when one is pruned.

    Each seed gets a group of its own after the host's groups, in slot order, copying
    every key of the first group that holds a host parameter (``lr`` as it is now, the
    schedulers' ``initial_lr``, OneCycleLR's ``max_lr``...). Each slot's telemetry callback
    is wrapped (the old one still receives every event). Resume: build the model, load
    its ``state_dict``, build the optimizer from the host's parameters and its
    schedulers, ``bind(...)``, then ``optimizer.load_state_dict`` and each scheduler's.

    Arguments:
        optimizer: any ``torch.optim.Optimizer`` holding the host's parameters (only).
        model: a ``MorphogeneticModel`` (without ``fast_mode``).
        seed_lr: the seeds' base LR in place of the host's (``initial_lr``, or ``lr``
            without a scheduler); every LR key of a seed group is scaled by the same
            ratio, so schedulers scale the seed's LR as the host's.
        seed_weight_decay: the seeds' ``weight_decay`` in place of the host's.
        schedulers: the LR schedulers built on ``optimizer`` before this call; their
            per-group lists (``base_lrs``, ``lr_lambdas``...) follow the seed groups.
            Schedulers built later see the seed groups present then; a seed that
            germinates afterwards needs them passed here (or appended to
            ``binding.schedulers``). ReduceLROnPlateau, CyclicLR and OneCycleLR keep
            working too; chained schedulers need their members listed.

    Raises:
        HostNotInOptimizerError: the optimizer lacks host parameters (the count is named).
        SharedParameterError: a seed's parameters are already in the optimizer, or the
            model is already bound.
        FastModeBindError: a slot runs in ``fast_mode`` (it delivers no events).
        ValueError: a negative or non-finite ``seed_lr`` / ``seed_weight_decay``.

    Warns:
        UserWarning: the host group carries ``initial_lr`` (a scheduler exists) and no
            scheduler was passed.
    """
    lr = None if seed_lr is None else check_finite("seed_lr", seed_lr)
    decay = (None if seed_weight_decay is None
             else check_finite("seed_weight_decay", seed_weight_decay))
    _check(optimizer, model)
    binding = Binding(optimizer, model, seed_lr=lr, seed_weight_decay=decay,
                      schedulers=schedulers)
    if not binding.schedulers and "initial_lr" in optimizer.param_groups[binding.host_group]:
        warnings.warn("the optimizer's groups carry 'initial_lr', so an LR scheduler drives "
                      "it: pass it as bind(..., schedulers=[scheduler]) so the seed groups "
                      "follow its schedule", UserWarning, stacklevel=2)
    for name, slot in model.seed_slots.items():
        slot.on_telemetry = _Chained(binding, name, slot.on_telemetry)
    binding.sync()
    return binding


__all__ = ["BindableModel", "Binding", "UnboundSeedWarning", "bind"]
