"""esper.kernels.squared_norms / group_squared_norms against a float64 reference.

Tests marked ``triton_kernel`` run the Triton kernels: on CUDA when there is a
GPU, otherwise on CPU under the Triton interpreter (see ``conftest.py``). The
interpreter is slow, so those use small tensors; the torch path gets large ones.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

from esper import kernels
from esper.kernels import ops
from esper.kernels.reference import group_squared_norms_reference, squared_norms_reference
from esper.kernels.squared_norms import group_squared_norms_triton
from esper.kernels.squared_norms_torch import LARGE, MIN_STACK, ROW

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _triton_runs_here() -> bool:
    try:
        return kernels.resolve_backend("triton", DEVICE) == "triton"
    except RuntimeError:
        return False


TRITON_HERE = _triton_runs_here()
_NO_TRITON = (
    "Triton was imported without its interpreter: test_triton_cases_in_a_subprocess runs this"
)


def triton_test(test: Callable[..., None]) -> Callable[..., None]:
    """Mark a test that runs the Triton kernels, and skip it where they cannot run."""
    return pytest.mark.triton_kernel(pytest.mark.skipif(not TRITON_HERE, reason=_NO_TRITON)(test))


# Tolerances against the float64 reference: squares of float16/bfloat16 values
# are exact in float32, so every input dtype is held to float32 summation error;
# float64 input only meets the rounding of the float32 result.
DTYPES = [
    pytest.param(torch.float32, 1e-6, 1e-5, id="float32"),
    pytest.param(torch.float16, 1e-6, 1e-5, id="float16"),
    pytest.param(torch.bfloat16, 1e-6, 1e-5, id="bfloat16"),
    pytest.param(torch.float64, 1e-9, 1e-6, id="float64"),
]


def _layouts(dtype: torch.dtype, scale: int = 1) -> list[torch.Tensor]:
    """Tensors shaped and laid out like real gradients; ``scale`` enlarges them."""
    g = torch.Generator().manual_seed(1234)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(dtype=dtype, device=DEVICE)

    s = scale
    return [
        randn(1),  # one element
        randn(0),  # zero-size
        randn(3, 0, 2),  # zero-size, several dimensions
        randn(7 * s),  # shorter than a block
        randn(1025 * s),  # one past a block
        randn(5, 7, s),  # odd 3-D
        randn(2, 16, 3, 5 * s).to(memory_format=torch.channels_last),  # channels_last
        randn(13 * s, 17).t(),  # transposed: dense, not contiguous
        randn(4, 6, 5 * s).permute(2, 0, 1),  # permuted: dense
        randn(9, 10 * s)[:, ::2],  # strided with gaps: not dense
        randn(50 * s)[3:40],  # view at a storage offset
        randn(3 * s).expand(4, 3 * s),  # stride 0: overlapping
        randn(2, 8, 4, 4 * s).to(memory_format=torch.channels_last)[:, :5],  # sliced channels_last
    ]


def _poison(n: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.full((n,), float("nan"), dtype=dtype, device=DEVICE)


@pytest.fixture
def launches(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Names of the Triton kernels launched during the test, in order."""
    module = sys.modules["esper.kernels.squared_norms"]
    seen: list[str] = []

    class Counting:
        def __init__(self, kernel: object, name: str) -> None:
            self.kernel, self.name = kernel, name

        def __getitem__(self, grid: object) -> Callable[..., object]:
            seen.append(self.name)
            return self.kernel[grid]

    for name in ("_partial_sums_kernel", "_group_sums_kernel"):
        monkeypatch.setattr(module, name, Counting(getattr(module, name), name))
    yield seen


def _close(actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float) -> None:
    assert actual.dtype == torch.float32
    torch.testing.assert_close(actual.double().cpu(), expected, atol=atol, rtol=rtol)


# --- Triton kernels -------------------------------------------------------------------


@triton_test
@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
def test_triton_matches_reference_on_every_layout(
    dtype: torch.dtype, atol: float, rtol: float, launches: list[str]
) -> None:
    ts = _layouts(dtype)
    out = group_squared_norms_triton(
        ts, [1] * len(ts), out=_poison(len(ts)), workspace=_poison(64, torch.float64)
    )
    _close(out, squared_norms_reference(ts), atol, rtol)
    assert launches == ["_partial_sums_kernel", "_group_sums_kernel"]


