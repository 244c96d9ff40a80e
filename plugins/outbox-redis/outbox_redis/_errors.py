"""Redis's answers as the relay's errors, in one place.

Redis prefixes each error reply with a code (``WRONGTYPE``, ``NOPERM``, ``OOM``...). A few
codes name a state the server leaves by itself (out of memory, busy with a script, loading
its data set, a read-only replica, a failing disk): those are a
:class:`~outbox.RetryableError`. Every other refusal is one the same command would meet
again (a key of another type, a missing permission, a refused login), so it is a
:class:`~outbox.PermanentError`. A connection that cannot be made or is lost, and a reply
that does not come, are retryable: the client reconnects on the next delivery.

Messages name the server by ``host:port`` (or its socket path), never by its URL, and go
through :meth:`Server.scrub`, so that a password cannot leak through the client's text.
"""

from __future__ import annotations

import dataclasses
import os
import re
from urllib.parse import unquote, urlsplit

import redis.exceptions

from outbox.exceptions import PermanentError, RetryableError, SinkError

__all__ = ["SCHEMES", "Server", "error_code"]

SCHEMES = ("redis", "rediss", "unix")
DEFAULT_PORT = 6379
TRANSIENT_CODES = frozenset(
    {"OOM", "BUSY", "LOADING", "READONLY", "MISCONF", "TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN"}
)
"""Codes of refusals that pass by themselves."""
_LOGIN_CODES = frozenset({"NOAUTH", "WRONGPASS"})
# The codes redis-py strips from the replies it has a class for (releases before 7 keep
# no status_code).
_CLASS_CODES: tuple[tuple[type[redis.exceptions.RedisError], str], ...] = (
    (redis.exceptions.NoPermissionError, "NOPERM"),
    (redis.exceptions.OutOfMemoryError, "OOM"),
    (redis.exceptions.ReadOnlyError, "READONLY"),
    (redis.exceptions.BusyLoadingError, "LOADING"),
)
_ERRNO = re.compile(r"^Error (\d+) ")  # how redis-py words an OSError while connecting


def error_code(error: BaseException) -> str:
    """The code of a Redis error reply (``WRONGTYPE``, ``NOPERM``...), ``ERR`` if it has none.

    redis-py strips the code from the replies it has a class for and keeps it in
    ``status_code``; the others keep it as their first word."""
    code = getattr(error, "status_code", None)
    if code:
        return str(code)
    for error_class, class_code in _CLASS_CODES:
        if isinstance(error, error_class):
            return class_code
    first = str(error).split(" ", 1)[0]
    return first if first.isalpha() and first.isupper() else "ERR"


def _reply_text(error: BaseException) -> str:
    """The reply as Redis sent it, its code first."""
    text = str(error)
    code = error_code(error)
    return text if text.startswith(code) else f"{code} {text}"


def _reason(error: BaseException) -> str:
    """Why a connection failed or broke, in a few words."""
    if isinstance(error, TimeoutError | redis.exceptions.TimeoutError):
        return "timed out"
    text = str(error)
    match = _ERRNO.match(text)
    if match:
        return os.strerror(int(match[1])).lower()
    if isinstance(error, OSError) and error.errno:
        return os.strerror(error.errno).lower()
    text = text.strip().rstrip(".")
    return text[:1].lower() + text[1:] if text else type(error).__name__


@dataclasses.dataclass(frozen=True)
class Server:
    """The Redis server a sink writes to, as its error messages name it."""

    where: str
    """``host:port``, or the path of a Unix socket."""
    password: str

    @classmethod
    def from_url(cls, url: str) -> Server:
        """The server a ``redis://``, ``rediss://`` or ``unix://`` URL points to; ValueError,
        without the URL in it, if it is not such a URL."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise ValueError("not a valid URL (redis://user:password@host:6379/0)") from None
        if parts.scheme not in SCHEMES:
            raise ValueError(
                f"the URL's scheme must be redis, rediss or unix, not {parts.scheme!r}"
            )
        password = unquote(parts.password or "")
        if parts.scheme == "unix":
            if not parts.path:
                raise ValueError("a unix:// URL needs the socket's path (unix:///path?db=0)")
            return cls(where=parts.path, password=password)
        if not parts.hostname:
            raise ValueError("the URL names no host (redis://user:password@host:6379/0)")
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        return cls(where=f"{host}:{port or DEFAULT_PORT}", password=password)

    def scrub(self, text: str) -> str:
        """``text`` without the password, should a client message ever quote it."""
        return text.replace(self.password, "***") if self.password else text

    def reply(self, error: BaseException) -> str:
        """Redis's error reply, its code first, scrubbed."""
        return self.scrub(_reply_text(error))

    def unreachable(self, error: BaseException) -> RetryableError:
        """The error of a connection that could not be made, or broke."""
        return RetryableError(f"cannot reach Redis at {self.where}: {self.scrub(_reason(error))}")

    def failure(self, error: BaseException) -> SinkError:
        """What a failure of a whole command or pipeline (connecting, logging in, sending,
        reading the replies) means for every event in it."""
        if isinstance(
            error, redis.exceptions.AuthenticationError | redis.exceptions.AuthorizationError
        ):
            return self._login_refused(error)
        if isinstance(error, redis.exceptions.BusyLoadingError):
            return RetryableError(f"Redis at {self.where} is loading its data set; not yet")
        if isinstance(error, redis.exceptions.ResponseError):  # while connecting: HELLO, SELECT
            if error_code(error) in TRANSIENT_CODES:
                return RetryableError(f"Redis at {self.where}: {self.reply(error)}")
            if error_code(error) in _LOGIN_CODES | {"NOPERM"}:
                return self._login_refused(error)
            return PermanentError(
                f"Redis at {self.where} refused the connection: {self.reply(error)}"
            )
        return self.unreachable(error)

    def _login_refused(self, error: BaseException) -> PermanentError:
        code = error_code(error)
        if code == "NOAUTH":
            return PermanentError(
                f"Redis at {self.where} wants a password (NOAUTH): put it in the URL, "
                "redis://user:password@host:6379/0"
            )
        return PermanentError(f"Redis at {self.where} refused the login: {self.reply(error)}")

    def refusal(self, error: BaseException, event_id: int, stream: str) -> SinkError:
        """What Redis's error reply to one event's XADD means for that event."""
        code = error_code(error)
        text = self.reply(error)
        if code in TRANSIENT_CODES:
            return RetryableError(
                f"event {event_id}: Redis at {self.where} refused it for now: {text}"
            )
        if code == "WRONGTYPE":
            return PermanentError(
                f"event {event_id}: the key {stream!r} on Redis at {self.where} holds "
                "something other than a stream (WRONGTYPE)"
            )
        if code == "NOPERM":
            return PermanentError(
                f"event {event_id}: Redis at {self.where} does not let this user XADD to "
                f"{stream!r}: {text}"
            )
        if code in _LOGIN_CODES:
            return self._login_refused(error)
        return PermanentError(
            f"event {event_id}: Redis at {self.where} refused XADD to {stream!r}: {text}"
        )
