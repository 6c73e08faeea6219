"""Validation tallies stay on the data's device (a GPU run found them started on the CPU).

No CUDA here, so the ``meta`` device stands in for a second one: a tensor on
``meta`` refuses to meet a CPU tensor exactly as a CUDA one does, and the
tallies are never read (reading them is the one sync :func:`score` makes).
"""

from __future__ import annotations

import torch

from esper.nn.host import CNNHost
from esper.nn.model import MorphogeneticModel
from esper.tolaria.evaluate import tallies_with, tally
from esper.tolaria.step import group_finite


def _on_meta() -> tuple[MorphogeneticModel, torch.Tensor, torch.Tensor]:
    model = MorphogeneticModel(CNNHost(), slots=("early", "mid")).to("meta")
    x = torch.empty(6, 3, 32, 32, device="meta")
    y = torch.empty(6, dtype=torch.int64, device="meta")
    return model, x, y


def test_tally_accumulates_on_the_data_device() -> None:
    model, x, y = _on_meta()
    total = tally(model, x, y, batch_size=4)  # two batches: the sum starts on x's device
    assert (total.device.type, total.shape, total.dtype) == ("meta", (2,), torch.float64)


def test_tallies_with_accumulate_on_the_data_device() -> None:
    model, x, y = _on_meta()
    table = tallies_with(model, x, y, {"early": 0.0, "mid": 0.5}, batch_size=4)
    assert (table.device.type, table.shape) == ("meta", (2, 2))
    empty = tallies_with(model, x, y, {}, batch_size=4)
    assert (empty.device.type, empty.shape) == ("meta", (0, 2))


def test_group_finite_flags_an_empty_group_on_the_gradients_device() -> None:
    grads = {"w": torch.empty(3, device="meta")}
    flags = group_finite(grads, (("w",), ()))
    assert (flags.device.type, flags.shape) == ("meta", (2,))
