"""The dashboard's actions (--allow-actions) through Starlette's test client, on a real
PostgreSQL: each asks first with the count the CLI's plan gives, applies through the CLI's
code, touches nothing it did not count, and refuses a form without this browser's CSRF token.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from starlette.testclient import TestClient

from outbox.dashboard import create_app
from tests.integration.test_dashboard import csrf_of, fail, finish, publish, scalar, settings_for


@pytest.fixture
def operator(database_url: str) -> Iterator[TestClient]:
    with TestClient(create_app(settings_for(database_url), allow_actions=True)) as client:
        yield client


def status_of(url: str, event_id: int) -> str:
    return str(scalar(url, "SELECT status FROM outbox_events WHERE id = %s", event_id))


def deliveries_of(url: str, event_id: int) -> dict[str, Any]:
    found: dict[str, Any] = scalar(
        url, "SELECT deliveries FROM outbox_events WHERE id = %s", event_id
    )
    return found


def confirm_form(page: str) -> dict[str, list[str]]:
    form = page[page.index('class="confirm"') :]
    fields: dict[str, list[str]] = {}
    for name, value in re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', form):
        fields.setdefault(name, []).append(value)
    return fields


def count_on(page: str) -> int:
    found = re.search(r'id="count"><strong>([\d,]+)</strong>', page)
    assert found, page
    return int(found.group(1).replace(",", ""))


def test_retry_asks_with_the_count_then_retries_only_what_it_counted(
    database_url: str, operator: TestClient
) -> None:
    first, second = (publish(database_url, "order.paid", key=f"o-{n}") for n in range(2))
    other = publish(database_url, "invoice.sent")
    for event in (first, second, other):
        fail(database_url, event)

    page = operator.get("/actions/retry?status=failed&topic=order.*")
    assert page.status_code == 200
    assert count_on(page.text) == 2
    form = confirm_form(page.text)
    late = publish(database_url, "order.paid", key="o-9")  # fails after the operator looked
    fail(database_url, late)

    done = operator.post("/actions/retry", data=form)

    assert done.status_code == 200
    assert re.search(r'id="result">Retried 2 event', done.text)
    assert [status_of(database_url, e) for e in (first, second, other, late)] == [
        "pending",
        "pending",
        "failed",
        "failed",
    ]
    deliveries = deliveries_of(database_url, first)
    assert deliveries["billing"]["status"] == "retrying"  # the failed sink starts over
    assert deliveries["audit"]["status"] == "delivered"  # the delivered one stays delivered


def test_an_action_without_the_csrf_token_changes_nothing(
    database_url: str, operator: TestClient
) -> None:
    event = publish(database_url, "order.paid")
    fail(database_url, event)
    form = confirm_form(operator.get(f"/actions/retry?id={event}").text)

    for token in ([], ["forged-" + "x" * 40]):
        response = operator.post("/actions/retry", data={**form, "csrf": token})
        assert response.status_code == 403
        assert "CSRF" in response.text
    stranger = TestClient(operator.app)  # another browser: no cookie of ours
    assert stranger.post("/actions/retry", data=form).status_code == 403
    csrf = form["csrf"][0]
    assert stranger.post("/sinks/billing/pause", data={"csrf": csrf}).status_code == 403
    assert status_of(database_url, event) == "failed"
    assert scalar(database_url, "SELECT count(*) FROM outbox_sinks") == 0


def test_replay_delivers_done_events_again(database_url: str, operator: TestClient) -> None:
    event = publish(database_url, "order.paid")
    finish(database_url, event)
    older = publish(database_url, "order.paid")
    finish(database_url, older)
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "UPDATE outbox_events SET created_at = now() - interval '2 days' WHERE id = %s",
            [older],
        )

    page = operator.get("/actions/replay?status=done&since=1d&sink=billing")
    assert count_on(page.text) == 1
    done = operator.post("/actions/replay", data=confirm_form(page.text))

    assert re.search(r'id="result">Replayed 1 event', done.text)
    assert status_of(database_url, event) == "pending"
    assert "billing" not in deliveries_of(database_url, event)  # delivered to billing again
    assert deliveries_of(database_url, event)["audit"]["status"] == "delivered"
    assert status_of(database_url, older) == "done"


def test_cancel_takes_pending_events_and_says_why_not_others(
    database_url: str, operator: TestClient
) -> None:
    pending = publish(database_url, "order.created")
    failed = publish(database_url, "order.created")
    fail(database_url, failed)

    page = operator.get(f"/actions/cancel?id={pending}&id={failed}")
    assert count_on(page.text) == 1
    form = confirm_form(page.text)
    done = operator.post("/actions/cancel", data={**form, "reason": "duplicate order"})

    assert re.search(
        rf'id="result">1 event\(s\) cancelled: <a href="[^"]*/events/{pending}"', done.text
    )
    assert "Event <a" in done.text
    assert "not cancelled: failed" in done.text
    assert deliveries_of(database_url, pending)["*cancelled"]["reason"] == "duplicate order"
    assert status_of(database_url, failed) == "failed"


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("/actions/retry?status=failed&key=order-1", "not by key"),
        ("/actions/retry?status=done", "failed events only"),
        ("/actions/replay?status=done", "replay needs a start"),
        ("/actions/cancel", "cancel takes event ids"),
        ("/actions/cancel?id=1&topic=x", "not by topic"),
        ("/actions/purge?status=done", "no action 'purge'"),
    ],
)
def test_an_action_refuses_filters_it_cannot_honour(
    operator: TestClient, address: str, message: str
) -> None:
    response = operator.get(address)
    assert response.status_code in (400, 404)
    assert message in response.text.replace("&#39;", "'")


def test_sink_switches(database_url: str, operator: TestClient) -> None:
    page = operator.get("/sinks").text
    csrf = csrf_of(page)

    def switch(name: str, action: str) -> str:
        response = operator.post(f"/sinks/{name}/{action}", data={"csrf": csrf})
        assert response.status_code == 200, response.text  # followed the redirect to /sinks
        row = re.search(rf'data-sink="{name}">(.*?)</tr>', response.text, re.S)
        assert row
        state = re.search(r'class="state (\w+)"', row.group(1))
        assert state
        return state.group(1)

    def switched(name: str) -> tuple[bool, bool]:
        with psycopg.connect(database_url) as conn:
            found = conn.execute(
                "SELECT paused_at IS NOT NULL, disabled_at IS NOT NULL FROM outbox_sinks "
                "WHERE name = %s",
                [name],
            ).fetchone()
        return (bool(found[0]), bool(found[1])) if found else (False, False)

    assert switch("billing", "pause") == "paused"
    assert switched("billing") == (True, False)
    assert switched("audit") == (False, False)
    assert switch("billing", "disable") == "disabled"  # disabled shows over paused
    assert switch("billing", "enable") == "paused"
    assert switch("billing", "resume") == "active"
    assert switched("billing") == (False, False)
    assert operator.post("/sinks/billing/explode", data={"csrf": csrf}).status_code == 404
    assert operator.post("/sinks/Bad Name/pause", data={"csrf": csrf}).status_code == 404
