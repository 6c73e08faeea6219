"""Group normalization that never reaches the torch 2.13 CPU GroupNorm crash.

``nn.GroupNorm`` backward segfaults on CPU when its input is channels_last and
does not require grad (only the affine parameters want gradients): the native
kernel is then asked for the weight and bias gradients without the input
gradient. :func:`group_norm` sends exactly that case through
``_GroupNormAnyLayout``, which runs the same native kernels but always asks the
backward for the input gradient as well (what ``nn.GroupNorm`` computes anyway
whenever its input requires grad), and drops it. Every other case is the plain
``F.group_norm``. No layout copy is made in any case.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


class _GroupNormAnyLayout(torch.autograd.Function):
    """``native_group_norm`` whose backward always computes the input gradient."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, weight: Tensor | None, bias: Tensor | None, groups: int,
                eps: float) -> tuple[Tensor, Tensor, Tensor]:
        batch, channels = x.shape[0], x.shape[1]
        return torch.ops.aten.native_group_norm(
            x, weight, bias, batch, channels, math.prod(x.shape[2:]), groups, eps)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
        x, weight, _bias, groups, _eps = inputs
        _out, mean, rstd = output
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.groups = groups
        ctx.mark_non_differentiable(mean, rstd)

    @staticmethod
    def backward(ctx: Any, grad: Tensor, _grad_mean: Tensor,
                 _grad_rstd: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, mean, rstd = ctx.saved_tensors
        batch, channels = x.shape[0], x.shape[1]
        mask = [True, ctx.needs_input_grad[1], ctx.needs_input_grad[2]]
        grad_x, grad_weight, grad_bias = torch.ops.aten.native_group_norm_backward(
            grad, x, mean, rstd, weight, batch, channels, math.prod(x.shape[2:]),
            ctx.groups, mask)
        return grad_x if ctx.needs_input_grad[0] else None, grad_weight, grad_bias, None, None


def group_norm(x: Tensor, groups: int, weight: Tensor | None = None,
               bias: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """``F.group_norm`` that is safe for every layout and every ``requires_grad``.

    Arguments:
        x: ``[B, C, *]`` input, any memory format.
        groups: number of groups; must divide C.
        weight: optional per-channel scale ``[C]``.
        bias: optional per-channel shift ``[C]``.
        eps: added to the variance.

    Returns:
        The normalized ``x`` in ``x``'s memory format.
    """
    if x.requires_grad or x.is_contiguous() or not torch.is_grad_enabled():
        return F.group_norm(x, groups, weight, bias, eps)
    # Views keep torch.func.grad primals off the Function's inputs under compile
    # (pytorch/pytorch#193279 drops the custom backward for such inputs).
    weight = None if weight is None else weight.view_as(weight)
    bias = None if bias is None else bias.view_as(bias)
    return _GroupNormAnyLayout.apply(x, weight, bias, groups, eps)[0]


__all__ = ["group_norm"]
