"""An external controller: signed lifecycle commands read from a file or FIFO.

``esper grow --controller external --commands PATH`` replaces the heuristic
policy with whatever another process writes to ``PATH``, one signed command
per line (see :mod:`esper.kasmina.commands`). At each epoch boundary the
trainer calls :meth:`CommandSource.poll`: it reads every complete line that
has arrived since the last poll, without blocking (a FIFO with no writer, or
a file that has not grown, yields nothing), verifies each one and hands back
the accepted commands as controller decisions. Rejected lines change nothing;
the verifier reports each as a ``COMMAND_REJECTED`` event.

Nothing about the source is checkpointed: after ``--resume`` the file is read
from its start again, and the old lines are rejected as stale (or replayed).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

from ..errors import CommandSourceError
from ..kasmina.commands import MAX_LINE_CHARS, CommandVerifier
from ..leyline import TelemetryEvent
from ..tamiyo import Decision

_CHUNK = 1 << 16


class CommandSource:
    """Verified commands from a JSON-lines file or FIFO, read without blocking.

    Arguments:
        path: a regular file or a FIFO; it must exist when the run starts.
        verifier: checks each line (key, freshness, replay, known slots).

    Raises:
        CommandSourceError: ``path`` is missing or is neither a file nor a FIFO.
    """

    def __init__(self, path: Path, verifier: CommandVerifier) -> None:
        try:
            mode = os.stat(path).st_mode
        except OSError as exc:
            raise CommandSourceError(f"--commands {path}: {exc.strerror}; create the file "
                                     f"(or `mkfifo {path}`) before starting the run") from None
        if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):
            raise CommandSourceError(f"--commands {path} is neither a regular file nor a FIFO")
        # Non-blocking: opening a FIFO does not wait for a writer, reading never waits.
        self._fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        self._pending = b""
        self.path = path
        self.verifier = verifier

    def _read_available(self) -> bytes:
        data = []
        while True:
            try:
                chunk = os.read(self._fd, _CHUNK)
            except BlockingIOError:
                break
            if not chunk:
                break
            data.append(chunk)
        return b"".join(data)

    def lines(self) -> list[str]:
        """Every complete line that arrived since the last call (a partial one waits)."""
        self._pending += self._read_available()
        *complete, self._pending = self._pending.split(b"\n")
        if len(self._pending) > MAX_LINE_CHARS:  # no newline in sight: drop it as malformed
            complete.append(self._pending)
            self._pending = b""
        return [line.decode("utf-8", errors="replace") for line in complete if line.strip()]

    def poll(self) -> list[Decision]:
        """The decisions carried by the verified commands that arrived since the last poll."""
        decisions = []
        for line in self.lines():
            verdict = self.verifier.verify(line)
            if verdict.accepted:
                assert verdict.command is not None
                decisions.append(verdict.command.to_decision(reason="external"))
        return decisions

    def close(self) -> None:
        """Close the file descriptor (idempotent)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def open_source(path: Path, key: bytes, slots: frozenset[str],
                on_event: Callable[[TelemetryEvent], object]) -> CommandSource:
    """A :class:`CommandSource` whose verifier knows the run's slots and reports rejections."""
    return CommandSource(path, CommandVerifier(key, known_slots=slots, on_event=on_event))
