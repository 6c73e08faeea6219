"""An external controller: signed lifecycle commands read from a file or FIFO.

``esper grow --controller external --commands PATH`` replaces the heuristic
policy with whatever another process writes to ``PATH``, one signed command
per line (see :mod:`esper.tolaria.commands`). At each epoch boundary the
trainer calls :meth:`CommandSource.poll`: it reads the lines that have arrived
since the last poll, from where the last one stopped and without blocking (a
FIFO with no writer, or a file that has not grown, yields nothing), verifies
each one and hands back the accepted commands as controller decisions.
Rejected lines change nothing; the verifier reports them as
``COMMAND_REJECTED`` events, at most :data:`MAX_REPORTS_PER_POLL` one by one
per poll and the rest in one summary event (reason ``rate_limited``).

Memory stays bounded whatever is written: the file is read in chunks, and a
line longer than :data:`MAX_LINE_BYTES` is dropped (reported once as
``malformed``) without ever being held whole.

:meth:`CommandSource.state` (the read offset and the verifier's replay
memory) goes into the checkpoint; after ``--resume`` a regular file is read on
from that offset, and a command accepted before the checkpoint is refused as
``replayed_nonce`` if it comes again.
"""

from __future__ import annotations

import logging
import os
import stat
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..core.state import SlotState
from ..errors import CommandSourceError
from ..leyline import TelemetryEvent
from ..tamiyo import Decision
from ..validation import check_int
from .commands import MAX_LINE_CHARS, RATE_LIMITED, CommandVerifier

_CHUNK = 1 << 16
MAX_LINE_BYTES = MAX_LINE_CHARS  # a signed command is ASCII: as many bytes as characters
MAX_REPORTS_PER_POLL = 20
FRESHNESS_S = 30.0  # how old a command may be when the run reads it
_log = logging.getLogger("esper")


