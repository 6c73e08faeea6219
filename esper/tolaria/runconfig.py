"""A run's configuration in its checkpoint, and what ``--resume`` may change of it.

The checkpoint's trainer section carries the run's :class:`GrowConfig` as a
JSON record (:func:`config_record`; everything but ``out``, ``quiet`` and
``stop_after``, which belong to one invocation). ``esper grow --resume DIR``
continues that run in ``DIR`` with that configuration: a setting given again
must equal the run's, except those in :data:`CHANGEABLE` (say ``--epochs`` to
extend the run); :func:`resume_conflicts` names every other difference with
both values, and the run refuses to start.

Example::

    stored = config_from_record(trainer_state["config"])
    problems = resume_conflicts(stored, given, done=trainer_state["epoch"])
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from ..core.breaker import BreakerConfig
from ..errors import CheckpointError
from ..leyline import QualityGates
from ..leyline.constants import MAX_LEARNING_RATE, MAX_RUN_SEED
from ..tamiyo import ControllerConfig
from ..validation import is_finite_real, is_int
from .config import GrowConfig

MAX_SEED = MAX_RUN_SEED  # the largest --seed
# Settings of one invocation, never recorded.
NOT_RECORDED = frozenset({"out", "quiet", "stop_after"})
# What a resumed run may set differently: its length (--epochs extends it, never below the
# epochs done), how the step runs (eager or compiled, the backend), where its data lies
# and on which device (a run may continue on another machine).
CHANGEABLE = frozenset({"epochs", "compile", "compile_backend", "data_dir", "device"})
# The settings added since runs first kept their configuration, with the value every
# run recorded before them had: such a record still resumes.
ADDED = {"seed_lr": None, "optimizer": "sgd", "schedule": "constant", "warmup_steps": 0,
         "precision": "fp32", "device": "auto", "candidates": 1}
# The command-line option of each field (those without one are set through the API).
FLAGS = {"task": "--task", "epochs": "--epochs", "slots": "--slots",
         "max_seeds": "--max-seeds", "blueprints": "--blueprints", "seed": "--seed",
         "baseline": "--baseline", "compile": "--compile",
         "compile_backend": "--compile-backend", "data_dir": "--data-dir",
         "batch_size": "--batch-size", "lr": "--lr", "seed_lr": "--seed-lr",
         "optimizer": "--optimizer", "schedule": "--schedule", "warmup_steps": "--warmup-steps",
         "precision": "--precision", "device": "--device",
         "limit": "--limit", "width": "--width",
         "commands": "--commands", "blending_steps": "--blending-steps",
         "embargo_epochs": "--embargo-epochs", "blend_algorithm": "--blend",
         "candidates": "--candidates",
         "out": "--out", "quiet": "--quiet", "stop_after": "--stop-after"}
_INTS = {"epochs": 1, "max_seeds": 0, "seed": 0, "batch_size": 1, "telemetry_stride": 1,
         "blending_steps": 1, "embargo_epochs": 0, "warmup_steps": 0, "candidates": 1}
_OPTIONAL_INTS = {"limit": 1, "width": 1}
_STRINGS = ("task", "compile", "compile_backend", "blend_algorithm", "optimizer", "schedule",
            "precision", "device")
_BOOLS = ("baseline",)
_PATHS = ("data_dir", "commands")
_PARTS = {"gates": QualityGates, "breaker": BreakerConfig, "controller": ControllerConfig}
RECORD_KEYS = frozenset(f.name for f in dataclasses.fields(GrowConfig)) - NOT_RECORDED


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return value


def config_record(config: GrowConfig) -> dict[str, Any]:
    """``config`` as JSON-ready data, without the settings of one invocation."""
    return {name: _plain(getattr(config, name)) for name in sorted(RECORD_KEYS)}


def _fail(where: str, name: str, rule: str, value: object) -> CheckpointError:
    return CheckpointError(f"{where}.{name} must be {rule}, got {str(value)[:200]!r}")


def _int(where: str, name: str, value: object, low: int, high: int = 2**53) -> int:
    if not (is_int(value) and low <= value <= high):
        raise _fail(where, name, f"an int in [{low}, {high}]", value)
    return value


def _names(where: str, name: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise _fail(where, name, "a list of names", value)
    return tuple(value)


def _part(where: str, name: str, value: object) -> Any:
    cls = _PARTS[name]
    keys = {f.name for f in dataclasses.fields(cls)}
    if not isinstance(value, dict) or set(value) != keys:
        raise _fail(where, name, f"an object with the keys {sorted(keys)}", value)
    for key, item in value.items():
        if isinstance(item, float) and not math.isfinite(item):
            raise _fail(where, f"{name}.{key}", "finite", item)
    if name == "controller":
        value = {**value, "blueprints": _names(where, "controller.blueprints",
                                               value["blueprints"])}
    try:
        return cls(**value)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{where}.{name}: {error}") from None


def config_from_record(record: object, where: str = "trainer state: config") -> GrowConfig:
    """The :class:`GrowConfig` a record of :func:`config_record` describes (``out`` and the
    settings of one invocation at their defaults).

    Raises:
        CheckpointError: a key missing or unexpected, a value of the wrong type or out of
            range; the message names the field.
    """
    if isinstance(record, dict):
        record = {**{k: v for k, v in ADDED.items() if k not in record}, **record}
    if not isinstance(record, dict) or set(record) != RECORD_KEYS:
        keys = set(record) if isinstance(record, dict) else set()
        raise CheckpointError(f"{where}: must be an object with the keys of a run's "
                              f"configuration; missing {sorted(RECORD_KEYS - keys)}, "
                              f"unexpected {sorted(keys - RECORD_KEYS)}")
    values: dict[str, Any] = {}
    for name, low in _INTS.items():
        values[name] = _int(where, name, record[name], low, MAX_SEED if name == "seed" else 2**53)
    for name, low in _OPTIONAL_INTS.items():
        value = record[name]
        values[name] = None if value is None else _int(where, name, value, low)
    if isinstance(record["compile"], bool):  # recorded before the modes: true or false
        record = {**record, "compile": "always" if record["compile"] else "never"}
    for name in _STRINGS:
        if not isinstance(record[name], str) or not record[name]:
            raise _fail(where, name, "a non-empty string", record[name])
        values[name] = record[name]
    for name in _BOOLS:
        if not isinstance(record[name], bool):
            raise _fail(where, name, "true or false", record[name])
        values[name] = record[name]
    for name in _PATHS:
        value = record[name]
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise _fail(where, name, "a path or null", value)
        values[name] = None if value is None else Path(value)
    for name in ("lr", "seed_lr"):
        rate = record[name]
        if rate is not None and not (is_finite_real(rate) and 0 < rate <= MAX_LEARNING_RATE):
            raise _fail(where, name, f"null or a number in (0, {MAX_LEARNING_RATE:g}]", rate)
        values[name] = None if rate is None else float(rate)
    values["slots"] = _names(where, "slots", record["slots"])
    values["blueprints"] = None if record["blueprints"] is None else _names(
        where, "blueprints", record["blueprints"])
    values["gates"] = _part(where, "gates", record["gates"])
    values["breaker"] = _part(where, "breaker", record["breaker"])
    values["controller"] = None if record["controller"] is None else _part(
        where, "controller", record["controller"])
    try:
        return GrowConfig(**values)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{where}: {error}") from None


def describe(name: str, value: Any) -> str:
    """A setting as it reads on the command line (``--lr 0.05``, ``no --width``)."""
    flag = FLAGS.get(name)
    if flag is None:
        return f"{name}={value!r} (GrowConfig.{name})"
    if isinstance(value, bool):
        return flag if value else f"no {flag}"
    if value is None:
        return f"no {flag}"
    if isinstance(value, tuple):
        return f"{flag} {' '.join(map(str, value))}"
    return f"{flag} {value}"


def resume_conflicts(stored: GrowConfig, given: GrowConfig, done: int) -> list[str]:
    """What ``given`` sets differently from the run's ``stored`` configuration and may not:
    one line each, naming both values. ``done`` is the epochs the run has done."""
    problems = []
    for name in sorted(RECORD_KEYS - CHANGEABLE):
        ours, theirs = getattr(given, name), getattr(stored, name)
        if ours != theirs:
            problems.append(f"{describe(name, ours)} conflicts with the run's "
                            f"{describe(name, theirs)}")
    if given.epochs < done:
        problems.append(f"--epochs {given.epochs} is fewer than the {done} epochs the run has "
                        "done (--epochs may only extend a run)")
    return problems


def changeable_flags() -> str:
    """The options a resumed run may set differently, for messages."""
    return ", ".join(sorted(FLAGS[name] for name in CHANGEABLE | NOT_RECORDED - {"out"}))


__all__ = ["CHANGEABLE", "FLAGS", "NOT_RECORDED", "RECORD_KEYS", "changeable_flags",
           "config_from_record", "config_record", "describe", "resume_conflicts"]
