"""Delivering a slot's lifecycle events to its telemetry callback.

A state change is committed before its events are delivered, so a callback
that raises cannot undo it: the failure is logged and turned into a
:class:`TelemetryCallbackWarning`, and the remaining events are still delivered.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterable
from typing import Any

TelemetryCallback = Callable[[Any], None]
_log = logging.getLogger("esper")


class TelemetryCallbackWarning(RuntimeWarning):
    """A telemetry callback raised; the state change it reported stands."""


def deliver(callback: TelemetryCallback, found: Iterable[Any], slot_id: str) -> None:
    """Call ``callback`` with each event of ``found`` (events of slot ``slot_id``).

    Warns:
        TelemetryCallbackWarning: for each event the callback raised on.
    """
    for event in found:
        try:
            callback(event)
        except Exception as error:  # reported, never swallowed; state already committed
            _log.exception("telemetry callback failed on %s", event.type.value)
            warnings.warn(f"telemetry callback raised {error!r} on {event.type.value} for "
                          f"slot {slot_id!r}; the state change stands",
                          TelemetryCallbackWarning, stacklevel=3)
