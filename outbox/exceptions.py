"""Every error outbox-relay raises on purpose.

    OutboxError
    ├── PublishError        bad input at publish time; nothing was written (also a ValueError)
    ├── MigrationError      a migration could not be applied
    └── SinkError           raised by a sink's ``deliver``
        ├── RetryableError  try again later, optionally not before ``retry_after`` seconds
        └── PermanentError  never try this event on this sink again
            └── SinkGone    the receiver is gone for good (HTTP 410): disable the sink

A sink may raise any other exception: the relay treats it as retryable.
"""

from __future__ import annotations


class OutboxError(Exception):
    """Base class of every outbox-relay error."""


class PublishError(OutboxError, ValueError):
    """An event was refused at publish time; nothing was written."""


class MigrationError(OutboxError):
    """A migration could not be applied."""


class SinkError(OutboxError):
    """A sink failed to deliver an event."""


class RetryableError(SinkError):
    """Delivery failed but may succeed later.

    ``retry_after`` (seconds) overrides the relay's backoff for this attempt, as an HTTP
    ``Retry-After`` header would.
    """

    def __init__(self, message: str = "", *, retry_after: float | None = None) -> None:
        super().__init__(message)
        if retry_after is not None and retry_after < 0:
            raise ValueError("retry_after must be >= 0")
        self.retry_after = retry_after


class PermanentError(SinkError):
    """Delivery can never succeed: the relay fails the event for this sink at once."""


class SinkGone(PermanentError):
    """The receiver is gone for good (an HTTP 410): the relay disables the sink until an
    operator re-enables it with ``outbox sinks enable NAME``."""
