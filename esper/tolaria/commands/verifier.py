"""The command verifier: signature, slot, freshness and replay, and how rejections are reported.

Every rejection is returned as a :class:`Verdict` (never raised) and reported
as a ``COMMAND_REJECTED`` telemetry event.
"""

from __future__ import annotations

import hmac
import math
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from ...errors import MalformedCommandError
from ...leyline import EventType, TelemetryEvent
from ...nn.slot import TelemetryCallbackWarning
from ...validation import check_finite
from .keys import MIN_KEY_BYTES, check_key, digest
from .replay import ReplayMemory
from .wire import LifecycleCommand, SignedCommand

Reason = Literal["ok", "bad_signature", "replayed_nonce", "stale", "future", "malformed",
                 "unknown_slot", "seed_mismatch"]
REASONS: tuple[Reason, ...] = ("ok", "bad_signature", "replayed_nonce", "stale", "future",
                               "malformed", "unknown_slot", "seed_mismatch")
# The reason of the one summary event that stands for rejections not reported one by one.
RATE_LIMITED = "rate_limited"
DEFAULT_MAX_SKEW_S = 5.0  # how far in the future a command may claim to be issued


def rejection_event(reason: str, detail: str, command: LifecycleCommand | None = None, *,
                    slot: str | None = None, seed_id: str | None = None) -> TelemetryEvent:
    """The ``COMMAND_REJECTED`` event of a command refused for ``reason`` (epoch 0: the
    caller stamps its own). ``slot`` and ``seed_id`` stand in when there is no ``command``."""
    if command is not None:
        slot, seed_id = command.slot, command.seed_id
    return TelemetryEvent(
        EventType.COMMAND_REJECTED, slot_id=slot or "", seed_id=seed_id, epoch=0,
        payload={"reason": reason, "slot": slot,
                 "nonce": None if command is None else command.nonce, "detail": detail})


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of one verification.

    Attributes:
        accepted: whether the command may be executed.
        reason: ``"ok"`` when accepted, else why it was rejected.
        command: the verified command when accepted, ``None`` otherwise (an
            unauthenticated command is never handed back).
    """

    accepted: bool
    reason: Reason
    command: LifecycleCommand | None

    def __post_init__(self) -> None:
        if self.reason not in REASONS:
            raise ValueError(f"unknown reason {self.reason!r}")
        if not (self.accepted == (self.reason == "ok") == (self.command is not None)):
            raise ValueError("a verdict is accepted, 'ok' and carries a command, or none of them")


class CommandVerifier:
    """Checks signed commands: signature, slot, freshness and replay, in that order.

    Arguments:
        key: the shared HMAC key, at least :data:`MIN_KEY_BYTES` bytes (else
            :class:`~esper.errors.WeakCommandKeyError`).
        freshness_s: how old (seconds) a command may be; tunable via :attr:`freshness_s`.
        clock: seconds since the epoch, called once per :meth:`verify`.
        known_slots: if given, commands for other slots are ``"unknown_slot"``.
        on_event: called with a ``COMMAND_REJECTED`` :class:`TelemetryEvent` for
            every rejection (exceptions become :class:`TelemetryCallbackWarning`).
        max_nonces: hard cap on remembered nonces.
        max_skew_s: how far in the future a command may be issued (clock skew).

    Replay protection is a :class:`~esper.tolaria.commands.replay.ReplayMemory`:
    every call raises its horizon to ``now - freshness_s``, so a nonce is kept
    only while its command could still be fresh, and a full memory fails
    closed. :meth:`state` and :meth:`restore` carry it across a checkpoint, so
    a resumed run still refuses the commands it accepted.
    """

    def __init__(self, key: bytes, freshness_s: float = 30.0,
                 clock: Callable[[], float] = time.time,
                 known_slots: frozenset[str] | None = None,
                 on_event: Callable[[TelemetryEvent], object] | None = None,
                 max_nonces: int = 100_000, *, max_skew_s: float = DEFAULT_MAX_SKEW_S) -> None:
        self._key = check_key(key, MIN_KEY_BYTES)
        self.freshness_s = freshness_s
        self._replay = ReplayMemory(max_nonces)
        self._max_skew_s = check_finite("max_skew_s", max_skew_s, minimum=0.0)
        self._clock = clock
        self._known_slots = None if known_slots is None else frozenset(known_slots)
        self._on_event = on_event
        self._lock = threading.Lock()

    @property
    def freshness_s(self) -> float:
        """How old, in seconds, an accepted command may be (settable, > 0)."""
        return self._freshness_s

    @freshness_s.setter
    def freshness_s(self, value: float) -> None:
        self._freshness_s = check_finite("freshness_s", value, minimum=0.0, strict=True)

    @property
    def nonce_count(self) -> int:
        """How many nonces are remembered now."""
        return len(self._replay)

    def verify(self, raw: str | SignedCommand, *, report: bool = True) -> Verdict:
        """Check one command line (or parsed command); never raises on bad input.

        Arguments:
            raw: the line, or a parsed command.
            report: whether a rejection is reported through ``on_event`` (a
                caller that rate-limits the reports passes ``False`` and
                summarises with :meth:`report`).

        Returns:
            ``Verdict(True, "ok", command)`` and the nonce recorded, or a
            rejection with nothing recorded.
        """
        with self._lock:
            verdict, command, detail = self._check(raw)
        if not verdict.accepted and report:
            self.report(verdict.reason, detail, command)
        return verdict

    def state(self) -> dict[str, Any]:
        """The replay memory, JSON-ready: the horizon (``None`` before any
        verification) and the remembered ``[issued_at, nonce]`` pairs, oldest first."""
        with self._lock:
            return self._replay.state()

    def restore(self, state: Any) -> None:
        """Remember again what :meth:`state` returned (merged with what is remembered now).

        Raises:
            ValueError: ``state`` is not what :meth:`state` returns; nothing changed.
        """
        with self._lock:
            self._replay.restore(state)

    def _check(self, raw: object) -> tuple[Verdict, LifecycleCommand | None, str]:
        now = float(self._clock())
        if not math.isfinite(now):
            raise ValueError(f"the clock returned {now}")
        self._replay.raise_horizon(now - self._freshness_s)
        if isinstance(raw, SignedCommand):
            signed = raw
        else:
            try:
                signed = SignedCommand.from_json(raw)  # type: ignore[arg-type]
            except MalformedCommandError as exc:
                return Verdict(False, "malformed", None), None, str(exc)
        cmd = signed.command
        if not hmac.compare_digest(digest(self._key, cmd), bytes.fromhex(signed.signature_hex)):
            return Verdict(False, "bad_signature", None), cmd, "HMAC-SHA256 mismatch"
        if self._known_slots is not None and cmd.slot not in self._known_slots:
            return Verdict(False, "unknown_slot", None), cmd, f"no slot {cmd.slot!r}"
        age = now - cmd.issued_at
        if age < -self._max_skew_s:
            detail = f"issued {-age:.3f}s in the future; allowed skew {self._max_skew_s}s"
            return Verdict(False, "future", None), cmd, detail
        if cmd.issued_at < self._replay.horizon:
            detail = (f"issued {age:.3f}s ago; freshness window {self._freshness_s}s"
                      f"{'' if age > self._freshness_s else ' (replay horizon raised)'}")
            return Verdict(False, "stale", None), cmd, detail
        if cmd.nonce in self._replay:
            return Verdict(False, "replayed_nonce", None), cmd, "nonce already accepted"
        self._replay.remember(cmd.nonce, cmd.issued_at)
        return Verdict(True, "ok", cmd), cmd, ""

    def report(self, reason: str, detail: str, command: LifecycleCommand | None = None) -> None:
        """Send a ``COMMAND_REJECTED`` event for ``reason`` to ``on_event`` (if any).

        :meth:`verify` calls it for each rejection it reports; a reader calls it
        for what it refuses itself (an over-long line, a summary of unreported
        rejections, reason :data:`RATE_LIMITED`).
        """
        if self._on_event is None:
            return
        try:
            self._on_event(rejection_event(reason, detail, command))
        except Exception as exc:
            warnings.warn(f"command telemetry callback raised {exc!r}; the rejection stands",
                          TelemetryCallbackWarning, stacklevel=3)


__all__ = ["DEFAULT_MAX_SKEW_S", "RATE_LIMITED", "REASONS", "CommandVerifier", "Reason",
           "Verdict", "rejection_event"]
