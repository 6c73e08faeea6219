"""Blueprints per feature layout: declared layouts, validation on the real shape, the mlp family.

A seed that passes germination must run forward and backward on features of
its slot's real shape; one that would crash there is refused at germination.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from torch import Tensor, nn
from torch._dynamo.testing import CompileCounterWithBackend
from torch._dynamo.utils import counters

from esper.core.state import SlotState
from esper.errors import (
    SeedRaisedError,
    SeedShapeError,
    TopologyMismatchError,
    UnknownBlueprintError,
)
from esper.leyline import TOPOLOGIES, SeedStage
from esper.nn.blending import GatedBlend, create_blend
from esper.nn.blueprints import (
    BlueprintSpec,
    SeedFactory,
    create,
    get,
    names,
    register,
    unregister,
    validate_seed,
)
from esper.nn.blueprints.mlp import LowRankSeed
from esper.nn.blueprints.probe import _probe
from esper.nn.seed_parts import SeedSite, build_seed
from esper.nn.slot import SeedSlot
from esper.ops.formula import slot_forward

CL = torch.channels_last
C = 12
# Realistic feature shapes: a batch above the probe's 2, sizes unlike the fixed probe's 8.
SHAPES = {"cnn": (3, C, 7, 5), "transformer": (3, 11, C), "mlp": (3, C)}
MLP_NAMES = ("noop", "norm", "lowrank")
EVERY_BLUEPRINT = [(layout, name) for layout in TOPOLOGIES for name in names(layout)]


def make_site(layout: str, shape: tuple[int, ...] | None, *, channels: int = C,
              memory_format: torch.memory_format = torch.contiguous_format,
              dtype: torch.dtype = torch.float32) -> SeedSite:
    return SeedSite("mid", layout, channels, torch.device("cpu"),  # type: ignore[arg-type]
                    memory_format, feature_shape=shape, dtype=dtype)


def blending(g: float, channels: int = C) -> SlotState:
    state = SlotState.dormant("mid", channels=channels)
    return state.replace(stage=SeedStage.BLENDING, blueprint_id="t", seed_id="s",
                         isolate=g == 1.0, alpha=torch.tensor(0.5), b=torch.tensor(0.0),
                         g=torch.tensor(g))


@contextmanager
def registered(name: str, layouts: str | tuple[str, ...], factory: SeedFactory) -> Iterator[str]:
    register(BlueprintSpec(name, layouts, factory, "a test seed"))  # type: ignore[arg-type]
    try:
        yield name
    finally:
        unregister(layouts if isinstance(layouts, str) else layouts[0], name)


class ShapedSlot(SeedSlot):
    """A slot whose site knows the real feature shape and dtype (as a graft's dry run records)."""

    site_shape: tuple[int, ...] | None = None
    site_dtype: torch.dtype = torch.float32

    @property
    def site(self) -> SeedSite:
        return dataclasses.replace(super().site, feature_shape=self.site_shape,
                                   dtype=self.site_dtype)


# --------------------------------------------------------------------------- every blueprint


@pytest.mark.parametrize(("layout", "name"), EVERY_BLUEPRINT)
@pytest.mark.parametrize("g", [1.0, 0.0])
def test_every_blueprint_germinates_and_trains_on_a_real_shape(layout: str, name: str,
                                                               g: float) -> None:
    """Germination on the real shape, then the slot formula forward and backward on it."""
    torch.manual_seed(0)
    memory_format = CL if layout == "cnn" else torch.contiguous_format
    site = make_site(layout, SHAPES[layout], memory_format=memory_format)
    seed, gate = build_seed(site, name, "gated")
    assert seed.training and gate is not None
    host = torch.randn(SHAPES[layout]).to(memory_format=memory_format).requires_grad_()
    out = slot_forward(blending(g), seed, host, gate=gate)
    assert out.shape == host.shape and out.dtype == host.dtype
    out.square().sum().backward()
    assert host.grad is not None and torch.isfinite(host.grad).all()
    for p in [*seed.parameters(), *gate.parameters()]:
        assert p.grad is not None and torch.isfinite(p.grad).all()


@pytest.mark.parametrize(("layout", "name"), EVERY_BLUEPRINT)
def test_every_blueprint_validates_in_float64(layout: str, name: str) -> None:
    seed, gate = build_seed(make_site(layout, SHAPES[layout], dtype=torch.float64), name, "gated")
    assert all(p.dtype == torch.float64 for m in (seed, gate) for p in m.parameters())
    host = torch.randn(SHAPES[layout], dtype=torch.float64)
    assert slot_forward(blending(1.0), seed, host, gate=gate).dtype == torch.float64


# --------------------------------------------------------------------------- the real-shape check


class Recorder(nn.Module):
    """The identity, remembering what it saw."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[tuple[int, ...], torch.dtype, bool, bool, bool]] = []

    def forward(self, x: Tensor) -> Tensor:
        self.seen.append((tuple(x.shape), x.dtype, x.is_contiguous(memory_format=CL),
                          self.training, torch.is_grad_enabled()))
        return x


@pytest.mark.parametrize(("shape", "memory_format", "seen_shape", "channels_last"), [
    ((5, C, 7, 5), CL, (2, C, 7, 5), True),
    ((5, C, 7, 5), torch.contiguous_format, (2, C, 7, 5), False),
    ((1, 9, C), torch.contiguous_format, (1, 9, C), False),
    ((64, C), torch.contiguous_format, (2, C), False),
])
def test_real_shape_probe(shape, memory_format, seen_shape, channels_last) -> None:
    """Zeros of the real shape, batch min(B, 2), the site's dtype and layout, eval, no grad."""
    recorder = Recorder()
    layout = {4: "cnn", 3: "transformer", 2: "mlp"}[len(shape)]
    with registered("recorder", layout, lambda _c: recorder):
        seed, _ = build_seed(make_site(layout, shape, memory_format=memory_format,
                                       dtype=torch.float64), "recorder", "linear")
    assert seed is recorder and seed.training  # the mode is restored
    assert recorder.seen == [(seen_shape, torch.float64, channels_last, False, False)]


class FixedSpatial(nn.Module):
    """Adds a learned [C, 8, 8] map: fits the fixed 8x8 probe, nothing else."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels, 8, 8))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.bias


class CropTo8(nn.Module):
    """Crops H and W to 8: shape-preserving on the fixed probe only."""

    def forward(self, x: Tensor) -> Tensor:
        return x[:, :, :8, :8]


class FixedTokens(nn.Module):
    """A learned position table of exactly 8 tokens (hard-codes T)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.position = nn.Parameter(torch.zeros(8, channels))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.position


class Float32Out(nn.Module):
    """Returns float32 whatever it is given."""

    def forward(self, x: Tensor) -> Tensor:
        return x.float()


F64 = torch.float64


@pytest.mark.parametrize(("layout", "factory", "shape", "dtype", "error", "words"), [
    ("cnn", FixedSpatial, (4, C, 7, 5), F64, SeedRaisedError,
     "raised while its seed for slot 'mid'"),
    ("cnn", lambda _c: CropTo8(), (4, C, 16, 16), torch.float32, SeedShapeError,
     "at slot 'mid' changes the feature shape: input (2, 12, 16, 16), output (2, 12, 8, 8)"),
    ("transformer", FixedTokens, (4, 11, C), torch.float32, SeedRaisedError, "slot 'mid'"),
    ("mlp", lambda _c: Float32Out(), (4, C), F64, SeedShapeError,
     "changes the feature dtype: input torch.float64, output torch.float32"),
])
def test_seed_that_passes_the_fixed_probe_is_refused_on_the_real_shape(
        layout, factory, shape, dtype, error, words) -> None:
    with registered("fragile", layout, factory):
        validate_seed(factory(C), topology=layout, channels=C, device="cpu", name="fragile")
        slot = ShapedSlot("mid", C, topology=layout)
        slot.site_shape, slot.site_dtype = shape, dtype
        rng = torch.get_rng_state()
        with pytest.raises(error, match="fragile") as info:
            slot.germinate("fragile", "s1")
    assert words in str(info.value)
    assert slot.state.stage == SeedStage.DORMANT and slot.seed is None and slot.gate is None
    assert list(slot.parameters()) == [] and torch.equal(torch.get_rng_state(), rng)


def test_without_a_feature_shape_the_layout_probe_is_used() -> None:
    assert _probe("mlp", C).shape == (2, C)
    assert _probe("transformer", C).shape == (2, 8, C)
    with registered("fixed_tokens", "transformer", FixedTokens):
        build_seed(make_site("transformer", None), "fixed_tokens", "linear")  # fits T = 8
        with pytest.raises(SeedRaisedError, match="slot 'mid'"):
            build_seed(make_site("transformer", (2, 9, C)), "fixed_tokens", "linear")


@pytest.mark.parametrize(("layout", "shape"), [
    ("cnn", (2, C, 8)), ("cnn", (2, C + 1, 8, 8)), ("transformer", (2, C)),
    ("transformer", (2, 8, C + 1)), ("mlp", (0, C)), ("mlp", [2, C]), ("mlp", (2.0, C)),
])
def test_site_refuses_a_feature_shape_that_does_not_fit(layout, shape) -> None:
    with pytest.raises(ValueError, match=f"does not fit the {layout} layout"):
        make_site(layout, shape)


def test_site_refuses_features_that_are_not_floating_point() -> None:
    with pytest.raises(ValueError, match="floating point"):
        make_site("mlp", (2, C), dtype=torch.int64)


# --------------------------------------------------------------------------- layouts in the catalog


def test_cnn_blueprint_at_an_mlp_site_lists_the_mlp_blueprints() -> None:
    slot = SeedSlot("mid", C, topology="mlp")
    with pytest.raises(TopologyMismatchError) as info:
        slot.germinate("depthwise", "s1")
    message = str(info.value)
    assert "'depthwise' does not support the mlp layout [B, C]" in message
    assert "it is a cnn blueprint" in message and "noop, norm, lowrank" in message
    assert slot.state.stage == SeedStage.DORMANT and list(slot.parameters()) == []
    with pytest.raises(TopologyMismatchError, match="support the mlp layout"):
        build_seed(make_site("mlp", (4, C)), "attention", "linear")


def test_a_blueprint_declares_its_layouts() -> None:
    spec = BlueprintSpec("both", ("cnn", "mlp", "cnn"), lambda _c: nn.Identity())  # type: ignore[arg-type]
    assert spec.layouts == ("cnn", "mlp") and BlueprintSpec("one", "mlp", nn.Identity).layouts == (
        "mlp",)
    register(spec)
    try:
        assert get("cnn", "both") is spec and get("mlp", "both") is spec
        assert "both" not in names("transformer")
        with pytest.raises(TopologyMismatchError, match="blueprints that support transformer"):
            get("transformer", "both")
    finally:
        assert unregister("mlp", "both") is spec
    assert "both" not in names("cnn") and "both" not in names("mlp")
    with pytest.raises(ValueError, match="declares no layout"):
        BlueprintSpec("none", (), nn.Identity)
    with pytest.raises(ValueError, match="known layouts: cnn"):
        BlueprintSpec("x", ("mlp", "rnn"), nn.Identity)  # type: ignore[arg-type]


def test_registration_is_all_or_nothing() -> None:
    with pytest.raises(ValueError, match="already registered for the cnn layout"):
        register(BlueprintSpec("depthwise", ("mlp", "cnn"), nn.Identity))
    assert "depthwise" not in names("mlp")
    with pytest.raises(UnknownBlueprintError, match="known mlp blueprints: noop, norm, lowrank"):
        get("mlp", "resnet")


# --------------------------------------------------------------------------- the mlp family


def test_mlp_catalog_and_identity_start() -> None:
    assert names("mlp")[:3] == MLP_NAMES
    assert all(get("mlp", name).description for name in MLP_NAMES)
    assert list(create("mlp", "noop", C).parameters()) == []
    seed = create("mlp", "lowrank", 64)
    assert isinstance(seed, LowRankSeed) and seed.down.out_features == 8
    assert create("mlp", "lowrank", 5).down.out_features == 1
    x = torch.randn(4, 64)
    for name in MLP_NAMES:
        assert torch.equal(create("mlp", name, 64)(x), x)  # the blended output starts at the host


@pytest.mark.parametrize("name", MLP_NAMES)
@pytest.mark.parametrize("blend", ["linear", "sigmoid", "gated"])
def test_mlp_seed_through_a_slot(name: str, blend: str) -> None:
    torch.manual_seed(0)
    slot = SeedSlot("mid", C, topology="mlp")
    slot.germinate(name, "s1", blend_algorithm_id=blend)
    assert isinstance(slot.gate, GatedBlend) == (blend == "gated")
    host = torch.randn(1, C, requires_grad=True)  # a batch of one
    out = slot(host, blending(0.0), alpha=None)
    assert out.shape == host.shape
    out.sum().backward()
    assert host.grad is not None and torch.isfinite(host.grad).all()


def test_mlp_gate_gives_one_factor_per_sample() -> None:
    gate = create_blend("gated", C, "mlp")
    assert isinstance(gate, GatedBlend)
    nn.init.normal_(gate.fc2.weight, std=2.0)
    x = torch.randn(5, C)
    assert gate.factor(x).shape == (5, 1)
    a_eff = gate(x, torch.tensor(0.3))
    assert a_eff.shape == (5, 1) and a_eff.std() > 0
    assert gate(x, torch.full((C,), 0.3)).shape == (5, C)
    changed = x.clone()
    changed[1:] += 5.0  # one sample's factor reads that sample only
    assert torch.equal(gate(changed, torch.tensor(0.3))[0], a_eff[0])


@pytest.mark.parametrize("name", MLP_NAMES)
def test_mlp_slot_formula_compiles_without_graph_breaks(name: str) -> None:
    torch.manual_seed(0)
    torch._dynamo.reset()
    counters.clear()
    seed, gate = build_seed(make_site("mlp", (8, C)), name, "gated")
    counter = CompileCounterWithBackend("aot_eager")
    forward = torch.compile(slot_forward, backend=counter, fullgraph=True)
    host = torch.randn(8, C, requires_grad=True)
    for g in (1.0, 0.0):
        out = forward(blending(g), seed, host, gate=gate)
        out.square().sum().backward()
        torch.testing.assert_close(out, slot_forward(blending(g), seed, host, gate=gate))
    assert counter.frame_count == 1 and not counters["graph_break"]
    assert all(p.grad is not None for p in gate.parameters())
