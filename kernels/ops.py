"""Public entry points: input checks, backend dispatch and the torch ops.

The work is done by the custom ops ``esper::squared_norms`` and
``esper::group_squared_norms``, so a call traces inside
``torch.compile(fullgraph=True)`` as a single node (fake implementations give
the output shape) and, through them, the Triton path has a gradient. Each op
runs the Triton launcher or the plain-torch path, by a backend string resolved
beforehand from the device.

The ops are registered once per process, so this package imports only as
``esper.kernels``: a second copy (the source folder imported as a top-level
``kernels`` from the repository root) would register them again, and fails to
import instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import squared_norms_torch as _torch_path

try:  # Triton is optional: without it (a Mac, say) the torch path serves every device
    from . import squared_norms as _triton_path
except ImportError:
    _triton_path = None  # type: ignore[assignment]
from ._utils import TensorIndex, group_index, index_tensors

BACKENDS = ("auto", "triton", "torch")
PACKAGE = "esper.kernels"

if __package__ != PACKAGE:  # before the ops below are registered
    raise ImportError(f"the kernels package is {PACKAGE!r}: import it by that name, "
                      f"not as {__package__!r}, which would register torch.ops.esper twice")


def _check_tensors(tensors: list[object], name: str) -> TensorIndex:
    """Raise unless every entry is a floating-point tensor and all share a device.

    Returns:
        :func:`esper.kernels._utils.index_tensors` of the tensors, which the checks read.
    """
    if not all(issubclass(kind, torch.Tensor) for kind in {type(t) for t in tensors}):
        i, t = next((i, t) for i, t in enumerate(tensors) if not isinstance(t, torch.Tensor))
        raise TypeError(f"{name}: entry {i} is a {type(t).__name__}, expected a torch.Tensor")
    index = index_tensors(tensors)  # type: ignore[arg-type]
    if not all(dtype.is_floating_point for dtype, _, _ in index):
        i, t = next((i, t) for i, t in enumerate(tensors) if not t.is_floating_point())
        raise TypeError(
            f"{name}: entry {i} has dtype {t.dtype}; only floating-point tensors are supported"
        )
    if len({device for _, device, _ in index}) > 1:
        first = tensors[0].device
        i, t = next((i, t) for i, t in enumerate(tensors) if t.device != first)
        raise ValueError(f"{name}: entry {i} is on {t.device}, entry 0 on {first}")
    return index


def resolve_backend(backend: str, device: torch.device) -> str:
    """The implementation a call with ``backend`` on ``device`` runs.

    Arguments:
        backend: ``"auto"`` (Triton on CUDA, torch elsewhere), ``"triton"`` or
            ``"torch"``.
        device: the device of the input tensors.

    Returns:
        ``"triton"`` or ``"torch"``.

    Raises:
        ValueError: for an unknown backend.
        RuntimeError: for ``"triton"`` where the kernels cannot run: Triton is
            not installed, a non-CUDA device without the Triton interpreter, or a
            CUDA device with it.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    if _triton_path is None:
        if backend == "triton":
            raise RuntimeError("backend='triton' needs Triton, which is not installed here; "
                               "use backend='torch' (or 'auto')")
        return "torch"
    interpreted = _triton_path.interpreter_active()
    if device.type == "cuda":
        runnable = not interpreted
    else:
        runnable = device.type == "cpu" and interpreted
    if backend == "auto":
        return "triton" if runnable and device.type == "cuda" else "torch"
    if backend == "triton" and not runnable:
        if interpreted:
            raise RuntimeError(
                "backend='triton' on CUDA tensors needs compiled kernels, but Triton was "
                "imported with TRITON_INTERPRET=1"
            )
        raise RuntimeError(
            f"backend='triton' on {device.type} tensors needs the Triton interpreter: set "
            "TRITON_INTERPRET=1 before Triton is first imported"
        )
    return backend


def _compute(
    tensors: list[torch.Tensor],
    group_sizes: list[int] | None,
    backend: str,
    index: TensorIndex | None = None,
) -> torch.Tensor:
    """Run the resolved backend; ``group_sizes=None`` means one group per tensor."""
    if backend == "triton":
        assert _triton_path is not None  # resolve_backend never picks it otherwise
        sizes = [1] * len(tensors) if group_sizes is None else group_sizes
        return _triton_path.group_squared_norms_triton(tensors, sizes, index=index)
    if group_sizes is None:
        return _torch_path.per_tensor_sum_squares(tensors, index).float()
    return _torch_path.group_squared_norms_torch(tensors, group_sizes, index)


# Two ops so that the common per-tensor call carries no int list (boxing a
# 1000-entry list costs about as much as the tensor list itself).
@torch.library.custom_op("esper::squared_norms", mutates_args=())
def _squared_norms_op(tensors: list[torch.Tensor], backend: str) -> torch.Tensor:
    return _compute(tensors, None, backend)


@torch.library.custom_op("esper::group_squared_norms", mutates_args=())
def _group_squared_norms_op(
    tensors: list[torch.Tensor], group_sizes: list[int], backend: str
) -> torch.Tensor:
    return _compute(tensors, group_sizes, backend)


@_squared_norms_op.register_fake
def _(tensors: list[torch.Tensor], backend: str) -> torch.Tensor:
    return tensors[0].new_empty((len(tensors),), dtype=torch.float32)


