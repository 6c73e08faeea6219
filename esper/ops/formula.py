"""Pure tensor functions of a slot: isolation, straight-through, blend, slot forward.

Everything here is stateless and compiles with ``torch.compile(fullgraph=True)``
without graph breaks. The DESIGN.md slot formula

    seed_in = host - g * (host - host.detach())
    s       = seed(seed_in)
    out     = torch.lerp(host, s, a) + b * (s - s.detach())

is written out op by op in :func:`slot_forward_reference` and computed by
:func:`slot_forward` with two custom autograd Functions that give the same
values and gradients in fewer passes over memory:

* ``_Isolate``: forward is a view of ``host``; backward scales by ``1 - g``.
* ``_Mix``: forward is ``lerp(host, s, a)``; backward sends ``(1 - a) * grad``
  to the host and ``(a + b) * grad`` to the seed (and ``(s - host) * grad``
  to ``a`` when ``a`` requires grad, as a gated alpha does).

Alpha shapes: a 0-d tensor; a per-sample tensor with the host's rank and ones
everywhere but the batch dimension (``[B, 1, 1, 1]`` or ``[B, 1, 1]``); or a
per-channel vector of length C, laid along dim 1 of a 4-D (NCHW-logical) host
and along the last dim of a ``[B, T, C]`` host.

Seeds must not modify their input in place: under :func:`slot_forward` it is a
view of the host features.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..core.state import SlotState
from ..errors import AlphaShapeError, SeedShapeError
from .health import SeedHealth, seed_health

SeedFn = Callable[[Tensor], Tensor]
AlphaGate = Callable[[Tensor, Tensor], Tensor]


def ste(host: Tensor, seed_out: Tensor) -> Tensor:
    """Straight-through: the value of ``host``, gradients to both inputs.

    Arguments:
        host: host features.
        seed_out: seed output of the same shape.

    Returns:
        ``host + (seed_out - seed_out.detach())``, whose value is exactly
        ``host`` even where ``seed_out`` is NaN or infinite.
    """
    return host + _zero_valued(seed_out)


def _zero_valued(seed_out: Tensor) -> Tensor:
    """Zero in value (even where ``seed_out`` is not finite), ``seed_out``'s gradient."""
    return (seed_out - seed_out.detach()).nan_to_num(0.0, 0.0, 0.0)


def isolate(host: Tensor, g: Tensor) -> Tensor:
    """The seed's input: the value of ``host`` with its gradient scaled by ``1 - g``.

    Arguments:
        host: host features.
        g: isolation coefficient (0-d); 1 blocks every gradient, 0 passes it.

    Returns:
        ``host - g * (host - host.detach())``, selected: at ``g = 1`` it is
        ``host.detach()``, so no gradient (not even a NaN one) reaches the host.
    """
    return torch.where(g == 1, host.detach(), host - g * (host - host.detach()))


def blend(host: Tensor, seed_out: Tensor, alpha: Tensor) -> Tensor:
    """``torch.lerp(host, seed_out, alpha)`` with alpha clamped to [0, 1] and broadcast.

    Arguments:
        host: host features.
        seed_out: seed output of the same shape.
        alpha: 0-d, per-sample or per-channel blend weight (see module docstring).
            It is never modified: clamping makes a copy.

    Returns:
        The blended features.
    """
    return torch.lerp(host, seed_out, blend_weight(alpha, host))


def channel_dim(host: Tensor) -> int:
    """The channel dimension: 1 for 4-D or deeper (NCHW logical), else the last."""
    return 1 if host.dim() >= 4 else host.dim() - 1


def broadcast_alpha(alpha: Tensor, host: Tensor) -> Tensor:
    """Reshape ``alpha`` so that it broadcasts against ``host`` (a view, no copy).

    Arguments:
        alpha: 0-d; per-sample with ``host``'s rank and every size 1 or equal to
            ``host``'s; or a vector of ``host``'s channel count.
        host: the features alpha weighs.

    Returns:
        ``alpha`` viewed as ``[C, 1, 1]`` for a per-channel vector on a 4-D host,
        otherwise unchanged.

    Raises:
        AlphaShapeError: if ``alpha`` has no broadcast against ``host`` of those
            kinds (a ``ValueError``). The checks read only shapes, so they cost
            nothing under compile.
    """
    if alpha.dim() == 0:
        return alpha
    if alpha.dim() == 1 and host.dim() >= 2:
        dim = channel_dim(host)
        if alpha.shape[0] != host.shape[dim]:
            raise AlphaShapeError(f"per-channel alpha has {alpha.shape[0]} entries but host "
                                  f"{tuple(host.shape)} has {host.shape[dim]} channels: give "
                                  f"exactly {host.shape[dim]} values")
        return alpha.view(-1, *([1] * (host.dim() - dim - 1)))
    fits = all(a in (1, h) for a, h in zip(alpha.shape, host.shape, strict=False))
    if alpha.dim() != host.dim() or not fits:
        raise AlphaShapeError(
            f"alpha of shape {tuple(alpha.shape)} does not broadcast against host "
            f"{tuple(host.shape)}: use a 0-d tensor, a per-sample tensor like "
            f"{(host.shape[0],) + (1,) * (host.dim() - 1)} or a per-channel vector")
    return alpha


