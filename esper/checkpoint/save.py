"""Writing a checkpoint: weights first, the JSON document last, each atomically."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import safetensors.torch
from torch import Tensor

from .. import __version__
from ..kasmina.model import MorphogeneticModel
from ..kasmina.serialize import state_to_dict
from ..leyline import QualityGates, TaskConfig
from ..tolaria.optim import OptimizerState
from .errors import CheckpointError
from .format import (
    FORMAT,
    JSON_FILE,
    MODEL_PREFIX,
    OPTIM_PREFIX,
    SCHEMA_VERSION,
    WEIGHTS_FILE,
    check_optimizer,
    file_digest,
    manifest_entry,
    model_tensors,
)


def save_checkpoint(directory: str | os.PathLike[str], *, model: MorphogeneticModel,
                    optimizer: OptimizerState | None = None,
                    trainer_state: dict[str, Any] | None = None) -> Path:
    """Write ``model``, its optimizer state and the caller's progress to ``directory``.

    ``weights.safetensors`` is written and renamed into place first, then
    ``checkpoint.json``; an older ``checkpoint.json`` is removed before the
    weights change, so a crash leaves no document vouching for other weights.

    Arguments:
        directory: created if needed; an existing checkpoint there is replaced.
        model: the model.
        optimizer: momentum buffers and groups, or ``None``.
        trainer_state: JSON-serializable progress (tuples come back as lists).

    Returns:
        The checkpoint directory.

    Raises:
        CheckpointError: a host without ``config()``, an optimizer that does not
            match the model, or a trainer state that is not JSON.
        TypeError: ``model`` is not a :class:`MorphogeneticModel`.
    """
    if not isinstance(model, MorphogeneticModel):
        raise TypeError(f"model must be a MorphogeneticModel, got {type(model).__name__}")
    directory = Path(directory)
    trainer = {} if trainer_state is None else trainer_state
    document, tensors = _encode(model, optimizer, trainer, directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / JSON_FILE).unlink(missing_ok=True)
    weights = directory / WEIGHTS_FILE
    with _temporary(directory, WEIGHTS_FILE) as temp:
        safetensors.torch.save_file(tensors, str(temp), metadata={"format": "pt"})
        _sync(temp)
        document["weights"] = {"file": WEIGHTS_FILE, "bytes": temp.stat().st_size,
                               "sha256": file_digest(temp)}
        os.replace(temp, weights)
    with _temporary(directory, JSON_FILE) as temp:
        temp.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
        _sync(temp)
        os.replace(temp, directory / JSON_FILE)
    _sync(directory)
    return directory


def _encode(model: MorphogeneticModel, optimizer: OptimizerState | None,
            trainer_state: dict[str, Any], where: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    config = getattr(model.host, "config", None)
    if not callable(config):
        raise CheckpointError(f"{where}: host {type(model.host).__name__} has no config(); only "
                              "hosts that esper.kasmina.host.build_host rebuilds can be saved")
    slots = model.slot_states()
    first = next(iter(slots.values()), None)
    task = first.task if first else TaskConfig(topology=model.host.topology)
    tensors = {MODEL_PREFIX + k: v for k, v in model_tensors(model).items()}
    optim_doc = None
    if optimizer is not None:
        check_optimizer(optimizer, dict(model.named_parameters()), optimizer.momenta, str(where))
        tensors.update({OPTIM_PREFIX + k: v for k, v in optimizer.momenta.items()})
        optim_doc = {"config": dataclasses.asdict(optimizer.config),
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
        "format": FORMAT, "schema_version": SCHEMA_VERSION, "esper_version": __version__,
        "host": config(),
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


@contextlib.contextmanager
def _temporary(directory: Path, name: str) -> Any:
    handle, temp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
    os.close(handle)
    try:
        yield Path(temp)
    finally:
        Path(temp).unlink(missing_ok=True)


def _sync(path: Path) -> None:
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if path.is_dir() else os.O_RDONLY
    with contextlib.suppress(OSError):  # some file systems cannot fsync a directory
        descriptor = os.open(path, flags)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


__all__ = ["save_checkpoint"]