@triton_test
@pytest.mark.parametrize("numel", [1, 2, 127, 128, 129, 1023, 1024, 1025, 2048, 5000])
@pytest.mark.parametrize("with_small", [False, True], ids=["alone", "with-small"])
def test_triton_block_boundaries(numel: int, with_small: bool) -> None:
    ts = [torch.randn(numel, device=DEVICE)]
    if with_small:  # the block size follows the largest tensor of the launch
        ts = [torch.randn(3, device=DEVICE), *ts, torch.randn(1, device=DEVICE)]
    out = kernels.squared_norms(ts, backend="triton")
    _close(out, squared_norms_reference(ts), 1e-6, 1e-5)


@triton_test
def test_triton_groups_with_mixed_dtypes(launches: list[str]) -> None:
    f32, f16 = _layouts(torch.float32), _layouts(torch.float16)
    bf16 = [torch.randn(300, device=DEVICE, dtype=torch.bfloat16)]
    f64 = [torch.randn(2, 3, device=DEVICE, dtype=torch.float64)]
    groups = [f32[:6] + f16[:3], [], f64, f32[6:] + bf16, f16[1:3], f16[3:]]
    flat = [t for group in groups for t in group]
    out = group_squared_norms_triton(
        flat,
        [len(group) for group in groups],
        out=_poison(len(groups)),
        workspace=_poison(64, torch.float64),
    )
    _close(out, group_squared_norms_reference(groups), 1e-6, 1e-5)
    # One launch per dtype (float32, float16, float64, bfloat16), then one for the groups.
    assert launches.count("_partial_sums_kernel") == 4
    assert launches[-1] == "_group_sums_kernel" and len(launches) == 5
    public = kernels.group_squared_norms(groups, backend="triton")
    assert torch.equal(public, out)


@triton_test
def test_triton_is_deterministic() -> None:
    # The long tensors span several programs each.
    ts = [torch.randn(20_000, device=DEVICE), torch.randn(3, 9000, device=DEVICE).t()]
    ts += _layouts(torch.float32)
    first = group_squared_norms_triton(ts, [1] * len(ts), out=_poison(len(ts)))
    workspace = torch.full((256,), 1e30, dtype=torch.float64, device=DEVICE)
    second = group_squared_norms_triton(ts, [1] * len(ts), workspace=workspace)
    assert torch.equal(first, second)
    grouped = [kernels.group_squared_norms([ts[:5], ts[5:]], backend="triton") for _ in range(2)]
    assert torch.equal(grouped[0], grouped[1])


@triton_test
def test_triton_dispatch_launches_triton(launches: list[str]) -> None:
    ts = _layouts(torch.float32)
    out = kernels.squared_norms(ts, backend="triton")
    _close(out, squared_norms_reference(ts), 1e-6, 1e-5)
    assert launches == ["_partial_sums_kernel", "_group_sums_kernel"]
    launches.clear()
    kernels.squared_norms(ts)  # auto: Triton on CUDA only
    assert bool(launches) == (DEVICE.type == "cuda")


@triton_test
@pytest.mark.skipif(torch.cuda.is_available(), reason="misaligned views are built on the CPU")
def test_triton_addresses_of_different_alignment(launches: list[str]) -> None:
    buffer = bytearray(400)
    ts = [
        torch.frombuffer(buffer, dtype=torch.float32, offset=2, count=10),
        torch.frombuffer(buffer, dtype=torch.float32, offset=100, count=10),
        torch.frombuffer(buffer, dtype=torch.float32, offset=150, count=20),
    ]
    for t in ts:
        t.copy_(torch.randn(t.shape))
    out = kernels.squared_norms(ts, backend="triton")
    _close(out, squared_norms_reference(ts), 1e-6, 1e-5)
    assert launches.count("_partial_sums_kernel") == 2  # one per address residue


@triton_test
def test_triton_gradient_through_the_op() -> None:
    a = torch.randn(4, 5, device=DEVICE, requires_grad=True)
    b = torch.randn(7, device=DEVICE, requires_grad=True)
    weights = torch.tensor([2.0, 3.0], device=DEVICE)
    (kernels.group_squared_norms([[a], [b]], backend="triton") * weights).sum().backward()
    torch.testing.assert_close(a.grad, 4 * a.detach())
    torch.testing.assert_close(b.grad, 6 * b.detach())


