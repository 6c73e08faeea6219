"""Every custom backward against plain torch, fed upstream gradients of every layout.

A hand-written backward (an ``autograd.Function`` or a registered op autograd)
receives whatever gradient tensor autograd holds: dense, expanded with stride 0
(``out.sum().backward()``), channels_last, or a strided view. A native kernel
that reads raw memory assumes one of those; these tests drive each custom
backward in the tree with all of them, through
``torch.autograd.grad(out, inputs, grad_outputs=g)``, and compare every gradient
with a plain-torch reference on contiguous copies:

* ``group_norm`` (``_GroupNormAnyLayout`` and the ``F.group_norm`` path) against
  ``F.group_norm`` in float64;
* ``slot_forward`` (``_Isolate`` and ``_Mix``) against ``slot_forward_reference``;
* the ``esper::squared_norms`` and ``esper::group_squared_norms`` ops against
  ``t.square().sum()``.

Memory next to a strided or expanded gradient (and inside a strided input) is
NaN, so a kernel that reads past the view fails loudly rather than by luck.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

import esper.kernels  # noqa: F401  (registers the esper:: ops)
from esper.core.lifecycle import germinate, set_alpha, transition
from esper.core.state import SlotState
from esper.leyline import SeedStage
from esper.nn.blending import GatedBlend
from esper.nn.blueprints import create
from esper.nn.blueprints.norm import group_norm
from esper.ops.formula import slot_forward, slot_forward_reference

GROUPS, EPS = 4, 1e-5
UPSTREAM = ["dense", "expanded", "broadcast", "channels_last", "sliced", "transposed"]
DTYPES = [torch.float32, torch.float64]
# (rtol, atol) of a result against its float64 reference.
TOLERANCE = {torch.float32: (1e-4, 1e-5), torch.float64: (1e-9, 1e-11)}


def upstream(kind: str, shape: Sequence[int], dtype: torch.dtype) -> Tensor:
    """An upstream gradient of ``shape`` laid out as ``kind`` names.

    ``expanded`` is one value at stride 0 in every dimension (what
    ``out.sum().backward()`` sends); ``broadcast`` varies along dim 1 only;
    ``channels_last`` has dim 1 innermost; ``sliced`` takes every other element
    of the last dimension; ``transposed`` has every stride order reversed.
    """
    shape = tuple(shape)
    if kind == "dense":
        return torch.randn(shape, dtype=dtype)
    if kind == "expanded":
        return torch.tensor([0.7, math.nan], dtype=dtype)[0].expand(shape)
    if kind == "broadcast":
        ones = (1,) * (len(shape) - 2)
        return torch.randn(1, shape[1], *ones, dtype=dtype).expand(shape)
    if kind == "channels_last":
        return torch.randn((shape[0], *shape[2:], shape[1]), dtype=dtype).movedim(-1, 1)
    if kind == "sliced":
        buffer = torch.full((*shape[:-1], 2 * shape[-1]), math.nan, dtype=dtype)
        buffer[..., ::2] = torch.randn(shape, dtype=dtype)
        return buffer[..., ::2]
    if kind == "transposed":
        dims = tuple(reversed(range(len(shape))))
        return torch.randn([shape[d] for d in dims], dtype=dtype).permute(dims)
    raise ValueError(kind)


def assert_close(got: Tensor | None, want: Tensor, dtype: torch.dtype, what: str) -> None:
    """``got`` equals the float64 ``want`` to ``dtype``'s tolerance."""
    assert got is not None, f"{what}: no gradient"
    rtol, atol = TOLERANCE[dtype]
    torch.testing.assert_close(got.double(), want.double(), rtol=rtol, atol=atol, msg=what)


