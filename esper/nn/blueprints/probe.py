"""Shape probe: a seed must give back features of exactly the shape it was given."""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

from ...errors import SeedShapeError

_CNN_PROBE_SIZE = 8  # spatial side of the CNN probe
_TRANSFORMER_PROBE_TOKENS = 8
_PROBE_BATCH = 2


@functools.lru_cache(maxsize=64)
def _probe(topology: str, channels: int, device: torch.device) -> Tensor:
    generator = torch.Generator().manual_seed(0)
    if topology == "cnn":
        shape = (_PROBE_BATCH, channels, _CNN_PROBE_SIZE, _CNN_PROBE_SIZE)
        probe = torch.randn(shape, generator=generator).to(memory_format=torch.channels_last)
    elif topology == "transformer":
        shape = (_PROBE_BATCH, _TRANSFORMER_PROBE_TOKENS, channels)
        probe = torch.randn(shape, generator=generator)
    else:
        raise ValueError(f"unknown topology {topology!r}; known topologies: cnn, transformer")
    return probe.to(device)


def validate_seed(
    seed: nn.Module,
    *,
    topology: str,
    channels: int,
    device: torch.device | str,
    name: str,
) -> None:
    """Run a tiny probe through ``seed`` and reject it if it changes the shape.

    The probe (``[2, C, 8, 8]`` channels_last for a CNN, ``[2, 8, C]`` for a
    transformer) is cached per (topology, channels, device). The seed runs in
    eval mode without gradients, and every submodule's mode is restored.

    Arguments:
        seed: the seed module, already on ``device``.
        topology: ``"cnn"`` or ``"transformer"``.
        channels: channels of the injection point.
        device: where the probe runs.
        name: the blueprint's name, for the error message.

    Raises:
        SeedShapeError: naming the blueprint and both shapes if the output shape
            differs, or if the seed does not return a tensor (a ``ValueError``).
    """
    probe = _probe(topology, channels, torch.device(device)).clone()
    modes = {module: module.training for module in seed.modules()}
    try:
        seed.eval()
        with torch.no_grad():
            output = seed(probe)
    finally:
        for module, training in modes.items():
            module.training = training
    if not isinstance(output, Tensor):
        raise SeedShapeError(f"blueprint {name!r} returned {type(output).__name__}, not a "
                             "tensor: a seed's forward must return the features it was given, "
                             "transformed, as one tensor")
    if output.shape != probe.shape:
        raise SeedShapeError(f"blueprint {name!r} changes the feature shape: input "
                             f"{tuple(probe.shape)}, output {tuple(output.shape)}; a seed must "
                             "return features of exactly the shape it receives: fix its factory")


__all__ = ["validate_seed"]
