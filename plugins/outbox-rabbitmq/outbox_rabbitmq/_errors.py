"""RabbitMQ's answers as the relay's errors, in one place.

A refusal that the same message would meet again (a missing exchange, access refused, a
login or virtual host refused) is a :class:`~outbox.PermanentError`; anything that may pass
later (no route yet, a nack, a lost or refused connection) is a
:class:`~outbox.RetryableError`. Every message names the broker by host, port and virtual
host, never by its URL, and goes through :meth:`Broker.scrub`, so the password in the URL
cannot leak through a client library's text.
"""

from __future__ import annotations

import dataclasses
import os
from urllib.parse import unquote, urlsplit

import aiormq.exceptions
from pamqp.commands import Basic

from outbox.exceptions import PermanentError, RetryableError, SinkError

__all__ = ["Broker", "connect_failure", "exchange_label", "publish_failure"]

_DEFAULT_PORTS = {"amqp": 5672, "amqps": 5671}
_NO_ROUTE = 312
_LOGIN_REFUSED = (
    aiormq.exceptions.AuthenticationError,
    aiormq.exceptions.ProbableAuthenticationError,
)


@dataclasses.dataclass(frozen=True)
class Broker:
    """Where a sink publishes, as its error messages name it."""

    address: str
    """``host:port``."""
    vhost: str
    user: str
    password: str

    @classmethod
    def from_url(cls, url: str) -> Broker:
        """The broker an ``amqp://`` or ``amqps://`` URL points to; ValueError, without the
        URL in it, if it is not such a URL."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise ValueError("not a valid URL (amqp://user:password@host:5672/vhost)") from None
        if parts.scheme not in _DEFAULT_PORTS:
            raise ValueError(f"the URL's scheme must be amqp or amqps, not {parts.scheme!r}")
        if not parts.hostname:
            raise ValueError("the URL names no host (amqp://user:password@host:5672/vhost)")
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        return cls(
            address=f"{host}:{port or _DEFAULT_PORTS[parts.scheme]}",
            # As aio-pika reads it: no path is the vhost "/", a path is the vhost it names.
            vhost=unquote(parts.path[1:]) if len(parts.path) > 1 else "/",
            user=unquote(parts.username or "guest"),
            password=unquote(parts.password or ""),
        )

    @property
    def where(self) -> str:
        """``127.0.0.1:5672`` for the default virtual host, ``127.0.0.1:5672 (vhost 'x')``
        otherwise."""
        return self.address if self.vhost == "/" else f"{self.address} (vhost {self.vhost!r})"

    def scrub(self, text: str) -> str:
        """``text`` with the password masked, wherever a library put it."""
        return text.replace(self.password, "***") if self.password else text


def exchange_label(exchange: str) -> str:
    """How messages name an exchange: ``exchange 'events'`` or ``the default exchange``."""
    return f"exchange {exchange!r}" if exchange else "the default exchange"


def _reason(error: BaseException) -> str:
    """A short lower-case reason: ``connection refused`` rather than ``[Errno 111] ...``."""
    errno = getattr(error, "errno", None)
    if errno is None and error.args and isinstance(error.args[0], int):
        errno = error.args[0]  # aiormq's AMQPConnectionError(111, "Connect call failed")
    if isinstance(errno, int) and errno > 0:
        return os.strerror(errno).lower()
    if isinstance(error, TimeoutError):
        return "no answer in time"
    text = str(error) or type(error).__name__
    # aiormq prefixes the broker's own words with the exception's docstring
    return text.rsplit(': "', 1)[-1].rstrip('"') if ': "' in text else text


def connect_failure(error: BaseException, broker: Broker) -> SinkError:
    """What opening the connection or the channel failed with."""
    if isinstance(error, SinkError):
        return error
    reason = broker.scrub(_reason(error))
    if isinstance(error, _LOGIN_REFUSED):
        return PermanentError(
            f"RabbitMQ at {broker.where} refused the login of user {broker.user!r}: {reason}"
        )
    if isinstance(error, aiormq.exceptions.ConnectionNotAllowed) or (
        isinstance(error, aiormq.exceptions.InvalidFrameError) and "Connection.Close" in reason
    ):  # RabbitMQ closes the opening connection when the vhost is missing or not allowed
        return PermanentError(
            f"RabbitMQ at {broker.address} refused virtual host {broker.vhost!r} to user "
            f"{broker.user!r}: it does not exist or the user has no permission on it"
        )
    if isinstance(error, aiormq.exceptions.AMQPChannelError):
        return channel_failure(error, broker, "")
    if isinstance(error, aiormq.exceptions.ChannelInvalidStateError):  # lost while opening
        return RetryableError(f"cannot reach RabbitMQ at {broker.where}: the connection closed")
    return RetryableError(f"cannot reach RabbitMQ at {broker.where}: {reason}")


def channel_failure(error: BaseException, broker: Broker, exchange: str) -> SinkError:
    """The broker closed the channel: a 404 or a 403 is a refusal for good."""
    reason = broker.scrub(_reason(error))
    if isinstance(error, aiormq.exceptions.ChannelNotFoundEntity):
        return PermanentError(
            f"{exchange_label(exchange)} does not exist in RabbitMQ at {broker.where} "
            f"(the sink does not declare it): {reason}"
        )
    if isinstance(error, aiormq.exceptions.ChannelAccessRefused):
        return PermanentError(
            f"RabbitMQ at {broker.where} refused user {broker.user!r} access to "
            f"{exchange_label(exchange)}: {reason}"
        )
    return RetryableError(f"RabbitMQ at {broker.where} closed the channel: {reason}")


def publish_failure(
    error: BaseException, broker: Broker, exchange: str, routing_key: str
) -> SinkError:
    """What a publish failed with: a returned message, a nack, a closed channel or a lost
    connection."""
    if isinstance(error, SinkError):
        return error
    if isinstance(error, aiormq.exceptions.PublishError):
        frame = error.frame
        if isinstance(frame, Basic.Return) and frame.reply_code == _NO_ROUTE:
            # Retryable: the queue may be declared and bound after the events are published
            # (a consumer deployed later); the message is nowhere yet, so a retry loses nothing.
            return RetryableError(
                f"no queue is bound to {exchange_label(exchange)} for routing key "
                f"{routing_key!r} in RabbitMQ at {broker.where}: the message was returned"
            )
        return RetryableError(
            f"RabbitMQ at {broker.where} returned the message for routing key "
            f"{routing_key!r}: {broker.scrub(_reason(error))}"
        )
    if isinstance(error, aiormq.exceptions.DeliveryError):  # Basic.Nack
        return RetryableError(
            f"RabbitMQ at {broker.where} nacked the message for routing key {routing_key!r} "
            f"on {exchange_label(exchange)}: it could not take responsibility for it"
        )
    if isinstance(error, aiormq.exceptions.AMQPChannelError):
        return channel_failure(error, broker, exchange)
    if isinstance(error, aiormq.exceptions.ChannelInvalidStateError):
        return RetryableError(
            f"lost the connection to RabbitMQ at {broker.where}: the channel closed before "
            "the confirm"
        )
    reason = broker.scrub(_reason(error))
    return RetryableError(f"lost the connection to RabbitMQ at {broker.where}: {reason}")
