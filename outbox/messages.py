"""An event as a broker message: its body, its headers, and the name it is sent to.

For sinks that hand events to a message broker (the Kafka, NATS JetStream, RabbitMQ and
Redis Streams plugins, and any a third party writes), so that each sends the same message
for the same event:

- the body is the payload as compact JSON in UTF-8 (:func:`body`);
- the headers are the event's own (its trace context included) with ``outbox-id``,
  ``outbox-topic`` and ``outbox-key`` (:func:`headers`); consumers dedup on ``outbox-id``;
- a destination (a Kafka topic, a NATS subject, a routing key, a stream) is a
  :data:`Template` that may use ``{topic}`` and ``{key}``, filled in per event by
  :func:`render`.
"""

from __future__ import annotations

import functools
import json
import string
from typing import Annotated

from pydantic import AfterValidator

from outbox.exceptions import PermanentError
from outbox.sinks import Event

__all__ = ["ID_HEADER", "KEY_HEADER", "TOPIC_HEADER", "Template", "body", "headers", "render"]

ID_HEADER = "outbox-id"
"""The event's id, the header a consumer dedups on."""
TOPIC_HEADER = "outbox-topic"
KEY_HEADER = "outbox-key"
"""The event's key; absent when the event has none."""

_FIELDS = ("topic", "key")
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def body(event: Event) -> bytes:
    """The payload as compact JSON, UTF-8."""
    return _ENCODER.encode(event.payload).encode()


def headers(event: Event) -> dict[str, str]:
    """The event's own headers, then ``outbox-id``, ``outbox-topic`` and ``outbox-key``
    (which win over an event header of the same name)."""
    found = dict(event.headers)
    found[ID_HEADER] = str(event.id)
    found[TOPIC_HEADER] = event.topic
    if event.key is not None:
        found[KEY_HEADER] = event.key
    return found


@functools.cache
def _fields(template: str) -> frozenset[str]:
    """The fields ``template`` uses; ValueError, saying why, if it is not a template."""
    if not template:
        raise ValueError("a destination template may not be empty")
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as error:
        raise ValueError(f"{template!r} is not a template ({error}); write {{{{ for {{") from None
    used = set()
    for _, field, spec, conversion in parts:
        if field is None:
            continue
        if field not in _FIELDS or spec or conversion:
            raise ValueError(
                f"{template!r} uses {{{field}}}: a template may use {{topic}} and {{key}} only"
            )
        used.add(field)
    return frozenset(used)


def _check_template(template: str) -> str:
    _fields(template)
    return template


Template = Annotated[str, AfterValidator(_check_template)]
"""A destination name in which ``{topic}`` and ``{key}`` stand for the event's."""


def render(template: str, event: Event) -> str:
    """``template`` with the event's topic and key. An event without a key cannot fill a
    template that uses ``{key}``: that is a :class:`~outbox.PermanentError`."""
    used = _fields(template)
    if not used:
        return template.replace("{{", "{").replace("}}", "}")
    if "key" in used and event.key is None:
        raise PermanentError(
            f"event {event.id} has no key, and the destination {template!r} uses {{key}}"
        )
    return template.format(topic=event.topic, key=event.key)
