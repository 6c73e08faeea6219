"""Host networks with named injection points: a CNN and a GPT-style decoder.

Both are plain modules whose forward runs a chain of segments; injection point
``name`` sits at the end of segment ``name``, on the output of the module that
:meth:`~_SegmentedHost.injection_points` names (see :mod:`esper.nn.protocol`).
A :class:`~esper.nn.model.MorphogeneticModel` grafts its slots there with
forward hooks, as it grafts any module.

Injection-point naming: a CNN has one point after *every* block (block i has
``base_channels * 2**i`` channels and includes its max-pool), so the default
3-block host has exactly three points, ``early``, ``mid`` and ``late`` (after
blocks 1, 2 and 3, counting from 1, as in the specification's segment list);
hosts of other depths name them ``block1``, ``block2``, ... A transformer has
one point after each of ``num_segments`` layer groups: ``early``, ``mid``,
``late`` for three groups, else ``seg1``, ``seg2``, ...
"""

from __future__ import annotations

import abc
import itertools
import math
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputDtypeError, InputShapeError
from ..leyline import Topology
from ..validation import check_int, is_int

if TYPE_CHECKING:  # at run time the re-exports are lazy: see __getattr__ at the end
    from .host_config import build_host
    from .model import MorphogeneticModel

_THREE_POINTS = ("early", "mid", "late")
FORMAT_NAMES = {torch.channels_last: "channels_last", torch.contiguous_format: "contiguous_format"}


def point_names(count: int, prefix: str) -> tuple[str, ...]:
    """``early/mid/late`` for three points, else ``{prefix}1 .. {prefix}{count}``."""
    return _THREE_POINTS if count == 3 else tuple(f"{prefix}{i + 1}" for i in range(count))


class _SegmentedHost(nn.Module, abc.ABC):
    """The segment walk shared by both hosts; subclasses define the segments."""

    topology: Topology
    _specs: dict[str, int]  # point name -> channels, in forward order; set by subclasses
    _points: dict[str, str]  # point name -> module path, in forward order; set by subclasses

    _config: dict[str, Any]  # constructor arguments as JSON types; set by subclasses

    def config(self) -> dict[str, Any]:
        """The constructor arguments as JSON types, with ``"kind"`` (see :func:`build_host`)."""
        return {"kind": self.topology, **self._config}

    def injection_specs(self) -> dict[str, int]:
        """Injection point name -> channels (feature width), in forward order."""
        return dict(self._specs)

    def segment_names(self) -> tuple[str, ...]:
        """Injection point names in forward order."""
        return tuple(self._specs)

    def injection_points(self) -> dict[str, str]:
        """Injection point name -> the path of the module whose output it is, in forward order."""
        return dict(self._points)

    @abc.abstractmethod
    def example_input(self) -> Tensor:
        """A small input of zeros the host runs on (for a graft's dry run)."""

    @abc.abstractmethod
    def run_segment(self, name: str, h: Tensor) -> Tensor:
        """Run the segment ending at point ``name``; the first one takes the raw input."""

    @abc.abstractmethod
    def run_head(self, h: Tensor) -> Tensor:
        """Turn features at the last point into the network's output."""

    def _index(self, name: str) -> int:
        if name not in self._specs:
            raise ValueError(f"unknown injection point {name!r}; known: {', '.join(self._specs)}")
        return list(self._specs).index(name)

    def forward_to_segment(self, name: str, x: Tensor, from_segment: str | None = None) -> Tensor:
        """Features at point ``name``.

        Arguments:
            name: the point to stop at.
            x: the raw input, or features at ``from_segment``.
            from_segment: the point ``x`` comes from (``None``: ``x`` is the input).

        Returns:
            Features at ``name`` (``x`` itself when ``from_segment == name``).

        Raises:
            ValueError: unknown point, or ``from_segment`` lies after ``name``.
        """
        end = self._index(name)
        start = 0 if from_segment is None else self._index(from_segment) + 1
        if start > end + 1:
            raise ValueError(f"cannot run backwards from {from_segment!r} to {name!r}")
        for segment in self.segment_names()[start:end + 1]:
            x = self.run_segment(segment, x)
        return x

    def forward_from_segment(self, name: str, h: Tensor) -> Tensor:
        """The network output, resuming from features ``h`` at point ``name``."""
        for segment in self.segment_names()[self._index(name) + 1:]:
            h = self.run_segment(segment, h)
        return self.run_head(h)

    def forward(self, x: Tensor) -> Tensor:
        """The plain host, no slots."""
        for segment in self.segment_names():
            x = self.run_segment(segment, x)
        return self.run_head(x)


class ConvBlock(nn.Sequential):
    """conv3x3 (no bias) -> BatchNorm -> ReLU, then an optional 2x2 max-pool."""

    def __init__(self, in_channels: int, out_channels: int, pool: bool) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels), nn.ReLU()]
        super().__init__(*layers, *([nn.MaxPool2d(2)] if pool else []))