class CommandSource:
    """Verified commands from a JSON-lines file or FIFO, read without blocking.

    Arguments:
        path: a regular file or a FIFO; it must exist when the run starts.
        verifier: checks each line (key, freshness, replay, known slots).
        max_reports: rejections reported one by one per poll; the rest are
            counted in one ``rate_limited`` event.

    Attributes:
        offset: bytes consumed, up to the end of the last complete line.

    Raises:
        CommandSourceError: ``path`` is missing or is neither a file nor a FIFO.
    """

    def __init__(self, path: Path, verifier: CommandVerifier,
                 max_reports: int = MAX_REPORTS_PER_POLL) -> None:
        try:
            mode = os.stat(path).st_mode
        except OSError as exc:
            raise CommandSourceError(f"--commands {path}: {exc.strerror}; create the file "
                                     f"(or `mkfifo {path}`) before starting the run") from None
        if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):
            raise CommandSourceError(f"--commands {path} is neither a regular file nor a FIFO")
        # Non-blocking: opening a FIFO does not wait for a writer, reading never waits.
        self._fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        self._regular = stat.S_ISREG(mode)
        self._pending = b""  # the start of a line whose newline has not arrived
        self._dropping = False  # inside an over-long line: skip to its newline
        self.offset = 0
        self.path = path
        self.verifier = verifier
        self.max_reports = max_reports

    def _chunks(self) -> Iterator[bytes]:
        while True:
            try:
                chunk = os.read(self._fd, _CHUNK)
            except BlockingIOError:
                return
            if not chunk:
                return
            yield chunk

    def _split(self) -> Iterator[bytes | int]:
        """Each complete new line (without its newline), or the length of one dropped as too
        long, as soon as it is known; at most one chunk and one line are held at a time.

        The bytes of a line being dropped count as consumed as they are read.
        """
        for chunk in self._chunks():
            start = 0
            while (end := chunk.find(b"\n", start)) >= 0:
                piece, start = chunk[start:end], end + 1
                if self._dropping:
                    self._dropping = False
                    self.offset += len(piece) + 1
                    continue
                line, self._pending = self._pending + piece, b""
                self.offset += len(line) + 1
                yield line if len(line) <= MAX_LINE_BYTES else len(line)
            rest = chunk[start:]
            if self._dropping:
                self.offset += len(rest)
                continue
            self._pending += rest
            if len(self._pending) > MAX_LINE_BYTES:  # no newline in sight: drop it, report now
                self.offset += len(self._pending)
                yield len(self._pending)
                self._pending, self._dropping = b"", True

    def lines(self) -> list[str]:
        """Every complete line that arrived since the last call (a partial one waits); a line
        over :data:`MAX_LINE_BYTES` is not returned (:meth:`poll` reports it)."""
        return [line.decode("utf-8", errors="replace") for line in self._split()
                if isinstance(line, bytes) and line.strip()]

    def poll(self) -> list[Decision]:
        """The decisions carried by the verified commands that arrived since the last poll."""
        decisions = []
        reported = 0
        unreported: Counter[str] = Counter()
        for line in self._split():
            report = reported < self.max_reports
            if isinstance(line, int):
                if report:
                    self.verifier.report("malformed", f"line longer than {MAX_LINE_BYTES} "
                                         "bytes: dropped up to its newline")
                else:
                    unreported["malformed"] += 1
                reported += 1
                continue
            if not line.strip():
                continue
            verdict = self.verifier.verify(line.decode("utf-8", errors="replace"), report=report)
            if verdict.accepted:
                assert verdict.command is not None
                decisions.append(verdict.command.to_decision(reason="external"))
                continue
            reported += 1
            if not report:
                unreported[verdict.reason] += 1
        if unreported:
            counts = ", ".join(f"{reason} {n}" for reason, n in sorted(unreported.items()))
            self.verifier.report(RATE_LIMITED, f"{unreported.total()} more rejected lines this "
                                 f"poll, not reported one by one: {counts}")
        return decisions

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps: the read offset and the verifier's replay memory."""
        return {"offset": self.offset, "verifier": self.verifier.state()}

    def restore(self, state: Any) -> None:
        """Continue from :meth:`state`: the replay memory, and for a regular file the offset.

        A file now shorter than the offset was truncated or replaced: it is read
        from its start (the replay memory still refuses what was accepted).

        Raises:
            ValueError: ``state`` is not what :meth:`state` returns; nothing changed.
        """
        if not isinstance(state, dict) or set(state) != {"offset", "verifier"}:
            raise ValueError('the command source state must be an object with keys "offset" '
                             'and "verifier"')
        offset = check_int("the command offset", state["offset"], minimum=0)
        self.verifier.restore(state["verifier"])
        if not self._regular:
            return  # a FIFO has no offset to go back to
        size = os.fstat(self._fd).st_size
        if size < offset:
            _log.warning("--commands %s is %d bytes, shorter than the %d already read: it was "
                         "truncated or replaced; reading it from its start", self.path, size,
                         offset)
            offset = 0
        os.lseek(self._fd, offset, os.SEEK_SET)
        self.offset, self._pending, self._dropping = offset, b"", False

    def close(self) -> None:
        """Close the file descriptor (idempotent)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def seed_mismatch(decision: Decision, state: SlotState) -> str | None:
    """Why a prune or fossilize naming a seed may not act on ``state``'s slot, or ``None``.

    A command that names no seed (``seed_id`` ``None``) acts on whatever the
    slot holds; germinate names the seed it creates and is not checked here.
    """
    if decision.action == "germinate" or decision.seed_id is None:
        return None
    if state.seed_id == decision.seed_id:
        return None
    holds = (f"holds seed {state.seed_id!r} ({state.stage.name})" if state.seed_id is not None
             else "holds no seed")
    return (f"the {decision.action} command names seed {decision.seed_id!r}, but slot "
            f"{decision.slot!r} {holds}")


def open_source(path: Path, key: bytes, slots: frozenset[str],
                on_event: Callable[[TelemetryEvent], object]) -> CommandSource:
    """A :class:`CommandSource` whose verifier knows the run's slots and reports rejections."""
    return CommandSource(path, CommandVerifier(key, freshness_s=FRESHNESS_S, known_slots=slots,
                                               on_event=on_event))
