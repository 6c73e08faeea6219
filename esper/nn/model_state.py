"""All-or-nothing loading: a snapshot of a model's tensors and slots, put back on failure."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .slot import SeedSlot, SlotContents

# (module, "_parameters" or "_buffers", name, the tensor object, a copy of its values)
TensorSnapshot = list[tuple[nn.Module, str, str, Tensor, Tensor]]


def snapshot_tensors(model: nn.Module) -> TensorSnapshot:
    """Every parameter and buffer of every submodule, with a copy of its values."""
    with torch.no_grad():
        return [(module, kind, name, tensor, tensor.detach().clone())
                for module in model.modules()
                for kind in ("_parameters", "_buffers")
                for name, tensor in getattr(module, kind).items() if tensor is not None]


def restore(slots: dict[SeedSlot, SlotContents], tensors: TensorSnapshot) -> None:
    """Undo a failed load: seeds, gates and states, then each tensor's object and values."""
    for slot, contents in slots.items():
        slot.restore_contents(contents)
    with torch.no_grad():
        for module, kind, name, tensor, values in tensors:
            getattr(module, kind)[name] = tensor
            tensor.copy_(values)


__all__ = ["TensorSnapshot", "restore", "snapshot_tensors"]
