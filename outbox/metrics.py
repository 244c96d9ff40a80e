"""Prometheus metrics and health endpoints for ``outbox relay --metrics-port N``.

Serves ``/metrics`` (Prometheus text format), ``/healthz`` (the process is alive) and
``/readyz`` (the database answered recently and, unless polling only, the listener is
connected), on 127.0.0.1 unless ``--metrics-host`` says otherwise. Needs the ``metrics``
extra (``prometheus-client``), imported only here.

The gauges are sampled once per maintenance round with the statements ``outbox status``
runs (:mod:`outbox.sink_status`), so each agrees with the status within one
``maintenance_interval``. docs/operations/metrics.md lists every metric.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from outbox.relay import RelayObserver

if TYPE_CHECKING:
    from outbox.relay import Relay
    from outbox.sink_status import EventFigures, SinkStatus

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
"""Where the endpoints listen unless told: this machine only. Metrics name sinks and topics,
and a scraper on another machine is a choice to make (``--metrics-host 0.0.0.0``)."""

_DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class PrometheusObserver(RelayObserver):
    """Turns the relay's measurements into Prometheus metrics in their own registry."""

    wants_backlog = True

    def __init__(self, host: str = DEFAULT_HOST) -> None:
        self.host = host
        """The address :func:`serve` listens on unless given one."""
        try:
            import prometheus_client as prom
        except ImportError as error:  # pragma: no cover - depends on the environment
            raise RuntimeError(
                "metrics need prometheus-client: pip install 'outbox-relay[metrics]'"
            ) from error
        self._prom = prom
        self.registry = prom.CollectorRegistry()
        registry = self.registry
        self.delivered_total = prom.Counter(
            "outbox_events_delivered_total",
            "Deliveries acknowledged by a sink.",
            ["topic", "sink"],
            registry=registry,
        )
        self.failures_total = prom.Counter(
            "outbox_delivery_failures_total",
            "Delivery attempts that failed.",
            ["topic", "sink", "kind"],
            registry=registry,
        )
        self.duration = prom.Histogram(
            "outbox_delivery_duration_seconds",
            "Time a sink took for the batch each delivery was part of.",
            ["sink"],
            buckets=_DURATION_BUCKETS,
            registry=registry,
        )
        self.settled_total = prom.Counter(
            "outbox_events_settled_total",
            "Events settled, by the status they were settled to.",
            ["status"],
            registry=registry,
        )
        self.claim_batch_size = prom.Histogram(
            "outbox_claim_batch_size",
            "Events per claimed batch.",
            buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 5000),
            registry=registry,
        )
        self._event_gauges(prom)
        self.oldest_blocking_transaction = prom.Gauge(
            "outbox_oldest_blocking_transaction_seconds",
            "Age of the oldest transaction in the database while due keyed events wait for it "
            "to end (0: none wait); `outbox status` names it.",
            registry=registry,
        )
        self.leases_lost_total = prom.Counter(
            "outbox_leases_lost_total",
            "Batches' rows whose lease expired before they were settled.",
            registry=registry,
        )
        self.unrouted_total = prom.Counter(
            "outbox_unrouted_events_total",
            "Events settled done with no subscribed sink: their topic matched no subscription.",
            ["topic"],
            registry=registry,
        )
        self._sink_gauges(prom)

    def _event_gauges(self, prom: Any) -> None:
        registry = self.registry
        self.pending_events = prom.Gauge(
            "outbox_pending_events",
            "Events with status pending: due, waiting for a retry, a held sink or a parked key.",
            registry=registry,
        )
        self.processing_events = prom.Gauge(
            "outbox_processing_events",
            "Events claimed by a relay and in flight.",
            registry=registry,
        )
        self.failed_events = prom.Gauge(
            "outbox_failed_events",
            "Events with status failed: kept until retried or purged.",
            registry=registry,
        )
        self.due_events = prom.Gauge(
            "outbox_due_events", "Pending events a relay could claim now.", registry=registry
        )
        self.lag_seconds = prom.Gauge(
            "outbox_lag_seconds",
            "How long the longest-waiting due event has been due (0: none is due).",
            registry=registry,
        )
        self.parked_keys = prom.Gauge(
            "outbox_parked_keys",
            "Keys whose oldest unfinished event failed: later events of the key wait.",
            registry=registry,
        )

    def _sink_gauges(self, prom: Any) -> None:
        registry = self.registry
        self.sink_backlog = prom.Gauge(
            "outbox_sink_backlog",
            "Unfinished events whose delivery to the sink is waiting or retrying.",
            ["sink"],
            registry=registry,
        )
        self.sink_lag_seconds = prom.Gauge(
            "outbox_sink_lag_seconds",
            "Age of the oldest event whose delivery to the sink is waiting or retrying.",
            ["sink"],
            registry=registry,
        )
        self.sink_failed = prom.Gauge(
            "outbox_sink_failed_events",
            "Unfinished events whose delivery to the sink failed.",
            ["sink"],
            registry=registry,
        )
        self.sink_held = prom.Gauge(
            "outbox_sink_held",
            "1 while the sink is paused or disabled (its deliveries wait), else 0.",
            ["sink"],
            registry=registry,
        )
        self._sinks_seen: set[str] = set()

    def claimed(self, count: int) -> None:
        self.claim_batch_size.observe(count)

    def delivered(self, topic: str, sink: str, ok: bool, permanent: bool, seconds: float) -> None:
        self._sinks_seen.add(sink)
        if ok:
            self.delivered_total.labels(topic, sink).inc()
        else:
            self.failures_total.labels(topic, sink, "permanent" if permanent else "retryable").inc()
        self.duration.labels(sink).observe(seconds)

    def settled(self, status: str) -> None:
        self.settled_total.labels(status).inc()

    def unrouted(self, topic: str) -> None:
        self.unrouted_total.labels(topic).inc()

    def lease_lost(self) -> None:
        self.leases_lost_total.inc()

    def backlog(self, pending: int, lag_seconds: float) -> None:
        self.pending_events.set(pending)
        self.lag_seconds.set(lag_seconds)

    def event_figures(self, figures: EventFigures) -> None:
        self.backlog(figures.pending, figures.lag_seconds)
        self.processing_events.set(figures.processing)
        self.failed_events.set(figures.failed)
        self.due_events.set(figures.due)
        self.parked_keys.set(figures.parked_keys)

    def fence_wait(self, seconds: float) -> None:
        self.oldest_blocking_transaction.set(seconds)

    def sinks(self, sinks: Sequence[SinkStatus]) -> None:
        # A sink this relay delivered to, or sampled before, and absent now has nothing
        # waiting, failed or held: its gauges go to 0 rather than keep their last value.
        sampled = {sink.name: sink for sink in sinks}
        self._sinks_seen |= sampled.keys()
        for name in self._sinks_seen:
            sink = sampled.get(name)
            self.sink_backlog.labels(name).set(sink.backlog if sink else 0)
            self.sink_lag_seconds.labels(name).set((sink and sink.oldest_waiting_seconds) or 0)
            self.sink_failed.labels(name).set(sink.failed if sink else 0)
            self.sink_held.labels(name).set(int(sink.held) if sink else 0)

    def exposition(self) -> bytes:
        return bytes(self._prom.generate_latest(self.registry))


async def serve(
    relay: Relay, observer: PrometheusObserver, port: int, host: str | None = None
) -> asyncio.Server:
    """Start the metrics and health HTTP server on ``host`` (None: the observer's, by
    default 127.0.0.1); the caller closes it."""
    host = host or observer.host

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
            path = request.split(b" ", 2)[1].split(b"?", 1)[0] if b" " in request else b"/"
            status, content_type, body = _respond(path, relay, observer)
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, host, port)
    logger.info("metrics and health on http://%s:%d/metrics", host, port)
    return server


def _respond(path: bytes, relay: Relay, observer: PrometheusObserver) -> tuple[str, str, bytes]:
    if path == b"/metrics":
        return "200 OK", "text/plain; version=0.0.4; charset=utf-8", observer.exposition()
    if path == b"/healthz":
        return "200 OK", "text/plain", b"ok\n"
    if path == b"/readyz":
        problems = relay.readiness_problems()
        if problems:
            return "503 Service Unavailable", "text/plain", ("\n".join(problems) + "\n").encode()
        return "200 OK", "text/plain", b"ready\n"
    return "404 Not Found", "text/plain", b"not found\n"