class CNNHost(_SegmentedHost):
    """A plain CNN classifier: conv blocks that double the width, then pool + linear.

    Arguments:
        num_classes: outputs of the linear head.
        n_blocks: conv blocks (one injection point after each).
        base_channels: width of block 0; block i has ``base_channels * 2**i``.
        pool_layers: how many leading blocks end in a 2x2 max-pool (``None``: all).
        memory_format: the layout the input is converted to once, at entry.
        in_channels: channels of the input images.
    """

    topology: Topology = "cnn"

    def __init__(self, num_classes: int = 10, n_blocks: int = 3, base_channels: int = 32,
                 pool_layers: int | None = None,
                 memory_format: torch.memory_format = torch.channels_last,
                 in_channels: int = 3) -> None:
        super().__init__()
        for label, value in (("num_classes", num_classes), ("n_blocks", n_blocks),
                             ("base_channels", base_channels), ("in_channels", in_channels)):
            check_int(f"CNNHost {label}", value, minimum=1)
        pool_layers = n_blocks if pool_layers is None else pool_layers
        if not is_int(pool_layers) or not 0 <= pool_layers <= n_blocks:
            raise ValueError(f"CNNHost pool_layers must lie in [0, {n_blocks}], "
                             f"got {pool_layers!r}")
        if memory_format not in (torch.channels_last, torch.contiguous_format):
            raise ValueError(f"CNNHost memory_format must be channels_last or contiguous_format, "
                             f"got {memory_format}")
        self.memory_format = memory_format
        self.in_channels = in_channels
        self.min_side = 2**pool_layers  # each pooling block halves the side
        self._config = {"num_classes": num_classes, "n_blocks": n_blocks,
                        "base_channels": base_channels, "pool_layers": pool_layers,
                        "memory_format": FORMAT_NAMES[memory_format], "in_channels": in_channels}
        widths = [base_channels * 2**i for i in range(n_blocks)]
        self.blocks = nn.ModuleList(
            ConvBlock(c_in, c_out, pool=i < pool_layers)
            for i, (c_in, c_out) in enumerate(zip([in_channels, *widths], widths, strict=False)))
        self.head = nn.Linear(widths[-1], num_classes)
        self._specs = dict(zip(point_names(n_blocks, "block"), widths, strict=True))
        self._points = {name: f"blocks.{i}" for i, name in enumerate(self._specs)}
        # Conv weights in the activations' layout: no weight reorder on every step.
        self.blocks.to(memory_format=memory_format)

    def run_segment(self, name: str, h: Tensor) -> Tensor:
        """Run block ``name``; the first checks the ``[B, in_channels, H, W]`` input and
        converts its layout.

        Raises:
            InputShapeError: the input is not ``[B, in_channels, H, W]`` with
                ``H, W >= min_side`` (a ``ValueError``).
            InputDtypeError: the input's dtype is not the weights' (outside autocast;
                a ``TypeError``).
        """
        index = self._index(name)
        if index == 0:
            self._check_input(h)
            h = h.contiguous(memory_format=self.memory_format)
        return self.blocks[index](h)

    def example_input(self) -> Tensor:
        """Zeros ``[2, in_channels, S, S]``, ``S`` twice the smallest side (no 1x1 features)."""
        weight = self.blocks[0][0].weight
        side = 2 * max(4, self.min_side)
        return torch.zeros(2, self.in_channels, side, side, dtype=weight.dtype,
                           device=weight.device)

    def _check_input(self, x: Tensor) -> None:
        """Static checks of shape and dtype only: free under ``torch.compile``."""
        if not isinstance(x, Tensor):
            raise InputDtypeError(f"the model's input must be a tensor, got {type(x).__name__}: "
                                  "convert it with torch.as_tensor")
        side = self.min_side
        if x.dim() != 4 or x.shape[1] != self.in_channels or min(x.shape[2:]) < side:
            raise InputShapeError(
                f"CNNHost expects input [B, {self.in_channels}, H, W] with H and W >= {side}, "
                f"got {tuple(x.shape)}: images batched as [batch, channels, height, width]")
        weight = self.blocks[0][0].weight
        if x.dtype != weight.dtype and not torch.is_autocast_enabled(x.device.type):
            raise InputDtypeError(f"CNNHost computes in {weight.dtype} but the input is "
                                  f"{x.dtype}: convert it with x.to({weight.dtype})")

    def run_head(self, h: Tensor) -> Tensor:
        """Global average pool and the linear classifier: ``[B, num_classes]``."""
        return self.head(h.mean(dim=(2, 3)))


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention through ``F.scaled_dot_product_attention``."""

    def __init__(self, n_embd: int, n_head: int, dropout: float) -> None:
        super().__init__()
        self.n_head, self.dropout = n_head, dropout
        self.qkv = nn.Linear(n_embd, 3 * n_embd)
        self.proj = nn.Linear(n_embd, n_embd)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        batch, tokens, channels = x.shape
        shape = (batch, tokens, self.n_head, channels // self.n_head)
        q, k, v = (t.view(shape).transpose(1, 2) for t in self.qkv(x).split(channels, dim=2))
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        return self.resid_dropout(self.proj(y.transpose(1, 2).reshape(batch, tokens, channels)))


class DecoderBlock(nn.Module):
    """Pre-LN transformer block: ``x + attn(ln(x))`` then ``x + mlp(ln(x))`` (4x GELU)."""

    def __init__(self, n_embd: int, n_head: int, dropout: float) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(n_embd), nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout)
        self.mlp = nn.Sequential(nn.Linear(n_embd, 4 * n_embd), nn.GELU(),
                                 nn.Linear(4 * n_embd, n_embd), nn.Dropout(dropout))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class TransformerHost(_SegmentedHost):
    """GPT-style decoder language model with a weight-tied head.

    Arguments:
        vocab_size: token vocabulary.
        n_embd: hidden width (the channels of every injection point).
        n_head: attention heads; must divide ``n_embd``.
        n_layer: decoder blocks.
        block_size: longest sequence.
        dropout: dropout probability in training.
        num_segments: layer groups, one injection point after each (<= ``n_layer``).
    """

    topology: Topology = "transformer"

    def __init__(self, vocab_size: int, n_embd: int = 256, n_head: int = 4, n_layer: int = 6,
                 block_size: int = 128, dropout: float = 0.0, num_segments: int = 3) -> None:
        super().__init__()
        if n_embd % n_head:
            raise ValueError(f"n_head ({n_head}) must divide n_embd ({n_embd})")
        if not 1 <= num_segments <= n_layer:
            raise ValueError(f"num_segments must lie in [1, n_layer={n_layer}], got {num_segments}")
        self.block_size = block_size
        self._config = {"vocab_size": vocab_size, "n_embd": n_embd, "n_head": n_head,
                        "n_layer": n_layer, "block_size": block_size, "dropout": float(dropout),
                        "num_segments": num_segments}
        self.wte, self.wpe = nn.Embedding(vocab_size, n_embd), nn.Embedding(block_size, n_embd)
        self.drop = nn.Dropout(dropout)
        self.layers = nn.ModuleList(DecoderBlock(n_embd, n_head, dropout) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight
        edges = [n_layer * i // num_segments for i in range(num_segments + 1)]
        names = point_names(num_segments, "seg")
        self._layer_ranges = dict(zip(names, itertools.pairwise(edges), strict=True))
        self._specs = dict.fromkeys(names, n_embd)
        self._points = {name: f"layers.{end - 1}" for name, (_, end) in self._layer_ranges.items()}
        self.apply(self._init_weights)
        for block in self.layers:  # GPT-2: scale residual projections by depth
            for proj in (block.attn.proj, block.mlp[2]):
                nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def example_input(self) -> Tensor:
        """Zero token ids ``[2, min(8, block_size)]``."""
        return torch.zeros(2, min(8, self.block_size), dtype=torch.int64,
                           device=self.wte.weight.device)

    def _embed(self, idx: Tensor) -> Tensor:
        if not isinstance(idx, Tensor):
            raise InputDtypeError(f"the model's input must be a tensor, got {type(idx).__name__}: "
                                  "convert it with torch.as_tensor")
        if idx.dtype != torch.int64:
            raise InputDtypeError(f"TransformerHost expects int64 token ids, got {idx.dtype}: "
                                  "convert them with .long()")
        if idx.dim() != 2 or idx.shape[1] > self.block_size:
            raise InputShapeError(f"TransformerHost expects tokens [B, T] with T <= "
                                  f"{self.block_size}, got {tuple(idx.shape)}: batch the ids "
                                  f"as [batch, tokens] and cut sequences to {self.block_size}")
        positions = torch.arange(idx.shape[1], device=idx.device)
        return self.drop(self.wte(idx) + self.wpe(positions))

    def run_segment(self, name: str, h: Tensor) -> Tensor:
        """Run layer group ``name``; the first embeds the int64 tokens ``[B, T]``."""
        if self._index(name) == 0:
            h = self._embed(h)
        start, end = self._layer_ranges[name]
        for block in self.layers[start:end]:
            h = block(h)
        return h

    def run_head(self, h: Tensor) -> Tensor:
        """Final LayerNorm and the tied head: logits ``[B, T, vocab_size]``."""
        return self.lm_head(self.ln_f(h))


def __getattr__(name: str) -> Any:
    """``MorphogeneticModel`` and ``build_host``, re-exported here on first use (``from
    esper.nn.host import CNNHost, MorphogeneticModel``); lazily, because both build on hosts."""
    if name == "MorphogeneticModel":
        from .model import MorphogeneticModel

        return MorphogeneticModel
    if name == "build_host":
        from .host_config import build_host

        return build_host
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["CNNHost", "CausalSelfAttention", "ConvBlock", "DecoderBlock", "MorphogeneticModel",
           "TransformerHost", "build_host", "point_names"]
