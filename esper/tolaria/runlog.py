"""Continuing a run's logs on resume: check them against the checkpoint, then trim them.

``events.jsonl`` and ``metrics.csv`` are append-only. A checkpoint records how
many events had been logged (``events_written``) and how many epochs had
run. On resume the logs must hold at least that much, intact: every one of
those event lines a JSON object, the header the one this run writes, one
metrics row per epoch numbered in order. Anything after that was logged by
an epoch the checkpoint does not hold (it will run again), and is cut off.
The checks read only; the files are trimmed once every check has passed, and
a trim (``os.truncate`` at a line boundary) is safe to repeat if a kill
interrupts it.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import RunLogError
from .report import EVENTS_FILE, LEGACY_BASE_COLUMNS, METRICS_FILE, slot_columns


@dataclass(frozen=True)
class LogEnds:
    """Where each log ends once the epochs after the checkpoint are cut off (bytes)."""

    events: int
    metrics: int


def _line_ends(data: bytes) -> list[int]:
    """The byte offset just past each complete (newline-terminated) line."""
    ends, start = [], 0
    while (stop := data.find(b"\n", start)) != -1:
        start = stop + 1
        ends.append(start)
    return ends


def _events_end(path: Path, events: int) -> int:
    data = path.read_bytes() if path.exists() else b""
    ends = _line_ends(data)
    if len(ends) < events:
        raise RunLogError(f"{path}: {len(ends)} complete lines, but the checkpoint counts "
                          f"{events} events logged before it: the log was cut short; restore "
                          "it, or start the run again")
    start = 0
    for number, end in enumerate(ends[:events], start=1):
        try:
            record = json.loads(data[start:end])
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise RunLogError(f"{path}: line {number} is not a JSON record ({error})") from None
        if not isinstance(record, dict) or "kind" not in record:
            raise RunLogError(f"{path}: line {number} is not an event (a JSON object with "
                              "'kind')")
        start = end
    return ends[events - 1] if events else 0


def _metrics_end(path: Path, slots: Sequence[str], epochs: int) -> int:
    if not path.exists():
        raise RunLogError(f"{path}: missing; the checkpoint holds {epochs} epochs")
    data = path.read_bytes()
    ends = _line_ends(data)
    if len(ends) < epochs + 1:
        raise RunLogError(f"{path}: {max(len(ends) - 1, 0)} complete rows, but the checkpoint "
                          f"holds {epochs} epochs: the log was cut short")
    try:
        rows = list(csv.reader(io.StringIO(data[:ends[epochs]].decode("utf-8"), newline="")))
    except (UnicodeDecodeError, csv.Error) as error:
        raise RunLogError(f"{path}: not CSV text ({error})") from None
    if rows[0] not in (slot_columns(slots), slot_columns(slots, LEGACY_BASE_COLUMNS)):
        raise RunLogError(f"{path}: line 1 has the columns {rows[0]}, but this run writes "
                          f"{slot_columns(slots)}: resume with the slots the run was started with")
    for number, row in enumerate(rows[1:], start=1):
        if not row or row[0] != str(number):
            raise RunLogError(f"{path}: line {number + 1} should be the row of epoch {number}, "
                              f"got {row[:1]}")
    return ends[epochs]


def check_logs(run_dir: Path, slots: Sequence[str], events: int, epochs: int) -> LogEnds:
    """Where the logs of ``run_dir`` end at the checkpoint (reads only).

    Arguments:
        run_dir: the run directory.
        slots: the slots this run writes columns for.
        events: events logged before the checkpoint (its ``events_written``).
        epochs: epochs the checkpoint holds.

    Raises:
        RunLogError: a log is missing, shorter than the checkpoint, or garbled
            within it; the message names the file and the line.
    """
    return LogEnds(_events_end(run_dir / EVENTS_FILE, events),
                   _metrics_end(run_dir / METRICS_FILE, slots, epochs))


def trim_logs(run_dir: Path, ends: LogEnds) -> None:
    """Cut each log after what the checkpoint holds (what :func:`check_logs` found)."""
    for name, end in ((EVENTS_FILE, ends.events), (METRICS_FILE, ends.metrics)):
        path = run_dir / name
        if path.exists() and path.stat().st_size > end:
            os.truncate(path, end)
        elif not path.exists():
            path.touch()


__all__ = ["LogEnds", "check_logs", "trim_logs"]
