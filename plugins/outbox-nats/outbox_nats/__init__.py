"""The ``nats`` sink: each event is published to NATS JetStream and settled on its PubAck.

    [sinks.events]
    type = "nats"
    servers = ["nats://nats-1:4222", "nats://nats-2:4222"]
    subject = "outbox.{topic}"        # {topic} and {key} are the event's
    stream = "OUTBOX"                 # optional: the stream that must store the events
    user = "relay"
    password = { env = "NATS_PASSWORD" }

Each event is one message: the body is the payload as compact JSON, the headers are
:func:`outbox.messages.headers` plus ``Nats-Msg-Id`` = the event id, so that JetStream drops
a redelivery of the same event inside the stream's duplicate window (2 minutes by default).
An event is settled only once JetStream answers with a PubAck, which means the stream has
stored it; a PubAck marked ``duplicate`` is a success too. A batch is published at once,
one JetStream publish per event, in batch order on one connection, each awaited to its ack
within the relay's deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import PubAck
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

import outbox
from outbox.exceptions import PermanentError, RetryableError
from outbox.messages import Template, body, headers, render
from outbox.secrets import Secret
from outbox.sinks import Event, Sink, timed_out

from ._connection import Connection, is_authorization_failure
from ._subjects import check_stream_name, check_subject, subject_error

__all__ = ["MSG_ID_HEADER", "NatsOptions", "NatsSink"]

MSG_ID_HEADER = "Nats-Msg-Id"
"""JetStream's deduplication header: the event id."""
DEFAULT_ACK_WAIT = 30.0
"""Seconds to wait for a PubAck when the relay gives no deadline."""
# JetStream's error code for a message whose expected stream (Nats-Expected-Stream) is not
# the stream that captures its subject.
_WRONG_STREAM = 10060


class NatsOptions(BaseModel):
    """The ``nats`` sink's options."""

    model_config = ConfigDict(extra="forbid")

    servers: str | list[str] = Field(
        "nats://127.0.0.1:4222",
        description="NATS server URL(s), nats:// or tls://; give credentials below, not here.",
    )
    subject: Template = Field(
        "outbox.{topic}", description="Subject of each event's message; may use {topic}, {key}."
    )
    stream: str | None = Field(
        None, description="If set, the stream that must store the events (checked on each ack)."
    )
    user: str | None = Field(None, description="User name, with password.")
    password: Secret | None = Field(None, description="Password of user.")
    token: Secret | None = Field(None, description="Authentication token (instead of a user).")
    creds_file: Path | None = Field(
        None, description="A .creds file (JWT and NKey seed); needs nats-py[nkeys]."
    )

    @field_validator("servers")
    @classmethod
    def _some_server(cls, servers: str | list[str]) -> str | list[str]:
        if not servers:
            raise ValueError("give at least one server URL")
        return servers

    @field_validator("subject")
    @classmethod
    def _valid_subject(cls, subject: str) -> str:
        # Fill the fields with a valid token: what is left is the template's own text.
        problem = subject_error(subject.replace("{topic}", "t").replace("{key}", "k"))
        if problem:
            raise ValueError(f"{subject!r} cannot make a NATS subject: {problem}")
        return subject

    @field_validator("stream")
    @classmethod
    def _valid_stream(cls, stream: str | None) -> str | None:
        if stream is not None:
            check_stream_name(stream)
        return stream

    @model_validator(mode="after")
    def _one_way_to_log_in(self) -> NatsOptions:
        if (self.user is None) != (self.password is None):
            raise ValueError("user and password go together")
        ways = [self.user is not None, self.token is not None, self.creds_file is not None]
        if sum(ways) > 1:
            raise ValueError("give one of user/password, token and creds_file")
        return self

    def server_list(self) -> list[str]:
        return [self.servers] if isinstance(self.servers, str) else list(self.servers)

    def credentials(self) -> dict[str, Any]:
        """nats-py's connect arguments for the login, secrets revealed only here."""
        if self.user is not None and self.password is not None:
            return {"user": self.user, "password": self.password.get_secret_value()}
        if self.token is not None:
            return {"token": self.token.get_secret_value()}
        if self.creds_file is not None:
            return {"user_credentials": str(self.creds_file)}
        return {}