@_group_squared_norms_op.register_fake
def _(tensors: list[torch.Tensor], group_sizes: list[int], backend: str) -> torch.Tensor:
    return tensors[0].new_empty((len(group_sizes),), dtype=torch.float32)


def _setup_context(ctx, inputs, output) -> None:
    tensors = inputs[0]
    ctx.save_for_backward(*tensors)
    ctx.grouped = len(inputs) == 3
    ctx.owner = group_index(inputs[1]) if ctx.grouped else list(range(len(tensors)))


def _backward(ctx, grad: torch.Tensor):
    # d/dt sum(t * t) = 2 t, scaled by the incoming gradient of t's group.
    tensors = ctx.saved_tensors
    grads = [2 * t * grad[g].to(t.dtype) for t, g in zip(tensors, ctx.owner, strict=True)]
    return (grads, None, None) if ctx.grouped else (grads, None)


_squared_norms_op.register_autograd(_backward, setup_context=_setup_context)
_group_squared_norms_op.register_autograd(_backward, setup_context=_setup_context)


def group_squared_norms(
    groups: Sequence[Sequence[torch.Tensor]], *, backend: str = "auto"
) -> torch.Tensor:
    """Sum of squares over each group of tensors, all groups in one pass.

    For example the gradients of the host's parameters as one group and those of
    each seed as others. Float16, bfloat16 and float32 values are accumulated in
    float32 (float64 across chunks), float64 values in float64; the result is
    float32 either way. No atomics: repeated calls agree bit for bit.

    Arguments:
        groups: lists of floating-point tensors on one device. Any layout,
            dtype mix and zero-size tensors are accepted; a group may be empty.
        backend: ``"auto"`` (Triton on CUDA, torch elsewhere), ``"triton"`` (on
            CPU only under ``TRITON_INTERPRET=1``) or ``"torch"``.

    Returns:
        A float32 tensor of shape ``(len(groups),)`` on the tensors' device (CPU
        if there are no tensors); an empty group sums to 0.

    Raises:
        TypeError: if a group or an entry is not what is described above.
        ValueError: for tensors on different devices or an unknown backend.
        RuntimeError: if ``backend="triton"`` cannot run on the tensors' device.

    Example:
        ```python
        grads = [torch.ones(2, 3), torch.ones(4)]
        group_squared_norms([grads[:1], grads[1:], []])  # about [6.0, 4.0, 0.0]
        ```
    """
    if isinstance(groups, torch.Tensor):
        raise TypeError("group_squared_norms: expected a list of lists of tensors, got a Tensor")
    flat: list[torch.Tensor] = []
    sizes: list[int] = []
    for g, group in enumerate(groups):
        if isinstance(group, torch.Tensor) or not isinstance(group, Sequence):
            raise TypeError(
                f"group_squared_norms: group {g} is a {type(group).__name__}, "
                "expected a list of tensors"
            )
        flat.extend(group)
        sizes.append(len(group))
    backend, index = _prepare(flat, backend, "group_squared_norms")
    if not flat:
        return torch.zeros(len(sizes), dtype=torch.float32)
    if _through_op(flat, backend):
        return _group_squared_norms_op(flat, sizes, backend)
    return _compute(flat, sizes, backend, index)


def squared_norms(tensors: Sequence[torch.Tensor], *, backend: str = "auto") -> torch.Tensor:
    """Sum of squares of each tensor of a list, in one launch per dtype.

    Arguments:
        tensors: floating-point tensors on one device; any layout, dtype mix and
            zero-size tensors are accepted.
        backend: ``"auto"`` (Triton on CUDA, torch elsewhere), ``"triton"`` (on
            CPU only under ``TRITON_INTERPRET=1``) or ``"torch"``.

    Returns:
        A float32 tensor of shape ``(len(tensors),)``, accumulated as described
        in :func:`group_squared_norms`.

    Raises:
        TypeError, ValueError, RuntimeError: as :func:`group_squared_norms`.

    Example:
        ```python
        squared_norms([torch.ones(2, 3), torch.full((4,), 0.5)])  # about [6.0, 1.0]
        ```
    """
    if isinstance(tensors, torch.Tensor):
        raise TypeError("squared_norms: expected a list of tensors, got a Tensor")
    tensors = list(tensors)
    backend, index = _prepare(tensors, backend, "squared_norms")
    if not tensors:
        return torch.zeros(0, dtype=torch.float32)
    if _through_op(tensors, backend):
        return _squared_norms_op(tensors, backend)
    return _compute(tensors, None, backend, index)


def _prepare(tensors: list[torch.Tensor], backend: str, name: str) -> tuple[str, TensorIndex]:
    """Check the inputs and resolve the backend (``"torch"`` when there are no tensors)."""
    if backend not in BACKENDS:
        raise ValueError(f"{name}: unknown backend {backend!r}; expected one of {BACKENDS}")
    index = _check_tensors(tensors, name)
    return (resolve_backend(backend, tensors[0].device) if tensors else "torch"), index


def _through_op(tensors: list[torch.Tensor], backend: str) -> bool:
    """Whether to call the registered op rather than its implementation directly.

    The op is what ``torch.compile`` traces, and what gives the Triton path a
    gradient. Elsewhere the implementation is called directly: the torch path
    is differentiable as it is, and skipping the op's dispatch saves about half
    a millisecond per 1000 tensors.
    """
    if torch.compiler.is_compiling():
        return True
    return backend == "triton" and torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
