"""The statement registry: ``outbox/sql/queries.sql``, loaded once, rendered once.

Each block of the file is a named statement or a shared fragment. :func:`for_schema` gives
the statements over one schema's tables, rendered to bytes the first time each is asked for;
:func:`render` renders one with identifiers of the caller's choosing (the postgres sink's
target table).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from importlib import resources

from psycopg import sql

_HEADER = re.compile(r"^-- (name|fragment): ([a-z_][a-z0-9_]*)\s*$")


@functools.cache
def statements() -> Mapping[str, str]:
    """Every named statement of the registry, fragments expanded, comments dropped."""
    text = resources.files("outbox").joinpath("sql/queries.sql").read_text(encoding="utf-8")
    named, fragments = _parse(text)
    return {name: _expand(body, fragments) for name, body in named.items()}


def render(name: str, **placeholders: sql.Composable) -> bytes:
    """Statement ``name`` with its ``{placeholders}`` rendered by ``psycopg.sql``."""
    try:
        template = statements()[name]
    except KeyError:
        raise KeyError(f"no statement named {name!r} in outbox/sql/queries.sql") from None
    return sql.SQL(template).format(**placeholders).as_bytes(None)


class SchemaStatements:
    """The registry's statements over one schema's outbox tables."""

    def __init__(self, schema: str) -> None:
        self.schema = schema
        self._placeholders = {
            "table": sql.Identifier(schema, "outbox_events"),
            "sinks": sql.Identifier(schema, "outbox_sinks"),
            "migrations": sql.Identifier(schema, "outbox_migrations"),
            "claims": sql.Identifier(schema, "outbox_claims"),
            "schema": sql.Identifier(schema),
        }
        self._rendered: dict[str, bytes] = {}

    def __getitem__(self, name: str) -> bytes:
        try:
            return self._rendered[name]
        except KeyError:
            rendered = self._rendered[name] = render(name, **self._placeholders)
            return rendered


@functools.cache
def for_schema(schema: str) -> SchemaStatements:
    """The statements over ``schema`` (validated when the settings loaded)."""
    return SchemaStatements(schema)


def _parse(text: str) -> tuple[dict[str, str], dict[str, str]]:
    named: dict[str, str] = {}
    fragments: dict[str, str] = {}
    kind, name, lines = "", "", list[str]()

    def close() -> None:
        if not kind:
            return
        target = named if kind == "name" else fragments
        if name in named or name in fragments:
            raise ValueError(f"queries.sql: {name!r} is defined twice")
        target[name] = "\n".join(line for line in lines if not line.startswith("--")).strip()

    for line in text.splitlines():
        header = _HEADER.match(line)
        if header:
            close()
            kind, name, lines = header[1], header[2], []
        elif kind:
            lines.append(line)
    close()
    return named, fragments


def _expand(body: str, fragments: Mapping[str, str], depth: int = 0) -> str:
    if depth > 8:
        raise ValueError("queries.sql: fragments include each other in a cycle")
    for name, fragment in fragments.items():
        placeholder = "{" + name + "}"
        if placeholder in body:
            body = body.replace(placeholder, _expand(fragment, fragments, depth + 1))
    return body