@triton_test
def test_triton_inside_compile(launches: list[str]) -> None:
    counter = CompileCounterWithBackend("eager")

    @torch.compile(backend=counter, fullgraph=True)
    def norms(ts: list[torch.Tensor]) -> torch.Tensor:
        return kernels.squared_norms(ts, backend="triton")

    ts = [torch.randn(5, 3, device=DEVICE), torch.randn(40, device=DEVICE)]
    _close(norms(ts), squared_norms_reference(ts), 1e-6, 1e-5)
    assert counter.frame_count == 1
    assert launches == ["_partial_sums_kernel", "_group_sums_kernel"]


# --- torch path -------------------------------------------------------------------------


def _large(dtype: torch.dtype) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(99)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(dtype=dtype, device=DEVICE)

    return [
        randn(LARGE),  # exactly the largest tensor reduced whole
        randn(40 * ROW + 3),  # rows and a ragged tail
        randn(4, 64, 32, 33).to(memory_format=torch.channels_last),
        randn(600, 501).t(),  # dense, transposed
        randn(1200, 500)[:, ::2],  # not dense
    ]


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
def test_torch_matches_reference(dtype: torch.dtype, atol: float, rtol: float) -> None:
    small = _layouts(dtype, scale=3)
    same_shape = [torch.randn(8, 3, 3, dtype=dtype, device=DEVICE) for _ in range(MIN_STACK + 1)]
    same_cl = [
        torch.randn(2, 4, 3, 3, dtype=dtype, device=DEVICE).to(memory_format=torch.channels_last)
        for _ in range(MIN_STACK)
    ]
    ts = small + same_shape + _large(dtype) + same_cl
    ts = ts[::2] + ts[1::2]  # interleave the buckets
    out = kernels.squared_norms(ts, backend="torch")
    _close(out, squared_norms_reference(ts), atol, rtol)


def test_torch_mixed_dtypes_and_groups() -> None:
    f32, f16, bf16 = _layouts(torch.float32), _layouts(torch.float16), _large(torch.bfloat16)
    f64 = [torch.randn(MIN_STACK * 2, 3, dtype=torch.float64)]
    groups = [f32[:5] + f16, [], bf16[:2] + f64, f32[5:], bf16[2:], [f16[1]]]
    out = kernels.group_squared_norms(groups, backend="torch")
    _close(out, group_squared_norms_reference(groups), 1e-6, 1e-5)
    flat = [t for group in groups for t in group]
    _close(kernels.squared_norms(flat), squared_norms_reference(flat), 1e-6, 1e-5)


def test_torch_is_deterministic() -> None:
    ts = _layouts(torch.float32, scale=5) + _large(torch.float32)
    assert torch.equal(kernels.squared_norms(ts), kernels.squared_norms(ts))
    groups = [ts[:4], ts[4:]]
    assert torch.equal(kernels.group_squared_norms(groups), kernels.group_squared_norms(groups))


def test_torch_path_is_differentiable() -> None:
    a = torch.randn(3, 4, requires_grad=True)
    b = torch.randn(LARGE + 5, requires_grad=True)
    weights = torch.tensor([2.0, 3.0])
    (kernels.squared_norms([a, b]) * weights).sum().backward()
    torch.testing.assert_close(a.grad, 4 * a.detach())
    torch.testing.assert_close(b.grad, 6 * b.detach())


# --- dispatch and validation ---------------------------------------------------------


@pytest.mark.parametrize("backend", ["auto", "torch", "triton"])
def test_empty_inputs(backend: str) -> None:
    empty = kernels.squared_norms([], backend=backend)
    assert empty.shape == (0,) and empty.dtype == torch.float32
    assert kernels.group_squared_norms([], backend=backend).shape == (0,)
    assert torch.equal(kernels.group_squared_norms([[], []], backend=backend), torch.zeros(2))
    if backend == "triton" and not TRITON_HERE:
        return  # zero-size tensors still need a runnable backend
    zero = kernels.group_squared_norms([[torch.empty(0, 3, device=DEVICE)], []], backend=backend)
    assert torch.equal(zero.cpu(), torch.zeros(2))


