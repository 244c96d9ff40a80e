"""Validation at publish time: every bad input is a PublishError naming what is wrong and where.

No database: ``prepare_event`` is the whole of publish() before anything is written, and
publish() itself refuses bad input before it looks at its target.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import json
import math
import types
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import outbox
from outbox._validation import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    MAX_KEY_LENGTH,
    MAX_PAYLOAD_DEPTH,
    MAX_TOPIC_LENGTH,
    prepare_event,
    set_json_default,
)
from outbox.exceptions import OutboxError

UTC = dt.UTC


@pytest.fixture
def payload_cap() -> Iterator[None]:
    """Lets a test change the payload cap; the default is back afterwards."""
    yield
    outbox.configure(max_payload_bytes=DEFAULT_MAX_PAYLOAD_BYTES)


def refused(match: str, topic: Any = "order.confirmed", payload: Any = None, **kw: Any) -> str:
    """Assert that the event is refused with a message matching ``match``; return it."""
    with pytest.raises(outbox.PublishError, match=match) as info:
        prepare_event(topic, payload if payload is not None else {}, **kw)
    return str(info.value)


def test_publish_error_is_a_value_error_and_an_outbox_error() -> None:
    assert issubclass(outbox.PublishError, ValueError)
    assert issubclass(outbox.PublishError, OutboxError)


def test_publish_validates_before_looking_at_its_target() -> None:
    # No database needed: bad input is refused before the target is used.
    with pytest.raises(outbox.PublishError, match="topic"):
        outbox.publish(object(), "", {})  # type: ignore[call-overload]


def test_publish_refuses_an_unknown_target_with_a_type_error() -> None:
    with pytest.raises(TypeError, match="Session"):
        outbox.publish(object(), "order.confirmed", {})  # type: ignore[call-overload]


# -- payload: JSON only ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "where", "what"),
    [
        (math.nan, r"^payload is nan", "NaN"),
        (math.inf, r"^payload is inf", "+Infinity"),
        (-math.inf, r"^payload is -inf", "-Infinity"),
        ({"price": math.nan}, r"payload\['price'\] is nan", "NaN in an object"),
        (b"bytes", r"^payload is a bytes", "bytes"),
        ({"tags": {"a", "b"}}, r"payload\['tags'\] is a set", "set"),
        ({"for": dt.timedelta(hours=1)}, r"payload\['for'\] is a timedelta", "timedelta"),
        ([object()], r"payload\[0\] is a object", "object"),
        ({"a": [0, 1, b"x"]}, r"payload\['a'\]\[2\] is a bytes", "deep location"),
        ({"a": {"b": [{"c": math.inf}]}}, r"payload\['a'\]\['b'\]\[0\]\['c'\] is inf", "deeper"),
        ((1, (2, {3})), r"payload\[1\]\[1\] is a set", "inside tuples"),
    ],
    ids=lambda value: value if isinstance(value, str) and " " not in value else None,
)
def test_payload_that_is_not_json_is_refused_naming_where(
    payload: Any, where: str, what: str
) -> None:
    refused(where, payload=payload)


def test_non_str_object_key_is_refused_naming_where() -> None:
    message = refused(r"payload\['a'\] has a key 1", payload={"a": {1: "one"}})
    assert "str" in message
    refused("has a key None", payload={None: 1})
    refused(r"has a key \(1, 2\)", payload={(1, 2): 1})


def test_nul_in_a_payload_string_is_refused_naming_where() -> None:
    message = refused(r"payload\['note'\]\[1\] contains a NUL", payload={"note": ["ok", "a\x00b"]})
    assert "Postgres cannot store" in message


def test_nul_in_an_object_key_is_refused() -> None:
    refused(r"payload\['a'\] key contains a NUL", payload={"a": {"x\x00": 1}})


def test_lone_surrogate_is_refused_naming_where() -> None:
    refused(r"payload\['name'\] contains a lone surrogate", payload={"name": "caf\ud800"})


def test_payload_nested_too_deeply_is_a_publish_error() -> None:
    payload: list[Any] = []
    for _ in range(100_000):
        payload = [payload]
    refused("nested too deeply", payload=payload)


def test_circular_payload_is_a_publish_error() -> None:
    payload: dict[str, Any] = {}
    payload["self"] = payload
    refused("nested too deeply", payload=payload)


def test_int_too_long_for_str_is_a_publish_error() -> None:
    refused("cannot be serialised", payload={"n": 10**10_000})


def test_unknown_type_is_refused_naming_its_type_its_path_and_the_fix() -> None:
    message = refused(
        r"payload\['order'\]\['tags'\] is a frozenset", payload={"order": {"tags": frozenset()}}
    )
    assert "outbox.configure(json_default=" in message


# -- payload: None -----------------------------------------------------------------------


def test_none_payload_is_refused_at_the_call_naming_the_topic() -> None:
    with pytest.raises(outbox.PublishError, match=r"payload of 'order.confirmed' is None") as info:
        prepare_event("order.confirmed", None)
    assert "{}" in str(info.value)  # the fix: an empty object


def test_none_payload_is_refused_by_publish_before_it_looks_at_its_target() -> None:
    with pytest.raises(outbox.PublishError, match="is None"):
        outbox.publish(object(), "order.confirmed", None)  # type: ignore[call-overload]


def test_none_is_refused_when_a_conversion_makes_the_whole_payload_null(
    json_default: None,
) -> None:
    set_json_default(lambda value: None)
    with pytest.raises(outbox.PublishError, match="is None"):
        prepare_event("order.confirmed", Money(1, "EUR"))


# -- payload: built-in encoding ----------------------------------------------------------


class Colour(enum.Enum):
    RED = "red"
    DEEP = decimal.Decimal("0.5")


@dataclasses.dataclass
class Money:
    amount: Any
    currency: str


@dataclasses.dataclass(frozen=True, slots=True)
class Line:
    sku: uuid.UUID
    price: Money
    shipped: dt.date | None = None


ORDER_ID = uuid.UUID("12345678-1234-5678-1234-567812345678")
PARIS = dt.timezone(dt.timedelta(hours=1))


@pytest.mark.parametrize(
    ("value", "stored"),
    [
        (decimal.Decimal("12.30"), "12.30"),
        (decimal.Decimal("-0.000000000000000000001"), "-1E-21"),
        (decimal.Decimal("12345678901234567890.123456789"), "12345678901234567890.123456789"),
        (ORDER_ID, "12345678-1234-5678-1234-567812345678"),
        (dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC), "2030-01-02T03:04:05+00:00"),
        (dt.datetime(2030, 1, 2, 3, 4, 5, 678, tzinfo=PARIS), "2030-01-02T03:04:05.000678+01:00"),
        (dt.date(2030, 1, 2), "2030-01-02"),
        (dt.time(9, 30), "09:30:00"),
        (Colour.RED, "red"),
        (Colour.DEEP, "0.5"),
        (Money(decimal.Decimal("9.99"), "EUR"), {"amount": "9.99", "currency": "EUR"}),
        (
            Line(ORDER_ID, Money(1, "EUR"), dt.date(2030, 1, 2)),
            {
                "sku": "12345678-1234-5678-1234-567812345678",
                "price": {"amount": 1, "currency": "EUR"},
                "shipped": "2030-01-02",
            },
        ),
    ],
    ids=repr,
)
def test_built_in_types_are_stored_as_documented(value: Any, stored: Any) -> None:
    payload = {"value": value, "in_a_list": [value]}
    event = prepare_event("a", payload)
    assert json.loads(event.payload_json) == {"value": stored, "in_a_list": [stored]}
    assert event.payload is payload  # the caller's object, untouched


def test_a_dataclass_can_be_the_whole_payload() -> None:
    event = prepare_event("a", Money(decimal.Decimal("1.50"), "EUR"))
    assert json.loads(event.payload_json) == {"amount": "1.50", "currency": "EUR"}


def test_a_pydantic_model_is_stored_as_its_json_mode_dump() -> None:
    pydantic = pytest.importorskip("pydantic", reason="pydantic is not installed")

    class Order(pydantic.BaseModel):  # type: ignore[name-defined,misc]
        id: uuid.UUID
        total: decimal.Decimal
        placed_at: dt.datetime
        lines: list[int]

    order = Order(
        id=ORDER_ID,
        total=decimal.Decimal("10.50"),
        placed_at=dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
        lines=[1, 2],
    )
    event = prepare_event("order.placed", {"order": order})
    assert json.loads(event.payload_json) == {"order": order.model_dump(mode="json")}
    assert json.loads(prepare_event("order.placed", order).payload_json) == order.model_dump(
        mode="json"
    )


def test_naive_datetime_in_a_payload_is_refused_naming_where_and_the_fix() -> None:
    message = refused(
        r"payload\['at'\] is a naive datetime", payload={"at": dt.datetime(2030, 1, 1)}
    )
    assert "timezone-aware" in message
    assert "json_default" in message


@pytest.mark.parametrize("special", ["NaN", "sNaN", "Infinity", "-Infinity"])
def test_decimal_that_is_not_a_number_is_refused(special: str) -> None:
    refused(r"payload\['price'\] is Decimal", payload={"price": decimal.Decimal(special)})


def test_values_inside_a_dataclass_are_checked_with_their_path() -> None:
    refused(r"payload\['price'\]\['amount'\] is nan", payload={"price": Money(math.nan, "EUR")})
    refused(r"payload\['price'\]\['currency'\] is a bytes", payload={"price": Money(1, b"EUR")})


def test_a_dataclass_that_contains_itself_is_refused() -> None:
    money = Money(1, "EUR")
    money.amount = money
    refused("nested too deeply", payload=money)


def test_a_dataclass_class_is_not_an_instance() -> None:
    refused(r"payload\['kind'\] is a type", payload={"kind": Money})


# -- payload: json_default ---------------------------------------------------------------


@pytest.fixture
def json_default() -> Iterator[None]:
    """Lets a test set a json_default; none is set afterwards."""
    yield
    set_json_default(None)


class Point:
    def __init__(self, x: int, y: int) -> None:
        self.x, self.y = x, y


def encode_points(value: Any) -> Any:
    if isinstance(value, Point):
        return [value.x, value.y]
    raise TypeError(f"{type(value).__name__} is not a Point")


@pytest.mark.usefixtures("json_default")
def test_json_default_converts_what_the_built_ins_do_not_know() -> None:
    refused(r"payload\['at'\] is a Point", payload={"at": Point(1, 2)})
    outbox.configure(json_default=encode_points)
    event = prepare_event("a", {"at": Point(1, 2), "path": (Point(0, 0), Point(3, 4))})
    assert json.loads(event.payload_json) == {"at": [1, 2], "path": [[0, 0], [3, 4]]}


@pytest.mark.usefixtures("json_default")
def test_json_default_is_asked_before_the_built_ins() -> None:
    def decimals_as_numbers(value: Any) -> Any:
        if isinstance(value, decimal.Decimal):
            return float(value)
        raise TypeError

    outbox.configure(json_default=decimals_as_numbers)
    event = prepare_event("a", {"price": decimal.Decimal("9.5"), "id": ORDER_ID})
    # Its TypeError hands what it does not know to the built-ins.
    assert json.loads(event.payload_json) == {"price": 9.5, "id": str(ORDER_ID)}


@pytest.mark.usefixtures("json_default")
def test_a_type_neither_knows_is_refused_with_what_json_default_said() -> None:
    outbox.configure(json_default=encode_points)
    message = refused(r"payload\['tags'\] is a set", payload={"tags": {1}})
    assert "set is not a Point" in message


@pytest.mark.usefixtures("json_default")
def test_what_json_default_returns_is_checked_like_the_payload() -> None:
    outbox.configure(json_default=lambda value: {"x": math.nan})
    refused(r"payload\['at'\]\['x'\] is nan", payload={"at": Point(1, 2)})

    def points_as_money(value: Any) -> Any:
        if isinstance(value, Point):
            return Money(value.x, "EUR")  # converted in turn: asked again, then built in
        raise TypeError

    outbox.configure(json_default=points_as_money)
    event = prepare_event("a", {"at": Point(1, 2)})
    assert json.loads(event.payload_json) == {"at": {"amount": 1, "currency": "EUR"}}


@pytest.mark.usefixtures("json_default")
def test_json_default_that_returns_its_argument_is_refused() -> None:
    outbox.configure(json_default=lambda value: value)
    refused(
        r"payload\['at'\]: json_default returned the Point it was given",
        payload={"at": Point(1, 2)},
    )


@pytest.mark.usefixtures("json_default")
def test_json_default_that_never_reaches_json_is_refused() -> None:
    outbox.configure(json_default=lambda value: Point(1, 2))
    refused(r"payload\['at'\]: json_default .* Point", payload={"at": Point(1, 2)})


@pytest.mark.usefixtures("json_default")
def test_an_error_in_json_default_is_a_publish_error_naming_where() -> None:
    def broken(value: Any) -> Any:
        raise ValueError("no exchange rate")

    outbox.configure(json_default=broken)
    with pytest.raises(
        outbox.PublishError,
        match=r"payload\['at'\]: json_default raised ValueError.*no exchange rate",
    ) as info:
        prepare_event("a", {"at": Point(1, 2)})
    assert isinstance(info.value.__cause__, ValueError)


@pytest.mark.usefixtures("json_default")
def test_configure_refuses_a_json_default_that_is_not_callable() -> None:
    with pytest.raises(TypeError, match="json_default must be callable"):
        outbox.configure(json_default="str")  # type: ignore[arg-type]


@pytest.mark.usefixtures("json_default")
def test_configure_without_json_default_keeps_the_one_set() -> None:
    outbox.configure(json_default=encode_points)
    outbox.configure(max_payload_bytes=DEFAULT_MAX_PAYLOAD_BYTES)
    assert json.loads(prepare_event("a", Point(1, 2)).payload_json) == [1, 2]


# -- payload: size cap -------------------------------------------------------------------


def _payload_of_size(size: int) -> dict[str, str]:
    """A payload whose compact JSON is exactly ``size`` UTF-8 bytes."""
    overhead = len(json.dumps({"s": ""}, separators=(",", ":")))
    return {"s": "x" * (size - overhead)}


@pytest.mark.usefixtures("payload_cap")
def test_payload_over_the_cap_is_refused_with_both_sizes() -> None:
    outbox.configure(max_payload_bytes=100)
    message = refused("payload", payload=_payload_of_size(101))
    assert "101 bytes" in message
    assert "100" in message
    assert "order.confirmed" in message


@pytest.mark.usefixtures("payload_cap")
def test_payload_exactly_at_the_cap_is_accepted() -> None:
    outbox.configure(max_payload_bytes=100)
    event = prepare_event("order.confirmed", _payload_of_size(100))
    assert len(event.payload_json.encode()) == 100


@pytest.mark.usefixtures("payload_cap")
def test_payload_size_counts_utf8_bytes_not_characters() -> None:
    outbox.configure(max_payload_bytes=100)
    overhead = len(json.dumps({"s": ""}, separators=(",", ":")))
    # Two bytes each in UTF-8: half as many characters fill the cap.
    at_cap = {"s": "é" * ((100 - overhead) // 2)}
    assert len(prepare_event("a", at_cap).payload_json.encode()) <= 100
    refused("bytes", payload={"s": "é" * (100 - overhead)})


def test_default_payload_cap_is_one_mebibyte() -> None:
    prepare_event("a", _payload_of_size(DEFAULT_MAX_PAYLOAD_BYTES))
    refused("bytes", payload=_payload_of_size(DEFAULT_MAX_PAYLOAD_BYTES + 1))


@pytest.mark.usefixtures("payload_cap")
@pytest.mark.parametrize("bad", [0, -1])
def test_configure_refuses_a_cap_that_is_not_positive(bad: int) -> None:
    with pytest.raises(ValueError, match="max_payload_bytes"):
        outbox.configure(max_payload_bytes=bad)


# -- topic -------------------------------------------------------------------------------


def test_empty_topic_is_refused() -> None:
    refused("topic must not be empty", topic="")


@pytest.mark.parametrize(
    "topic",
    [
        ".",
        "a..b",
        "a.",
        ".a",
        "a b",
        "ä",
        "order.confirmé",
        "a/b",
        "a*",
        "a.#",
        "a\x00b",
        "a\n",
        "order.confirmed\n",
        " a",
    ],
)
def test_malformed_topic_is_refused_quoting_it(topic: str) -> None:
    message = refused("invalid topic", topic=topic)
    assert repr(topic) in message
    assert "dot-separated" in message


def test_topic_longer_than_the_limit_is_refused() -> None:
    message = refused("topic is", topic="a" * (MAX_TOPIC_LENGTH + 1))
    assert str(MAX_TOPIC_LENGTH) in message


@pytest.mark.parametrize("topic", [None, 1, b"order", ["order"]])
def test_topic_that_is_not_a_str_is_refused(topic: Any) -> None:
    refused("topic must be a str", topic=topic)


@pytest.mark.parametrize(
    "topic",
    ["a", "order.confirmed", "A-b_c.D-9", "0.1.2", "_", "-", "a" * MAX_TOPIC_LENGTH],
)
def test_valid_topics_pass(topic: str) -> None:
    assert prepare_event(topic, {}).topic == topic


# -- key and dedup_key -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["key", "dedup_key"])
@pytest.mark.parametrize("value", [1, b"k", ["k"], 1.5])
def test_key_of_wrong_type_is_refused(name: str, value: Any) -> None:
    refused(f"^{name} must be a str or None, got {type(value).__name__}", **{name: value})


@pytest.mark.parametrize("name", ["key", "dedup_key"])
def test_empty_key_is_refused(name: str) -> None:
    refused(f"^{name} must not be empty", **{name: ""})


@pytest.mark.parametrize("name", ["key", "dedup_key"])
def test_key_over_the_limit_is_refused(name: str) -> None:
    refused(f"^{name} is {MAX_KEY_LENGTH + 1} characters", **{name: "k" * (MAX_KEY_LENGTH + 1)})
    assert getattr(prepare_event("a", {}, **{name: "k" * MAX_KEY_LENGTH}), name)


@pytest.mark.parametrize("name", ["key", "dedup_key"])
def test_nul_in_a_key_is_refused(name: str) -> None:
    refused(f"^{name} contains a NUL", **{name: "a\x00"})


# -- headers -----------------------------------------------------------------------------


@pytest.mark.parametrize("headers", [[("a", "b")], "a=b", 1])
def test_headers_that_are_not_a_mapping_are_refused(headers: Any) -> None:
    refused(f"headers must be a mapping.*got {type(headers).__name__}", headers=headers)


@pytest.mark.parametrize(
    ("headers", "match"),
    [
        ({"x-count": 1}, "header 'x-count' must be a str, got int"),
        ({"x-none": None}, "header 'x-none' must be a str, got NoneType"),
        ({"x-bytes": b"v"}, "header 'x-bytes' must be a str, got bytes"),
        ({1: "v"}, "header name 1 must be a non-empty str"),
        ({"": "v"}, "header name '' must be a non-empty str"),
        ({"x-nul": "a\x00"}, "header 'x-nul' contains a NUL"),
        ({"x\x00": "v"}, "header name contains a NUL"),
    ],
)
def test_bad_header_is_refused_naming_it(headers: Any, match: str) -> None:
    refused(match, headers=headers)


def test_headers_may_be_any_mapping_and_are_copied() -> None:
    source = {"traceparent": "00-abc-def-01"}
    event = prepare_event("a", {}, headers=types.MappingProxyType(source))
    source["later"] = "change"
    assert event.headers == {"traceparent": "00-abc-def-01"}


# -- process_at and delay ----------------------------------------------------------------


def test_naive_process_at_is_refused() -> None:
    refused("process_at must be timezone-aware", process_at=dt.datetime(2030, 1, 1))


def test_process_at_that_is_not_a_datetime_is_refused() -> None:
    refused("process_at must be a datetime, got date", process_at=dt.date(2030, 1, 1))
    refused("process_at must be a datetime, got str", process_at="2030-01-01T00:00:00Z")


def test_process_at_and_delay_together_are_refused() -> None:
    refused("process_at or delay, not both", process_at=dt.datetime.now(UTC), delay=5)


@pytest.mark.parametrize(
    "delay", [-1, -0.5, dt.timedelta(seconds=-1), math.nan, math.inf, -math.inf]
)
def test_negative_or_non_finite_delay_is_refused(delay: Any) -> None:
    refused("delay must be a finite, non-negative duration", delay=delay)


@pytest.mark.parametrize("delay", ["5", True, [5]])
def test_delay_of_wrong_type_is_refused(delay: Any) -> None:
    refused(f"delay must be a timedelta or seconds, got {type(delay).__name__}", delay=delay)


@pytest.mark.parametrize("delay", [1e15, dt.timedelta.max])
def test_delay_beyond_any_schedule_is_refused(delay: Any) -> None:
    # now() + delay would overflow timestamptz and abort the caller's transaction.
    refused("delay must be at most", delay=delay)


@pytest.mark.parametrize(
    ("delay", "seconds"), [(0, 0.0), (2.5, 2.5), (dt.timedelta(minutes=2), 120.0)]
)
def test_valid_delay_is_kept_in_seconds(delay: Any, seconds: float) -> None:
    assert prepare_event("a", {}, delay=delay).delay == seconds


def test_aware_process_at_in_any_zone_is_kept() -> None:
    plus_two = dt.timezone(dt.timedelta(hours=2))
    when = dt.datetime(2030, 1, 1, 12, tzinfo=plus_two)
    assert prepare_event("a", {}, process_at=when).process_at == when


# -- valid edge cases --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ((1, 2, (3,)), [1, 2, [3]]),
        (
            {"name": "Zoë", "city": "東京", "emoji": "🎉"},
            {"name": "Zoë", "city": "東京", "emoji": "🎉"},
        ),
        ([None], [None]),
        ({"none": None}, {"none": None}),
        (True, True),
        (0, 0),
        (-1.5, -1.5),
        ("text", "text"),
        ([], []),
        ({}, {}),
        ({"big": 2**80}, {"big": 2**80}),
        (types.MappingProxyType({"a": 1}), {"a": 1}),
        ({"nested": types.MappingProxyType({"b": [1]})}, {"nested": {"b": [1]}}),
    ],
)
def test_valid_payloads_pass_and_serialise_as_json(payload: Any, expected: Any) -> None:
    event = prepare_event("a", payload)
    assert json.loads(event.payload_json) == expected
    assert event.payload is payload


def test_unicode_is_stored_as_is_not_escaped() -> None:
    event = prepare_event("a", {"name": "Zoë"})
    assert "Zoë" in event.payload_json


def test_unicode_in_key_dedup_key_and_headers_is_accepted() -> None:
    event = prepare_event("a", {}, key="ключ", dedup_key="clé-1", headers={"x-name": "Zoë"})
    assert (event.key, event.dedup_key, event.headers) == ("ключ", "clé-1", {"x-name": "Zoë"})


# -- nesting: whatever publish() accepts, the relay can decode -----------------------------------


def nested(levels: int, kind: str = "list") -> Any:
    """``levels`` arrays (or objects) inside each other, the innermost holding 1."""
    payload: Any = 1
    for _ in range(levels):
        payload = [payload] if kind == "list" else {"k": payload}
    return payload


@pytest.mark.parametrize("kind", ["list", "dict"])
def test_payload_at_the_nesting_limit_is_accepted_and_decodes(kind: str) -> None:
    event = prepare_event("order.confirmed", nested(MAX_PAYLOAD_DEPTH, kind))
    # As the relay decodes a claimed batch: every payload inside one more array.
    assert json.loads("[" + event.payload_json + "]") == [nested(MAX_PAYLOAD_DEPTH, kind)]


@pytest.mark.parametrize("kind", ["list", "dict"])
def test_payload_one_level_past_the_limit_is_refused_naming_the_limit(kind: str) -> None:
    message = refused(
        f"nested too deeply: .* at most {MAX_PAYLOAD_DEPTH} levels deep",
        payload=nested(MAX_PAYLOAD_DEPTH + 1, kind),
    )
    assert message.startswith("payload[")  # the path to the level too deep


def test_the_nesting_limit_is_reported_with_its_path() -> None:
    payload = {"a": [nested(MAX_PAYLOAD_DEPTH - 1)]}
    refused(r"payload\['a'\]\[0\](\[0\])* is nested too deeply", payload=payload)


def test_a_list_990_deep_is_refused_at_publish_not_at_claim() -> None:
    refused(f"at most {MAX_PAYLOAD_DEPTH} levels", payload=nested(990))
