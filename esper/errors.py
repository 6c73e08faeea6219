"""Every exception Esper raises on bad input, and every warning it gives, in one place.

Each class subclasses :class:`EsperError` (so ``except esper.EsperError``
catches them all) *and* the built-in exception Esper raised there before
(``ValueError``, ``TypeError``, ``RuntimeError`` or ``OSError``), so existing ``except
ValueError`` code keeps working. Messages name what was wrong and say what to
do. Raising one never leaves a state half-changed: the object that raised is
as it was before the call.

The README's "Bad input" section maps each bad input to its exception; the
table is checked against ``tests/test_bad_inputs.py``.

Warnings (``UnboundSeedWarning``) are ``UserWarning`` subclasses, not ``EsperError``: they
report a run that goes on.

This module imports nothing from Esper or torch, so any layer may raise from it.
"""

from __future__ import annotations


class EsperError(Exception):
    """Base of every Esper exception; never raised by itself."""


def describe(error: BaseException) -> str:
    """``"Type: message"`` of any exception, on one line of at most 500 characters."""
    text = " ".join(f"{type(error).__name__}: {error}".split())
    return text if len(text) <= 500 else text[:497] + "..."


# --------------------------------------------------------------------------- blueprints


class UnknownBlueprintError(EsperError, ValueError):
    """No blueprint of that name exists for the topology (the message lists those that do)."""


class TopologyMismatchError(EsperError, ValueError):
    """Something built for one host topology was used with another (a transformer blueprint on a
    CNN slot, a task config of the other topology)."""


class SeedShapeError(EsperError, ValueError):
    """A seed returns features of a different shape than it receives; seeds must preserve it."""


class SeedRaisedError(EsperError, RuntimeError):
    """A seed's own code raised while it was built or validated at germination; the slot is
    unchanged and the seed's exception is the ``__cause__``."""


# --------------------------------------------------------------------------- slots and stages


class CandidatesUnsupportedError(EsperError, ValueError):
    """A blueprint whose seeds cannot run as a tournament of stacked candidates
    (:func:`torch.func.vmap` refused them, or they have nothing to train)."""


class UnknownSlotError(EsperError, ValueError):
    """A slot name the model does not have (the message lists the model's slots)."""


class SlotOccupiedError(EsperError, RuntimeError):
    """Germination in a slot that is not DORMANT."""


class StageError(EsperError, ValueError):
    """A request the slot's current stage does not allow."""


class InvalidTransitionError(StageError):
    """A stage change the transition table does not allow (the message lists the allowed ones)."""


class FossilizedSeedError(StageError):
    """A request to remove a FOSSILIZED seed: fossilization is permanent."""


class NoLiveSeedError(StageError):
    """A request that needs a live seed in a slot that holds none."""


# --------------------------------------------------------------------------- alpha


class AlphaValueError(EsperError, ValueError):
    """An alpha (blend weight) that is non-finite or outside [0, 1]."""


class AlphaShapeError(EsperError, ValueError):
    """An alpha of the wrong shape: not a scalar, ``channels`` values or per-sample ``[B, 1, ...]``.
    """


# --------------------------------------------------------------------------- model input


class InputShapeError(EsperError, ValueError):
    """A model input of the wrong rank, channel count or size for the host."""


class InputDtypeError(EsperError, TypeError):
    """A model input that is not a tensor of the dtype the host computes in."""


# --------------------------------------------------------------------------- telemetry


class TelemetryTypeError(EsperError, TypeError):
    """Telemetry of the wrong type: not a ``SlotTelemetry``, or a field of the wrong type."""


class TelemetryValueError(EsperError, ValueError):
    """Telemetry with an impossible value (a negative count, a number too large for a float)."""


# --------------------------------------------------------------------------- files and commands


class CheckpointError(EsperError, ValueError):
    """A checkpoint that cannot be written or read; the message names the file and the problem."""


class StateDictMismatchError(CheckpointError, RuntimeError):
    """A ``state_dict`` that does not fit the model it is loaded into (nothing is loaded).

    Also a ``RuntimeError``, which is what ``nn.Module.load_state_dict`` raises.
    """


class DatasetError(EsperError, ValueError):
    """A task could not be loaded: unknown name, missing or malformed files, bad arguments.

    The message always names the task or file and the problem.
    """


class DeviceUnavailableError(EsperError, ValueError):
    """``--device cuda`` where CUDA is not available; the message lists the devices that are."""


class PrecisionUnsupportedError(EsperError, ValueError):
    """A ``--precision`` the device cannot run (bf16 on a GPU or CPU without it, fp16 on a
    CPU); the message names what it can."""


class RunDirectoryExistsError(EsperError, FileExistsError):
    """``esper grow --out DIR`` where DIR already holds a run (or is a file) and neither
    ``--resume`` continues that run nor ``--overwrite`` replaces it; nothing was written."""


class RunLogError(EsperError, ValueError):
    """A run's ``events.jsonl`` or ``metrics.csv`` does not hold what its checkpoint says
    was logged (cut short, garbled, other columns); the message names the file and the
    line, and nothing was written."""


class RunDirectoryLockedError(EsperError, OSError):
    """Another live run holds the lock on the run directory; ``pid`` is its process id
    (``None`` if it had not written it yet)."""

    pid: int | None = None


class DistributedTimeoutError(EsperError, TimeoutError):
    """Under ``torchrun``, a collective waited longer than ``--dist-timeout`` for other ranks.

    ``rank`` is the rank that raised; ``silent`` the ranks that did not answer
    (stalled, hung or dead), ``None`` when that could not be found out. Also a
    ``TimeoutError`` (an ``OSError``); the run stops, its last checkpoint intact.
    """

    def __init__(self, message: str, *, rank: int, silent: tuple[int, ...] | None,
                 seconds: float) -> None:
        super().__init__(message)
        self.rank, self.silent, self.seconds = rank, silent, seconds

    def __reduce__(self):  # type: ignore[no-untyped-def]  # keyword-only arguments
        return (_distributed_timeout, (str(self), self.rank, self.silent, self.seconds))