@pytest.mark.parametrize("kind", UPSTREAM)
def test_upstream_gradients_have_the_layouts_they_name(kind: str) -> None:
    g = upstream(kind, (2, 8, 4, 4), torch.float32)
    assert g.shape == (2, 8, 4, 4) and bool(g.isfinite().all())
    dense = kind in ("dense", "channels_last", "transposed")
    assert g.is_contiguous() == (kind == "dense")
    assert g.is_contiguous(memory_format=torch.channels_last) == (kind == "channels_last")
    assert (min(g.stride()) == 0) == (kind in ("expanded", "broadcast"))
    assert (g.untyped_storage().nbytes() == g.numel() * g.element_size()) == dense


# ---------------------------------------------------------------------------- group_norm

def _poisoned(shape: Sequence[int], view: tuple[slice, ...], dtype: torch.dtype,
              memory_format: torch.memory_format = torch.contiguous_format) -> Tensor:
    """Random values in ``buffer[view]`` of a NaN buffer of ``shape``; returns the view."""
    buffer = torch.full(shape, math.nan, dtype=dtype).to(memory_format=memory_format)
    buffer[view] = torch.randn(buffer[view].shape, dtype=dtype)
    return buffer[view]


def norm_input(layout: str, dtype: torch.dtype) -> Tensor:
    """An 8-channel ``group_norm`` input in ``layout``."""
    everything = slice(None)
    if layout == "contiguous":
        return torch.randn(2, 8, 4, 4, dtype=dtype)
    if layout == "channels_last":
        return torch.randn(2, 8, 4, 4, dtype=dtype).to(memory_format=torch.channels_last)
    if layout == "sliced_channels_last":  # channels_last strides, not dense
        return _poisoned((2, 12, 4, 4), (everything, slice(2, 10)), dtype, torch.channels_last)
    if layout == "strided":  # a cropped, transposed NCHW view
        crop = (everything, everything, slice(1, 5), slice(2, 6))
        return _poisoned((2, 8, 6, 7), crop, dtype).transpose(2, 3)
    if layout == "sequence":  # [B, C, T] read from a [B, T, C] transformer feature
        return torch.randn(2, 5, 8, dtype=dtype).transpose(1, 2)
    if layout == "channels_last_3d":
        return torch.randn(2, 8, 2, 3, 3, dtype=dtype).to(memory_format=torch.channels_last_3d)
    raise ValueError(layout)


NORM_LAYOUTS = ["contiguous", "channels_last", "sliced_channels_last", "strided", "sequence",
                "channels_last_3d"]
CHANNELS_LAST_LIKE = {"channels_last", "sliced_channels_last", "channels_last_3d"}


def group_norm_reference(x: Tensor, weight: Tensor, bias: Tensor, cotangent: Tensor,
                         wrt_x: bool) -> tuple[Tensor, list[Tensor]]:
    """``F.group_norm`` in float64 on contiguous copies: the output and the gradients."""
    x64 = x.detach().contiguous().double().requires_grad_(wrt_x)
    w64 = weight.detach().double().requires_grad_()
    b64 = bias.detach().double().requires_grad_()
    out = F.group_norm(x64, GROUPS, w64, b64, EPS)
    inputs = [x64, w64, b64] if wrt_x else [w64, b64]
    return out, list(torch.autograd.grad(out, inputs, cotangent.contiguous().double()))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", UPSTREAM)
