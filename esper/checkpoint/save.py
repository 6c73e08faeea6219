"""Writing a checkpoint: a new version, made current only once it is complete."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
from torch import Tensor

from .._version import __version__
from ..core.serialize import state_to_dict
from ..leyline import QualityGates, TaskConfig
from ..nn.model import MorphogeneticModel
from ..optim.state import OptimizerState
from ..validation import check_int
from . import layout
from .errors import CheckpointError
from .format import (
    CHECKSUM_KEY,
    FORMAT,
    JSON_FILE,
    MODEL_PREFIX,
    SCHEMA_VERSION_BUILT_IN,
    WEIGHTS_FILE,
    check_optimizer,
    document_checksum,
    file_digest,
    manifest_entry,
    model_tensors,
    optimizer_key,
)
from .grafted import host_section
from .layout import DEFAULT_KEEP


def save_checkpoint(directory: str | os.PathLike[str], *, model: MorphogeneticModel,
                    optimizer: OptimizerState | None = None,
                    trainer_state: dict[str, Any] | None = None,
                    keep: int = DEFAULT_KEEP) -> Path:
    """Write ``model``, its optimizer state and the caller's progress as a new version.

    Crash-consistent (see :mod:`esper.checkpoint.layout`): the new version is
    written into a temporary directory, made durable, renamed into place, and
    only then made current; until that instant the previous checkpoint is the
    one that loads. Leftovers of an interrupted save are removed first, and
    versions beyond the last ``keep`` after.

    Arguments:
        directory: the checkpoint root, created if needed.
        model: the model.
        optimizer: the optimizer's configuration, groups and buffers, or ``None``.
        trainer_state: JSON-serializable progress (tuples come back as lists).
        keep: how many versions to keep (at least 1).

    Returns:
        The checkpoint root (what :func:`~esper.checkpoint.load_checkpoint` takes).

    Raises:
        CheckpointError: a grafted model whose example input was not all
            tensors, an optimizer that does not
            match the model, a trainer state that is not JSON, or a write that
            failed (a full disk, say; the previous checkpoint is intact and the
            next save tries again).
        TypeError: ``model`` is not a :class:`MorphogeneticModel`.
        ValueError: ``keep`` is not an int >= 1.
    """
    if not isinstance(model, MorphogeneticModel):
        raise TypeError(f"model must be a MorphogeneticModel, got {type(model).__name__}")
    check_int("keep", keep, minimum=1)
    root = Path(directory)
    trainer = {} if trainer_state is None else trainer_state
    document, tensors = _encode(model, optimizer, trainer, root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        layout.clean(root)
        number = max(layout.versions(root), default=0) + 1
        temp = Path(tempfile.mkdtemp(dir=root, prefix=layout.TEMP_PREFIX))
        try:
            _write_version(temp, document, tensors)
            version = root / layout.version_name(number)
            os.rename(temp, version)
        finally:
            if temp.exists():  # the save failed before the rename
                shutil.rmtree(temp, ignore_errors=True)
        layout.sync_directory(root)
        layout.point_to(root, version)
    except (OSError, safetensors.SafetensorError) as error:
        kept = layout.current(root) if root.is_dir() else None
        raise CheckpointError(
            f"{root}: the checkpoint could not be written ({error}); "
            + (f"{kept.name} is still the current one" if kept else "there is no earlier one")
            + ": free space or fix the directory and save again") from error
    layout.prune(root, keep)
    return root


def _write_version(directory: Path, document: dict[str, Any], tensors: dict[str, Tensor]) -> None:
    """Weights, then the document that vouches for them, each fsynced, then the directory."""
    weights = directory / WEIGHTS_FILE
    safetensors.torch.save_file(tensors, str(weights), metadata={"format": "pt"})
    _sync(weights)
    document["weights"] = {"file": WEIGHTS_FILE, "bytes": weights.stat().st_size,
                           "sha256": file_digest(weights)}
    document[CHECKSUM_KEY] = document_checksum(document)
    with (directory / JSON_FILE).open("w", encoding="utf-8") as stream:
        stream.write(json.dumps(document, indent=1) + "\n")
        stream.flush()
        os.fsync(stream.fileno())
    layout.sync_directory(directory)


def _encode(model: MorphogeneticModel, optimizer: OptimizerState | None,
            trainer_state: dict[str, Any], where: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    host, version = host_section(model, where)
    if version is None:
        host, version = model.host.config(), SCHEMA_VERSION_BUILT_IN
    slots = model.slot_states()
    first = next(iter(slots.values()), None)
    task = first.task if first else TaskConfig(topology=getattr(model.host, "topology", "cnn"))
    tensors = {MODEL_PREFIX + k: v for k, v in model_tensors(model).items()}
    optim_doc = None
    if optimizer is not None:
        check_optimizer(optimizer, dict(model.named_parameters()), optimizer.buffers, str(where))
        tensors.update({optimizer_key(kind, name): buffer
                        for kind, owned in optimizer.buffers.items()
                        for name, buffer in owned.items()})
        optim_doc = {"name": optimizer.config.name,
                     "config": dataclasses.asdict(optimizer.config),
                     "groups": {g: list(names) for g, names in optimizer.groups.items()}}
    files, tied = _for_file(tensors)
    try:
        trainer = json.loads(json.dumps(trainer_state))
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{where}: trainer_state is not JSON: {error}") from error
    if not isinstance(trainer, dict):
        raise CheckpointError(f"{where}: trainer_state must be a dict, "
                              f"got {type(trainer).__name__}")
    document = {
        "format": FORMAT, "schema_version": version, "esper_version": __version__,
        "host": host,
        "model": {"slots": list(slots), "task": dataclasses.asdict(task),
                  "gates": dataclasses.asdict(first.gates if first else QualityGates()),
                  "alpha_mode": first.alpha_mode if first else "scalar"},
        "slots": {name: state_to_dict(state) for name, state in slots.items()},
        "optimizer": optim_doc, "trainer": trainer,
        "tensors": {k: manifest_entry(v) for k, v in files.items()}, "tied": tied,
    }
    return document, files


def _for_file(tensors: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Contiguous CPU tensors, one per storage; a tied model tensor names the key it shares."""
    files: dict[str, Tensor] = {}
    tied: dict[str, str] = {}
    seen: dict[tuple[Any, ...], str] = {}
    storages: set[int] = set()
    for key, tensor in tensors.items():
        tensor = tensor.detach()
        view = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tensor.shape,
                tensor.stride(), tensor.dtype, tensor.device)
        if key.startswith(MODEL_PREFIX) and seen.get(view, "").startswith(MODEL_PREFIX):
            tied[key] = seen[view]
            continue
        seen.setdefault(view, key)
        flat = tensor.cpu().contiguous()
        pointer = flat.untyped_storage().data_ptr()
        files[key] = flat.clone() if pointer in storages else flat
        storages.add(files[key].untyped_storage().data_ptr())
    return files, tied


def _sync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


__all__ = ["save_checkpoint"]
