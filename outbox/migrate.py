"""Versioned SQL migrations, shipped in the wheel and applied under an advisory lock."""

from __future__ import annotations

import dataclasses
import re
from importlib import resources
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from outbox._identifiers import validate_identifier
from outbox._queries import for_schema, render
from outbox.exceptions import DatabaseError, DatabaseUnavailable, MigrationError

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


def _sql_of(migration: Migration) -> str:
    # 0001 created a NOTIFY trigger on this channel; 0003 drops it (publishers notify).
    return migration.sql.replace(":channel", sql.Literal(DEFAULT_CHANNEL).as_string(None))


def _lock_key(schema: str) -> str:
    return f"outbox-migrate:{schema}"


def _record(schema: str, migration: Migration) -> bytes:
    return render(
        "record_migration",
        migrations=sql.Identifier(schema, "outbox_migrations"),
        version=sql.Literal(migration.version),
        migration_name=sql.Literal(migration.name),
    )


def migration_script(*, schema: str = DEFAULT_SCHEMA) -> str:
    """The SQL of every migration as one script, for teams that apply migrations themselves."""
    validate_identifier(schema, "schema")
    statements = for_schema(schema)
    parts = ["BEGIN;\n"]
    for name in ("create_migrations_table", "use_schema"):
        parts.append(statements[name].decode() + ";\n")
    for migration in available_migrations():
        parts.append(f"\n-- {migration.version:04d}_{migration.name}\n")
        parts.append(_sql_of(migration))
        parts.append(_record(schema, migration).decode() + ";\n")
    parts.append("COMMIT;\n")
    return "".join(parts)


def migrate(url: str, *, schema: str = DEFAULT_SCHEMA) -> list[Migration]:
    """Apply the migrations this database lacks, in one transaction; return those applied.

    A transaction-level advisory lock makes concurrent runs safe: the second waits, then finds
    nothing left to do.
    """
    validate_identifier(schema, "schema")
    from outbox._urls import libpq_url

    statements = for_schema(schema)
    with psycopg.connect(libpq_url(url)) as conn, conn.transaction():
        conn.execute(statements["lock_migrations"], {"lock_key": _lock_key(schema)})
        conn.execute(statements["create_migrations_table"])
        applied = {int(str(row[0])) for row in conn.execute(statements["applied_migrations"])}
        pending = [m for m in available_migrations() if m.version not in applied]
        conn.execute(statements["use_schema"])
        for migration in pending:
            try:
                conn.execute(_sql_of(migration).encode())
            except psycopg.Error as error:
                raise MigrationError(
                    f"migration {migration.version:04d}_{migration.name} failed: {error}"
                ) from error
            conn.execute(_record(schema, migration))
        return pending


async def check_migrated(conn: psycopg.AsyncConnection[Any], schema: str) -> None:
    """Raise MigrationError if ``schema`` lacks a migration this version needs: a relay newer
    than its schema would fail every statement that uses what the migration adds. A schema
    without outbox_migrations (made by other means) is not checked."""
    try:
        cursor = await conn.execute(for_schema(schema)["applied_migrations"])
        applied = {int(record[0]) for record in await cursor.fetchall()}
    except psycopg.errors.UndefinedTable:
        return
    except psycopg.OperationalError as error:
        raise DatabaseUnavailable(str(error)) from error
    except psycopg.Error as error:
        raise DatabaseError(str(error)) from error
    missing = [m for m in available_migrations() if m.version not in applied]
    if missing:
        names = ", ".join(f"{m.version:04d}_{m.name}" for m in missing)
        raise MigrationError(
            f"schema {schema!r} lacks migration {names}: "
            "run `outbox migrate` before starting this relay"
        )
