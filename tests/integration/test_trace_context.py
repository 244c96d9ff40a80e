"""With OpenTelemetry installed, publish() stores the active span's trace context."""

from __future__ import annotations

import psycopg
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

import outbox


@pytest.fixture(scope="module")
def tracer() -> trace.Tracer:
    return TracerProvider().get_tracer("outbox-tests")


def _headers(database_url: str, event_id: int) -> dict[str, str]:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT headers FROM outbox_events WHERE id = %s", [event_id]).fetchone()
    assert row is not None
    return dict(row[0])


def test_the_active_span_is_stored_as_traceparent(database_url: str, tracer: trace.Tracer) -> None:
    with tracer.start_as_current_span("checkout") as span, psycopg.connect(database_url) as conn:
        event = outbox.publish(conn, "order.paid", {"n": 1}, headers={"x-tenant": "a"})
    context = span.get_span_context()
    headers = _headers(database_url, event.id or 0)
    assert headers["traceparent"] == (
        f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"
    )
    assert headers["x-tenant"] == "a"


def test_no_span_no_traceparent(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        event = outbox.publish(conn, "order.paid", {"n": 1})
    assert "traceparent" not in _headers(database_url, event.id or 0)


def test_a_traceparent_given_by_the_caller_wins(database_url: str, tracer: trace.Tracer) -> None:
    given = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    with tracer.start_as_current_span("checkout"), psycopg.connect(database_url) as conn:
        event = outbox.publish(conn, "order.paid", {}, headers={"traceparent": given})
    assert _headers(database_url, event.id or 0)["traceparent"] == given