def _distributed_timeout(message: str, rank: int, silent: tuple[int, ...] | None,
                         seconds: float) -> DistributedTimeoutError:
    return DistributedTimeoutError(message, rank=rank, silent=silent, seconds=seconds)


class ResumeConflictError(EsperError, ValueError):
    """``esper grow --resume DIR`` given a setting that differs from the run's own (its
    checkpoint keeps its configuration), or an ``--out`` other than ``DIR``; the message
    names each option and both values. Nothing was written."""


class MalformedCommandError(EsperError, ValueError):
    """A signed-command line that does not parse into a valid command."""


class CommandSourceError(EsperError, OSError):
    """The ``--commands`` path cannot be read (missing, a directory, unreadable)."""


class WeakCommandKeyError(EsperError, ValueError):
    """A command key too short to resist guessing (under 16 bytes); the message says how to make
    one."""


# --------------------------------------------------------------------------- grafting


class GraftPointError(EsperError, ValueError):
    """A graft point that cannot take a seed slot; the message names the module. Nothing was
    grafted: the model is as it was. Each problem has its own subclass."""


class UnknownGraftPointError(GraftPointError):
    """A graft point that names no submodule of the model (the message lists close matches)."""


class NestedGraftPointError(GraftPointError):
    """Two graft points where one module lies inside the other; graft one of them."""


class GraftCallCountError(GraftPointError):
    """A graft point whose module runs other than exactly once in the example forward: never
    (it is not on the forward's path) or more than once (a shared module, whose calls one slot
    cannot tell apart); graft a module that runs once."""


class GraftOutputError(GraftPointError, TypeError):
    """A graft point whose output is not a tensor (a tuple, a dict, ...) and no ``select``
    picks one, or whose ``select`` fits no element of the output. Also a ``TypeError``."""


class GraftShapeError(GraftPointError):
    """Features at a graft point of a layout no slot supports (not ``[B, C]``, ``[B, T, C]``
    or ``[B, C, H, W]``), or whose rank or channels changed after the graft (only the
    other dimensions, a sequence length say, may vary between calls)."""


class AlreadyGraftedError(EsperError, RuntimeError):
    """A model that already carries seed slots was grafted again (or a
    ``MorphogeneticModel`` given as the model to graft); graft each model once."""


class ExampleInputError(EsperError, RuntimeError):
    """The model's own forward raised on the ``example_input`` of a graft's dry run; its
    exception is the ``__cause__`` and nothing was grafted."""


class GraftMismatchError(CheckpointError):
    """A checkpoint of a grafted model does not fit the base model given to
    :func:`esper.load`: its points, their layouts, channels or shapes differ.

    The base model is given back as it was: not grafted, its weights untouched.
    """


class SharedParameterError(EsperError, ValueError):
    """:func:`esper.optim.bind` would put a parameter in two places: a seed's parameters are
    already in the optimizer (in the host's group, say), or the model is already bound.

    Build the optimizer from the host's parameters only (``model.get_host_parameters()``, or
    ``model.parameters()`` before any seed germinates); :func:`~esper.optim.bind` adds the
    seeds. Nothing was changed.
    """


class HostNotInOptimizerError(EsperError, ValueError):
    """:func:`esper.optim.bind` was given an optimizer that does not hold every parameter of
    the model's host; the message says how many are missing. Nothing was changed."""


class FastModeBindError(EsperError, ValueError):
    """:func:`esper.optim.bind` was given a ``fast_mode`` model: its slots deliver no lifecycle
    events, so a binding could not follow germinations and prunes. Nothing was changed."""


# --------------------------------------------------------------------------- warnings


class UnboundSeedWarning(UserWarning):
    """A seed did not train: its parameters are in no optimizer step.

    Given once per seed, when a seed's weights have not moved at all since it began TRAINING
    (gate G2 then refuses it; the ``SEED_FROZEN`` event says the same), and by
    :func:`esper.optim.bind` when a seed leaves TRAINING with parameters the bound optimizer
    does not hold (its group was removed or replaced behind the binding's back).
    """


__all__ = [
    "AlphaShapeError",
    "AlphaValueError",
    "AlreadyGraftedError",
    "CandidatesUnsupportedError",
    "CheckpointError",
    "CommandSourceError",
    "DatasetError",
    "DeviceUnavailableError",
    "DistributedTimeoutError",
    "EsperError",
    "ExampleInputError",
    "FastModeBindError",
    "FossilizedSeedError",
    "GraftCallCountError",
    "GraftMismatchError",
    "GraftOutputError",
    "GraftPointError",
    "GraftShapeError",
    "HostNotInOptimizerError",
    "InputDtypeError",
    "InputShapeError",
    "InvalidTransitionError",
    "MalformedCommandError",
    "NestedGraftPointError",
    "NoLiveSeedError",
    "PrecisionUnsupportedError",
    "ResumeConflictError",
    "RunDirectoryExistsError",
    "RunDirectoryLockedError",
    "RunLogError",
    "SeedRaisedError",
    "SeedShapeError",
    "SharedParameterError",
    "SlotOccupiedError",
    "StageError",
    "StateDictMismatchError",
    "TelemetryTypeError",
    "TelemetryValueError",
    "TopologyMismatchError",
    "UnboundSeedWarning",
    "UnknownBlueprintError",
    "UnknownGraftPointError",
    "UnknownSlotError",
    "WeakCommandKeyError",
]
