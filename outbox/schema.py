"""The outbox table as SQLAlchemy ``Table`` objects on :data:`metadata`.

These mirror ``migrations/*.sql`` exactly, so an application's Alembic autogenerate with
``target_metadata=[app_metadata, outbox.metadata]`` finds nothing to change after
``outbox migrate``. The migrations, not these objects, create the schema.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Double,
    Identity,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.dialects.postgresql.base import ischema_names
from sqlalchemy.types import UserDefinedType

EVENTS_TABLE = "outbox_events"
SINKS_TABLE = "outbox_sinks"
MIGRATIONS_TABLE = "outbox_migrations"
CLAIMS_TABLE = "outbox_claims"

metadata = MetaData()


class Xid8(UserDefinedType[int]):
    """PostgreSQL's 64-bit transaction id type."""

    cache_ok = True

    def get_col_spec(self, **kw: object) -> str:
        return "XID8"


# Reflection (and so Alembic autogenerate) does not know xid8: without this it warns and
# reflects the column as NullType. setdefault keeps SQLAlchemy's own type should it add one.
ischema_names.setdefault("xid8", Xid8)


events = Table(
    EVENTS_TABLE,
    metadata,
    Column("id", BigInteger, Identity(always=True), nullable=False),
    Column("topic", Text, nullable=False),
    Column("key", Text),
    Column("payload", JSONB, nullable=False),
    Column("headers", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("status", Text, nullable=False, server_default=text("'pending'::text")),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("process_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Column("locked_by", Text),
    Column("locked_until", DateTime(timezone=True)),
    Column("lease_token", UUID(as_uuid=True)),
    Column("deliveries", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("errors", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
    Column("last_error", Text),
    Column("dedup_key", Text),
    Column("txid", Xid8(), nullable=False, server_default=text("pg_current_xact_id()")),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Column("done_at", DateTime(timezone=True)),
    Column("suspect", Boolean, nullable=False, server_default=text("false")),
    Column("crashes", Integer, nullable=False, server_default=text("0")),
    PrimaryKeyConstraint("id", name="outbox_events_pkey"),
    CheckConstraint(
        "status IN ('pending', 'processing', 'done', 'failed')",
        name="outbox_events_status_check",
    ),
    CheckConstraint("attempts >= 0", name="outbox_events_attempts_check"),
    Index(
        "outbox_events_pending_idx",
        "process_at",
        "id",
        postgresql_where=text("status = 'pending'"),
    ),
    Index(
        "outbox_events_processing_idx",
        "locked_until",
        postgresql_where=text("status = 'processing'"),
    ),
    Index(
        "outbox_events_key_idx",
        "key",
        "id",
        postgresql_where=text("key IS NOT NULL AND status <> 'done'"),
    ),
    Index(
        "outbox_events_unrouted_idx",
        "key",
        "id",
        postgresql_where=text("key IS NOT NULL AND status <> 'done' AND deliveries = '{}'::jsonb"),
    ),
    Index("outbox_events_done_idx", "done_at", postgresql_where=text("status = 'done'")),
    Index(
        "outbox_events_suspect_idx",
        "process_at",
        "id",
        postgresql_where=text("status = 'pending' AND suspect"),
    ),
    Index("outbox_events_failed_idx", "id", postgresql_where=text("status = 'failed'")),
    Index(
        "outbox_events_dedup_key_idx",
        "dedup_key",
        unique=True,
        postgresql_where=text("dedup_key IS NOT NULL"),
    ),
)

sinks = Table(
    SINKS_TABLE,
    metadata,
    Column("name", Text, nullable=False),
    Column("disabled_at", DateTime(timezone=True)),
    Column("disabled_reason", Text),
    Column("paused_at", DateTime(timezone=True)),
    Column("paused_reason", Text),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Column("rate_tokens", Double),
    Column("rate_refilled_at", DateTime(timezone=True)),
    Column("rate_granted", Integer),
    PrimaryKeyConstraint("name", name="outbox_sinks_pkey"),
)

migrations = Table(
    MIGRATIONS_TABLE,
    metadata,
    Column("version", Integer, nullable=False, autoincrement=False),
    Column("name", Text, nullable=False),
    Column("applied_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    PrimaryKeyConstraint("version", name="outbox_migrations_pkey"),
)

claims = Table(
    CLAIMS_TABLE,
    metadata,
    Column("id", BigInteger, Identity(always=True), nullable=False),
    Column(
        "application_name",
        Text,
        nullable=False,
        server_default=text("current_setting('application_name'::text)"),
    ),
    Column("event_ids", ARRAY(BigInteger), nullable=False),
    Column("suspect", Boolean, nullable=False),
    Column("claimed_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Column("orphaned_at", DateTime(timezone=True)),
    PrimaryKeyConstraint("id", name="outbox_claims_pkey"),
)
