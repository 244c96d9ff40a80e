"""The outbox in an application whose schema Alembic manages: real Alembic, real database.

Either Alembic applies the outbox's own migrations (``outbox.alembic.upgrade`` in a revision)
or ``outbox migrate`` does; each can take over from the other, and autogenerate leaves the
outbox tables alone (``outbox.alembic.include_object``) or renders them so that the revision
runs (``outbox.alembic.render_item``).
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path
from typing import Any

import alembic
import psycopg
import pytest
from alembic import command
from alembic.config import Config

import outbox
from outbox._urls import sqlalchemy_url
from outbox.exceptions import MigrationError
from outbox.migrate import available_migrations

SHIPPED = [(m.version, m.name) for m in available_migrations()]
LATEST = SHIPPED[-1][0]

ENV_PY = """
from alembic import context
from sqlalchemy import Column, Integer, MetaData, Table, Text, create_engine

import outbox
import outbox.alembic

app = MetaData()
Table("customers", app, Column("id", Integer, primary_key=True), Column("name", Text))

config = context.config
targets = [app, outbox.metadata] if config.get_main_option("with_outbox") else [app]
options = {"target_metadata": targets, "compare_type": True, "compare_server_default": True}
if config.get_main_option("include_object"):
    options["include_object"] = outbox.alembic.include_object
if config.get_main_option("render_item"):
    options["render_item"] = outbox.alembic.render_item
url = config.get_main_option("sqlalchemy.url")

if context.is_offline_mode():
    context.configure(url=url, literal_binds=True, output_buffer=config.output_buffer, **options)
    with context.begin_transaction():
        context.run_migrations()
else:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            context.configure(connection=connection, **options)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()
"""

REVISION = '''"""outbox migrations through {through}"""
import outbox.alembic

revision = "{revision}"
down_revision = {down_revision!r}
branch_labels = None
depends_on = None


def upgrade() -> None:
    outbox.alembic.upgrade(through={through}{schema})


def downgrade() -> None:
    pass
'''


def query(url: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql.encode(), params).fetchall()


def describe_outbox(url: str, schema: str = "public") -> dict[str, Any]:
    """The outbox tables' columns, indexes and constraints, and the recorded migrations."""
    return {
        "columns": query(
            url,
            """SELECT table_name, column_name, data_type, is_nullable, column_default
               FROM information_schema.columns
               WHERE table_schema = %s AND table_name LIKE 'outbox%%'
               ORDER BY table_name, ordinal_position""",
            [schema],
        ),
        "indexes": query(
            url,
            """SELECT indexname, indexdef FROM pg_indexes
               WHERE schemaname = %s AND tablename LIKE 'outbox%%' ORDER BY indexname""",
            [schema],
        ),
        "constraints": query(
            url,
            """SELECT c.conname, pg_get_constraintdef(c.oid) FROM pg_constraint c
               JOIN pg_namespace n ON n.oid = c.connamespace
               WHERE n.nspname = %s AND c.conname LIKE 'outbox%%' ORDER BY c.conname""",
            [schema],
        ),
        "migrations": query(
            url, f'SELECT version, name FROM "{schema}".outbox_migrations ORDER BY version'
        ),
    }


class Project:
    """An application's Alembic project in a temporary directory."""

    def __init__(self, root: Path, url: str, **options: str) -> None:
        self.root = root
        self.versions = root / "versions"
        self.versions.mkdir(parents=True)
        (root / "env.py").write_text(ENV_PY, encoding="utf-8")
        template = Path(alembic.__file__).parent / "templates" / "generic" / "script.py.mako"
        shutil.copy(template, root / "script.py.mako")
        self.output = io.StringIO()
        self.config = Config(output_buffer=self.output)
        self.config.set_main_option("script_location", str(root))
        self.config.set_main_option("sqlalchemy.url", sqlalchemy_url(url).replace("%", "%%"))
        for name, value in options.items():
            self.config.set_main_option(name, value)
        self.head: str | None = None

    def add_upgrade_revision(self, through: int, schema: str | None = None) -> None:
        revision = f"outbox_{through:04d}"
        text = REVISION.format(
            through=through,
            revision=revision,
            down_revision=self.head,
            schema=f", schema={schema!r}" if schema else "",
        )
        (self.versions / f"{revision}.py").write_text(text, encoding="utf-8")
        self.head = revision

    def upgrade(self) -> None:
        command.upgrade(self.config, "head")

    def offline_script(self) -> str:
        command.upgrade(self.config, "head", sql=True)
        return self.output.getvalue()

    def autogenerate(self) -> str:
        script = command.revision(self.config, "autogenerated", autogenerate=True)
        assert not isinstance(script, list)
        assert script is not None
        return Path(script.path).read_text(encoding="utf-8")


def upgrade_body(revision: str) -> str:
    """The ``upgrade()`` function of an autogenerated revision."""
    return revision.split("def upgrade", 1)[1].split("def downgrade", 1)[0]


