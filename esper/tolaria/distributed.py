"""Data-parallel training on ``torch.distributed``: setting up the process group.

``torchrun --standalone --nproc_per_node N -m esper grow ...`` starts ``N``
processes (ranks) that each hold a full replica of the model and train on
their own shard of the data. :func:`session` sets the group up from the
torchrun environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``) and yields this process's
:class:`~esper.tolaria.replicas.Replicas` (its rank and every collective the
ranks use), or ``None`` when there is no such environment or ``WORLD_SIZE``
is 1: a plain ``esper grow`` creates no process group and pays nothing.

A collective that times out inside the session is raised as a
:class:`~esper.errors.DistributedTimeoutError` naming the silent ranks (see
:mod:`esper.tolaria.timeouts`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist

from .replicas import DEFAULT_TIMEOUT, Replicas
from .timeouts import is_timeout


class DistributedSetupError(ValueError):
    """The torchrun environment is incomplete or the backend it needs is unavailable."""


def _env_int(env: Mapping[str, str], name: str) -> int:
    text = env.get(name)
    if text is None:
        raise DistributedSetupError(f"WORLD_SIZE={env.get('WORLD_SIZE')} is set but {name} is "
                                    "not: launch with torchrun (torch.distributed.run), which "
                                    "sets RANK, LOCAL_RANK, MASTER_ADDR and MASTER_PORT")
    try:
        return int(text)
    except ValueError:
        raise DistributedSetupError(f"{name} must be an integer, got {text!r}") from None


def world_size_from(env: Mapping[str, str]) -> int:
    """``WORLD_SIZE`` from ``env`` (1 when unset).

    Raises:
        DistributedSetupError: not a positive integer.
    """
    if "WORLD_SIZE" not in env:
        return 1
    size = _env_int(env, "WORLD_SIZE")
    if size < 1:
        raise DistributedSetupError(f"WORLD_SIZE must be >= 1, got {size}")
    return size


def backend_for(cuda: bool) -> str:
    """The process-group backend: gloo for CPU tensors, plus NCCL for CUDA ones.

    Raises:
        DistributedSetupError: ``torch.distributed`` or a needed backend is
            missing from this build of torch.
    """
    if not dist.is_available():
        raise DistributedSetupError("WORLD_SIZE > 1 but this torch build has no "
                                    "torch.distributed; run a single process (plain "
                                    "`esper grow`) or install a torch with distributed support")
    if not dist.is_gloo_available():
        raise DistributedSetupError("this torch build has no gloo backend, which multi-process "
                                    "training needs for CPU tensors")
    if not cuda:
        return "gloo"
    if not dist.is_nccl_available():
        raise DistributedSetupError("CUDA is available but this torch build has no NCCL backend; "
                                    "hide the GPUs (CUDA_VISIBLE_DEVICES=) to train on CPU "
                                    "with gloo")
    return "cpu:gloo,cuda:nccl"


@contextmanager
def session(env: Mapping[str, str] | None = None,
            timeout: timedelta = DEFAULT_TIMEOUT) -> Iterator[Replicas | None]:
    """The ranks of this run, from the torchrun environment; ``None`` for one process.

    With ``WORLD_SIZE`` unset or 1, yields ``None`` and touches nothing.
    Otherwise joins (or reuses an already initialised) default process group,
    selects this rank's GPU when CUDA is available, yields a
    :class:`Replicas`, and destroys the group on exit if it created it.

    Arguments:
        env: the environment to read (``os.environ`` by default).
        timeout: how long a collective may wait for the other ranks before it
            fails (a rank that died or took another path raises instead of hanging).

    Raises:
        DistributedSetupError: missing or malformed variables, a rank out of
            range, or a backend this torch lacks.
        DistributedTimeoutError: a collective in the block timed out; names
            the silent ranks (see :meth:`Replicas.timed_out`).
    """
    env = os.environ if env is None else env
    world_size = world_size_from(env)
    if world_size == 1:
        yield None
        return
    rank, local_rank = _env_int(env, "RANK"), _env_int(env, "LOCAL_RANK")
    if not 0 <= rank < world_size:
        raise DistributedSetupError(f"RANK={rank} is outside [0, WORLD_SIZE={world_size})")
    if not env.get("MASTER_ADDR"):
        raise DistributedSetupError(f"WORLD_SIZE={world_size} is set but MASTER_ADDR is not: "
                                    "launch with torchrun (torch.distributed.run)")
    _env_int(env, "MASTER_PORT")
    created = not dist.is_initialized()
    if created:
        cuda = torch.cuda.is_available()
        backend = backend_for(cuda)
        if cuda:
            torch.cuda.set_device(local_rank % torch.cuda.device_count())
        dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=timeout)
    if (dist.get_rank(), dist.get_world_size()) != (rank, world_size):
        raise DistributedSetupError(f"the process group has rank {dist.get_rank()} of "
                                    f"{dist.get_world_size()}, the environment says {rank} of "
                                    f"{world_size}")
    group = dist.group.WORLD
    assert group is not None
    replicas = Replicas(rank, world_size, group, str(dist.get_backend(group)),
                        timeout=timeout, store=_default_store())
    try:
        yield replicas
    except RuntimeError as error:
        if not is_timeout(error):
            raise
        raise replicas.timed_out(error) from error
    finally:
        if created:
            dist.destroy_process_group()


def _default_store() -> dist.Store | None:
    """The default group's key-value store (a private torch API: ``None`` if it moved)."""
    try:
        return dist.distributed_c10d._get_default_store()
    except (AttributeError, RuntimeError, ValueError):
        return None