@pytest.mark.parametrize("wrt_x", [False, True], ids=["x_frozen", "x_requires_grad"])
@pytest.mark.parametrize("layout", NORM_LAYOUTS)
def test_group_norm_gradients_match_f_group_norm(layout: str, wrt_x: bool, kind: str,
                                                 dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    x = norm_input(layout, dtype).requires_grad_(wrt_x)
    weight = torch.randn(8, dtype=dtype, requires_grad=True)
    bias = torch.randn(8, dtype=dtype, requires_grad=True)
    out = group_norm(x, GROUPS, weight, bias, EPS)
    custom = type(out.grad_fn).__name__.startswith("_GroupNormAnyLayout")
    assert custom == (layout in CHANNELS_LAST_LIKE and not wrt_x)  # the path under test
    if layout in CHANNELS_LAST_LIKE:
        assert not out.is_contiguous() and out.dim() == x.dim()  # the input's layout kept
    cotangent = upstream(kind, out.shape, dtype)
    inputs = [x, weight, bias] if wrt_x else [weight, bias]
    got = torch.autograd.grad(out, inputs, grad_outputs=cotangent)
    want_out, want = group_norm_reference(x, weight, bias, cotangent, wrt_x)
    assert_close(out, want_out, dtype, "output")
    for name, g, w in zip(["x", "weight", "bias"][-len(inputs):], got, want, strict=True):
        assert_close(g, w, dtype, f"grad {name}")


def test_group_norm_strided_affine_parameters() -> None:
    """Weight and bias that are views every other element of a NaN buffer."""
    torch.manual_seed(0)
    x = norm_input("channels_last", torch.float64)
    buffers = [_poisoned((16,), (slice(None, None, 2),), torch.float64) for _ in range(2)]
    weight, bias = (buffer.detach().requires_grad_() for buffer in buffers)
    cotangent = upstream("expanded", x.shape, torch.float64)
    out = group_norm(x, GROUPS, weight, bias, EPS)
    got = torch.autograd.grad(out, [weight, bias], cotangent)
    want_out, want = group_norm_reference(x, weight, bias, cotangent, wrt_x=False)
    assert_close(out, want_out, torch.float64, "output")
    for g, w in zip(got, want, strict=True):
        assert_close(g, w, torch.float64, "affine gradient")


class _RecordOps(TorchDispatchMode):
    """Records the name of every aten op that runs while it is active."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.names.append(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


def test_group_norm_training_path_copies_nothing() -> None:
    """channels_last input and gradient (the training step): no clone, no copy."""
    x = torch.randn(2, 8, 4, 4).to(memory_format=torch.channels_last)
    weight, bias = torch.randn(8, requires_grad=True), torch.randn(8, requires_grad=True)
    cotangent = torch.randn(2, 8, 4, 4).to(memory_format=torch.channels_last)
    with _RecordOps() as forward_ops:
        out = group_norm(x, GROUPS, weight, bias, EPS)
    with _RecordOps() as backward_ops:
        torch.autograd.grad(out, [weight, bias], cotangent)
    assert "aten.native_group_norm_backward" in backward_ops.names
    copies = {"aten.clone", "aten.copy_", "aten._to_copy", "aten.contiguous"}
    assert not copies & set(forward_ops.names + backward_ops.names)


# ------------------------------------------------------------------------- slot_forward

def _state(stage: SeedStage) -> SlotState:
    """A slot state reached through the lifecycle: TRAINING, BLENDING at 0.3, FOSSILIZED."""
    state = transition(germinate(SlotState.dormant("mid", channels=8), "norm", "s1"),
                       SeedStage.TRAINING)
    if stage == SeedStage.TRAINING:
        return state
    state = set_alpha(transition(state, SeedStage.BLENDING), 0.3)
    if stage == SeedStage.BLENDING:
        return state
    return transition(transition(state, SeedStage.HOLDING), SeedStage.FOSSILIZED)


# (stage, gated): the gate runs where alpha is strictly inside (0, 1).
STAGES = [(SeedStage.TRAINING, False), (SeedStage.BLENDING, False), (SeedStage.BLENDING, True),
          (SeedStage.FOSSILIZED, False)]


def _seed_pair(topology: str, dtype: torch.dtype) -> tuple[nn.Module, object]:
    """The seed run by ``slot_forward`` and a plain-torch twin sharing its parameters.

    CNN: the ``norm`` blueprint (its ``group_norm``), twinned by ``F.group_norm`` on a
    contiguous copy. Transformer: a linear layer, its own twin.
    """
    if topology == "transformer":
        seed = nn.Linear(8, 8).to(dtype)
        return seed, seed
    seed = create("cnn", "norm", 8).to(dtype)
    with torch.no_grad():  # leave the zero (identity) start so every gradient is non-trivial
        for p in seed.parameters():
            p.normal_()

    def twin(x: Tensor) -> Tensor:
        return F.group_norm(x.contiguous(), seed.groups, seed.weight, seed.bias, seed.eps) + x

    return seed, twin


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", UPSTREAM)
@pytest.mark.parametrize("host_grad", [True, False], ids=["host_trains", "host_frozen"])
@pytest.mark.parametrize("topology", ["cnn", "transformer"])
def test_slot_forward_gradients_match_reference(topology: str, host_grad: bool, kind: str,
                                                dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    shape = (2, 8, 4, 4) if topology == "cnn" else (2, 5, 8)
    host0 = torch.randn(shape, dtype=dtype)
    if topology == "cnn":
        host0 = host0.to(memory_format=torch.channels_last)
    seed, twin = _seed_pair(topology, dtype)
    gate = GatedBlend(8, topology).to(dtype)  # type: ignore[arg-type]
    with torch.no_grad():
        for p in gate.parameters():  # off its neutral start, so it has gradients
            p.normal_()
    for stage, gated in STAGES:
        state = _state(stage)
        params = [*seed.parameters(), *(gate.parameters() if gated else ())]
        cotangent = upstream(kind, shape, dtype)
        results = []
        for forward, seed_fn in ((slot_forward, seed), (slot_forward_reference, twin)):
            host = host0.clone().requires_grad_(host_grad)
            out = forward(state, seed_fn, host, gate=gate if gated else None)
            inputs = [host, *params] if host_grad else params
            results.append((out, torch.autograd.grad(out, inputs, grad_outputs=cotangent)))
        (out, got), (want_out, want) = results
        where = f"{stage.name}{' gated' if gated else ''}"
        assert_close(out, want_out, dtype, f"{where}: output")
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert bool(w.isfinite().all())
            assert_close(g, w, dtype, f"{where}: gradient {i}")


# ---------------------------------------------------------------------- squared-norm ops

def _norm_inputs() -> list[Tensor]:
    """Leaves in the layouts gradients come in, float32 and float64 mixed."""
    torch.manual_seed(0)
    tensors = [
        torch.randn(4, 3, 2, 2).to(memory_format=torch.channels_last),
        torch.randn(5, 3, dtype=torch.float64).t(),
        _poisoned((12,), (slice(None, None, 2),), torch.float32),
        torch.randn(()),
        torch.randn(7, dtype=torch.float64),
    ]
    return [t.detach().requires_grad_() for t in tensors]


@pytest.mark.parametrize("kind", ["dense", "expanded", "sliced"])
@pytest.mark.parametrize("grouped", [False, True], ids=["squared_norms", "group_squared_norms"])
def test_squared_norm_ops_backward_matches_sum_of_squares(grouped: bool, kind: str) -> None:
    tensors = _norm_inputs()
    sizes = [2, 0, 3]  # one group per entry, with an empty group
    if grouped:
        out = torch.ops.esper.group_squared_norms(tensors, sizes, "torch")
    else:
        out = torch.ops.esper.squared_norms(tensors, "torch")
    assert out.grad_fn is not None  # the registered autograd, not the torch path's own
    cotangent = upstream(kind, out.shape, torch.float32)
    got = torch.autograd.grad(out, tensors, grad_outputs=cotangent)
    leaves = [t.detach().contiguous().double().requires_grad_() for t in tensors]
    per_tensor = torch.stack([t.square().sum() for t in leaves])
    if grouped:
        owner = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
        want_out = torch.zeros(len(sizes), dtype=torch.float64).index_add(0, owner, per_tensor)
    else:
        want_out = per_tensor
    want = torch.autograd.grad(want_out, leaves, cotangent.contiguous().double())
    assert_close(out, want_out, torch.float32, "output")
    for i, (t, g, w) in enumerate(zip(tensors, got, want, strict=True)):
        assert g.shape == t.shape and g.dtype == t.dtype
        assert_close(g, w, t.dtype, f"gradient {i}")
