"""SlotDict: a ``ModuleDict`` of seed slots keyed by their real names, dots and all.

A grafted slot is named by its module path (``"layer3.0"``), but a module's
child name cannot hold a ``"."``. :class:`SlotDict` stores each slot under an
escaped key (:func:`~esper.leyline.names.slot_key`: ``"."`` -> ``"-"``,
``seed_slots.layer3-0.seed.weight`` in the ``state_dict``) and speaks the real
names everywhere else: ``slots["layer3.0"]``, ``in``, iteration, ``keys()``,
``items()``, ``values()``, ``len``. Names without a dot (``"mid"``) are stored
as they are, so built-in hosts' keys are unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from torch import nn

from ..leyline.names import slot_key


class SlotDict(nn.ModuleDict):
    """Slot name -> :class:`~esper.nn.slot.SeedSlot`, in insertion (forward) order.

    Arguments:
        slots: ``(name, slot)`` pairs or a mapping to start with.
    """

    def __init__(self, slots: Any = None) -> None:
        super().__init__()
        self._keys: dict[str, str] = {}  # real name -> child key
        if slots is not None:
            self.update(slots)

    def __getitem__(self, name: str) -> Any:
        if name not in self._keys:
            raise KeyError(name)
        return self._modules[self._keys[name]]

    def __setitem__(self, name: str, module: nn.Module) -> None:
        key = slot_key(name)
        self._keys[name] = key
        self.add_module(key, module)

    def __delitem__(self, name: str) -> None:
        del self._modules[self._keys.pop(name)]

    def __contains__(self, name: object) -> bool:
        return name in self._keys

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def keys(self) -> Iterable[str]:  # type: ignore[override]
        """The slots' real names."""
        return self._keys.keys()

    def items(self) -> Iterable[tuple[str, Any]]:  # type: ignore[override]
        """``(real name, slot)`` pairs."""
        return [(name, self._modules[key]) for name, key in self._keys.items()]

    def values(self) -> Iterable[Any]:  # type: ignore[override]
        """The slots, in order."""
        return [self._modules[key] for key in self._keys.values()]

    def clear(self) -> None:
        """Remove every slot."""
        self._modules.clear()
        self._keys.clear()

    def key_of(self, name: str) -> str:
        """The child-module key slot ``name`` is stored under (its ``state_dict`` prefix)."""
        return self._keys[name]


__all__ = ["SlotDict"]
