"""Helpers for tests that append through the ``redis`` sink: streams under a prefix of the
test's own, read back entry by entry and deleted afterwards, and a ``redis-server`` of the
test's own (to stop, or to configure with a password, a user or a memory limit). For this
plugin's tests and an application's alike.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import uuid
from pathlib import Path
from typing import Any

import redis

from outbox.server_control import ServerProcess, free_port

__all__ = ["Entry", "Streams", "redis_server", "redis_server_binary"]


@dataclasses.dataclass(frozen=True)
class Entry:
    """A stream entry as Redis holds it."""

    stream: str
    entry_id: str
    fields: dict[str, bytes]

    @property
    def id(self) -> int:
        """The event id, from the ``id`` field."""
        return int(self.fields["id"])

    @property
    def key(self) -> str | None:
        value = self.fields.get("key")
        return None if value is None else value.decode()

    def payload(self) -> Any:
        return json.loads(self.fields["payload"])

    def headers(self) -> dict[str, str]:
        return dict(json.loads(self.fields["headers"]))


@dataclasses.dataclass(frozen=True)
class Streams:
    """The streams whose names start with ``prefix`` on the server at ``url``."""

    url: str
    prefix: str

    @classmethod
    def fresh(cls, url: str) -> Streams:
        """A prefix no other test uses."""
        return cls(url=url, prefix=f"t{uuid.uuid4().hex[:12]}")

    @property
    def template(self) -> str:
        """A ``stream`` template: one stream per topic, under the prefix."""
        return self.prefix + ":{topic}"

    def names(self) -> list[str]:
        """The streams under the prefix, sorted."""
        return self._keys(kind="STREAM")

    def _keys(self, kind: str | None = None) -> list[str]:
        with self._client() as client:
            found = client.scan_iter(match=f"{self.prefix}:*", _type=kind)
            return sorted(key.decode() for key in found)

    def read(self, stream: str) -> list[Entry]:
        """Every entry of ``stream``, in stream order (XRANGE)."""
        with self._client() as client:
            return [
                Entry(stream, entry_id.decode(), {k.decode(): v for k, v in fields.items()})
                for entry_id, fields in client.xrange(stream)
            ]

    def entries(self) -> list[Entry]:
        """Every entry of every stream under the prefix, stream by stream."""
        return [entry for name in self.names() for entry in self.read(name)]

    def delete(self) -> None:
        """Delete every key under the prefix, streams and others."""
        keys = self._keys()
        if keys:
            with self._client() as client:
                client.delete(*keys)

    def _client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)


def redis_server_binary() -> str | None:
    """The ``redis-server`` on the PATH, or None if there is none."""
    return shutil.which("redis-server")


def redis_server(directory: Path, *arguments: str) -> ServerProcess:
    """A ``redis-server`` of its own on a free port (``.port``), keeping nothing on disk,
    its log in ``directory``; ``arguments`` are more of its options (``--requirepass``...).
    Stop it with ``with`` or ``.stop()``."""
    binary = redis_server_binary()
    if binary is None:
        raise FileNotFoundError("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    command += ["--appendonly", "no", "--dir", str(directory), *arguments]
    return ServerProcess(command, port, directory / f"redis-{port}.log")
