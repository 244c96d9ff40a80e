"""Validating and serialising an event before anything is written.

:func:`prepare_event` is the whole of :func:`outbox.publish` and
:meth:`outbox.EventSource.record_event` before anything is written: it refuses bad input
with :class:`~outbox.PublishError`, naming what is wrong and where, adds the current trace
context and serialises the payload once. Pure: no database, no I/O.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from outbox.exceptions import PublishError

TOPIC_PATTERN = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
MAX_TOPIC_LENGTH = 255
MAX_KEY_LENGTH = 255
DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024
# Arrays and objects nested in a payload, at most. Python's json module recurses (about 990
# levels end in RecursionError) and every reader adds levels of its own: the relay decodes a
# batch as one array, the webhook and postgres sinks wrap the payload in an envelope.
MAX_PAYLOAD_DEPTH = 100
# Far enough for any schedule, near enough that now() + delay stays a valid timestamptz.
MAX_DELAY = dt.timedelta(days=1000 * 365)


@dataclasses.dataclass
class _Limits:
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES


_limits = _Limits()


def set_max_payload_bytes(max_payload_bytes: int) -> None:
    """Cap serialised payloads at ``max_payload_bytes`` (UTF-8) from now on."""
    if max_payload_bytes <= 0:
        raise ValueError("max_payload_bytes must be positive")
    _limits.max_payload_bytes = max_payload_bytes


@dataclasses.dataclass(eq=False)
class OutboxEvent:
    """An event handed to the outbox.

    ``id`` is set once the event is written: at once by :func:`outbox.publish` on a
    connection, by the next flush (or the commit) for :func:`outbox.publish` on a session and
    for :meth:`outbox.EventSource.record_event`. ``duplicate`` is then ``True`` when an event
    with the same ``dedup_key`` already existed, in which case nothing was written and ``id``
    is the existing event's.
    """

    topic: str
    payload: Any
    key: str | None = None
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    process_at: dt.datetime | None = None
    delay: float | None = None
    dedup_key: str | None = None
    id: int | None = None
    duplicate: bool | None = None
    payload_json: str = dataclasses.field(default="", repr=False)


def prepare_event(
    topic: str,
    payload: Any,
    *,
    key: str | None = None,
    headers: Mapping[str, str] | None = None,
    process_at: dt.datetime | None = None,
    delay: dt.timedelta | float | None = None,
    dedup_key: str | None = None,
) -> OutboxEvent:
    """Validate one event and serialise its payload; raise :class:`PublishError` if invalid."""
    _check_topic(topic)
    _check_optional_text(key, "key", MAX_KEY_LENGTH)
    _check_optional_text(dedup_key, "dedup_key", MAX_KEY_LENGTH)
    return OutboxEvent(
        topic=topic,
        payload=payload,
        key=key,
        headers=_with_trace_context(_check_headers(headers)),
        process_at=_check_process_at(process_at, delay),
        delay=_check_delay(delay),
        dedup_key=dedup_key,
        payload_json=_serialise_payload(payload, topic),
    )


def _check_topic(topic: object) -> None:
    if not isinstance(topic, str):
        raise PublishError(f"topic must be a str, got {type(topic).__name__}")
    if not topic:
        raise PublishError("topic must not be empty")
    if len(topic) > MAX_TOPIC_LENGTH:
        raise PublishError(f"topic is {len(topic)} characters; at most {MAX_TOPIC_LENGTH}")
    if not TOPIC_PATTERN.fullmatch(topic):
        raise PublishError(
            f"invalid topic {topic!r}: dot-separated segments of letters, digits, '_' and '-' "
            "(for example 'order.confirmed')"
        )


def _check_optional_text(value: object, name: str, max_length: int) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise PublishError(f"{name} must be a str or None, got {type(value).__name__}")
    if not value:
        raise PublishError(f"{name} must not be empty (pass None for no {name})")
    if len(value) > max_length:
        raise PublishError(f"{name} is {len(value)} characters; at most {max_length}")
    _check_text(value, name)


def _check_headers(headers: object) -> dict[str, str]:
    if headers is None:
        return {}
    if not isinstance(headers, Mapping):
        raise PublishError(f"headers must be a mapping of str to str, got {type(headers).__name__}")
    for name, value in headers.items():
        if not isinstance(name, str) or not name:
            raise PublishError(f"header name {name!r} must be a non-empty str")
        if not isinstance(value, str):
            raise PublishError(f"header {name!r} must be a str, got {type(value).__name__}")
        _check_text(name, "header name")
        _check_text(value, f"header {name!r}")
    return dict(headers)


_TRACE_HEADERS = ("traceparent", "tracestate")


def _with_trace_context(headers: dict[str, str]) -> dict[str, str]:
    """Add the current OpenTelemetry trace context (``traceparent``, ``tracestate``) when
    OpenTelemetry is installed and a span is active; headers given by the caller win."""
    propagation = _trace_propagation()
    if propagation is None:
        return headers
    current_context, inject = propagation
    if not current_context() or any(name in headers for name in _TRACE_HEADERS):
        return headers  # an empty context has nothing to propagate
    carrier: dict[str, str] = {}
    inject(carrier)
    return {**carrier, **headers} if carrier else headers


@functools.cache
def _trace_propagation() -> tuple[Callable[[], Any], Callable[[dict[str, str]], None]] | None:
    """OpenTelemetry's current-context getter and injector, if it is installed."""
    try:
        from opentelemetry import context, propagate
    except ImportError:
        return None
    return context.get_current, propagate.inject


