"""Loading a checkpoint into new objects, every part checked before any is returned."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
from torch import Tensor, nn

from ..core.serialize import dataclass_kwargs
from ..leyline import QualityGates, TaskConfig
from ..nn.host import build_host
from ..nn.model import MorphogeneticModel
from ..nn.model_state import restore, snapshot_tensors
from ..optim.config import CONFIGS
from ..optim.state import OptimizerState
from . import layout
from .document import exact, read_document, reading
from .errors import CheckpointError
from .format import (
    JSON_FILE,
    MODEL_PREFIX,
    OPTIM_PREFIX,
    WEIGHTS_FILE,
    check_optimizer,
    dtype_name,
    file_digest,
    model_tensors,
)
from .grafted import graft_base, is_grafted

_RESTORE = "restore both files from the same save, or save the checkpoint again"


@dataclass(frozen=True)
class Checkpoint:
    """What :func:`load_checkpoint` rebuilt (nothing shared with any other object)."""

    model: MorphogeneticModel
    optimizer: OptimizerState | None
    trainer_state: dict[str, Any]
    esper_version: str
    schema_version: int


def load_checkpoint(directory: str | os.PathLike[str], *,
                    device: torch.device | str | None = None,
                    base_model: nn.Module | None = None) -> Checkpoint:
    """Rebuild the model, optimizer state and trainer state saved in ``directory``.

    Never unpickles: tensors come from safetensors, everything else from JSON.
    The caller's RNG state is left as it was. Telemetry callbacks are not
    saved; attach them to the returned model's slots. A model saved in
    bfloat16, float16 or float64 (``model.to(dtype)``) comes back in that dtype.

    Arguments:
        directory: a checkpoint root as :func:`save_checkpoint` wrote it (its
            current version loads), one version directory in it, or a root
            written before versions existed.
        device: where the model and momentum buffers go (``None``: the CPU for a
            built-in host, where ``base_model`` is for a grafted one).
        base_model: for a checkpoint of a grafted model (:func:`esper.save`), a
            freshly built copy of the module that was grafted; it is grafted the
            same way and receives the saved weights (see :mod:`.grafted`). A
            built-in host's checkpoint rebuilds its host and takes none.

    Returns:
        A :class:`Checkpoint` of new objects.

    Raises:
        CheckpointError: anything missing, malformed, inconsistent or written
            by a newer Esper; the message names the file and the problem.
        GraftMismatchError: ``base_model`` does not fit the saved graft (a
            ``CheckpointError``); it is left as it was, as on every error.
    """
    directory = layout.resolve(Path(directory))
    doc_path, weights_path = directory / JSON_FILE, directory / WEIGHTS_FILE
    document = read_document(doc_path)
    tensors = _read_weights(weights_path, document, doc_path)
    kept = snapshot_tensors(base_model) if base_model is not None else []
    with torch.random.fork_rng(devices=[]):  # fresh modules' init must not move the caller's RNG
        model = _build_model(document, doc_path, device, base_model)
    try:
        _copy_weights(model, tensors, document["tied"], weights_path)
        optimizer = _optimizer(document["optimizer"], model, tensors, doc_path)
    except BaseException:
        if base_model is not None:  # the caller's module goes back as it was given
            model.ungraft()
            restore({}, kept)
        raise
    return Checkpoint(model, optimizer, document["trainer"], document["esper_version"],
                      document["schema_version"])


def _read_weights(path: Path, document: dict[str, Any], doc_path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing ({doc_path.name} expects it)")
    with reading(doc_path, "weights"):
        weights = exact(document["weights"], {"file", "bytes", "sha256"}, "weights")
        size, digest = int(weights["bytes"]), str(weights["sha256"])
    if path.stat().st_size != size:
        raise CheckpointError(f"{path}: {path.stat().st_size} bytes, {doc_path.name} expects "
                              f"{size} (truncated or replaced); {_RESTORE}")
    if file_digest(path) != digest:
        raise CheckpointError(f"{path}: SHA-256 differs from {doc_path.name}'s "
                              f"(corrupt or replaced); {_RESTORE}")
    try:
        tensors = safetensors.torch.load_file(str(path), device="cpu")
    except (safetensors.SafetensorError, OSError) as error:
        raise CheckpointError(f"{path}: not a readable safetensors file ({error})") from error
    manifest, tied = document["tensors"], document["tied"]
    missing, extra = sorted(set(manifest) - set(tensors)), sorted(set(tensors) - set(manifest))
    if missing:
        raise CheckpointError(f"{path}: missing tensors {missing} listed in {doc_path.name}")
    if extra:
        raise CheckpointError(f"{path}: unexpected tensors {extra}, not in {doc_path.name}")
    for key, entry in manifest.items():
        with reading(doc_path, f"tensor {key!r}"):
            entry = exact(entry, {"shape", "dtype"}, f"manifest entry {key!r}")
            if not key.startswith((MODEL_PREFIX, OPTIM_PREFIX)):
                raise ValueError(f"key has neither prefix {MODEL_PREFIX!r} nor {OPTIM_PREFIX!r}")
        stored = tensors[key]
        if list(stored.shape) != entry["shape"] or dtype_name(stored) != entry["dtype"]:
            raise CheckpointError(
                f"{path}: tensor {key!r} is {dtype_name(stored)} {list(stored.shape)}, "
                f"{doc_path.name} says {entry['dtype']} {entry['shape']}")
        if stored.is_floating_point() and not bool(stored.isfinite().all()):
            raise CheckpointError(f"{path}: tensor {key!r} holds NaN or infinite values; a "
                                  "model saved that way cannot continue: resume from an earlier "
                                  "version")
    for key, source in tied.items():
        if not (key.startswith(MODEL_PREFIX) and key not in manifest and source in manifest):
            raise CheckpointError(f"{doc_path}: tied tensor {key!r} -> {source!r} must name a "
                                  "model tensor absent from the file and one present in it")
    return tensors


def _build_model(document: dict[str, Any], doc_path: Path, device: torch.device | str | None,
                 base_model: nn.Module | None) -> MorphogeneticModel:
    grafted = is_grafted(document["host"])
    if grafted != (base_model is not None):
        raise CheckpointError(
            f"{doc_path}: a checkpoint of a grafted model needs the base model it was grafted on: "
            "esper.load(base_model, path)" if grafted else
            f"{doc_path}: a built-in host's checkpoint rebuilds its host; pass no base model")
    with reading(doc_path, "model"):
        spec = exact(document["model"], {"slots", "task", "gates", "alpha_mode"}, "model")
        task = TaskConfig(**exact(spec["task"], TaskConfig, "task"))
        gates = QualityGates(**dataclass_kwargs("gates", spec["gates"], QualityGates))
    if base_model is not None:
        model = graft_base(base_model, document["host"], task, gates, spec["alpha_mode"],
                           device, doc_path)
    else:
        with reading(doc_path, "host"):
            host = build_host(document["host"])
        with reading(doc_path, "model"):
            model = MorphogeneticModel(host, device or "cpu", list(spec["slots"]), task,
                                       gates=gates, alpha_mode=spec["alpha_mode"])
    try:
        _set_states(model, document["slots"], doc_path)
    except BaseException:
        if base_model is not None:
            model.ungraft()
        raise
    return model


def _set_states(model: MorphogeneticModel, states: dict[str, Any], doc_path: Path) -> None:
    if set(states) != set(model.seed_slots):
        raise CheckpointError(f"{doc_path}: slot states for {sorted(states)}, but the model's "
                              f"slots are {sorted(model.seed_slots)}")
    for name, slot in model.seed_slots.items():
        with reading(doc_path, f"slot {name!r}"):
            slot.set_extra_state({"state": states[name]})  # re-creates the seed from its blueprint


def _copy_weights(model: MorphogeneticModel, tensors: dict[str, Tensor], tied: dict[str, str],
                  path: Path) -> None:
    targets = model_tensors(model)
    stored = {k.removeprefix(MODEL_PREFIX) for k in [*tensors, *tied] if k.startswith(MODEL_PREFIX)}
    missing, extra = sorted(set(targets) - stored), sorted(stored - set(targets))
    if missing:
        raise CheckpointError(f"{path}: lacks the model's tensors {missing}")
    if extra:
        raise CheckpointError(f"{path}: holds tensors {extra} that are not in the model")
    keys = {name: MODEL_PREFIX + name for name in targets}
    sources = {name: tensors[tied.get(key, key)] for name, key in keys.items()}
    _follow_dtypes(model, targets, sources)
    targets = model_tensors(model)
    for name, target in targets.items():
        source = sources[name]
        if source.shape != target.shape or source.dtype != target.dtype:
            raise CheckpointError(
                f"{path}: tensor {MODEL_PREFIX + name!r} is {dtype_name(source)} "
                f"{list(source.shape)} in the file, {dtype_name(target)} {list(target.shape)} "
                "in the model")
    with torch.no_grad():
        for name, target in targets.items():
            target.copy_(sources[name])  # into the fresh tensors: their memory format stays


def _follow_dtypes(model: MorphogeneticModel, targets: dict[str, Tensor],
                   sources: dict[str, Tensor]) -> None:
    """Give the freshly built model the dtype of the stored floating-point tensors.

    The model is built in float32; a model saved after ``.to(torch.bfloat16)``
    (or float16, float64) stores every floating-point tensor in that dtype.
    When the stored ones share one dtype, each floating-point parameter or
    buffer of the same shape takes it, as ``.to`` would have done (a
    parameter's ``.data`` is replaced, so tied parameters stay one object; the
    memory format is kept). Mixed dtypes, integer tensors and shape mismatches
    are left as they are, for the caller to refuse.
    """
    stored = {t.dtype for t in sources.values() if t.is_floating_point()}
    if len(stored) != 1:
        return
    for name, target in targets.items():
        source = sources[name]
        if (source.dtype == target.dtype or source.shape != target.shape
                or not (source.is_floating_point() and target.is_floating_point())):
            continue
        owner_name, _, attr = name.rpartition(".")
        owner = model.get_submodule(owner_name)
        param = owner._parameters.get(attr)
        if param is not None:
            if param.dtype != source.dtype:  # a tied parameter may be converted already
                param.data = param.data.to(source.dtype)
        elif owner._buffers.get(attr) is not None:
            owner._buffers[attr] = owner._buffers[attr].to(source.dtype)


def _like(param: Tensor, stored: Tensor) -> Tensor:
    """An empty buffer for ``stored`` on ``param``'s device, in its memory format when
    shaped like it (a channels-last kernel's momentum stays channels-last)."""
    if stored.shape == param.shape and stored.dtype == param.dtype:
        return torch.empty_like(param, memory_format=torch.preserve_format)
    return torch.empty_like(stored, device=param.device)


def _optimizer(spec: dict[str, Any] | None, model: MorphogeneticModel,
               tensors: dict[str, Tensor], doc_path: Path) -> OptimizerState | None:
    stored = {k.removeprefix(OPTIM_PREFIX): v for k, v in tensors.items()
              if k.startswith(OPTIM_PREFIX)}
    if spec is None:
        if stored:
            raise CheckpointError(f"{doc_path}: {len(stored)} optimizer buffers are stored "
                                  f"({OPTIM_PREFIX}...) but the document has no optimizer")
        return None
    with reading(doc_path, "optimizer"):
        legacy = "name" not in spec  # written before AdamW: SGD, momenta under optim/<name>
        exact(spec, {"config", "groups"} | (set() if legacy else {"name"}), "optimizer")
        name = "sgd" if legacy else spec["name"]
        if name not in CONFIGS:
            raise ValueError(f"unknown optimizer {name!r}; known: {list(CONFIGS)}")
        kind = CONFIGS[name]
        config = kind(**exact(spec["config"], kind, "optimizer config"))
        groups = {str(g): tuple(names) for g, names in spec["groups"].items()}
        if not all(isinstance(n, str) for names in groups.values() for n in names):
            raise ValueError("group members must be parameter names")
    by_kind: dict[str, dict[str, Tensor]] = {}
    for key, tensor in stored.items():
        buffer_kind, _, param = ("momentum", "", key) if legacy else key.partition("/")
        by_kind.setdefault(buffer_kind, {})[param] = tensor
    params = dict(model.named_parameters())
    check_optimizer(OptimizerState(config, groups), params, by_kind, str(doc_path))
    with torch.no_grad():
        buffers = {k: {n: _like(p, owned[n]).copy_(owned[n]) for n, p in params.items()
                       if n in owned} for k, owned in by_kind.items()}  # the model's order
    return OptimizerState(config, groups, {k: buffers.get(k, {}) for k in config.buffers})


__all__ = ["Checkpoint", "load_checkpoint"]
