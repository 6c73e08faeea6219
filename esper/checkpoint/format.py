"""The on-disk format: file names, the manifest, and checks shared by saving and loading.

A checkpoint version is a directory holding ``weights.safetensors`` (every
tensor) and ``checkpoint.json`` (everything else, written last); a checkpoint
root holds versions behind a pointer (:mod:`esper.checkpoint.layout`). Tensor keys are the
model's ``state_dict`` keys prefixed ``model/`` (slot states live in the JSON,
not as ``_extra_state``) and momentum buffers prefixed ``optim/``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from ..optim.sgd import OptimizerState
from .errors import CheckpointError

FORMAT = "esper-checkpoint"
# 3: the host section may be a graft's ({"kind": "grafted", ...}: esper.load);
# 2: the document carries its own checksum ("checksum"); 1 (no checksum) still loads.
# A built-in host's checkpoint is still written as 2, so an older Esper reads it.
SCHEMA_VERSION = 3
SCHEMA_VERSION_BUILT_IN = 2
CHECKSUM_KEY = "checksum"
# Bounds checked before a document is parsed: its size, and how deep its JSON nests.
MAX_DOCUMENT_BYTES = 64 << 20
MAX_DOCUMENT_DEPTH = 32
JSON_FILE = "checkpoint.json"
WEIGHTS_FILE = "weights.safetensors"
MODEL_PREFIX = "model/"
OPTIM_PREFIX = "optim/"
DOCUMENT_KEYS = frozenset({"format", "schema_version", "esper_version", "host", "model", "slots",
                           "optimizer", "trainer", "tensors", "tied", "weights", CHECKSUM_KEY})
_EXTRA_STATE = "_extra_state"


def dtype_name(tensor: Tensor) -> str:
    """``"float32"`` for a float32 tensor (the manifest's spelling)."""
    return str(tensor.dtype).removeprefix("torch.")


def manifest_entry(tensor: Tensor) -> dict[str, Any]:
    """What the manifest records of one tensor: its shape and dtype."""
    return {"shape": list(tensor.shape), "dtype": dtype_name(tensor)}


def model_tensors(model: nn.Module) -> dict[str, Tensor]:
    """The model's ``state_dict`` tensors (detached views of its own) without extra states."""
    return {k: v for k, v in model.state_dict().items()
            if k.rsplit(".", 1)[-1] != _EXTRA_STATE}


def document_checksum(document: Mapping[str, Any]) -> str:
    """SHA-256 of the document's canonical JSON, its own checksum left out.

    Canonical: sorted keys, no whitespace, ASCII. Any edit of any value
    changes it; reformatting the file does not.
    """
    body = {k: v for k, v in document.items() if k != CHECKSUM_KEY}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def file_digest(path: Path) -> str:
    """SHA-256 of a file, hex."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def check_optimizer(optimizer: OptimizerState, params: Mapping[str, Tensor],
                    momenta: Mapping[str, Tensor], where: str) -> None:
    """Check that every grouped parameter exists with one momentum buffer of its shape.

    Arguments:
        optimizer: supplies the groups.
        params: the model's parameters by name.
        momenta: the buffers to check (the optimizer's own, or those read from a file).
        where: the file or directory named in messages.

    Raises:
        CheckpointError: a duplicate or unknown parameter, a missing or extra
            buffer, or a buffer whose shape or dtype differs from its parameter's.
    """
    grouped: dict[str, str] = {}
    for group, names in optimizer.groups.items():
        for name in names:
            if name in grouped:
                raise CheckpointError(f"{where}: parameter {name!r} is in optimizer groups "
                                      f"{grouped[name]!r} and {group!r}")
            if name not in params:
                raise CheckpointError(f"{where}: optimizer group {group!r} names parameter "
                                      f"{name!r}, which the model does not have")
            grouped[name] = group
    missing, extra = sorted(set(grouped) - set(momenta)), sorted(set(momenta) - set(grouped))
    if missing:
        raise CheckpointError(f"{where}: no momentum buffer for grouped parameters {missing}")
    if extra:
        raise CheckpointError(f"{where}: momentum buffers {extra} belong to no optimizer group")
    for name, buffer in momenta.items():
        param = params[name]
        if buffer.shape != param.shape or buffer.dtype != param.dtype:
            raise CheckpointError(
                f"{where}: momentum of {name!r} is {dtype_name(buffer)} {list(buffer.shape)}, "
                f"its parameter {dtype_name(param)} {list(param.shape)}")


__all__ = [
    "CHECKSUM_KEY",
    "DOCUMENT_KEYS",
    "FORMAT",
    "JSON_FILE",
    "MAX_DOCUMENT_BYTES",
    "MAX_DOCUMENT_DEPTH",
    "MODEL_PREFIX",
    "OPTIM_PREFIX",
    "SCHEMA_VERSION",
    "SCHEMA_VERSION_BUILT_IN",
    "WEIGHTS_FILE",
    "check_optimizer",
    "document_checksum",
    "dtype_name",
    "file_digest",
    "manifest_entry",
    "model_tensors",
]
