"""The one alpha validator: every way alpha enters a slot checks it here.

Alpha (the blend weight) enters through :func:`~esper.core.lifecycle.set_alpha`,
:meth:`SlotState.with_alpha <esper.core.state.SlotState.with_alpha>` (and so
``SeedSlot.force_alpha``), ``SeedSlot.forward(alpha=...)``,
``MorphogeneticModel.forward(alpha_overrides=...)``, and every
:class:`~esper.core.state.SlotState` built; each calls :func:`check_alpha`, so
a value is refused the same way, with the same words, wherever it comes from.
A value outside [0, 1] is an error, never clamped into range (the clamp in
:func:`~esper.ops.formula.blend_weight` guards only the tensors no check reads).
"""

from __future__ import annotations

from typing import Literal

import torch

from ..errors import AlphaShapeError, AlphaValueError
from ..validation import is_real

AlphaMode = Literal["scalar", "channel"]
ALPHA_MODES: tuple[AlphaMode, ...] = ("scalar", "channel")
_RANGE_HINT = "0 is the host alone, 1 the seed alone"


def check_alpha(value: object, *, where: str, channels: int,
                mode: AlphaMode | None = None) -> float | torch.Tensor:
    """``value`` if it is a valid alpha for a slot of ``channels`` channels, else raise.

    Arguments:
        value: a number, or a floating-point tensor.
        where: the slot it is for, opening every message (``"slot 'mid'"``).
        channels: the slot's channel count.
        mode: the slot's alpha mode when ``value`` *is* the slot's alpha
            (:func:`~esper.core.lifecycle.set_alpha`, a state's own alpha): a
            tensor must then have exactly that mode's shape (``()`` or
            ``(channels,)``) and a ``"channel"`` slot refuses a number. ``None``
            for an override, which may also be a per-sample ``[B, 1, ...]`` tensor.

    Returns:
        A number as a ``float``; a tensor unchanged.

    Raises:
        TypeError: neither a number nor a tensor (a bool is neither), or, for an
            override, a tensor that is not floating point.
        AlphaShapeError: a shape ``mode`` does not allow (for a slot's own
            alpha, also a tensor that is not floating point); a number for a
            ``"channel"`` slot's own alpha (a ``ValueError``).
        AlphaValueError: a value outside [0, 1] or not finite (a ``ValueError``).
            A tensor's values are read (one host sync) except while
            ``torch.compile`` traces or on the ``meta`` device (no values), where
            only its shape and dtype are checked.
    """
    noun = "alpha" if mode is not None else "alpha override"
    if isinstance(value, torch.Tensor):
        _check_shape(value, where, channels, mode)
        if (torch.compiler.is_compiling() or value.device.type == "meta"
                or bool(((value >= 0) & (value <= 1)).all())):
            return value  # NaN fails both comparisons
        shown = value.detach().cpu().flatten()[:8].tolist()
    elif is_real(value):
        if mode == "channel":
            raise AlphaShapeError(f"{where} blends per channel: alpha must be a vector of "
                                  f"{channels} values, not a number")
        if 0.0 <= value <= 1.0:  # also refuses NaN, and ints too large for a float
            return float(value)
        shown = value
    else:
        raise TypeError(f"{where}: {noun} must be a number or a tensor, got "
                        f"{type(value).__name__}")
    raise AlphaValueError(f"{where}: {noun} must be finite and in [0, 1], got {shown!r}: "
                          f"{_RANGE_HINT}")


def _check_shape(value: torch.Tensor, where: str, channels: int, mode: AlphaMode | None) -> None:
    shape = tuple(value.shape)
    if mode is not None:
        expected = () if mode == "scalar" else (channels,)
        if shape != expected or not value.is_floating_point():
            raise AlphaShapeError(f"{where}: {mode} alpha must be a float tensor of shape "
                                  f"{expected}, got {value.dtype} {shape}")
        return
    if not value.is_floating_point():
        raise TypeError(f"{where}: alpha override must be a float tensor, got {value.dtype}: "
                        "convert it with .float()")
    per_sample = len(shape) >= 2 and all(d == 1 for d in shape[1:])
    if shape not in ((), (channels,)) and not per_sample:
        raise AlphaShapeError(f"{where}: alpha override must be a scalar, {channels} channel "
                              f"values or a per-sample [B, 1, ...] tensor, got shape {shape}")


__all__ = ["ALPHA_MODES", "AlphaMode", "check_alpha"]
