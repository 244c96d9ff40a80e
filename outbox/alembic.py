"""The outbox's schema in an application that manages its own with Alembic.

Two ways, documented in ``docs/operations/alembic.md``; the ``env.py`` is the same for both::

    import outbox.alembic

    context.configure(
        ...,
        target_metadata=app_metadata,
        include_object=outbox.alembic.include_object,  # autogenerate leaves the outbox alone
        render_item=outbox.alembic.render_item,  # and can render outbox.metadata's types
    )

* ``outbox migrate`` manages the outbox tables, Alembic the application's.
* Alembic manages both: a revision calls :func:`upgrade`, which applies the outbox's own
  migrations inside the revision and records them in ``outbox_migrations``, exactly as
  ``outbox migrate`` would, so either tool can take over from the other at any time.

Autogenerating the outbox tables from ``outbox.metadata`` instead is not a way: the tables
would lack what only the migrations create, and ``outbox migrate`` would find tables it did
not make.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Literal

import sqlalchemy as sa

from outbox._identifiers import validate_identifier
from outbox._queries import for_schema
from outbox.exceptions import MigrationError
from outbox.migrate import DEFAULT_SCHEMA, Migration, _lock_key, _record, _sql_of
from outbox.migrate import available_migrations as _available_migrations
from outbox.schema import Xid8, metadata

if TYPE_CHECKING:
    from alembic.autogenerate.api import AutogenContext

__all__ = ["OUTBOX_TABLES", "include_object", "render_item", "upgrade"]

OUTBOX_TABLES = frozenset(table.name for table in metadata.tables.values())
"""The tables the outbox's migrations create, which autogenerate must leave alone."""

_SAVED_SEARCH_PATH = "outbox.saved_search_path"
# A colon starting a word would be a bind parameter to SQLAlchemy's text(); "::" casts are not.
_BIND_LIKE = re.compile(r"(?<![:\w\\]):(?=\w)")
_PSYCOPG_PARAMETER = re.compile(r"%\((\w+)\)s")


def upgrade(through: int | None = None, *, schema: str = DEFAULT_SCHEMA) -> None:
    """Apply the outbox's migrations up to version ``through`` (all shipped if ``None``)
    that the database lacks, inside the running Alembic revision, and record them.

    Call it from a revision's ``upgrade()``. Pin ``through`` so that the revision does the
    same on every database whatever outbox version is installed; a later outbox version
    with new migrations gets a new revision with a higher ``through``. Migrations already
    recorded (by ``outbox migrate`` or an earlier revision) are skipped. In offline mode
    (``alembic upgrade --sql``) the script holds every migration up to ``through``: apply it
    to a database that has none of them.
    """
    from alembic import context, op

    validate_identifier(schema, "schema")
    wanted = _migrations_through(through)
    statements = for_schema(schema)
    if context.is_offline_mode():
        op.execute(_text(statements["create_migrations_table"]))
        _apply(op.execute, schema, wanted)
        return
    connection = op.get_bind()
    connection.execute(_text(statements["lock_migrations"]), {"lock_key": _lock_key(schema)})
    connection.execute(_text(statements["create_migrations_table"]))
    applied = {int(row[0]) for row in connection.execute(_text(statements["applied_migrations"]))}
    _apply(connection.execute, schema, [m for m in wanted if m.version not in applied])


def _migrations_through(through: int | None) -> list[Migration]:
    shipped = _available_migrations()
    if through is None:
        return shipped
    versions = [migration.version for migration in shipped]
    if through not in versions:
        raise MigrationError(
            f"outbox.alembic.upgrade(through={through}): this version of outbox-relay ships "
            f"migrations {versions[0]} to {versions[-1]}; upgrade outbox-relay or lower through"
        )
    return [migration for migration in shipped if migration.version <= through]


def _apply(execute: Any, schema: str, migrations: list[Migration]) -> None:
    """Run ``migrations`` with the schema first on the search path, then put the path back
    (Alembic's own statements follow in the same transaction)."""
    if not migrations:
        return
    execute(_set_config(_SAVED_SEARCH_PATH, sa.func.current_setting("search_path")))
    execute(_text(for_schema(schema)["use_schema"]))
    for migration in migrations:
        execute(_text(_sql_of(migration)))
        execute(_text(_record(schema, migration)))
    execute(_set_config("search_path", sa.func.current_setting(_SAVED_SEARCH_PATH)))


def _set_config(name: str, value: sa.ColumnElement[Any]) -> sa.Select[Any]:
    """``set_config(name, value, true)``: a setting for the rest of this transaction."""
    return sa.select(sa.func.set_config(name, value, True))


def _text(statement: bytes | str) -> sa.TextClause:
    """A statement for SQLAlchemy: literal colons kept, psycopg's ``%(name)s`` as binds."""
    source = statement.decode() if isinstance(statement, bytes) else statement
    escaped = _BIND_LIKE.sub(r"\\:", source)
    return sa.text(_PSYCOPG_PARAMETER.sub(r":\1", escaped).replace("%%", "%"))


def include_object(
    obj: object, name: str | None, type_: str, reflected: bool, compare_to: object
) -> bool:
    """Alembic's ``include_object`` hook: leave the outbox tables (and their columns, indexes
    and constraints) out of autogenerate, whichever tool manages them.

    To combine it with a hook of your own::

        include_object=lambda *args: outbox.alembic.include_object(*args) and mine(*args)
    """
    if type_ == "table":
        return name not in OUTBOX_TABLES
    table = getattr(obj, "table", None)
    return not (isinstance(table, sa.Table) and table.name in OUTBOX_TABLES)


def render_item(type_: str, obj: object, autogen_context: AutogenContext) -> str | Literal[False]:
    """Alembic's ``render_item`` hook: render the outbox's column types with their import,
    so that a revision autogenerated against ``outbox.metadata`` runs."""
    if type_ == "type" and isinstance(obj, Xid8):
        autogen_context.imports.add("import outbox.schema")
        return "outbox.schema.Xid8()"
    return False
