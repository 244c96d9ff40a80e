"""outbox-relay: a transactional outbox for PostgreSQL and SQLAlchemy.

Write events in the same transaction as your data with :func:`publish` or
:meth:`EventSource.record_event`; run ``outbox relay`` to fan them out to sinks.
"""

from __future__ import annotations

from outbox.exceptions import (
    MigrationError,
    OutboxError,
    PermanentError,
    PublishError,
    RetryableError,
    SinkError,
    SinkGone,
)
from outbox.hook import EventSource, install
from outbox.hookspecs import hookimpl, hookspec
from outbox.migrate import migrate, migration_script
from outbox.publish import OutboxEvent, configure, publish
from outbox.schema import metadata
from outbox.sinks import Event, Sink

__version__ = "0.1.0"

__all__ = [
    "Event",
    "EventSource",
    "MigrationError",
    "OutboxError",
    "OutboxEvent",
    "PermanentError",
    "PublishError",
    "RetryableError",
    "Sink",
    "SinkError",
    "SinkGone",
    "__version__",
    "configure",
    "hookimpl",
    "hookspec",
    "install",
    "metadata",
    "migrate",
    "migration_script",
    "publish",
]
