"""Where a run trains and in what precision: resolved and checked when it starts.

``"auto"`` picks CUDA when it is available (under torchrun each rank its own
device, which :mod:`~esper.tolaria.distributed` selected from ``LOCAL_RANK``),
else the CPU. A precision the device cannot run is refused before anything is
built, with the alternatives in the message.

Example::

    device = resolve_device("auto")
    dtype = autocast_dtype("bf16", device)  # torch.bfloat16, or None for fp32
"""

from __future__ import annotations

import torch

from ..errors import DeviceUnavailableError, PrecisionUnsupportedError
from ..leyline.constants import DEVICES, PRECISIONS

_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def available_devices() -> list[str]:
    """The device kinds this process can train on (``"cpu"`` always)."""
    found = ["cpu"]
    if torch.cuda.is_available():
        found.append(f"cuda ({torch.cuda.device_count()} device(s))")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        found.append("mps (not supported by esper grow)")
    return found


def resolve_device(name: str) -> torch.device:
    """The device a run named ``name`` (``"auto"``, ``"cpu"``, ``"cuda"``) trains on.

    Raises:
        ValueError: an unknown name.
        DeviceUnavailableError: ``"cuda"`` without CUDA (the message lists what is there).
    """
    if name not in DEVICES:
        raise ValueError(f"unknown device {name!r}; known: {list(DEVICES)}")
    cuda = torch.cuda.is_available()
    if name == "cuda" and not cuda:
        built = torch.version.cuda or "no CUDA: a CPU-only build"
        raise DeviceUnavailableError(
            f"--device cuda: CUDA is not available to this process (torch {torch.__version__}, "
            f"{built}); available: {', '.join(available_devices())}. Use --device cpu or auto")
    if name == "cpu" or not cuda:
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


def cpu_has_bf16() -> bool:
    """Whether this CPU runs bfloat16 natively (oneDNN's check: AVX512-BF16 or AMX); a torch
    build without oneDNN cannot say, and counts as no."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The forward's autocast dtype for ``precision`` on ``device`` (``None``: fp32).

    Raises:
        ValueError: an unknown precision.
        PrecisionUnsupportedError: bf16 on a device without it, or fp16 on a CPU.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; known: {list(PRECISIONS)}")
    if precision == "bf16":
        supported = (torch.cuda.is_bf16_supported() if device.type == "cuda"
                     else cpu_has_bf16())
        if not supported:
            raise PrecisionUnsupportedError(
                f"--precision bf16: this {device.type.upper()} has no bfloat16 support; "
                f"use --precision fp32{' or fp16' if device.type == 'cuda' else ''}")
    if precision == "fp16" and device.type != "cuda":
        raise PrecisionUnsupportedError(
            "--precision fp16 needs a CUDA device (on a CPU float16 autocast is slow and "
            "unscaled); use --precision bf16 or fp32 on the CPU")
    return _DTYPES[precision]


def autocast(device: torch.device, dtype: torch.dtype | None) -> torch.autocast:
    """The forward's autocast context on ``device``: ``dtype``, or disabled for ``None``."""
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)
