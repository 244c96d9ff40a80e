"""The postgres sink refuses targets that would corrupt the database it writes to: system
schemas, and the outbox's own tables. Checked as ``outbox config check`` checks a sink
(``build_sinks``), the error naming the key."""

from __future__ import annotations

import pytest

from outbox.exceptions import ConfigError
from outbox.plugins import build_sinks, make_plugin_manager, sink_types
from outbox.postgres_sink import PostgresSink
from outbox.settings import SinkSettings


def errors_of(**options: str) -> list[tuple[str, str]]:
    types = sink_types(make_plugin_manager(entry_points=False))
    with pytest.raises(ConfigError) as caught:
        build_sinks({"audit": SinkSettings(type="postgres", **options)}, types)
    return caught.value.errors


@pytest.mark.parametrize(
    "schema", ["pg_catalog", "information_schema", "pg_toast", "pg_temp_3", "PG_Catalog"]
)
def test_system_schemas_are_refused(schema: str) -> None:
    [(where, message)] = errors_of(schema=schema, table="events")
    assert where == "sinks.audit.schema"
    assert "system schema" in message
    assert schema in message


def test_pg_catalog_pg_class_is_refused() -> None:
    [(where, message)] = errors_of(schema="pg_catalog", table="pg_class")
    assert where == "sinks.audit.schema"
    assert "'pg_catalog' is a system schema" in message


@pytest.mark.parametrize("table", ["outbox_events", "outbox_sinks", "outbox_migrations"])
@pytest.mark.parametrize("schema", ["public", "audit"])
def test_the_outbox_tables_are_refused_in_any_schema(schema: str, table: str) -> None:
    [(where, message)] = errors_of(schema=schema, table=table)
    assert where == "sinks.audit.table"
    assert "the outbox's own table" in message
    assert table in message


def test_an_ordinary_target_is_accepted() -> None:
    types = sink_types(make_plugin_manager(entry_points=False))
    sinks = build_sinks(
        {"audit": SinkSettings(type="postgres", schema="audit", table="outbox_events_copy")},
        types,
    )
    assert isinstance(sinks["audit"], PostgresSink)
