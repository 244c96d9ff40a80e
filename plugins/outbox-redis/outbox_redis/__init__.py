"""The ``redis`` sink: each event is appended to a Redis stream and settled on XADD's reply.

    [sinks.events]
    type = "redis"
    url = { env = "REDIS_URL" }       # redis://user:password@host:6379/0
    stream = "outbox:{topic}"         # {topic} and {key} are the event's
    maxlen = 1000000                  # optional: XADD ... MAXLEN ~ 1000000

Each event is one stream entry with the fields ``id`` (the event id), ``topic``, ``key``
(absent when the event has none), ``payload`` (:func:`outbox.messages.body`) and
``headers`` (:func:`outbox.messages.headers` as a JSON object). A batch is one pipeline of
XADDs on one connection, in batch order (so each stream gets a key's events in order); each
event is settled from its own reply: an entry id means Redis has appended it, an error
reply fails that event alone.

Redis has no deduplication: an event redelivered after a relay died between Redis's reply
and the settle is appended again, with the same ``id`` field, which consumers dedup on.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any, ClassVar

import redis.asyncio
import redis.exceptions
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.typing import EncodableT, FieldT

import outbox
from outbox.exceptions import PermanentError, SinkError
from outbox.messages import Template, body, headers, render
from outbox.secrets import Secret
from outbox.sinks import Event, Sink, timed_out

from ._errors import Server

__all__ = ["RedisOptions", "RedisSink", "entry_fields", "make_client"]

DEFAULT_URL = "redis://127.0.0.1:6379/0"
CHECK_TIMEOUT = 10.0
"""Seconds ``check()`` gives the server to answer."""


class RedisOptions(BaseModel):
    """The ``redis`` sink's options."""

    # A refused URL must not be echoed back in the error: it may hold a password.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    url: Secret = Field(
        SecretStr(DEFAULT_URL),
        description="redis://[user:password@]host:port/db, rediss:// for TLS, or "
        "unix:///path?db=0; a secret when it holds a password ({ env = ... }).",
    )
    stream: Template = Field(
        "outbox:{topic}", description="The stream (key) of each event; may use {topic}, {key}."
    )
    maxlen: int | None = Field(
        None, ge=1, description="Trim each stream to about this many entries (XADD MAXLEN ~)."
    )
    create_stream: bool = Field(
        True,
        description="Create a missing stream (XADD's default); false: XADD NOMKSTREAM, and "
        "an event for a stream that does not exist fails for good.",
    )
    socket_timeout: float = Field(
        10.0, gt=0, description="Seconds to wait for a reply (the relay's deadline may cut it)."
    )
    socket_connect_timeout: float = Field(
        2.0, gt=0, description="Seconds to wait for a connection to be made."
    )

    @field_validator("url")
    @classmethod
    def _redis_url(cls, url: SecretStr) -> SecretStr:
        # ValueError, saying why without quoting the URL: first ours (the scheme, a host),
        # then redis-py's own reading (a db or a query option it cannot use).
        Server.from_url(url.get_secret_value())
        parse_url(url.get_secret_value())
        return url

    def server(self) -> Server:
        return Server.from_url(self.url.get_secret_value())


def make_client(options: RedisOptions) -> redis.asyncio.Redis:
    """The sink's client: no connection yet (the first command makes one), and no retries
    of its own, so that a failure reaches the relay, whose backoff paces the retries,
    rather than being retried inside the relay's deadline (a retried pipeline would also
    append its entries twice)."""
    return redis.asyncio.Redis.from_url(
        options.url.get_secret_value(),
        socket_timeout=options.socket_timeout,
        socket_connect_timeout=options.socket_connect_timeout,
        retry=Retry(NoBackoff(), 0),
    )