def _check_process_at(process_at: object, delay: object) -> dt.datetime | None:
    if process_at is None:
        return None
    if delay is not None:
        raise PublishError("pass process_at or delay, not both")
    if not isinstance(process_at, dt.datetime):
        raise PublishError(f"process_at must be a datetime, got {type(process_at).__name__}")
    if process_at.tzinfo is None or process_at.utcoffset() is None:
        raise PublishError("process_at must be timezone-aware (for example datetime.now(UTC))")
    return process_at


def _check_delay(delay: object) -> float | None:
    if delay is None:
        return None
    if isinstance(delay, dt.timedelta):
        seconds = delay.total_seconds()
    elif isinstance(delay, int | float) and not isinstance(delay, bool):
        seconds = float(delay)
    else:
        raise PublishError(f"delay must be a timedelta or seconds, got {type(delay).__name__}")
    if not math.isfinite(seconds) or seconds < 0:
        raise PublishError(f"delay must be a finite, non-negative duration, got {delay!r}")
    if seconds > MAX_DELAY.total_seconds():
        raise PublishError(f"delay must be at most {MAX_DELAY.days} days, got {delay!r}")
    return seconds


def _serialise_payload(payload: Any, topic: str) -> str:
    try:
        _check_json_value(payload, "payload")
        text = _ENCODER.encode(payload)
    except PublishError:
        raise
    except RecursionError:
        raise PublishError(f"payload of {topic!r} is nested too deeply") from None
    except ValueError as error:  # for example an int with more digits than str() allows
        raise PublishError(f"payload of {topic!r} cannot be serialised: {error}") from error
    size = len(text) if text.isascii() else len(text.encode("utf-8"))
    if size > _limits.max_payload_bytes:
        raise PublishError(
            f"payload of {topic!r} is {size} bytes; the cap is {_limits.max_payload_bytes}"
        )
    return text


def _mapping_as_dict(value: object) -> dict[str, Any]:
    # json serialises dict only; _check_json_value has already accepted any Mapping.
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


# One encoder for every payload: json.dumps() with options builds a new one per call.
_ENCODER = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, separators=(",", ":"), default=_mapping_as_dict
)


def _check_text(value: str, what: str) -> None:
    """Refuse strings that Postgres text and jsonb cannot store."""
    if "\x00" in value:
        raise PublishError(f"{what} contains a NUL character, which Postgres cannot store")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise PublishError(f"{what} contains a lone surrogate, which is not UTF-8") from None


def _check_json_value(value: Any, path: str, depth: int = 0) -> None:
    """Refuse what JSON or jsonb cannot hold exactly, naming where it is. ``depth`` counts
    the arrays and objects around ``value``."""
    if isinstance(value, Mapping | list | tuple):
        if depth >= MAX_PAYLOAD_DEPTH:
            raise PublishError(
                f"{path} is nested too deeply: a payload nests arrays and objects at most "
                f"{MAX_PAYLOAD_DEPTH} levels deep"
            )
        if isinstance(value, Mapping):
            _check_json_object(value, path, depth + 1)
            return
        for index, item in enumerate(value):
            # Plain leaves are checked inline: building their path costs more than the check.
            if not _is_plain_leaf(item):
                _check_json_value(item, f"{path}[{index}]", depth + 1)
    elif isinstance(value, str):
        _check_text(value, path)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise PublishError(f"{path} is {value!r}, which JSON cannot represent")
    elif not (value is None or isinstance(value, int)):
        raise PublishError(f"{path} is a {type(value).__name__}, which is not JSON-serialisable")


def _check_json_object(value: Mapping[Any, Any], path: str, depth: int) -> None:
    for item_key, item in value.items():
        if not isinstance(item_key, str):
            raise PublishError(f"{path} has a key {item_key!r}; JSON object keys are str")
        if not _is_plain_leaf(item_key):
            _check_text(item_key, f"{path} key")
        if not _is_plain_leaf(item):
            _check_json_value(item, f"{path}[{item_key!r}]", depth)


def _is_plain_leaf(value: Any) -> bool:
    """True for the common values that need no further check: ASCII text without NUL,
    None, bool, int and finite float (exact types only)."""
    kind = type(value)
    if kind is str:
        return value.isascii() and "\x00" not in value
    if kind is float:
        return math.isfinite(value)
    return value is None or kind is int or kind is bool
