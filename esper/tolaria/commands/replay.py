"""The replay memory of a command verifier: which nonces were accepted, and for how long.

The memory keeps a *horizon*: commands issued before it are stale, and a nonce
is kept only while its command is above it (could still be fresh). When the
cap is hit, the oldest nonce is forgotten and the horizon moves past it, so
memory stays bounded without ever re-accepting a nonce (fail closed). The
horizon never moves back: a larger freshness window, or a clock that steps
back, cannot revive a forgotten nonce.
"""

from __future__ import annotations

import heapq
import math
from typing import Any

from ...validation import check_int, is_finite_real
from .wire import MAX_NONCE_CHARS


class ReplayMemory:
    """The accepted nonces above a horizon, at most ``max_nonces`` of them (not thread-safe).

    Raises:
        ValueError: ``max_nonces`` is not an int >= 1.
    """

    def __init__(self, max_nonces: int) -> None:
        self._max_nonces = check_int("max_nonces", max_nonces, minimum=1)
        self._nonces: dict[str, float] = {}  # nonce -> issued_at
        self._heap: list[tuple[float, str]] = []  # (issued_at, nonce), oldest first
        self._horizon = -math.inf

    @property
    def horizon(self) -> float:
        """Commands issued before this time are stale (``-inf`` until raised)."""
        return self._horizon

    def __len__(self) -> int:
        return len(self._nonces)

    def __contains__(self, nonce: object) -> bool:
        return nonce in self._nonces

    def raise_horizon(self, horizon: float) -> None:
        """Move the horizon up to ``horizon`` (never down) and forget the nonces below it."""
        self._horizon = max(self._horizon, horizon)
        while self._heap and self._heap[0][0] < self._horizon:
            _, nonce = heapq.heappop(self._heap)
            del self._nonces[nonce]

    def remember(self, nonce: str, issued_at: float) -> None:
        """Remember an accepted ``nonce``; past the cap, forget the oldest (fail closed)."""
        self._nonces[nonce] = issued_at
        heapq.heappush(self._heap, (issued_at, nonce))
        if len(self._nonces) > self._max_nonces:
            oldest, _ = self._heap[0]
            self.raise_horizon(math.nextafter(oldest, math.inf))

    def state(self) -> dict[str, Any]:
        """JSON-ready: the horizon (``None`` before it was raised) and the remembered
        ``[issued_at, nonce]`` pairs, oldest first."""
        horizon = None if self._horizon == -math.inf else self._horizon
        return {"horizon": horizon, "nonces": sorted([t, n] for n, t in self._nonces.items())}

    def restore(self, state: Any) -> None:
        """Remember again what :meth:`state` returned, merged with what is remembered now.

        The horizon only moves forward, nonces below it are dropped, and the
        cap holds as in :meth:`remember`.

        Raises:
            ValueError: ``state`` is not what :meth:`state` returns; nothing changed.
        """
        horizon, pairs = _checked_state(state)
        if horizon is not None:
            self._horizon = max(self._horizon, float(horizon))
        for issued_at, nonce in pairs:
            if nonce not in self._nonces:
                self.remember(nonce, float(issued_at))
        self.raise_horizon(self._horizon)


def _checked_state(state: Any) -> tuple[float | None, list[list[Any]]]:
    """The horizon and the pairs of a :meth:`ReplayMemory.state`, or ``ValueError``."""
    if not isinstance(state, dict) or set(state) != {"horizon", "nonces"}:
        raise ValueError('the verifier state must be an object with keys "horizon" and '
                         '"nonces"')
    horizon, pairs = state["horizon"], state["nonces"]
    if horizon is not None and not is_finite_real(horizon):
        raise ValueError(f"the verifier horizon must be a finite number or null, "
                         f"got {horizon!r}")
    if not isinstance(pairs, list):
        raise ValueError("the verifier nonces must be a list of [issued_at, nonce] pairs")
    for pair in pairs:
        if not (isinstance(pair, list) and len(pair) == 2 and is_finite_real(pair[0])
                and isinstance(pair[1], str) and 0 < len(pair[1]) <= MAX_NONCE_CHARS):
            raise ValueError(f"the verifier nonces must be [issued_at, nonce] pairs (a "
                             f"finite number, a nonce of 1 to {MAX_NONCE_CHARS} "
                             f"characters), got {str(pair)[:200]}")
    return horizon, pairs


__all__ = ["ReplayMemory"]
