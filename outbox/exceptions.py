"""Every error outbox-relay raises on purpose.

    OutboxError
    ├── ConfigError          the configuration is invalid: ``errors`` lists (where, what)
    │   └── MissingSetting   a setting the command needs is absent (a flag can give it)
    ├── PluginError          an installed plugin could not be loaded or registered
    ├── PublishError         bad input at publish time; nothing was written (also a ValueError)
    ├── MigrationError       a migration could not be applied
    ├── DatabaseError        the database refused or failed a statement (the driver's error
    │   │                    is the ``__cause__``)
    │   └── DatabaseUnavailable  the connection is gone or the server cannot be reached:
    │                            reconnect and try again
    ├── ConformanceError     a sink broke the sink contract (``outbox.testing``; also an
    │                        AssertionError)
    └── SinkError            raised by a sink's ``deliver``
        ├── RetryableError   try again later, optionally not before ``retry_after`` seconds
        └── PermanentError   never try this event on this sink again
            └── SinkGone     the receiver is gone for good (HTTP 410): disable the sink

A sink may raise any other exception: the relay treats it as retryable. Driver errors become
``DatabaseError`` in one place, ``outbox.store``.
"""

from __future__ import annotations


class OutboxError(Exception):
    """Base class of every outbox-relay error."""


class ConfigError(OutboxError, ValueError):
    """The configuration is invalid; ``errors`` lists ``(location, message)`` pairs."""

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        self.errors = errors
        super().__init__("\n".join(f"{where}: {message}" for where, message in errors))


class MissingSetting(ConfigError):
    """A setting that is needed is absent rather than wrong: a flag, the environment or the
    configuration file can supply it."""


class PluginError(OutboxError, RuntimeError):
    """An installed plugin could not be loaded or registered."""


class PublishError(OutboxError, ValueError):
    """An event was refused at publish time; nothing was written."""


class MigrationError(OutboxError):
    """A migration could not be applied."""


class DatabaseError(OutboxError):
    """The database refused or failed a statement; the driver's error is ``__cause__``."""


class DatabaseUnavailable(DatabaseError):
    """The connection was lost or the server cannot be reached: reconnect and retry."""


class ConformanceError(OutboxError, AssertionError):
    """A sink broke the sink contract (raised by ``outbox.testing``)."""


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
