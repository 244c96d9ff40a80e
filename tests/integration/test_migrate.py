"""`outbox migrate` as an operator runs it, and the proof that migrations and `outbox.metadata`
declare the same schema (so an application's Alembic autogenerate finds nothing to do)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from click.testing import CliRunner
from sqlalchemy import (
    Column,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
)

import outbox
from outbox._urls import sqlalchemy_url
from outbox.cli import main
from outbox.migrate import available_migrations
from outbox.publish import configure

SHIPPED = [(m.version, m.name) for m in available_migrations()]
APPLIED_LINES = [f"applied {version:04d}_{name}" for version, name in SHIPPED]
UNREACHABLE = "postgresql://nobody@127.0.0.1:1/nothing?connect_timeout=2"


def outbox_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "outbox.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def start_outbox_cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "outbox.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def query(url: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql.encode(), params).fetchall()


def recorded_migrations(url: str, schema: str = "public") -> list[tuple[int, str]]:
    return [
        (row[0], row[1])
        for row in query(url, f'SELECT version, name FROM "{schema}".outbox_migrations')
    ]


def describe_schema(url: str, schema: str = "public") -> dict[str, Any]:
    """Everything about the outbox tables that a migration decides, in comparable form."""
    columns = query(
        url,
        """SELECT table_name, column_name, data_type, is_nullable, column_default,
                  is_identity, identity_generation
           FROM information_schema.columns WHERE table_schema = %s
           ORDER BY table_name, ordinal_position""",
        [schema],
    )
    indexes = query(
        url,
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = %s ORDER BY indexname",
        [schema],
    )
    constraints = query(
        url,
        """SELECT c.conname, pg_get_constraintdef(c.oid) FROM pg_constraint c
           JOIN pg_namespace n ON n.oid = c.connamespace WHERE n.nspname = %s
           ORDER BY c.conname""",
        [schema],
    )
    triggers = query(
        url,
        """SELECT t.tgname, pg_get_triggerdef(t.oid) FROM pg_trigger t
           JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = %s AND NOT t.tgisinternal ORDER BY t.tgname""",
        [schema],
    )
    options = query(
        url,
        """SELECT c.relname, c.reloptions FROM pg_class c
           JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = %s AND c.relkind = 'r' ORDER BY c.relname""",
        [schema],
    )
    migrations = recorded_migrations(url, schema)
    return {
        "columns": columns,
        "indexes": indexes,
        "constraints": constraints,
        "triggers": triggers,
        "options": options,
        "migrations": migrations,
    }


# -- outbox migrate ----------------------------------------------------------------------


def test_migrate_applies_and_records_migrations_then_is_up_to_date(
    empty_database_url: str,
) -> None:
    result = outbox_cli("migrate", "--database-url", empty_database_url)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == APPLIED_LINES
    assert APPLIED_LINES[0] == "applied 0001_create_outbox_events"
    assert recorded_migrations(empty_database_url) == SHIPPED
    assert query(empty_database_url, "SELECT to_regclass('public.outbox_events')::text") == [
        ("outbox_events",)
    ]

    again = outbox_cli("migrate", "--database-url", empty_database_url)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "up to date"
    assert recorded_migrations(empty_database_url) == SHIPPED


def test_migrations_are_numbered_from_one_without_gaps() -> None:
    assert [version for version, _ in SHIPPED] == list(range(1, len(SHIPPED) + 1))


def test_migrate_returns_what_it_applied(empty_database_url: str) -> None:
    assert [(m.version, m.name) for m in outbox.migrate(empty_database_url)] == SHIPPED
    assert outbox.migrate(empty_database_url) == []


def test_migrate_reads_the_url_from_the_environment(empty_database_url: str) -> None:
    result = CliRunner().invoke(main, ["migrate"], env={"OUTBOX_DATABASE_URL": empty_database_url})
    assert result.exit_code == 0, result.output
    assert recorded_migrations(empty_database_url) == SHIPPED


@pytest.fixture
def outbox_schema() -> Iterator[None]:
    """Lets a test point publish() at another schema or channel; defaults afterwards."""
    yield
    configure(schema="public", channel="outbox")


@pytest.mark.usefixtures("outbox_schema")
def test_migrate_into_another_schema(empty_database_url: str) -> None:
    result = outbox_cli("migrate", "--database-url", empty_database_url, "--schema", "other")
    assert result.returncode == 0, result.stderr
    found = query(
        empty_database_url,
        "SELECT DISTINCT table_schema FROM information_schema.tables "
        "WHERE table_name LIKE 'outbox%%'",
    )
    assert found == [("other",)]
    assert query(empty_database_url, "SELECT to_regclass('other.outbox_events')::text") == [
        ("other.outbox_events",)
    ]
    assert recorded_migrations(empty_database_url, "other") == SHIPPED

    configure(schema="other")
    with psycopg.connect(empty_database_url) as conn:
        event = outbox.publish(conn, "order.confirmed", {})
    assert query(empty_database_url, "SELECT id FROM other.outbox_events") == [(event.id,)]


@pytest.mark.usefixtures("outbox_schema")
def test_publish_notifies_the_configured_channel(empty_database_url: str) -> None:
    outbox.migrate(empty_database_url)
    configure(channel="orders_outbox")
    with psycopg.connect(empty_database_url, autocommit=True) as listener:
        listener.execute("LISTEN orders_outbox")
        with psycopg.connect(empty_database_url) as conn:
            outbox.publish(conn, "a", {})
        [notify] = list(listener.notifies(timeout=30, stop_after=1))
    assert notify.channel == "orders_outbox"


def test_the_outbox_table_has_no_trigger(database_url: str) -> None:
    # Publishers notify (decision 0008); a trigger would cost every publishing transaction.
    assert query(database_url, "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal") == []


def test_printed_sql_gives_the_same_schema_as_migrate(
    empty_database_url: str, database_url: str
) -> None:
    result = outbox_cli("migrate", "--sql")
    assert result.returncode == 0, result.stderr
    script = result.stdout
    assert script.startswith("BEGIN;")
    assert script.rstrip().endswith("COMMIT;")
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        conn.execute(script.encode())
    # database_url was migrated by outbox.migrate() (the test template).
    assert describe_schema(empty_database_url) == describe_schema(database_url)
    assert describe_schema(empty_database_url)["migrations"] == SHIPPED


def test_printed_sql_for_another_schema(empty_database_url: str) -> None:
    result = CliRunner().invoke(main, ["migrate", "--sql", "--schema", "other"])
    assert result.exit_code == 0, result.output
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        conn.execute(result.stdout.encode())
    assert recorded_migrations(empty_database_url, "other") == SHIPPED
    assert query(empty_database_url, "SELECT to_regclass('public.outbox_events')") == [(None,)]


def test_concurrent_migrate_processes_apply_once(empty_database_url: str) -> None:
    processes = [
        start_outbox_cli("migrate", "--database-url", empty_database_url) for _ in range(2)
    ]
    outputs = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stderr
        outputs.append(stdout.strip())
    assert sorted(outputs) == sorted(["\n".join(APPLIED_LINES), "up to date"])
    assert recorded_migrations(empty_database_url) == SHIPPED


def test_invalid_schema_is_exit_code_2_with_a_clear_message(empty_database_url: str) -> None:
    result = outbox_cli("migrate", "--database-url", empty_database_url, "--schema", "bad-name")
    assert result.returncode == 2
    assert "invalid schema 'bad-name'" in result.stderr
    assert "letters, digits and underscores" in result.stderr
    assert result.stdout == ""
    assert query(empty_database_url, "SELECT to_regclass('outbox_migrations')") == [(None,)]


@pytest.mark.parametrize("schema", ["bad-name", "1abc", 'x"; DROP TABLE y; --', "a" * 64, ""])
@pytest.mark.parametrize("print_sql", [False, True])
def test_invalid_schema_is_a_usage_error(schema: str, print_sql: bool) -> None:
    # Refused before connecting: this database does not exist (exit code 1 if it were tried).
    flags = ["--sql"] if print_sql else ["--database-url", UNREACHABLE]
    result = CliRunner().invoke(main, ["migrate", *flags, "--schema", schema])
    assert result.exit_code == 2
    assert f"invalid schema {schema!r}" in result.stderr
    assert result.stdout == ""


def test_missing_database_url_is_a_usage_error() -> None:
    result = CliRunner().invoke(main, ["migrate"], env={"OUTBOX_DATABASE_URL": None})
    assert result.exit_code == 2
    assert "--database-url" in result.stderr


def test_unreachable_database_is_exit_code_1() -> None:
    result = CliRunner().invoke(main, ["migrate", "--database-url", UNREACHABLE])
    assert result.exit_code == 1
    assert result.stderr.startswith("error:")


# -- Alembic sees exactly the declared schema ---------------------------------------------


def app_metadata() -> MetaData:
    metadata = MetaData()
    Table(
        "customers",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("name", Text, nullable=False),
    )
    return metadata


def alembic_diff(url: str, outbox_metadata: MetaData, app: MetaData) -> list[Any]:
    engine = create_engine(sqlalchemy_url(url))
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection,
                opts={
                    "target_metadata": [app, outbox_metadata],
                    "compare_type": True,
                    "compare_server_default": True,
                },
            )
            return list(compare_metadata(context, [app, outbox_metadata]))
    finally:
        engine.dispose()


@pytest.fixture
def migrated_app_database(empty_database_url: str) -> tuple[str, MetaData]:
    """An empty database after `outbox migrate`, plus one application table."""
    outbox.migrate(empty_database_url)
    app = app_metadata()
    engine = create_engine(sqlalchemy_url(empty_database_url))
    try:
        app.create_all(engine)
    finally:
        engine.dispose()
    return empty_database_url, app


def test_alembic_autogenerate_finds_no_difference(
    migrated_app_database: tuple[str, MetaData],
) -> None:
    url, app = migrated_app_database
    assert alembic_diff(url, outbox.metadata, app) == []


def _changed_copy(change: str) -> MetaData:
    copy = MetaData()
    for table in outbox.metadata.tables.values():
        table.to_metadata(copy)
    events = copy.tables["outbox_events"]
    if change == "extra column":
        events.append_column(Column("extra", Text))
    elif change == "column type":
        events.c.topic.type = String(100)
    elif change == "nullable":
        events.c.key.nullable = False
    elif change == "server default":
        events.c.status.server_default = None
    elif change == "missing index":
        events.indexes.remove(next(i for i in events.indexes if i.name == "outbox_events_done_idx"))
    elif change == "extra index":
        Index("outbox_events_topic_idx", events.c.topic)
    return copy


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("extra column", "add_column"),
        ("column type", "modify_type"),
        ("nullable", "modify_nullable"),
        ("server default", "modify_default"),
        ("missing index", "remove_index"),
        ("extra index", "add_index"),
    ],
)
def test_alembic_check_fails_for_a_changed_table(
    change: str, expected: str, migrated_app_database: tuple[str, MetaData]
) -> None:
    url, app = migrated_app_database
    diff = alembic_diff(url, _changed_copy(change), app)
    assert diff, f"a table with a {change} must differ from the migrated one"
    kinds = [entry[0][0] if isinstance(entry, list) else entry[0] for entry in diff]
    assert expected in kinds


def test_alembic_check_sees_the_application_table(
    migrated_app_database: tuple[str, MetaData],
) -> None:
    url, _ = migrated_app_database
    with psycopg.connect(url) as conn:
        conn.execute("ALTER TABLE customers ADD COLUMN email text")
    diff = alembic_diff(url, outbox.metadata, app_metadata())
    assert [entry[0] for entry in diff] == ["remove_column"]


def test_metadata_declares_what_the_migrations_create(database_url: str) -> None:
    declared = {
        name: sorted(column.name for column in table.columns)
        for name, table in outbox.metadata.tables.items()
    }
    created = {
        name: sorted(
            row[0]
            for row in query(
                database_url,
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_schema = 'public' AND table_name = %s",
                [name],
            )
        )
        for name in declared
    }
    assert declared == created