def test_auto_backend_follows_the_device() -> None:
    assert kernels.resolve_backend("auto", torch.device("cpu")) == "torch"
    assert kernels.resolve_backend("torch", torch.device("cpu")) == "torch"
    if torch.cuda.is_available():
        assert kernels.resolve_backend("auto", torch.device("cuda")) == "triton"


def test_triton_backend_without_interpreter_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ops._triton_path, "interpreter_active", lambda: False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        kernels.squared_norms([torch.ones(3)], backend="triton")
    monkeypatch.setattr(ops._triton_path, "interpreter_active", lambda: True)
    with pytest.raises(RuntimeError, match="needs compiled kernels"):
        kernels.resolve_backend("triton", torch.device("cuda"))


@pytest.mark.parametrize(
    "entry, error, match",
    [
        (3.0, TypeError, "entry 1 is a float"),
        (None, TypeError, "entry 1 is a NoneType"),
        (torch.arange(3), TypeError, "entry 1 has dtype torch.int64"),
        (torch.ones(2, dtype=torch.bool), TypeError, "entry 1 has dtype torch.bool"),
        (torch.ones(2, dtype=torch.complex64), TypeError, "entry 1 has dtype torch.complex64"),
        (torch.ones(2, device="meta"), ValueError, "entry 1 is on meta"),
    ],
)
def test_bad_entries_raise(entry: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        kernels.squared_norms([torch.ones(2), entry])  # type: ignore[list-item]
    with pytest.raises(error, match=match):
        kernels.group_squared_norms([[torch.ones(2)], [entry]])  # type: ignore[list-item]


def test_bad_containers_and_backends_raise() -> None:
    with pytest.raises(TypeError, match="got a Tensor"):
        kernels.squared_norms(torch.ones(3, 2))
    with pytest.raises(TypeError, match="got a Tensor"):
        kernels.group_squared_norms(torch.ones(3, 2))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="group 1 is a Tensor"):
        kernels.group_squared_norms([[torch.ones(2)], torch.ones(2)])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="unknown backend 'cuda'"):
        kernels.squared_norms([torch.ones(2)], backend="cuda")
    with pytest.raises(ValueError, match="unknown backend"):
        kernels.group_squared_norms([], backend="Torch")


# --- torch.compile ----------------------------------------------------------------------


def _norms_step(host: list[torch.Tensor], seed: list[torch.Tensor]) -> torch.Tensor:
    per_tensor = kernels.squared_norms(host + seed)
    per_group = kernels.group_squared_norms([host, seed, []])
    return per_tensor.sum() + per_group


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_compiles_to_one_frame_without_graph_breaks(backend: str) -> None:
    counter = CompileCounterWithBackend(backend)
    step = torch.compile(_norms_step, backend=counter, fullgraph=True)
    host = [torch.randn(8, 3, 3, 3).to(memory_format=torch.channels_last), torch.randn(8)]
    seed = [torch.randn(4, 8), torch.randn(4, dtype=torch.float64)]
    torch.testing.assert_close(step(host, seed), _norms_step(host, seed))
    host = [t * 2 for t in host]  # new values, same structure: no recompile
    torch.testing.assert_close(step(host, seed), _norms_step(host, seed))
    assert counter.frame_count == 1
    called = {node.target for gm in counter.graphs for node in gm.graph.nodes}
    assert torch.ops.esper.squared_norms.default in called
    assert torch.ops.esper.group_squared_norms.default in called


# --- the interpreter in a fresh process ------------------------------------------------


@pytest.mark.slow
def test_triton_cases_in_a_subprocess() -> None:
    """Run the Triton tests in a process where Triton starts in interpreter mode."""
    if TRITON_HERE:
        pytest.skip("the Triton tests ran in this process")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-m",
        "triton_kernel",
    ]
    result = subprocess.run(
        [*command, __file__],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    summary = result.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "skipped" not in summary, result.stdout[-4000:]


def test_torch_large_tensor_keeps_float64_accuracy() -> None:
    # One float32 reduction over 4M values drifts by about 1e-4 relative; rows do not.
    t = torch.rand(4 * 1024 * 1024, generator=torch.Generator().manual_seed(3)) + 1.0
    expected = t.double().square().sum()
    out = kernels.squared_norms([t], backend="torch")
    assert abs(out.double().item() - expected.item()) / expected.item() < 1e-6
