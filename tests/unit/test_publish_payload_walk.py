"""The payload check's shortcuts (exact types inline, all keys of an object at once) refuse and
accept exactly what a value-by-value check does, and name the same place. No database."""

from __future__ import annotations

import enum
import json
import types
from collections import OrderedDict
from typing import Any

import pytest

from outbox._validation import prepare_event
from outbox.exceptions import PublishError


class Level(enum.IntEnum):
    HIGH = 1


class Label(str):
    pass


def payload_json(payload: Any) -> Any:
    return json.loads(prepare_event("order.confirmed", payload).payload_json)


def refused(payload: Any) -> str:
    with pytest.raises(PublishError) as raised:
        prepare_event("order.confirmed", payload)
    return str(raised.value)


def test_the_first_fault_in_the_payload_is_the_one_named() -> None:
    # A bad value before a bad key: the value is named, as a check entry by entry would.
    assert "payload['a'] is nan" in refused({"a": float("nan"), 5: 1})
    assert "payload has a key 5" in refused({5: 1, "a": float("nan")})
    assert "payload['a'] key contains a NUL" in refused({"a": {"b\x00": 1}, "c": [float("inf")]})


@pytest.mark.parametrize(
    "payload",
    [
        types.MappingProxyType({"a": {1: "x"}}),
        OrderedDict([("a", OrderedDict([(1, "x")]))]),
        {"a": [{"b": 1}, {None: 2}]},
    ],
)
def test_a_key_that_is_not_a_str_is_named_in_any_mapping(payload: Any) -> None:
    assert "JSON object keys are str" in refused(payload)


@pytest.mark.parametrize(
    ("payload", "where"),
    [
        ({"ok": "x", "bad": "a\x00b"}, "payload['bad'] contains a NUL"),
        ([1, 2, ["\ud800"]], "payload[2][0] contains a lone surrogate"),
        ({"é\x00": 1}, "payload key contains a NUL"),
        ({"\ud800": 1}, "payload key contains a lone surrogate"),
        ((1.5, float("-inf")), "payload[1] is -inf"),
    ],
)
def test_text_and_numbers_are_refused_naming_where(payload: Any, where: str) -> None:
    assert where in refused(payload)


def test_subclasses_of_plain_types_are_checked_and_stored_as_before() -> None:
    payload = {Label("k"): Level.HIGH, "s": Label("é"), "t": (True, None, 2.5)}
    assert payload_json(payload) == {"k": 1, "s": "é", "t": [True, None, 2.5]}
    assert "contains a NUL" in refused({Label("k\x00"): 1})


def test_the_same_object_twice_is_not_a_cycle() -> None:
    shared = {"x": [1, 2]}
    assert payload_json({"a": shared, "b": [shared, shared]}) == {
        "a": {"x": [1, 2]},
        "b": [{"x": [1, 2]}, {"x": [1, 2]}],
    }


def test_a_cycle_is_refused_as_nested_too_deeply() -> None:
    looped: dict[str, Any] = {}
    looped["self"] = [looped]
    assert "nested too deeply" in refused(looped)
