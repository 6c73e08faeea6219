"""Transformer seeds: shape-preserving modules on ``[B, T, C]`` hidden states.

Every seed with parameters is residual and starts as the identity (the last
projection of its branch is zero-initialised; the residual is added in place
into the branch output, as in :mod:`~esper.nn.blueprints.cnn`). Seeds are
causal: output position t depends only on input positions <= t, so they keep a
decoder host causal.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from .cnn import NoopSeed
from .registry import BlueprintSpec, SeedFactory, register

LORA_RANK = 8


def _zero(layer: nn.Linear) -> nn.Linear:
    nn.init.zeros_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


class LayerNormSeed(nn.Module):
    """``x + LayerNorm(x)`` with a zero-initialised affine (starts as the identity)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        nn.init.zeros_(self.norm.weight)
        nn.init.zeros_(self.norm.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x).add_(x)


class LoRASeed(nn.Module):
    """``x + up(down(x))`` of rank ``min(rank, C)``; ``up`` is zero-initialised."""

    def __init__(self, channels: int, rank: int = LORA_RANK) -> None:
        super().__init__()
        rank = min(rank, channels)
        self.down = nn.Linear(channels, rank, bias=False)
        self.up = _zero(nn.Linear(rank, channels, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        return self.up(self.down(x)).add_(x)


class CausalAttentionSeed(nn.Module):
    """``x + proj(causal_self_attention(LayerNorm(x)))`` with ``gcd(C, 4)`` heads."""

    def __init__(self, channels: int, heads: int | None = None) -> None:
        super().__init__()
        self.heads = heads if heads is not None else math.gcd(channels, 4)
        self.norm = nn.LayerNorm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = _zero(nn.Linear(channels, channels))

    def forward(self, x: Tensor) -> Tensor:
        batch, tokens, channels = x.shape
        q, k, v = self.qkv(self.norm(x)).split(channels, dim=2)
        shape = (batch, tokens, self.heads, channels // self.heads)
        q, k, v = (t.view(shape).transpose(1, 2) for t in (q, k, v))
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(attended.transpose(1, 2).reshape(batch, tokens, channels)).add_(x)


class MLPSeed(nn.Module):
    """``x + fc2(gelu(fc1(LayerNorm(x))))`` with a 4x hidden width."""

    def __init__(self, channels: int, expansion: int = 4) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.fc1 = nn.Linear(channels, expansion * channels)
        self.fc2 = _zero(nn.Linear(expansion * channels, channels))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(x)))).add_(x)


def _register_builtins() -> None:
    builtins: list[tuple[str, SeedFactory, str]] = [
        ("noop", lambda _channels: NoopSeed(), "identity, no parameters (a control)"),
        ("norm", LayerNormSeed, "residual layer norm"),
        ("lora", LoRASeed, f"residual low-rank adapter (rank {LORA_RANK})"),
        ("attention", CausalAttentionSeed, "residual causal self-attention"),
        ("mlp", MLPSeed, "residual 4x GELU MLP"),
    ]
    for name, factory, description in builtins:
        register(BlueprintSpec(name, "transformer", factory, description))


_register_builtins()

__all__ = ["LORA_RANK", "CausalAttentionSeed", "LayerNormSeed", "LoRASeed", "MLPSeed"]