def entry_fields(event: Event) -> dict[FieldT, EncodableT]:
    """The stream entry of ``event``: ``id``, ``topic``, ``key`` (absent when None),
    ``payload`` and ``headers`` (a JSON object)."""
    fields: dict[FieldT, EncodableT] = {"id": str(event.id), "topic": event.topic}
    if event.key is not None:
        fields["key"] = event.key
    fields["payload"] = body(event)
    fields["headers"] = json.dumps(headers(event), ensure_ascii=False, separators=(",", ":"))
    return fields


class RedisSink(Sink):
    """Appends events to Redis streams, each settled on the reply to its own XADD."""

    Options: ClassVar[type[BaseModel]] = RedisOptions

    def __init__(self, options: RedisOptions) -> None:
        super().__init__()
        self._options = options
        self._server = options.server()
        self._client: redis.asyncio.Redis | None = None

    def _redis(self) -> redis.asyncio.Redis:
        """The sink's one client, made on first use. Its pool keeps a connection per batch
        in flight at once (the relay's ``concurrency``), reconnecting one that broke."""
        if self._client is None:
            self._client = make_client(self._options)
        return self._client

    async def deliver_batch(
        self,
        events: Sequence[Event],
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (the base class's signature)
    ) -> list[BaseException | None]:
        deadline = self.deadline(timeout)
        results: list[BaseException | None] = [None] * len(events)
        pipeline = self._redis().pipeline(transaction=False)
        sent: list[tuple[int, str]] = []  # (index in events, stream) of each XADD, in order
        for index, event in enumerate(events):
            try:
                stream = render(self._options.stream, event)
            except PermanentError as error:  # a {key} template and an event without a key
                results[index] = error
                continue
            pipeline.xadd(
                stream,
                entry_fields(event),
                maxlen=self._options.maxlen,
                approximate=True,
                nomkstream=not self._options.create_stream,
            )
            sent.append((index, stream))
        if not sent:
            return results
        cutoff = asyncio.timeout(deadline)
        try:
            async with cutoff:
                # raise_on_error=False: an error reply is one event's result, not the batch's.
                replies = await pipeline.execute(raise_on_error=False)
        except Exception as error:  # the connection, the login, or the deadline
            failure = timed_out(deadline) if cutoff.expired() else self._server.failure(error)
            for index, _ in sent:
                results[index] = failure
            return results
        for (index, stream), reply in zip(sent, replies, strict=True):
            results[index] = self._settle(events[index].id, stream, reply)
        return results

    def _settle(self, event_id: int, stream: str, reply: Any) -> SinkError | None:
        """An event's result from the reply to its XADD: an entry id, an error, or nil."""
        if isinstance(reply, redis.exceptions.RedisError):
            return self._server.refusal(reply, event_id, stream)
        if reply is None:  # NOMKSTREAM, and no such stream
            return PermanentError(
                f"event {event_id}: no stream {stream!r} on Redis at {self._server.where}, "
                "and create_stream is false"
            )
        return None

    async def check(self) -> None:
        """Connect and log in (PING), and when ``stream`` names one stream (no ``{topic}``
        or ``{key}``), check that its key holds a stream, or is free to make one."""
        client = self._redis()
        template = self._options.stream
        fixed = "{topic}" not in template and "{key}" not in template
        stream = template.replace("{{", "{").replace("}}", "}")
        try:
            async with asyncio.timeout(CHECK_TIMEOUT):
                await client.ping()
                kind = await client.type(stream) if fixed else "stream"
        except Exception as error:
            raise self._server.failure(error) from None
        where = self._server.where
        kind = kind.decode() if isinstance(kind, bytes) else kind
        if kind == "none" and not self._options.create_stream:
            raise PermanentError(
                f"no stream {stream!r} on Redis at {where}, and create_stream is false"
            )
        if kind not in ("stream", "none"):
            raise PermanentError(
                f"the key {stream!r} on Redis at {where} holds a {kind}, not a stream"
            )

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()


@outbox.hookimpl
def outbox_register_sinks(register: outbox.hookspecs.RegisterSink) -> None:
    register("redis", RedisSink)
