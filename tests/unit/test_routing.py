"""Topic patterns and the router: ``*`` is one segment, ``#`` any number of them, none included."""

from __future__ import annotations

from typing import Any

import pytest

from outbox import routing
from outbox.routing import Router, Subscription, topic_matches, validate_pattern


@pytest.mark.parametrize(
    ("pattern", "topic"),
    [
        ("order.paid", "order.paid"),
        ("order.*", "order.paid"),
        ("*.paid", "order.paid"),
        ("*", "order"),
        ("a.*.c", "a.b.c"),
        ("order.#", "order"),
        ("order.#", "order.a"),
        ("order.#", "order.a.b"),
        ("#", "order"),
        ("#", "order.paid.late"),
        ("#.paid", "paid"),
        ("#.paid", "order.paid"),
        ("#.paid", "eu.order.paid"),
        ("a.#.b", "a.b"),
        ("a.#.b", "a.x.y.b"),
        ("#.#", "a.b.c"),
        ("*.#", "a"),
        ("#.*", "a.b"),
    ],
)
def test_matches(pattern: str, topic: str) -> None:
    assert topic_matches(pattern, topic)


@pytest.mark.parametrize(
    ("pattern", "topic"),
    [
        ("order.paid", "order.refunded"),
        ("order.paid", "order.paid.late"),
        ("order.paid", "order"),
        ("order.*", "order"),
        ("order.*", "order.a.b"),
        ("*", "order.paid"),
        ("a.*.c", "a.c"),
        ("a.*.c", "a.b.b.c"),
        ("a.*.c", "a.b.d"),
        ("order.#", "orders"),
        ("order.#", "refund.order"),
        ("#.paid", "paid.late"),
        ("#.paid", "order.unpaid"),
        ("a.#.b", "a.b.c"),
        ("Order.paid", "order.paid"),
    ],
)
def test_does_not_match(pattern: str, topic: str) -> None:
    assert not topic_matches(pattern, topic)


@pytest.mark.parametrize(
    "pattern",
    ["", "order..paid", ".order", "order.", "order.pa*", "order.#x", "**", "a b", "a/b", "ordér"],
)
def test_invalid_patterns_are_refused(pattern: str) -> None:
    with pytest.raises(ValueError, match="pattern"):
        validate_pattern(pattern)


def test_a_non_string_pattern_is_refused() -> None:
    bad: Any = None
    with pytest.raises(ValueError, match="non-empty string"):
        validate_pattern(bad)


def test_valid_patterns_are_returned_unchanged() -> None:
    for pattern in ("order.paid", "order.*", "#", "a.#.b", "under_score.da-sh.42"):
        assert validate_pattern(pattern) == pattern


def test_the_router_refuses_an_invalid_pattern() -> None:
    with pytest.raises(ValueError, match=r"order\.\.paid"):
        Router([Subscription(topics=("order.#", "order..paid"), sinks=("audit",))])


ROUTES = [
    Subscription(topics=("order.*",), sinks=("webhook", "audit")),
    Subscription(topics=("#.paid", "invoice.#"), sinks=("audit", "ledger")),
    Subscription(topics=("#",), sinks=("archive",)),
]


def test_the_router_collects_sinks_in_subscription_order_without_repeats() -> None:
    router = Router(ROUTES)
    assert router.sinks_for("order.paid") == ("webhook", "audit", "ledger", "archive")
    assert router.sinks_for("order.created") == ("webhook", "audit", "archive")
    assert router.sinks_for("invoice") == ("audit", "ledger", "archive")
    assert router.sinks_for("user.signed_up") == ("archive",)
    assert router.sink_names == ("webhook", "audit", "ledger", "archive")


def test_an_unsubscribed_topic_has_no_sinks() -> None:
    router = Router([Subscription(topics=("order.*",), sinks=("webhook",))])
    assert router.sinks_for("invoice.paid") == ()
    assert router.sinks_for("order") == ()


def test_the_router_resolves_each_topic_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, str]] = []
    real = routing.topic_matches

    def counting(pattern: str, topic: str) -> bool:
        calls.append((pattern, topic))
        return real(pattern, topic)

    monkeypatch.setattr(routing, "topic_matches", counting)
    router = Router(ROUTES)
    first = router.sinks_for("order.paid")
    resolved = len(calls)
    assert resolved > 0
    assert router.sinks_for("order.paid") == first
    assert len(calls) == resolved, "a second lookup of the same topic matched patterns again"
    router.sinks_for("order.created")
    assert len(calls) > resolved
