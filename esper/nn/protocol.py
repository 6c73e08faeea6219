"""What a host offers so that slots can be attached by point *name* rather than module path.

Any ``nn.Module`` can take seed slots: :func:`esper.graft` names each point by
the path of the module whose output it is and measures it on an example input.
A host that satisfies :class:`HostProtocol` (the built-in
:class:`~esper.nn.host.CNNHost` and ``TransformerHost``) names its points
itself and brings its own example input, so ``MorphogeneticModel(host,
slots=("mid",))`` needs neither; the slots go through the same forward hooks.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor


@runtime_checkable
class HostProtocol(Protocol):
    """A module with named injection points and an example input."""

    def injection_points(self) -> dict[str, str]:
        """Injection point name -> path of the module whose output it is, in forward order."""
        ...

    def example_input(self) -> Tensor:
        """A small input the host runs on, on its device (a graft's dry run)."""
        ...

    def forward(self, x: Tensor) -> Tensor:
        """The plain host, no slots."""
        ...


__all__ = ["HostProtocol"]
