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
from outbox.migrate import migrate, migration_script
from outbox.publish import OutboxEvent, configure, publish
from outbox.schema import metadata

__version__ = "0.1.0"

__all__ = [
    "EventSource",
    "MigrationError",
    "OutboxError",
    "OutboxEvent",
    "PermanentError",
    "PublishError",
    "RetryableError",
    "SinkError",
    "SinkGone",
    "__version__",
    "configure",
    "install",
    "metadata",
    "migrate",
    "migration_script",
    "publish",
]
