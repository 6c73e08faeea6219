"""The interface a host network offers to the slots that grow inside it.

A host is a chain of segments. Injection point ``name`` sits at the end of the
segment of the same name; the head turns the last point's features into the
output. A wrapper that inserts slots runs::

    h = x
    for name in host.segment_names():
        h = host.run_segment(name, h)   # the first segment takes the raw input
        h = slots[name](h)              # or nothing, where no slot is attached
    return host.run_head(h)

``forward_to_segment`` and ``forward_from_segment`` are the same walk cut at a
point, for probing features or resuming from them.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor


@runtime_checkable
class HostProtocol(Protocol):
    """What :class:`~esper.nn.host.CNNHost` and ``TransformerHost`` both provide."""

    topology: str  # "cnn" or "transformer"

    def injection_specs(self) -> dict[str, int]:
        """Injection point name -> channels (feature width), in forward order."""
        ...

    def segment_names(self) -> tuple[str, ...]:
        """Injection point names in forward order."""
        ...

    def run_segment(self, name: str, h: Tensor) -> Tensor:
        """Run the segment ending at point ``name``; the first one takes the raw input."""
        ...

    def run_head(self, h: Tensor) -> Tensor:
        """Turn features at the last point into the network's output."""
        ...

    def forward_to_segment(self, name: str, x: Tensor, from_segment: str | None = None) -> Tensor:
        """Features at point ``name``, from the raw input or from point ``from_segment``."""
        ...

    def forward_from_segment(self, name: str, h: Tensor) -> Tensor:
        """The output, resuming from features ``h`` at point ``name``."""
        ...

    def forward(self, x: Tensor) -> Tensor:
        """The plain host: every segment then the head, no slots."""
        ...


__all__ = ["HostProtocol"]
