"""Deliberately broken modules for tests: a leaky slot and bad seeds of every kind."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import Tensor, nn

from esper.kasmina import blueprints
from esper.nn.blueprints.registry import BlueprintSpec
from esper.nn.slot import SeedSlot
from esper.ops.formula import slot_forward_checked


class LeakySlot(SeedSlot):
    """A broken slot: its seed reads the host features without the isolation step."""

    def checked(self, host: Tensor, state=None, alpha=None):
        seed = self.seed
        return slot_forward_checked(state or self.state, lambda _isolated: seed(host), host,
                                    alpha=alpha)

    def forward(self, host: Tensor, state=None, alpha=None) -> Tensor:
        return host if self.seed is None else self.checked(host, state, alpha)[0]


class Widen(nn.Module):
    """A broken seed: one more output channel than input channels."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels + 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class NaNSeed(nn.Module):
    """A bad seed: a 1x1 conv whose output is NaN on every ``every``-th training call.

    With ``every=1`` it keeps no counter, so ``torch.compile`` traces it once.
    """

    def __init__(self, channels: int, every: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 1)
        self.every = every
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        if self.every == 1:
            return out * float("nan") if self.training else out
        if self.training:
            self.calls += 1
            if self.calls % self.every == 0:
                out = out * float("nan")
        return out


class ScaledSeed(nn.Module):
    """A bad seed that stays finite: a 1x1 conv whose output is multiplied by ``scale``."""

    def __init__(self, channels: int, scale: float = 1e4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 1)
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x) * self.scale


class _NaNInputGradient(torch.autograd.Function):
    """Identity forward; a NaN gradient to its input on the way back."""

    @staticmethod
    def forward(x: Tensor) -> Tensor:
        return x.view_as(x)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        pass

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad * float("nan")


class NaNInputGradientSeed(nn.Module):
    """A bad seed with a finite output whose gradient to its input is NaN."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(_NaNInputGradient.apply(x))


class SeedFailure(RuntimeError):
    """What the raising seeds raise."""


class RaisingSeed(nn.Module):
    """A bad seed: a 1x1 conv that raises from its ``after``-th training call on (or,
    with ``in_eval``, on every call in eval mode, as validation and probes run it)."""

    def __init__(self, channels: int, after: int = 20, in_eval: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 1)
        self.after = after
        self.in_eval = in_eval
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            self.calls += 1
            if self.calls >= self.after:
                raise SeedFailure(f"seed exploded on call {self.calls}")
        elif self.in_eval and torch.is_grad_enabled() is False and x.shape[0] > 2:
            raise SeedFailure("seed exploded in eval")
        return self.conv(x)


class RaisingFactory:
    """A blueprint factory whose seed constructor raises."""

    def __call__(self, channels: int) -> nn.Module:
        raise SeedFailure(f"cannot build a seed of {channels} channels")


@contextlib.contextmanager
def registered(name: str, factory: Callable[[int], nn.Module], topology: str = "cnn"):
    """``factory`` registered as CNN blueprint ``name`` for the block's duration."""
    blueprints.register(BlueprintSpec(name, topology, factory, "a deliberately broken seed"))
    try:
        yield name
    finally:
        blueprints.unregister(topology, name)
