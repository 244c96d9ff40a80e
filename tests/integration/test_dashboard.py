"""The dashboard's pages and actions through Starlette's test client, on a real PostgreSQL.

Rows are published with :func:`outbox.publish` and pushed into the states under test with
direct UPDATEs (as in test_admin_cli.py); every figure a page shows is checked against the
table. The browser tests (tests/browser) drive the same pages in Chromium.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb
from starlette.testclient import TestClient

import outbox
from outbox.dashboard import create_app
from outbox.settings import Settings

FAILED = {"status": "failed", "attempts": 5, "last_error": "HTTP 500 from billing"}
DELIVERED = {"status": "delivered", "attempts": 1, "last_error": None}


def settings_for(url: str) -> Settings:
    return Settings.from_values(
        database_url=url,
        sinks={
            "billing": {"type": "callable", "target": "os:getcwd"},
            "audit": {"type": "callable", "target": "os:getcwd"},
        },
        subscriptions=[{"topics": ["#"], "sinks": ["billing", "audit"]}],
    )


@pytest.fixture
def client(database_url: str) -> Iterator[TestClient]:
    with TestClient(create_app(settings_for(database_url))) as client:
        yield client


@pytest.fixture
def operator(database_url: str) -> Iterator[TestClient]:
    """The dashboard with --allow-actions."""
    with TestClient(create_app(settings_for(database_url), allow_actions=True)) as client:
        yield client


def publish(url: str, topic: str, key: str | None = None, **payload: Any) -> int:
    with psycopg.connect(url) as conn:
        event = outbox.publish(conn, topic, payload or {"topic": topic}, key=key)
    assert event.id is not None
    return event.id


def update(url: str, event_id: int, **columns: Any) -> None:
    names = ", ".join(f"{name} = %s" for name in columns)
    values = [Jsonb(v) if isinstance(v, dict | list) else v for v in columns.values()]
    with psycopg.connect(url) as conn:
        conn.execute(
            f"UPDATE outbox_events SET {names} WHERE id = %s".encode(), [*values, event_id]
        )


def fail(url: str, event_id: int) -> None:
    update(
        url,
        event_id,
        status="failed",
        attempts=5,
        deliveries={"billing": FAILED, "audit": DELIVERED},
        errors=[
            {"at": "2026-01-01T00:00:00Z", "sink": "billing", "error": "HTTP 500 from billing"}
        ],
        last_error="billing: HTTP 500 from billing",
    )


def finish(url: str, event_id: int) -> None:
    update(url, event_id, status="done", deliveries={"billing": DELIVERED, "audit": DELIVERED})
    with psycopg.connect(url) as conn:
        conn.execute("UPDATE outbox_events SET done_at = now() WHERE id = %s", [event_id])


def scalar(url: str, query: str, *params: Any) -> Any:
    with psycopg.connect(url) as conn:
        found = conn.execute(query.encode(), params).fetchone()
    assert found is not None
    return found[0]


def listed(page: str) -> list[int]:
    return [int(found) for found in re.findall(r'data-event="(\d+)"', page)]


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, "the page has no form with a CSRF token"
    return found.group(1)


# -- pages -----------------------------------------------------------------------------------


def test_overview_counts_what_the_table_holds(database_url: str, client: TestClient) -> None:
    for n in range(3):
        publish(database_url, "order.created", key=f"order-{n}")
    failed = publish(database_url, "order.paid", key="order-7")
    fail(database_url, failed)
    publish(database_url, "order.paid", key="order-7")  # waits behind the failed one
    done = publish(database_url, "invoice.sent")
    finish(database_url, done)
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "INSERT INTO outbox_sinks (name, paused_at, paused_reason) "
            "VALUES ('audit', now(), 'receiver migrating')"
        )

    page = client.get("/").text

    backlog = scalar(
        database_url, "SELECT count(*) FROM outbox_events WHERE status IN ('pending', 'processing')"
    )
    assert re.search(r'id="backlog">(\d+)<', page).group(1) == str(backlog) == "4"  # type: ignore[union-attr]
    assert re.search(r'id="failed">(\d+)<', page).group(1) == "1"  # type: ignore[union-attr]
    assert re.search(r'id="parked">(\d+)<', page).group(1) == "1"  # type: ignore[union-attr]
    assert re.search(r'id="settled">(\d+)<', page).group(1) == "1"  # type: ignore[union-attr]
    topics = page[page.index('id="topics"') :]
    assert "order.created" in topics
    assert "invoice.sent" in topics
    parked = page[page.index('id="parked-keys"') :]
    assert "order-7" in parked
    assert f"#{failed}" in parked
    assert "HTTP 500 from billing" in parked
    sinks = page[page.index('id="sinks"') :]
    assert re.search(r'data-sink="audit">.*?class="state paused".*?receiver migrating', sinks, re.S)
    assert re.search(r'data-sink="billing">.*?class="state active"', sinks, re.S)
    assert page.count("<svg") == 2
    assert 'hx-trigger="every 5s' in page
    assert 'id="health"' in page
    assert "Live rows" in page


def test_events_filters_from_the_address(database_url: str, client: TestClient) -> None:
    created = [publish(database_url, "order.created", key=f"order-{n}") for n in range(3)]
    paid = publish(database_url, "order.paid", key="order-1")
    invoice = publish(database_url, "invoice.sent", key="inv-1")
    fail(database_url, paid)
    finish(database_url, invoice)

    def ids(query: str) -> list[int]:
        response = client.get(f"/events{query}")
        assert response.status_code == 200, response.text
        return listed(response.text)

    assert ids("") == [invoice, paid, *reversed(created)]
    assert ids("?status=failed") == [paid]
    assert ids("?status=pending&status=done") == [invoice, *reversed(created)]
    assert ids("?topic=order.*") == [paid, *reversed(created)]
    assert ids("?key=order-1") == [paid, created[1]]
    assert ids("?sink=billing&sink_status=failed") == [paid]
    assert ids(f"?id={created[0]}&id={invoice}") == [invoice, created[0]]
    assert ids(f"?id={created[0]},{invoice}") == [invoice, created[0]]
    assert ids("?since=1h") == ids("")
    assert ids("?until=1h") == []


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("?status=lost", "status"),
        ("?topic=order..x", "topic"),
        ("?since=yesterday", "since"),
        ("?sink_status=failed", "sink_status"),
        ("?id=12abc", "id"),
        ("?before=-3", "before"),
    ],
)
def test_a_bad_filter_says_which_and_why(client: TestClient, query: str, field: str) -> None:
    response = client.get(f"/events{query}")
    assert response.status_code == 400
    error = re.search(r'id="filter-error">([^<]*)<', response.text)
    assert error
    assert error.group(1).startswith(f"{field}: ")
    assert 'name="topic"' in response.text  # the form is still there to fix it


def test_events_paginate_by_keyset(database_url: str, client: TestClient) -> None:
    with psycopg.connect(database_url) as conn:
        published = [outbox.publish(conn, "tick", {"n": n}).id for n in range(120)]
    seen: list[int] = []
    address: str | None = "/events?topic=tick"
    while address:
        page = client.get(address).text
        seen.extend(listed(page))
        found = re.search(r'rel="next" href="([^"]+)"', page)
        address = found.group(1).replace("&amp;", "&") if found else None
        if address:
            assert "topic=tick" in address  # the filters travel with the cursor
    assert seen == sorted(published, reverse=True)  # every event once, newest first


def test_event_page_shows_payload_headers_deliveries_and_errors(
    database_url: str, client: TestClient
) -> None:
    with psycopg.connect(database_url) as conn:
        event = outbox.publish(
            conn, "order.paid", {"order": 7, "note": "<b>bold</b>"}, headers={"tenant": "acme"}
        )
    assert event.id is not None
    fail(database_url, event.id)

    page = client.get(f"/events/{event.id}").text

    assert 'id="event-status">failed<' in page
    payload = page[page.index('id="payload"') :]
    assert "&#34;order&#34;: 7" in payload or "&quot;order&quot;: 7" in payload
    assert "&lt;b&gt;bold&lt;/b&gt;" in payload
    assert "<b>bold</b>" not in page
    assert "tenant" in page[page.index('id="headers"') :]
    deliveries = page[page.index('id="deliveries"') :]
    assert re.search(r'data-sink="billing">.*?delivery failed', deliveries, re.S)
    assert re.search(r'data-sink="audit">.*?delivery delivered', deliveries, re.S)
    assert "last error: HTTP 500 from billing" in deliveries
    assert "None" not in deliveries[: deliveries.index("</table>")]
    assert "HTTP 500 from billing" in page[page.index('id="errors"') :]
    assert client.get("/events/999999").status_code == 404
    assert client.get(f"/events/{2**63}").status_code == 404


def test_no_page_shows_a_secret(server_url: str, database_url: str) -> None:
    secret_url = database_url.replace("postgresql://", "postgresql://", 1)
    user_part = secret_url.split("://", 1)[1].split("@", 1)
    if len(user_part) == 2 and ":" not in user_part[0]:
        secret_url = secret_url.replace(f"://{user_part[0]}@", f"://{user_part[0]}:hunter2@", 1)
    settings = Settings.from_values(
        database_url=secret_url,
        sinks={
            "hook": {
                "type": "webhook",
                "url": "https://hooks.example.com/in",
                "secret": "whsec_c2VjcmV0c2VjcmV0c2VjcmV0",
            }
        },
        subscriptions=[{"topics": ["#"], "sinks": ["hook"]}],
        dashboard={"user": "ops", "password": "opensesame"},
    )
    event = publish(database_url, "order.created")
    login = {"Authorization": "Basic " + base64.b64encode(b"ops:opensesame").decode()}
    with TestClient(create_app(settings), headers=login) as client:
        pages = [client.get(path) for path in ("/", "/events", f"/events/{event}", "/sinks")]
    for response in pages:
        assert response.status_code == 200
        for secret in ("hunter2", "whsec_c2VjcmV0", "opensesame", "hooks.example.com"):
            assert secret not in response.text


async def test_without_actions_the_connections_cannot_write(database_url: str) -> None:
    app = create_app(settings_for(database_url))
    try:
        async with app.state.database.connection() as conn:
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                await conn.execute("DELETE FROM outbox_events")
    finally:
        await app.state.database.close()


def test_actions_are_refused_when_off(database_url: str, client: TestClient) -> None:
    event = publish(database_url, "order.created")
    fail(database_url, event)
    assert client.get(f"/actions/retry?id={event}").status_code == 403
    assert client.post(f"/actions/retry?id={event}", data={"upto": event}).status_code == 403
    assert client.post("/sinks/billing/pause").status_code == 403
    assert "button" not in client.get("/sinks").text.split('id="sinks"', 1)[1]
    assert 'id="retry"' not in client.get(f"/events/{event}").text
    assert scalar(database_url, "SELECT status FROM outbox_events WHERE id = %s", event) == "failed"


def test_database_down_is_a_clear_503() -> None:
    settings = Settings.from_values(database_url="postgresql://nobody@127.0.0.1:1/x")
    with TestClient(create_app(settings)) as client:
        response = client.get("/")
    assert response.status_code == 503
    assert "database" in response.text
