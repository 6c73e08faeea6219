"""Group normalization that never reaches the torch 2.13 CPU GroupNorm crash.

``nn.GroupNorm`` backward segfaults on CPU when its input is channels_last and
does not require grad (only the affine parameters want gradients): the native
kernel is then asked for the weight and bias gradients without the input
gradient. :func:`group_norm` sends exactly that case through
``_GroupNormAnyLayout``, which runs the same native kernels but always asks the
backward for the input gradient as well (what ``nn.GroupNorm`` computes anyway
whenever its input requires grad), and drops it. Every other case is the plain
``F.group_norm``.

The native kernels read raw memory: ``x`` and the upstream gradient must both
be dense in ``x``'s suggested memory format, and weight and bias dense. Autograd
gives the native backward that guarantee for ``nn.GroupNorm``; here it is made
explicitly. An upstream gradient that is expanded (``out.sum().backward()``
sends one value with stride 0), sliced, or in another layout is made dense
channels_last first; without that the kernel read past an expanded gradient's
storage (weight and bias gradients of 1e30, inf or NaN) and read a
contiguous-format one in the wrong order (wrong but finite gradients). A
channels_last view that is not dense is copied to dense channels_last, as
``F.group_norm`` copies it; any other strided input takes ``F.group_norm``
itself, which has no crash to avoid. On the training path (a dense
channels_last input, a gradient in the same layout) no copy is made.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch._prims_common import suggest_memory_format  # Tensor.suggest_memory_format, in Python


class _GroupNormAnyLayout(torch.autograd.Function):
    """``native_group_norm`` whose backward always computes the input gradient.

    Takes ``x`` dense in channels_last (4-D) or channels_last_3d (5-D) only.
    """

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
        # x is dense channels_last (group_norm routes nothing else here), and the kernel
        # indexes grad as if it were too: make it so, a no-op when it already is.
        layout = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
        grad = grad.contiguous(memory_format=layout)
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
    layout = suggest_memory_format(x)  # what the native kernels will read x as
    if layout == torch.contiguous_format:  # a strided NCHW view: no channels_last kernel runs
        return F.group_norm(x, groups, weight, bias, eps)
    x = x.contiguous(memory_format=layout)  # a sliced channels_last view; no-op when dense
    # Views keep torch.func.grad primals off the Function's inputs under compile
    # (pytorch/pytorch#193279 drops the custom backward for such inputs).
    weight = None if weight is None else weight.contiguous().view_as(weight)
    bias = None if bias is None else bias.contiguous().view_as(bias)
    return _GroupNormAnyLayout.apply(x, weight, bias, groups, eps)[0]


__all__ = ["group_norm"]
