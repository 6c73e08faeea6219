"""The on-disk format: file names, the manifest, and checks shared by saving and loading.

A checkpoint version is a directory holding ``weights.safetensors`` (every
tensor) and ``checkpoint.json`` (everything else, written last); a checkpoint
root holds versions behind a pointer (:mod:`esper.checkpoint.layout`). Tensor keys are the
model's ``state_dict`` keys prefixed ``model/`` (slot states live in the JSON,
not as ``_extra_state``) and the optimizer's buffers ``optim/<kind>/<parameter>``
(a document without an optimizer name, written before AdamW, holds SGD momenta
as ``optim/<parameter>``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from ..optim.config import SCALAR
from ..optim.state import Buffers, OptimizerState
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


def optimizer_key(kind: str, name: str) -> str:
    """The tensor key of parameter ``name``'s optimizer buffer of ``kind``."""
    return f"{OPTIM_PREFIX}{kind}/{name}"


def check_optimizer(optimizer: OptimizerState, params: Mapping[str, Tensor],
                    buffers: Buffers, where: str) -> None:
    """Check that every grouped parameter exists with one buffer of each kind its optimizer
    keeps, shaped like the parameter (or 0-d float32 for a step count).

    Arguments:
        optimizer: supplies the groups and the buffer kinds.
        params: the model's parameters by name.
        buffers: the buffers to check (the optimizer's own, or those read from a file).
        where: the file or directory named in messages.

    Raises:
        CheckpointError: a duplicate or unknown parameter, a missing or extra
            buffer, or a buffer whose shape or dtype is not its parameter's.
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
    kinds = optimizer.config.buffers
    unknown = sorted(set(buffers) - set(kinds))
    if unknown:
        raise CheckpointError(f"{where}: buffer kinds {unknown} are not "
                              f"{optimizer.config.name}'s ({list(kinds)})")
    for kind, shape in kinds.items():
        owned = buffers.get(kind, {})
        missing, extra = sorted(set(grouped) - set(owned)), sorted(set(owned) - set(grouped))
        if missing:
            raise CheckpointError(f"{where}: no {kind} buffer for grouped parameters {missing}")
        if extra:
            raise CheckpointError(f"{where}: {kind} buffers {extra} belong to no optimizer group")
        for name, buffer in owned.items():
            param = params[name]
            want = ((), "float32") if shape == SCALAR else (tuple(param.shape), dtype_name(param))
            if (tuple(buffer.shape), dtype_name(buffer)) != want:
                raise CheckpointError(
                    f"{where}: {kind} of {name!r} is {dtype_name(buffer)} "
                    f"{list(buffer.shape)}, it must be {want[1]} {list(want[0])}")


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
    "optimizer_key",
]
