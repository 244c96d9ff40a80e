"""Identifiers that come from configuration (schema, table, channel names)."""

from __future__ import annotations

import re

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def validate_identifier(value: str, what: str) -> str:
    """Return ``value`` if it is a plain Postgres identifier, else raise ``ValueError``."""
    if not isinstance(value, str) or not _IDENTIFIER.fullmatch(value):
        raise ValueError(
            f"invalid {what} {value!r}: use letters, digits and underscores, "
            "not starting with a digit, at most 63 characters"
        )
    return value
