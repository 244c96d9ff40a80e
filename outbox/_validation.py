"""Validating and serialising an event before anything is written.

:func:`prepare_event` is the whole of :func:`outbox.publish` and
:meth:`outbox.EventSource.record_event` before anything is written: it refuses bad input
with :class:`~outbox.PublishError`, naming what is wrong and where, adds the current trace
context and serialises the payload once. Pure: no database, no I/O.

A payload is JSON: dicts (any ``Mapping`` with str keys), lists, tuples, str, int, finite
float, bool and None, nested at most :data:`MAX_PAYLOAD_DEPTH` deep. Any other value is
converted (:func:`_converted`): by the ``json_default`` given to :func:`outbox.configure`
first, then by the built-in rules (``Decimal`` and ``UUID`` as str, dates and times in ISO
8601, enums as their value, dataclasses as objects of their fields, pydantic models as their
JSON-mode dump), and what a conversion returns is checked like the rest. A value neither
converts is refused. docs/publishing.md has the table of what is stored for each type.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import functools
import json
import math
import re
import sys
import uuid
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
# Conversions in a row for one value (json_default returning a dataclass is two): a
# json_default that keeps returning values it must convert again is refused, not looped on.
MAX_CONVERSIONS = 8
# The exact types of the payload leaves that need no check (a str does, a float must be finite).
_PLAIN_KINDS = frozenset((int, bool, type(None)))

JsonDefault = Callable[[Any], Any]
# id(value) -> (value, its JSON value): the conversions a payload's check made, which its
# encoding reuses. The value is kept so that its id cannot be reused meanwhile.
_Conversions = dict[int, tuple[Any, Any]]


@dataclasses.dataclass
class _Settings:
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    json_default: JsonDefault | None = None


_settings = _Settings()


def set_max_payload_bytes(max_payload_bytes: int) -> None:
    """Cap serialised payloads at ``max_payload_bytes`` (UTF-8) from now on."""
    if max_payload_bytes <= 0:
        raise ValueError("max_payload_bytes must be positive")
    _settings.max_payload_bytes = max_payload_bytes


def set_json_default(json_default: JsonDefault | None) -> None:
    """Convert payload values JSON cannot hold with ``json_default`` (called like
    ``json.dumps``' ``default``) before the built-in rules, from now on; None: rules only."""
    if json_default is not None and not callable(json_default):
        raise TypeError(
            "json_default must be callable (like json.dumps' default: it takes a value and "
            f"returns a JSON value, or raises TypeError), got {type(json_default).__name__}"
        )
    _settings.json_default = json_default


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
    conversions: _Conversions = {}
    try:
        _check_json_value(payload, "payload", conversions)
        text = _encode(payload, conversions)
    except PublishError:
        raise
    except RecursionError:
        raise PublishError(f"payload of {topic!r} is nested too deeply") from None
    except ValueError as error:  # for example an int with more digits than str() allows
        raise PublishError(f"payload of {topic!r} cannot be serialised: {error}") from error
    # A JSON null payload (None, or what a conversion made None) would reach the NOT NULL
    # column as SQL NULL, or be stored as a jsonb null, depending on the statement: refused.
    if text == "null":
        raise PublishError(
            f"payload of {topic!r} is None: an event's payload is a JSON value other than "
            "null; pass {} for an event that carries no data"
        )
    size = len(text) if text.isascii() else len(text.encode("utf-8"))
    if size > _settings.max_payload_bytes:
        raise PublishError(
            f"payload of {topic!r} is {size} bytes; the cap is {_settings.max_payload_bytes}"
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
# The C encoder that _ENCODER.encode() builds anew on every call (about half its cost), built
# once, with the same options. It skips the check for cycles: a payload reaches it only after
# _check_json_value has bounded its depth. None where the json module has no C speedups.
_make_c_encoder = getattr(json.encoder, "c_make_encoder", None)
_C_ENCODER = _make_c_encoder and _make_c_encoder(
    None, _mapping_as_dict, json.encoder.encode_basestring, None, ":", ",", False, False, False
)


def _encode(payload: Any, conversions: _Conversions) -> str:
    """``payload`` as compact JSON (checked first), with its converted values."""
    if conversions or _C_ENCODER is None:
        return _encoder_for(conversions).encode(payload)
    return "".join(_C_ENCODER(payload, 0))


def _encoder_for(conversions: _Conversions) -> json.JSONEncoder:
    """The shared encoder, or for a payload with converted values one that writes them."""
    if not conversions:
        return _ENCODER

    def converted(value: object) -> Any:
        entry = conversions.get(id(value))
        if entry is not None and entry[0] is value:
            return entry[1]
        return _mapping_as_dict(value)

    return json.JSONEncoder(
        ensure_ascii=False, allow_nan=False, separators=(",", ":"), default=converted
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


def _check_json_value(value: Any, path: str, conversions: _Conversions, depth: int = 0) -> None:
    """Refuse what JSON or jsonb cannot hold exactly, naming where it is; convert the values
    JSON does not know into ``conversions``. ``depth`` counts the arrays and objects around
    ``value``."""
    kind = type(value)  # exact types first: isinstance() against Mapping costs more
    if kind is dict or kind is list or kind is tuple or isinstance(value, Mapping | list | tuple):
        if depth >= MAX_PAYLOAD_DEPTH:
            raise PublishError(
                f"{path} is nested too deeply: a payload nests arrays and objects at most "
                f"{MAX_PAYLOAD_DEPTH} levels deep"
            )
        is_object = kind is dict or (kind is not list and isinstance(value, Mapping))
        plain_keys = not is_object or _are_plain_keys(value)
        for where, item in value.items() if is_object else enumerate(value):
            if not plain_keys:
                if not isinstance(where, str):
                    raise PublishError(f"{path} has a key {where!r}; JSON object keys are str")
                _check_text(where, f"{path} key")
            # Plain leaves are checked inline (this runs for every value of every payload):
            # a call, or building their path, costs more than the check.
            item_kind = type(item)
            if item_kind is str:
                if item.isascii() and "\x00" not in item:
                    continue
            elif item_kind in _PLAIN_KINDS or (item_kind is float and math.isfinite(item)):
                continue
            _check_json_value(item, f"{path}[{where!r}]", conversions, depth + 1)
    elif isinstance(value, str):
        _check_text(value, path)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise PublishError(f"{path} is {value!r}, which JSON cannot represent")
    elif not (value is None or isinstance(value, int)):
        converted = _converted(value, path)
        conversions[id(value)] = (value, converted)
        _check_json_value(converted, path, conversions, depth)


def _are_plain_keys(value: Mapping[Any, Any]) -> bool:
    """True if every key is ASCII text without NUL, found at once: join() takes only str."""
    try:
        keys = "".join(value)
    except TypeError:
        return False
    return keys.isascii() and "\x00" not in keys


# -- converting what JSON does not know --------------------------------------------------


def _converted(value: Any, path: str) -> Any:
    """``value``, of a type JSON does not know, as a value JSON knows (its contents are
    checked by the caller): json_default's answer first, else the built-in rule's."""
    current = value
    for _ in range(MAX_CONVERSIONS):
        current = _convert_once(current, path)
        if current is None or isinstance(current, Mapping | list | tuple | str | int | float):
            return current
    raise PublishError(
        f"{path}: json_default still returns a {type(current).__name__} after "
        f"{MAX_CONVERSIONS} conversions of a {type(value).__name__}; return a dict, list, str, "
        "int, float, bool or None"
    )


def _convert_once(value: Any, path: str) -> Any:
    json_default = _settings.json_default
    if json_default is None:
        return _built_in(value, path, declined="")
    try:
        converted = json_default(value)
    except TypeError as error:  # json.dumps' convention: not a type it converts
        return _built_in(value, path, declined=f" (json_default: {error})")
    except Exception as error:
        raise PublishError(
            f"{path}: json_default raised {type(error).__name__} for a "
            f"{type(value).__name__}: {error}"
        ) from error
    if converted is value:
        raise PublishError(
            f"{path}: json_default returned the {type(value).__name__} it was given; return a "
            "JSON value for it, or raise TypeError to leave it to the built-in rules"
        )
    return converted


def _built_in(value: Any, path: str, declined: str) -> Any:
    """The built-in rule for ``value``'s type, or a refusal naming it, its path and the fix."""
    if isinstance(value, decimal.Decimal):
        return _decimal(value, path)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dt.datetime):
        return _datetime(value, path)
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: getattr(value, field.name) for field in dataclasses.fields(value)}
    dumped = _pydantic_dump(value, path)
    if dumped is not _NOT_A_MODEL:
        return dumped
    raise PublishError(
        f"{path} is a {type(value).__name__}, which JSON cannot hold{declined}: convert it "
        "before publishing, or give outbox.configure(json_default=...) a function that "
        "returns a JSON value for it"
    )


def _decimal(value: decimal.Decimal, path: str) -> str:
    # A str keeps every digit; as a JSON number it would reach Python readers as a float.
    if not value.is_finite():
        raise PublishError(f"{path} is Decimal({str(value)!r}), which is not a number")
    return str(value)


def _datetime(value: dt.datetime, path: str) -> str:
    if value.utcoffset() is None:
        raise PublishError(
            f"{path} is a naive datetime, which readers cannot place in time: make it "
            "timezone-aware (for example datetime.now(UTC)), or format it in a "
            "json_default given to outbox.configure()"
        )
    return value.isoformat()


_NOT_A_MODEL = object()


def _pydantic_dump(value: Any, path: str) -> Any:
    """A pydantic model's JSON-mode dump, or ``_NOT_A_MODEL``. pydantic is not imported
    here: a model exists only if something else imported it."""
    pydantic = sys.modules.get("pydantic")
    base_model = getattr(pydantic, "BaseModel", None)
    if base_model is None or not isinstance(value, base_model):
        return _NOT_A_MODEL
    try:
        return value.model_dump(mode="json")
    except Exception as error:  # pydantic's serialisation errors
        raise PublishError(
            f"{path}: the {type(value).__name__} model cannot be dumped as JSON: {error}"
        ) from error
