"""A collective that timed out: recognising it, and naming the ranks that went silent.

A rank that stops answering (stalled, hung, dead without closing its
connections) makes the others wait in their next collective for the group's
timeout (``esper grow --dist-timeout``), after which gloo raises a
``RuntimeError`` ("Timed out waiting ...ms for recv operation").
:func:`timeout_error` turns it into a :class:`~esper.errors.DistributedTimeoutError`
naming the silent ranks: each rank that times out says so in the group's
key-value store (served by torchrun's agent, so it outlives any rank) and
waits a moment (:data:`REPORT_GRACE_SECONDS`, at most the timeout) for the
others' reports; the ranks that sent none are the silent ones.
(``dist.monitored_barrier`` names them too, but only on rank 0 and only if
every live rank enters it: a rank blocked in the step's all-reduce never does.)
"""

from __future__ import annotations

import time
from datetime import timedelta

import torch.distributed as dist

from ..errors import DistributedTimeoutError

# How long a rank that timed out waits for the others' reports before naming the silent ones.
REPORT_GRACE_SECONDS = 5.0
_TIMED_OUT_KEY = "esper/timed-out/"


def timeout_error(error: BaseException, *, rank: int, world_size: int, timeout: timedelta,
                  store: dist.Store | None,
                  grace: float = REPORT_GRACE_SECONDS) -> DistributedTimeoutError:
    """The error for rank ``rank``'s collective that timed out (``error``, from gloo).

    Says in ``store`` that this rank timed out, then waits up to ``grace``
    seconds (never more than ``timeout``) for every other rank's report: the
    ranks that sent none are named silent. Ranks that did report timed out as
    well, waiting for someone else. Without a store nobody can be named.
    """
    seconds = timeout.total_seconds()
    silent = _silent_ranks(store, rank, world_size, min(grace, seconds))
    who = _who(rank, f"{seconds:g} s (--dist-timeout)", silent)
    first = (_timeouts(error) or [error])[-1]  # gloo's "Timed out waiting ...ms"
    return DistributedTimeoutError(f"{who} [{' '.join(str(first).split())[:300]}]",
                                   rank=rank, silent=silent, seconds=seconds)


def _who(rank: int, waited: str, silent: tuple[int, ...] | None) -> str:
    """Who the timed-out ``rank`` waited for, in words."""
    if silent is None:
        return (f"rank {rank} waited {waited} for the other ranks in a collective; "
                "which of them stopped answering could not be found out")
    if silent:
        names = ", ".join(map(str, silent))
        rank_s = "rank" if len(silent) == 1 else "ranks"
        verb = "is" if len(silent) == 1 else "are"
        return (f"rank {rank} waited {waited} for {rank_s} {names}, which {verb} silent "
                f"(stalled, hung or dead): no answer in a collective and no report of a "
                f"timeout of {'its' if len(silent) == 1 else 'their'} own")
    return (f"rank {rank} waited {waited} in a collective, and every other rank "
            "timed out too: the ranks are waiting in different collectives (a "
            "rank took another path) or the network between them failed")


def _silent_ranks(store: dist.Store | None, rank: int, world_size: int,
                  grace: float) -> tuple[int, ...] | None:
    """The other ranks that have not reported a timeout within ``grace`` seconds
    (``None``: no store, or the store is gone)."""
    if store is None:
        return None
    others = [r for r in range(world_size) if r != rank]
    try:
        store.set(f"{_TIMED_OUT_KEY}{rank}", b"1")
        deadline = time.monotonic() + grace
        while True:
            silent = tuple(r for r in others if not store.check([f"{_TIMED_OUT_KEY}{r}"]))
            if not silent or time.monotonic() >= deadline:
                return silent
            time.sleep(0.05)
    except (RuntimeError, OSError):  # the store itself is gone: nobody can be named
        return None


def is_timeout(error: BaseException) -> bool:
    """Whether ``error`` is, or was raised while handling, a collective that timed out.

    gloo raises a ``RuntimeError`` (``DistBackendError`` is one) whose message
    says "Timed out waiting ...ms for recv|send operation to complete"; it then
    closes the connections, so a later collective raises at once with
    "Application timeout caused pair closure" (the trainer re-runs a compiled
    step that raised eagerly: that is the error which reaches the top, the
    timeout as its ``__context__``).
    """
    return bool(_timeouts(error))


def _timeouts(error: BaseException) -> list[BaseException]:
    """The timeout errors in ``error``'s chain (itself, its cause or context, theirs...)."""
    found: list[BaseException] = []
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = str(current).lower()
        if isinstance(current, RuntimeError) and ("timed out" in text or "timeout" in text):
            found.append(current)
        current = current.__cause__ or current.__context__
    return found

