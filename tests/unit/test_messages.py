"""outbox.messages: what every broker sink sends for an event."""

from __future__ import annotations

import json

import pytest
from pydantic import BaseModel, ValidationError

from outbox.exceptions import PermanentError
from outbox.messages import Template, body, headers, render
from outbox.testing import make_event


class Destination(BaseModel):
    name: Template


def test_the_body_is_the_payload_as_compact_utf8_json() -> None:
    event = make_event(payload={"text": "ünïcode ✓", "n": [1, 2.5, None]})
    assert body(event) == '{"text":"ünïcode ✓","n":[1,2.5,null]}'.encode()
    assert json.loads(body(event)) == event.payload


def test_headers_carry_the_events_own_and_the_outbox_ones() -> None:
    event = make_event(
        key="order-7", headers={"traceparent": "00-abc-def-01", "outbox-id": "forged"}
    )
    assert headers(event) == {
        "traceparent": "00-abc-def-01",
        "outbox-id": str(event.id),  # ours win over an event header of the same name
        "outbox-topic": event.topic,
        "outbox-key": "order-7",
    }


def test_an_event_without_a_key_has_no_key_header() -> None:
    assert "outbox-key" not in headers(make_event(key=None))


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{topic}", "order.created"),
        ("outbox.{topic}", "outbox.order.created"),
        ("{topic}:{key}", "order.created:k1"),
        ("fixed", "fixed"),
        ("{{literal}}.{topic}", "{literal}.order.created"),
        ("{{literal}}", "{literal}"),
    ],
)
def test_templates_fill_in_the_topic_and_the_key(template: str, expected: str) -> None:
    event = make_event(topic="order.created", key="k1")
    assert render(Destination(name=template).name, event) == expected


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("", "may not be empty"),
        ("{topc}", "uses {topc}: a template may use {topic} and {key} only"),
        ("{topic!r}", "a template may use {topic} and {key} only"),
        ("{topic:>10}", "a template may use {topic} and {key} only"),
        ("{topic", "is not a template"),
        ("topic}", "is not a template"),
    ],
)
def test_a_bad_template_is_refused_when_the_configuration_is_read(
    template: str, message: str
) -> None:
    with pytest.raises(ValidationError, match="name") as raised:
        Destination(name=template)
    assert message in str(raised.value)


def test_a_key_template_for_an_event_without_a_key_is_a_permanent_error() -> None:
    event = make_event(key=None)
    with pytest.raises(PermanentError, match=rf"event {event.id} has no key.*'t\.\{{key\}}'"):
        render("t.{key}", event)
