"""CNN seeds: shape-preserving modules on ``[B, C, H, W]`` features of any memory format.

Every seed with parameters is residual and starts as the identity (the last
layer of its branch is zero-initialised), so blending an untrained seed leaves
the host's features unchanged. No seed modifies its input in place, and none
copies it to another layout. Residuals are added in place into the branch
output (``branch(x).add_(x)``: one allocation less per step; no branch saves
its output for backward, and autograd's version check would catch one that did).
Group normalization goes through :func:`~esper.nn.blueprints.norm.group_norm`
(never the crashing native path).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .norm import group_norm
from .registry import BlueprintSpec, SeedFactory, register


class NoopSeed(nn.Module):
    """The identity: no parameters, returns its input."""

    def forward(self, x: Tensor) -> Tensor:
        return x


class NormSeed(nn.Module):
    """``x + GroupNorm(x)`` with a zero-initialised affine (starts as the identity).

    The affine is applied after the normalisation rather than inside it: under
    ``torch.func.vmap`` over stacked candidates (:mod:`esper.nn.candidates`)
    the normalisation of the shared input then runs once and only the affine
    is batched; and while the input needs no gradient (an isolated seed) the
    backward never enters the norm.
    """

    def __init__(self, channels: int, groups: int | None = None, eps: float = 1e-5) -> None:
        super().__init__()
        self.groups = groups if groups is not None else math.gcd(channels, 8)
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        shape = (-1,) + (1,) * (x.dim() - 2)  # per channel, along dim 1
        normalized = group_norm(x, self.groups, eps=self.eps)
        return torch.addcmul(self.bias.view(shape), normalized, self.weight.view(shape)).add_(x)


class SqueezeExciteSeed(nn.Module):
    """Channel attention: ``x * 2 * sigmoid(fc2(relu(fc1(mean_hw(x)))))``, identity at start."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, x: Tensor) -> Tensor:
        squeezed = x.mean(dim=(2, 3))
        scale = 2.0 * torch.sigmoid(self.fc2(torch.relu(self.fc1(squeezed))))
        return x * scale[:, :, None, None]


class DepthwiseSeed(nn.Module):
    """``x + pointwise(relu(depthwise3x3(x)))``, the pointwise conv zero-initialised."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.pointwise = nn.Conv2d(channels, channels, 1)
        _zero(self.pointwise)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(torch.relu(self.depthwise(x))).add_(x)


class ConvSeed(nn.Module):
    """``x + conv_out(relu(conv3x3(x)))``: a residual conv branch of width ``hidden``.

    ``conv_light`` is a bottleneck (``hidden = C // 4``, 1x1 out); ``conv_heavy``
    keeps full width with a 3x3 out. The out conv is zero-initialised.
    """

    def __init__(self, channels: int, hidden: int, out_kernel: int) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(channels, hidden, 3, padding=1)
        self.conv_out = nn.Conv2d(hidden, channels, out_kernel, padding=out_kernel // 2)
        _zero(self.conv_out)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv_out(torch.relu(self.conv_in(x))).add_(x)


def _zero(layer: nn.Conv2d | nn.Linear) -> None:
    nn.init.zeros_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


def _register_builtins() -> None:
    builtins: list[tuple[str, SeedFactory, str]] = [
        ("noop", lambda _channels: NoopSeed(), "identity, no parameters (a control)"),
        ("norm", NormSeed, "residual group norm"),
        ("attention", SqueezeExciteSeed, "squeeze-and-excitation channel attention"),
        ("depthwise", DepthwiseSeed, "residual depthwise-separable 3x3 conv"),
        ("conv_light", lambda c: ConvSeed(c, max(c // 4, 1), 1), "residual bottleneck conv"),
        ("conv_heavy", lambda c: ConvSeed(c, c, 3), "residual two-layer full-width 3x3 conv"),
    ]
    for name, factory, description in builtins:
        register(BlueprintSpec(name, "cnn", factory, description))


_register_builtins()

__all__ = ["ConvSeed", "DepthwiseSeed", "NoopSeed", "NormSeed", "SqueezeExciteSeed"]