class NatsSink(Sink):
    """Publishes events to NATS JetStream, each settled on the stream's PubAck."""

    Options: ClassVar[type[BaseModel]] = NatsOptions

    def __init__(self, options: NatsOptions) -> None:
        super().__init__()
        self._options = options
        self._connection = Connection(options.server_list(), options.credentials())

    async def deliver_batch(
        self,
        events: Sequence[Event],
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (the base class's signature)
    ) -> list[BaseException | None]:
        deadline = self.deadline(timeout)
        loop = asyncio.get_running_loop()
        give_up = loop.time() + (DEFAULT_ACK_WAIT if deadline is None else deadline)
        try:
            jetstream = await self._connection.jetstream(give_up - loop.time())
        except (RetryableError, PermanentError) as error:
            return [error] * len(events)
        # Tasks start in creation order and each writes its message before its first
        # pause, so the messages go out in batch order (per-key order).
        tasks = [
            loop.create_task(self._publish(jetstream, event, give_up - loop.time()))
            for event in events
        ]
        late = timed_out(deadline) if deadline is not None else self._no_ack(DEFAULT_ACK_WAIT)
        # A safety net: each publish has its own timeout, but nothing may outlive the deadline.
        done, pending = await asyncio.wait(tasks, timeout=max(0.0, give_up - loop.time()) + 0.1)
        for task in pending:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*pending, return_exceptions=True)
        return [task.result() if task in done else late for task in tasks]

    async def _publish(
        self, jetstream: JetStreamContext, event: Event, wait: float
    ) -> BaseException | None:
        """Publish one event and wait for its PubAck: None, or the error to settle it with."""
        try:
            subject = render(self._options.subject, event)
            check_subject(subject, event.id)
        except PermanentError as error:
            return error
        message_headers = headers(event)
        message_headers[MSG_ID_HEADER] = str(event.id)
        if not self._connection.is_up():
            return self._connection.unreachable()
        try:
            ack = await jetstream.publish(
                subject,
                body(event),
                timeout=max(wait, 0.001),
                stream=self._options.stream,
                headers=message_headers,
            )
            return self._check_ack(ack, event, subject)
        except Exception as error:
            return self._publish_failure(error, event, subject, wait)

    def _check_ack(self, ack: PubAck, event: Event, subject: str) -> PermanentError | None:
        expected = self._options.stream
        if expected is not None and ack.stream != expected:
            return PermanentError(
                f"event {event.id}: subject {subject!r} is stored by stream {ack.stream!r}, "
                f"not {expected!r}"
            )
        return None

    def _publish_failure(
        self, error: Exception, event: Event, subject: str, wait: float
    ) -> BaseException:
        """The outbox error a failed JetStream publish stands for."""
        if isinstance(error, nats.js.errors.NoStreamResponseError | nats.errors.NoRespondersError):
            return PermanentError(
                f"event {event.id}: no JetStream stream captures the subject {subject!r} "
                f"on NATS at {self._connection.where}"
            )
        if isinstance(error, nats.js.errors.APIError) and error.err_code == _WRONG_STREAM:
            return PermanentError(
                f"event {event.id}: the subject {subject!r} is not captured by the stream "
                f"{self._options.stream!r}"
            )
        if isinstance(error, nats.errors.MaxPayloadError):
            return PermanentError(f"event {event.id} is larger than the server's max_payload")
        if isinstance(error, nats.errors.BadSubjectError):
            return PermanentError(f"event {event.id}: {subject!r} is not a valid NATS subject")
        if is_authorization_failure(error):
            return PermanentError(f"event {event.id}: NATS refused the credentials")
        if isinstance(error, nats.errors.TimeoutError):
            return self._no_ack(wait)
        if isinstance(error, nats.js.errors.APIError):  # storage full, no leader...
            return RetryableError(f"event {event.id}: JetStream refused it for now: {error}")
        if isinstance(error, nats.errors.Error | OSError):
            return self._connection.unreachable(error)
        return error  # anything else the relay counts as retryable, as it is

    def _no_ack(self, wait: float) -> RetryableError:
        where = self._connection.where
        return RetryableError(f"no PubAck from NATS at {where} within {wait:.3g}s")

    async def check(self) -> None:
        """Connect, ask JetStream for the account, and look for the stream: the named one,
        or the one capturing the subject when the subject is a fixed name."""
        jetstream = await self._connection.jetstream(DEFAULT_ACK_WAIT)
        where = self._connection.where
        stream = self._options.stream
        if stream is not None:
            try:
                await jetstream.stream_info(stream)
            except nats.js.errors.NotFoundError:
                raise PermanentError(f"no stream {stream!r} on NATS at {where}") from None
        template = self._options.subject
        if "{topic}" in template or "{key}" in template:
            return
        subject = template.replace("{{", "{").replace("}}", "}")
        try:
            found = await jetstream.find_stream_name_by_subject(subject)
        except nats.js.errors.NotFoundError:
            raise PermanentError(
                f"no JetStream stream captures the subject {subject!r} on NATS at {where}"
            ) from None
        if stream is not None and found != stream:
            raise PermanentError(f"the subject {subject!r} is stored by {found!r}, not {stream!r}")

    async def aclose(self) -> None:
        await self._connection.aclose()


@outbox.hookimpl
def outbox_register_sinks(register: outbox.hookspecs.RegisterSink) -> None:
    register("nats", NatsSink)