@pytest.fixture
def migrated_schema(database_url: str) -> dict[str, Any]:
    """The outbox tables as `outbox migrate` makes them (the test template is migrated)."""
    return describe_outbox(database_url)


def test_a_revision_applies_the_outbox_migrations_and_records_them(
    empty_database_url: str, tmp_path: Path, migrated_schema: dict[str, Any]
) -> None:
    project = Project(tmp_path, empty_database_url)
    project.add_upgrade_revision(through=LATEST)
    project.upgrade()

    assert describe_outbox(empty_database_url) == migrated_schema
    assert query(empty_database_url, "SELECT version_num FROM alembic_version") == [(project.head,)]
    # outbox migrate sees every migration applied.
    assert outbox.migrate(empty_database_url) == []


def test_switching_from_alembic_to_outbox_migrate(
    empty_database_url: str, tmp_path: Path, migrated_schema: dict[str, Any]
) -> None:
    project = Project(tmp_path, empty_database_url)
    project.add_upgrade_revision(through=5)
    project.upgrade()
    assert describe_outbox(empty_database_url)["migrations"] == SHIPPED[:5]

    applied = outbox.migrate(empty_database_url)

    assert [(m.version, m.name) for m in applied] == SHIPPED[5:]
    assert describe_outbox(empty_database_url) == migrated_schema


def test_switching_from_outbox_migrate_to_alembic(
    empty_database_url: str, tmp_path: Path, migrated_schema: dict[str, Any]
) -> None:
    outbox.migrate(empty_database_url)
    project = Project(tmp_path, empty_database_url)
    project.add_upgrade_revision(through=5)
    project.add_upgrade_revision(through=LATEST)
    project.upgrade()  # finds every migration applied: does nothing, fails on nothing

    assert describe_outbox(empty_database_url) == migrated_schema
    assert query(empty_database_url, "SELECT version_num FROM alembic_version") == [(project.head,)]


def test_a_revision_into_another_schema_leaves_alembic_its_search_path(
    empty_database_url: str, tmp_path: Path
) -> None:
    project = Project(tmp_path, empty_database_url)
    project.add_upgrade_revision(through=LATEST, schema="other")
    project.upgrade()

    assert describe_outbox(empty_database_url, "other")["migrations"] == SHIPPED
    assert query(empty_database_url, "SELECT to_regclass('public.outbox_events')") == [(None,)]
    # Alembic recorded its revision in its own table, in the application's schema.
    assert query(empty_database_url, "SELECT version_num FROM public.alembic_version") == [
        (project.head,)
    ]


def test_the_offline_script_makes_the_same_schema(
    empty_database_url: str, tmp_path: Path, migrated_schema: dict[str, Any]
) -> None:
    project = Project(tmp_path, empty_database_url)
    project.add_upgrade_revision(through=LATEST)
    script = project.offline_script()
    assert "outbox_events" in script

    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        conn.execute(script.encode())

    assert describe_outbox(empty_database_url) == migrated_schema


def test_through_a_migration_not_shipped_is_refused_with_the_fix(
    empty_database_url: str, tmp_path: Path
) -> None:
    project = Project(tmp_path, empty_database_url)
    project.add_upgrade_revision(through=LATEST + 1)
    with pytest.raises(MigrationError, match=rf"through={LATEST + 1}.*upgrade outbox-relay"):
        project.upgrade()


def test_autogenerate_leaves_the_outbox_tables_alone(
    empty_database_url: str, tmp_path: Path
) -> None:
    outbox.migrate(empty_database_url)
    project = Project(tmp_path, empty_database_url, include_object="on", with_outbox="on")

    upgrade = upgrade_body(project.autogenerate())

    assert "create_table('customers'" in upgrade
    assert "outbox" not in upgrade
    project.upgrade()
    command.check(project.config)  # nothing left to autogenerate


def test_autogenerate_without_outbox_metadata_does_not_drop_the_outbox_tables(
    database_url: str, tmp_path: Path
) -> None:
    project = Project(tmp_path, database_url, include_object="on")
    upgrade = upgrade_body(project.autogenerate())
    assert "drop_table" not in upgrade
    assert "outbox" not in upgrade


def test_a_revision_autogenerated_from_outbox_metadata_runs(
    empty_database_url: str, tmp_path: Path
) -> None:
    project = Project(tmp_path, empty_database_url, render_item="on", with_outbox="on")

    revision = project.autogenerate()
    assert "import outbox.schema" in revision
    assert "outbox.schema.Xid8()" in revision
    project.upgrade()  # no NameError

    assert query(empty_database_url, "SELECT to_regclass('public.outbox_events')::text") == [
        ("outbox_events",)
    ]
    # outbox migrate then says what happened and what to do, not just "already exists".
    with pytest.raises(MigrationError, match=r"made by other means.*outbox\.alembic\.upgrade"):
        outbox.migrate(empty_database_url)
