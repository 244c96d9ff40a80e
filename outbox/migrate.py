"""Versioned SQL migrations, shipped in the wheel and applied under an advisory lock."""

from __future__ import annotations

import dataclasses
import re
from importlib import resources
from pathlib import Path

import psycopg
from psycopg import sql

from outbox._identifiers import validate_identifier
from outbox.exceptions import MigrationError

DEFAULT_SCHEMA = "public"
DEFAULT_CHANNEL = "outbox"

_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclasses.dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def _migrations_dir() -> Path:
    shipped = resources.files("outbox") / "migrations"
    if shipped.is_dir():
        return Path(str(shipped))
    # A source checkout or editable install: the top-level folder of the repository.
    return Path(__file__).resolve().parent.parent / "migrations"


def available_migrations() -> list[Migration]:
    """Every migration shipped with this version, in order."""
    found = []
    for path in sorted(_migrations_dir().glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if match is None:
            raise MigrationError(f"{path}: migration files are named NNNN_description.sql")
        found.append(Migration(int(match[1]), match[2], path.read_text(encoding="utf-8")))
    if not found:
        raise MigrationError(f"no migrations found in {_migrations_dir()}")
    return found


def _render(migration: Migration) -> str:
    # 0001 created a NOTIFY trigger on this channel; 0003 drops it (publishers notify).
    return migration.sql.replace(":channel", f"'{DEFAULT_CHANNEL}'")


def _lock_key(schema: str) -> str:
    return f"outbox-migrate:{schema}"


def _bootstrap(schema: str) -> sql.Composed:
    return sql.SQL(
        "CREATE SCHEMA IF NOT EXISTS {schema};\n"
        "CREATE TABLE IF NOT EXISTS {schema}.outbox_migrations (\n"
        "    version integer NOT NULL,\n"
        "    name text NOT NULL,\n"
        "    applied_at timestamptz NOT NULL DEFAULT now(),\n"
        "    CONSTRAINT outbox_migrations_pkey PRIMARY KEY (version)\n"
        ");\n"
    ).format(schema=sql.Identifier(schema))


def _record(schema: str, migration: Migration) -> sql.Composed:
    return sql.SQL(
        "INSERT INTO {schema}.outbox_migrations (version, name) VALUES ({v}, {n});\n"
    ).format(
        schema=sql.Identifier(schema),
        v=sql.Literal(migration.version),
        n=sql.Literal(migration.name),
    )


def migration_script(*, schema: str = DEFAULT_SCHEMA) -> str:
    """The SQL of every migration as one script, for teams that apply migrations themselves."""
    validate_identifier(schema, "schema")
    parts = ["BEGIN;\n", _bootstrap(schema).as_string(None)]
    parts.append(
        sql.SQL("SET LOCAL search_path TO {};\n").format(sql.Identifier(schema)).as_string(None)
    )
    for migration in available_migrations():
        parts.append(f"\n-- {migration.version:04d}_{migration.name}\n")
        parts.append(_render(migration))
        parts.append(_record(schema, migration).as_string(None))
    parts.append("COMMIT;\n")
    return "".join(parts)


def migrate(url: str, *, schema: str = DEFAULT_SCHEMA) -> list[Migration]:
    """Apply the migrations this database lacks, in one transaction; return those applied.

    A transaction-level advisory lock makes concurrent runs safe: the second waits, then finds
    nothing left to do.
    """
    validate_identifier(schema, "schema")
    from outbox._urls import libpq_url

    with psycopg.connect(libpq_url(url)) as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", [_lock_key(schema)])
        conn.execute(_bootstrap(schema))
        applied = _applied_versions(conn, schema)
        pending = [m for m in available_migrations() if m.version not in applied]
        conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(schema)))
        for migration in pending:
            try:
                conn.execute(_render(migration).encode())
            except psycopg.Error as error:
                raise MigrationError(
                    f"migration {migration.version:04d}_{migration.name} failed: {error}"
                ) from error
            conn.execute(_record(schema, migration))
        return pending


def _applied_versions(conn: psycopg.Connection[tuple[object, ...]], schema: str) -> set[int]:
    query = sql.SQL("SELECT version FROM {}.outbox_migrations").format(sql.Identifier(schema))
    return {int(str(row[0])) for row in conn.execute(query)}