def blend_weight(alpha: Tensor, host: Tensor) -> Tensor:
    """``alpha`` clamped to [0, 1] (a copy), cast to ``host``'s dtype, broadcast to ``host``.

    Every alpha that enters through the lifecycle, a :class:`SlotState` or the
    model was checked by :func:`~esper.core.alpha.check_alpha`, which refuses a
    value outside [0, 1]; for those the clamp changes nothing. It is there for
    the alphas no check reads: a tensor handed straight to these functions
    (:func:`blend`, :func:`slot_forward`, ``SeedSlot.forward(alpha=tensor)``)
    and an override tensor while ``torch.compile`` traces the model (reading
    its values would be a host sync). Those are clamped; NaN passes through.
    """
    return broadcast_alpha(alpha, host).clamp(0.0, 1.0).to(host.dtype)


def check_channel_alpha(alpha: Tensor | None, channels: int) -> Tensor:
    """Check a channel-mode alpha: a vector of exactly ``channels`` entries.

    Arguments:
        alpha: the per-channel alpha, or ``None`` when the caller has none.
        channels: the slot's channel count.

    Returns:
        ``alpha`` itself.

    Raises:
        AlphaShapeError: if ``alpha`` is missing, not a vector, or of the wrong
            length (a ``ValueError``).
    """
    if alpha is None:
        raise AlphaShapeError(f"channel alpha mode needs a vector of {channels} alphas, "
                              "got None")
    if alpha.dim() != 1 or alpha.shape[0] != channels:
        raise AlphaShapeError(f"channel alpha mode needs a vector of {channels} alphas, "
                              f"got shape {tuple(alpha.shape)}")
    return alpha


class _Isolate(torch.autograd.Function):
    """Forward: a view of ``host``. Backward: ``(1 - g) * grad`` to ``host``, selected.

    Where ``g == 1`` the host gets exact zeros: a select, not ``grad * 0``, so a
    NaN or infinite seed-input gradient never reaches the host.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(host: Tensor, g: Tensor) -> Tensor:
        return host.view_as(host)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor, Tensor], output: Tensor) -> None:
        ctx.save_for_backward(inputs[1])

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (g,) = ctx.saved_tensors
        return torch.where(g == 1, 0.0, grad * (1 - g)), None


class _Mix(torch.autograd.Function):
    """Forward: ``lerp(host, s, a)``, and exactly ``host`` where ``a == 0`` (a select).

    Backward: ``(1 - a)`` times the gradient to the host, ``(a + b)`` times it
    to the seed and ``(s - host)`` times it to ``a`` when ``a`` requires grad,
    as a gated alpha does. ``lerp(host, NaN, 0)`` is NaN: the select is what
    keeps a non-finite seed out of the loss while it is invisible, and the
    straight-through ``b * grad`` still trains it.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(host: Tensor, seed_out: Tensor, a: Tensor, b: Tensor) -> Tensor:
        return torch.where(a != 0, torch.lerp(host, seed_out, a), host)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        host, seed_out, a, b = inputs
        if ctx.needs_input_grad[2]:
            ctx.save_for_backward(a, b, host, seed_out)
        else:
            ctx.save_for_backward(a, b)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        a, b = ctx.saved_tensors[:2]
        grad_host = grad * (1 - a) if ctx.needs_input_grad[0] else None
        grad_seed = grad * (a + b) if ctx.needs_input_grad[1] else None
        grad_a = None
        if ctx.needs_input_grad[2]:
            host, seed_out = ctx.saved_tensors[2:]
            grad_a = ((seed_out - host) * grad).sum_to_size(a.shape)
        return grad_host, grad_seed, grad_a, None


