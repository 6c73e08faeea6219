"""The forward hooks that put seed slots on module outputs, and the context they read.

A :class:`MorphogeneticModel` registers one :class:`GraftHook` per slot on the
module at the slot's path. The hook replaces that module's output with the
slot's output, but only while the model's forward runs: the model puts the
call's inputs (slot states, alpha overrides, the collectors of features and
health) on its :class:`GraftContext` as one :class:`Frame` before it calls the
host, and takes it off in a ``finally``. Outside a model forward (the host
called by itself) every hook leaves the output alone, so ``model.host(x)`` is
the host alone.

Hooks and context are plain Python objects: ``copy.deepcopy`` of the model
copies them along with the slots they point to, and ``torch.compile`` traces
through them into the same graph (no tensor is stored on the context between
calls).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from torch import Tensor, nn

from ..core.state import SlotState
from ..errors import AlreadyGraftedError, GraftShapeError
from ..ops.health import SeedHealth
from .graft_points import PointSpec, pick, repack


class Frame(NamedTuple):
    """One model call's inputs to the hooks."""

    states: Mapping[str, SlotState] | None
    overrides: Mapping[str, Any]
    features: dict[str, Tensor] | None  # collect features and health (aux=True)
    health: dict[str, SeedHealth] | None


class GraftContext:
    """What the hooks of one model read: the current call's :class:`Frame`, or ``None``."""

    def __init__(self) -> None:
        self.frame: Frame | None = None


class GraftHook:
    """A forward hook: the module's output -> the slot's output (inside a model forward).

    Arguments:
        context: the model's context, read at every call.
        slots: the model's slots; the hook runs the one named ``spec.name``, looked up
            at every call (a slot replaced in ``model.seed_slots`` takes effect).
        spec: the point as the dry run measured it (the rank and channels are
            checked at every call; other dimensions may change).
    """

    def __init__(self, context: GraftContext, slots: Mapping[str, nn.Module],
                 spec: PointSpec) -> None:
        self.context, self.slots, self.spec = context, slots, spec

    def __call__(self, module: nn.Module, args: Any, output: Any) -> Any:
        frame = self.context.frame
        if frame is None:
            return None
        spec = self.spec
        host = pick(output, spec.select, spec.path)
        if host.dim() != len(spec.feature_shape) or host.shape[spec.channel_dim] != spec.channels:
            raise GraftShapeError(
                f"features at graft point {spec.path!r} are {tuple(host.shape)}, but its slot "
                f"was grafted on {spec.layout} features of {spec.channels} channels (dry run: "
                f"{spec.feature_shape}); only the dimensions other than the channels (the "
                "batch, a sequence length, the image size) may change between calls")
        name = spec.name
        slot = self.slots[name]
        state = frame.states.get(name) if frame.states is not None else None
        alpha = frame.overrides.get(name)
        if frame.features is not None and frame.health is not None and slot.seed is not None:
            frame.features[name] = host
            out, frame.health[name] = slot.checked(host, state, alpha)
        else:
            out = slot(host, state, alpha)
        return repack(output, spec.select, out)


def attach(host: nn.Module, context: GraftContext, slots: Mapping[str, nn.Module],
           specs: Mapping[str, PointSpec]) -> dict[str, int]:
    """Register one hook per slot on its module; slot name -> the hook's id."""
    ids: dict[str, int] = {}
    for name, spec in specs.items():
        handle = host.get_submodule(spec.path).register_forward_hook(
            GraftHook(context, slots, spec))
        ids[name] = handle.id
    return ids


def detach(host: nn.Module, specs: Mapping[str, PointSpec], ids: Mapping[str, int]) -> None:
    """Remove the hooks :func:`attach` registered (by id, so a deep copy removes its own)."""
    for name, spec in specs.items():
        host.get_submodule(spec.path)._forward_hooks.pop(ids[name], None)


def check_not_grafted(host: nn.Module) -> None:
    """Refuse a model that is, or already carries, a graft.

    Raises:
        AlreadyGraftedError: a ``MorphogeneticModel``, or a module with slot hooks
            (a ``RuntimeError``).
    """
    if hasattr(host, "seed_slots") and hasattr(host, "graft_description"):
        raise AlreadyGraftedError(f"{type(host).__name__} is already a grafted model: graft "
                                  "the original module once, with every point at once")
    for name, module in host.named_modules():
        if any(isinstance(hook, GraftHook) for hook in module._forward_hooks.values()):
            raise AlreadyGraftedError(
                f"module {name or type(host).__name__!r} already carries a seed slot: this "
                "model was grafted before; graft it once, with every point at once (or "
                "ungraft() the first model)")


__all__ = ["Frame", "GraftContext", "GraftHook", "attach", "check_not_grafted", "detach"]
