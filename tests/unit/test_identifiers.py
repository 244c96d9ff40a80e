"""Identifiers and names from configuration are matched whole: a trailing newline is not
a valid schema, pattern or sink name."""

from __future__ import annotations

import pytest

from outbox._identifiers import validate_identifier
from outbox.routing import validate_pattern
from outbox.settings import Settings


@pytest.mark.parametrize("value", ["public", "_x", "a1_b", "A" * 63])
def test_plain_identifiers_pass(value: str) -> None:
    assert validate_identifier(value, "schema") == value


@pytest.mark.parametrize(
    "value", ["", "1abc", "a-b", 'a"b', "a b", "public\n", "public;drop", "A" * 64]
)
def test_other_identifiers_are_refused(value: str) -> None:
    with pytest.raises(ValueError, match="invalid schema"):
        validate_identifier(value, "schema")


@pytest.mark.parametrize("pattern", ["order.created\n", "order.*\n", "#\n"])
def test_a_pattern_with_a_trailing_newline_is_refused(pattern: str) -> None:
    with pytest.raises(ValueError, match="invalid topic pattern"):
        validate_pattern(pattern)


def test_a_sink_name_with_a_trailing_newline_is_refused() -> None:
    with pytest.raises(ValueError, match="invalid sink name"):
        Settings(sinks={"billing\n": {"type": "callable", "target": "os:getcwd"}})