def _check_seed_output(seed_out: Tensor, host: Tensor) -> None:
    if seed_out.shape != host.shape:
        raise SeedShapeError(f"seed changed the feature shape: host {tuple(host.shape)}, "
                             f"seed output {tuple(seed_out.shape)}; a seed must return "
                             "features of exactly the shape it receives")


def slot_forward(
    state: SlotState,
    seed_fn: SeedFn,
    host: Tensor,
    *,
    alpha: Tensor | None = None,
    gate: AlphaGate | None = None,
) -> Tensor:
    """The slot formula of DESIGN.md with ``a = state.alpha``, ``b = state.b``, ``g = state.g``.

    Reads only the tensor leaves of ``state``, never its stage or other static
    fields, so one compiled graph serves every stage and every alpha.

    Arguments:
        state: the slot state.
        seed_fn: the seed, called once on the isolated host features.
        host: host features, ``[B, C, H, W]`` (any memory format) or ``[B, T, C]``.
        alpha: replaces ``state.alpha`` (a counterfactual or a per-sample alpha).
        gate: optional ``gate(seed_in, a) -> a_eff`` (e.g. a
            :class:`~esper.nn.blending.GatedBlend`), given the broadcast ``a``.

    Returns:
        ``lerp(host, s, a)``, and exactly ``host`` where ``a == 0`` (a select, so
        a NaN seed at ``a = 0`` gives the host itself). Its gradient is ``a + b``
        times the cotangent to the seed, ``1 - a`` times it to the host directly,
        and ``1 - g`` times the seed-input gradient to the host through the seed
        (exact zeros at ``g = 1``).

    Raises:
        AlphaShapeError: alpha does not broadcast (a ``ValueError``).
        SeedShapeError: the seed changes the shape (a ``ValueError``).
    """
    return _slot_forward(state, seed_fn, host, alpha, gate)[0]


def slot_forward_checked(
    state: SlotState,
    seed_fn: SeedFn,
    host: Tensor,
    *,
    alpha: Tensor | None = None,
    gate: AlphaGate | None = None,
) -> tuple[Tensor, SeedHealth]:
    """:func:`slot_forward` and the seed's :class:`~esper.ops.health.SeedHealth`.

    The health flags (a non-finite seed output, a blown-up blend) are 0-d
    device tensors: reading them is the caller's sync, never this function's.
    """
    out, host, seed_out, a = _slot_forward(state, seed_fn, host, alpha, gate)
    return out, seed_health(host, seed_out, a)


def _slot_forward(state: SlotState, seed_fn: SeedFn, host: Tensor, alpha: Tensor | None,
                  gate: AlphaGate | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The slot's output, and the host features, seed output and blend weight it mixed."""
    # A free view first: under torch.compile, a torch.func.grad primal passed straight
    # into an autograd.Function loses the custom backward (pytorch/pytorch#193279).
    host = host.view_as(host)
    a = blend_weight(state.alpha if alpha is None else alpha, host)
    seed_in = _Isolate.apply(host, state.g)
    if gate is not None:
        a = gate(seed_in, a)
    seed_out = seed_fn(seed_in)
    _check_seed_output(seed_out, host)
    seed_out = seed_out.to(host.dtype)
    return _Mix.apply(host, seed_out, a, state.b), host, seed_out, a


def slot_forward_reference(
    state: SlotState,
    seed_fn: SeedFn,
    host: Tensor,
    *,
    alpha: Tensor | None = None,
    gate: AlphaGate | None = None,
) -> Tensor:
    """:func:`slot_forward` written as the plain DESIGN.md formula with its selects.

    Same arguments and result; kept as the definition that tests and the
    benchmark compare the fast path against. Where a coefficient is 0 it
    selects rather than multiplies (``NaN * 0`` is ``NaN``): :func:`isolate`
    at ``g = 1``, the blend at ``a = 0``, and the straight-through term, whose
    value is zero even for a non-finite seed.
    """
    a = blend_weight(state.alpha if alpha is None else alpha, host)
    seed_in = isolate(host, state.g)
    if gate is not None:
        a = gate(seed_in, a)
    seed_out = seed_fn(seed_in)
    _check_seed_output(seed_out, host)
    mixed = torch.where(a != 0, torch.lerp(host, seed_out, a), host)
    return mixed + state.b * _zero_valued(seed_out)


__all__ = ["AlphaGate", "SeedFn", "blend", "blend_weight", "broadcast_alpha", "channel_dim",
           "check_channel_alpha", "isolate", "slot_forward", "slot_forward_checked",
           "slot_forward_reference", "ste"]
