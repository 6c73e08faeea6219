"""Seed checks: a seed must give back features of exactly the shape and dtype it was given.

Two kinds of probe input feed :func:`check_seed`:

* :func:`feature_probe`, zeros of the real feature shape at a slot (when it is
  known, e.g. recorded by a graft's dry run), batch cut to at most 2;
* :func:`default_probe`, a small fixed tensor per layout when the real shape is
  unknown: ``[2, C, 8, 8]`` channels_last for ``cnn``, ``[2, 8, C]`` for
  ``transformer``, ``[2, C]`` for ``mlp``.
"""

from __future__ import annotations

import functools
from types import MappingProxyType

import torch
from torch import Tensor, nn

from ...errors import SeedShapeError

LAYOUT_SHAPES: MappingProxyType[str, str] = MappingProxyType({
    "cnn": "[B, C, H, W]",
    "transformer": "[B, T, C]",
    "mlp": "[B, C]",
})
"""Each feature layout and the shape of its features, batch first."""

_RANK_AND_CHANNEL_DIM = {"cnn": (4, 1), "transformer": (3, 2), "mlp": (2, 1)}

_CNN_PROBE_SIZE = 8  # spatial side of the CNN probe
_TRANSFORMER_PROBE_TOKENS = 8
_PROBE_BATCH = 2


@functools.lru_cache(maxsize=64)
def _probe(topology: str, channels: int) -> Tensor:
    """The default probe of ``topology``, float32 on the CPU (a function of its arguments only:
    ``torch.device("cuda")`` would also depend on the current device, so no device is cached)."""
    generator = torch.Generator().manual_seed(0)
    if topology == "cnn":
        shape: tuple[int, ...] = (_PROBE_BATCH, channels, _CNN_PROBE_SIZE, _CNN_PROBE_SIZE)
        probe = torch.randn(shape, generator=generator).to(memory_format=torch.channels_last)
    elif topology == "transformer":
        shape = (_PROBE_BATCH, _TRANSFORMER_PROBE_TOKENS, channels)
        probe = torch.randn(shape, generator=generator)
    elif topology == "mlp":
        probe = torch.randn((_PROBE_BATCH, channels), generator=generator)
    else:
        raise ValueError(f"unknown topology {topology!r}; known layouts: "
                         f"{', '.join(LAYOUT_SHAPES)}")
    return probe


def fits_layout(shape: object, topology: str, channels: int) -> bool:
    """Whether ``shape`` is a tuple of positive ints of ``topology``'s rank with ``channels``
    channels (``(8, 16, 4, 4)`` fits ``"cnn"`` with 16)."""
    rank, dim = _RANK_AND_CHANNEL_DIM.get(topology, (0, 0))
    return (isinstance(shape, tuple) and rank > 0 and len(shape) == rank
            and all(type(n) is int and n >= 1 for n in shape) and shape[dim] == channels)


def default_probe(topology: str, channels: int, device: torch.device | str,
                  dtype: torch.dtype = torch.float32) -> Tensor:
    """A fresh copy of the fixed probe of ``topology`` on ``device`` in ``dtype``."""
    return _probe(topology, channels).to(device=device, dtype=dtype, copy=True)


def feature_probe(feature_shape: tuple[int, ...], *, device: torch.device | str,
                  dtype: torch.dtype, memory_format: torch.memory_format) -> Tensor:
    """Zeros of ``feature_shape`` with the batch cut to ``min(B, 2)``.

    Arguments:
        feature_shape: the real features' shape at the slot, batch first.
        device: where the features live.
        dtype: the features' dtype.
        memory_format: the slot's layout; a 4-D probe is channels_last when it is.

    Returns:
        The probe; contiguous unless 4-D at a channels_last site.
    """
    shape = (min(feature_shape[0], _PROBE_BATCH), *feature_shape[1:])
    probe = torch.zeros(shape, device=device, dtype=dtype)
    if len(shape) == 4 and memory_format == torch.channels_last:
        return probe.contiguous(memory_format=torch.channels_last)
    return probe


def _run_eval(seed: nn.Module, features: Tensor) -> object:
    """``seed(features)`` in eval mode without gradients; every module's mode restored."""
    modes = {module: module.training for module in seed.modules()}
    try:
        seed.eval()
        with torch.no_grad():
            return seed(features)
    finally:
        for module, training in modes.items():
            module.training = training


def check_seed(seed: nn.Module, features: Tensor, *, name: str, slot: str | None = None) -> None:
    """Run ``features`` through ``seed`` and reject it unless it gives their shape back.

    The seed runs in eval mode without gradients, and every submodule's mode is
    restored. Its output must be a tensor of exactly the shape, dtype and device
    of ``features``. Exceptions the seed raises propagate unchanged.

    Arguments:
        seed: the seed module, on ``features``' device and in their dtype.
        features: the probe (:func:`feature_probe` or :func:`default_probe`).
        name: the blueprint's name, for the error message.
        slot: the slot's name, for the error message (``None``: no slot).

    Raises:
        SeedShapeError: naming the blueprint, the slot and both shapes (or
            dtypes, devices), or if the seed does not return a tensor (a ``ValueError``).
    """
    output = _run_eval(seed, features)
    where = f"blueprint {name!r}" + ("" if slot is None else f" at slot {slot!r}")
    if not isinstance(output, Tensor):
        raise SeedShapeError(f"{where} returned {type(output).__name__}, not a tensor: a "
                             "seed's forward must return the features it was given, "
                             "transformed, as one tensor")
    for what, given, got in (("shape", tuple(features.shape), tuple(output.shape)),
                             ("dtype", features.dtype, output.dtype),
                             ("device", features.device, output.device)):
        if given != got:
            raise SeedShapeError(f"{where} changes the feature {what}: input {given}, output "
                                 f"{got}; a seed must return features of exactly the shape, "
                                 "dtype and device it receives: fix its factory")


def validate_seed(seed: nn.Module, *, topology: str, channels: int, device: torch.device | str,
                  name: str, dtype: torch.dtype = torch.float32) -> None:
    """:func:`check_seed` on the default probe of ``topology`` (cached per layout and
    channels; copied to ``device`` in ``dtype`` for each check).

    Arguments:
        seed: the seed module, already on ``device`` and in ``dtype``.
        topology: the layout, ``"cnn"``, ``"transformer"`` or ``"mlp"``.
        channels: channels of the injection point.
        device: where the probe runs.
        name: the blueprint's name, for the error message.
        dtype: the probe's dtype.

    Raises:
        SeedShapeError: as :func:`check_seed`.
    """
    check_seed(seed, default_probe(topology, channels, device, dtype), name=name)


__all__ = ["LAYOUT_SHAPES", "check_seed", "default_probe", "feature_probe", "fits_layout",
           "validate_seed"]
