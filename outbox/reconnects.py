"""How long a relay's loops wait before connecting again, and when they give up."""

from __future__ import annotations

import random
import time

from outbox.exceptions import DatabaseError, DatabaseUnavailable

_RECONNECT_FIRST = 0.1
_RECONNECT_CAP = 10.0


class Reconnects:
    """One loop's failures in a row: how long to wait before the next try and, given
    ``give_up_after``, when to stop trying (counted from the last success, or from the
    start)."""

    def __init__(self, give_up_after: float | None = None) -> None:
        self.failures = 0
        self._give_up_after = give_up_after
        self._success = time.monotonic()

    def succeeded(self) -> None:
        self.failures = 0
        self._success = time.monotonic()

    def failed(self, error: DatabaseError) -> float:
        """Seconds to wait after ``error``; a :class:`DatabaseUnavailable` saying why once
        ``give_up_after`` has passed since the last success."""
        self.failures += 1
        delay = reconnect_delay(self.failures)
        if self._give_up_after is None:
            return delay
        left = self._give_up_after - (time.monotonic() - self._success)
        if left <= 0:
            raise DatabaseUnavailable(_gave_up(self._give_up_after, error)) from error
        return min(delay, left)


def _gave_up(seconds: float, error: DatabaseError) -> str:
    what = (
        "cannot reach the database"
        if isinstance(error, DatabaseUnavailable)
        else ("the database keeps failing")
    )
    first = str(error).strip().splitlines() or [type(error).__name__]
    return f"{what} for {seconds:g}s: {first[0]}"


def reconnect_delay(failures: int) -> float:
    """Seconds to wait before connecting again after ``failures`` failures in a row:
    exponential from 0.1s, capped at 10s, with jitter."""
    if failures <= 0:
        return 0.0
    base = min(_RECONNECT_CAP, _RECONNECT_FIRST * 2.0 ** (failures - 1))
    return base * random.uniform(0.5, 1.0)
