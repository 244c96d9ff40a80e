"""What a relay reports: its counters, and the observer that receives each measurement
(``outbox.metrics`` turns them into Prometheus metrics). Both are importable from
``outbox.relay`` too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

from outbox.retry import NO_SINK_KEY

if TYPE_CHECKING:
    from outbox.records import Settlement
    from outbox.sink_status import EventFigures, SinkStatus


@dataclasses.dataclass
class RelayStats:
    """Counters since the relay started."""

    batches: int = 0
    claimed: int = 0
    done: int = 0
    retried: int = 0
    failed: int = 0
    deliveries: int = 0
    leases_lost: int = 0
    waiting: set[int] = dataclasses.field(default_factory=set, repr=False)
    """Events this relay settled for a retry and has not settled since: kept only while
    ``track_waiting`` (a draining relay's summary), since another relay may finish them."""
    track_waiting: bool = dataclasses.field(default=False, repr=False)

    def settled(self, event_id: int, status: str) -> None:
        """Note where an event this relay settled ended (``pending``: waiting for a retry);
        called only while ``track_waiting``."""
        if status == "pending":
            self.waiting.add(event_id)
        else:
            self.waiting.discard(event_id)


class RelayObserver:
    """Receives the relay's measurements (for metrics); every method defaults to nothing."""

    wants_backlog = False
    """True to have :meth:`event_figures`, :meth:`fence_wait` and :meth:`sinks` called each
    maintenance round (a few extra queries)."""

    def claimed(self, count: int) -> None:
        """A batch of ``count`` events was claimed."""

    def delivered(self, topic: str, sink: str, ok: bool, permanent: bool, seconds: float) -> None:
        """One delivery attempt ended; ``seconds`` is the sink's time for its whole batch."""

    def settled(self, status: str) -> None:
        """An event was settled to ``status`` (done, pending, failed)."""

    def unrouted(self, topic: str) -> None:
        """An event of ``topic`` was settled done with no subscribed sink."""

    def event_settled(self, topic: str, settlement: Settlement) -> None:
        """An event of ``topic`` was settled as ``settlement``: calls :meth:`settled`, and
        :meth:`unrouted` when no sink was subscribed to it."""
        self.settled(settlement.status)
        if NO_SINK_KEY in settlement.deliveries:
            self.unrouted(topic)

    def lease_lost(self) -> None:
        """A settle found its lease taken over: the result was discarded."""

    def backlog(self, pending: int, lag_seconds: float) -> None:
        """Events pending, and how long the longest-waiting due event has been due."""

    def event_figures(self, figures: EventFigures) -> None:
        """The table's figures as ``outbox status`` shows them (:mod:`outbox.sink_status`);
        calls :meth:`backlog` with its pending count and lag."""
        self.backlog(figures.pending, figures.lag_seconds)

    def fence_wait(self, seconds: float) -> None:
        """Age of the oldest transaction of the database while due keyed events wait for it
        (0: none wait); sampled with :meth:`event_figures`."""

    def sinks(self, sinks: Sequence[SinkStatus]) -> None:
        """Each sink's state and figures (:mod:`outbox.sink_status`); sampled with
        :meth:`event_figures`."""
