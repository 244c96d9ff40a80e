"""The ``redis`` sink in real ``outbox relay`` processes: every event in its stream, in
per-key order, through SIGKILLed relays (repeats carrying the same ``id``) and through a
connection to Redis cut for a few seconds."""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

from outbox.end_to_end import (
    RelayProcess,
    delivered_count,
    drain,
    kill_repeatedly,
    planned_events,
    publish_events,
    require_module,
    wait_until_done,
    write_config,
)
from outbox.server_control import TcpProxy, require_server

require_module("outbox_redis", hint="pip install -e plugins/outbox-redis")
require_module("redis", hint="pip install redis")

from outbox_redis.testing import Entry, Streams  # noqa: E402 (after the skips above)

REDIS_ADDRESS = "127.0.0.1:6379"
REDIS_URL = f"redis://{REDIS_ADDRESS}/0"


@pytest.fixture
def streams() -> Iterator[Streams]:
    """A prefix of the test's own on the machine's Redis; its streams deleted afterwards."""
    require_server("Redis", REDIS_ADDRESS, hint="start redis-server")
    made = Streams.fresh(REDIS_URL)
    try:
        yield made
    finally:
        made.delete()


def _first_of_each(entries: list[Entry]) -> list[Entry]:
    """The entries a consumer deduping on ``id`` handles: the first of each id."""
    seen: set[int] = set()
    first = []
    for entry in entries:
        if entry.id not in seen:
            seen.add(entry.id)
            first.append(entry)
    return first


def _assert_per_key_order(streams: Streams) -> None:
    """Within each stream, the ids of each key increase (repeats aside)."""
    for name in streams.names():
        of_key: dict[str | None, list[int]] = defaultdict(list)
        for entry in _first_of_each(streams.read(name)):
            of_key[entry.key].append(entry.id)
        for key, ids in of_key.items():
            assert ids == sorted(ids), f"{name}, key {key}: {ids}"


def _assert_repeats_are_alike(entries: list[Entry]) -> int:
    """Every entry of one id carries the same fields; the number of repeats."""
    by_id: dict[int, list[Entry]] = defaultdict(list)
    for entry in entries:
        by_id[entry.id].append(entry)
    for copies in by_id.values():
        assert all(copy.fields == copies[0].fields for copy in copies), copies
    return len(entries) - len(by_id)


@pytest.mark.acceptance
def test_drained_events_arrive_as_planned(
    database_url: str, tmp_path: Path, streams: Streams
) -> None:
    planned = planned_events(200, keys=5)
    ids = publish_events(database_url, planned)
    options = {"url": REDIS_URL, "stream": streams.prefix + ":{topic}:{key}"}
    drain(write_config(tmp_path, "redis", options), database_url)

    entries = streams.entries()
    assert sorted(entry.id for entry in entries) == sorted(ids)  # each once
    by_id = {entry.id: entry for entry in entries}
    for event_id, event in zip(ids, planned, strict=True):
        entry = by_id[event_id]
        assert entry.stream == f"{streams.prefix}:{event.topic}:{event.key}"
        assert set(entry.fields) == {"id", "topic", "key", "payload", "headers"}
        assert entry.fields["topic"] == event.topic.encode()
        assert entry.key == event.key
        assert (
            entry.fields["payload"]
            == json.dumps(event.payload, ensure_ascii=False, separators=(",", ":")).encode()
        )
        assert entry.headers() == {
            "outbox-id": str(event_id),
            "outbox-topic": event.topic,
            "outbox-key": event.key,
            "traceparent": event.headers["traceparent"],
        }
    assert len(streams.names()) == 5  # one stream per key
    _assert_per_key_order(streams)


@pytest.mark.acceptance
def test_relays_killed_while_events_are_published_lose_none(
    database_url: str, tmp_path: Path, streams: Streams
) -> None:
    config = write_config(tmp_path, "redis", {"url": REDIS_URL, "stream": streams.template})
    ids = kill_repeatedly(config, database_url, planned_events(1000, keys=5), kills=5)

    entries = streams.entries()
    received = [entry.id for entry in entries]
    duplicates = _assert_repeats_are_alike(entries)
    print(f"redis SIGKILL: {len(ids)} published, {len(received)} received, {duplicates} duplicates")
    assert set(received) == set(ids)
    _assert_per_key_order(streams)


@pytest.mark.acceptance
def test_the_relay_delivers_through_a_cut_connection(
    database_url: str, tmp_path: Path, streams: Streams
) -> None:
    planned = planned_events(400, keys=5)
    ids: list[int] = []
    with TcpProxy(REDIS_ADDRESS) as proxy:
        options = {"url": f"redis://{proxy.address}/0", "stream": streams.template}
        config = write_config(tmp_path, "redis", options)
        with RelayProcess(config, database_url) as relay:
            publisher = threading.Thread(
                target=lambda: ids.extend(
                    publish_events(database_url, planned, per_commit=10, pause=0.1)
                )
            )
            publisher.start()
            try:
                _wait_for_some_done(database_url, relay)
                proxy.cut()
                time.sleep(3)  # the outage itself: its length is the point
                proxy.restore()
            finally:
                publisher.join()
            wait_until_done(database_url, len(planned), relay)
            assert relay.process.poll() is None, relay.output()
            assert f"cannot reach Redis at {proxy.address}" in relay.output()

    entries = streams.entries()
    _assert_repeats_are_alike(entries)  # a reply lost in the cut: appended again, alike
    assert {entry.id for entry in entries} == set(ids)
    _assert_per_key_order(streams)


def _wait_for_some_done(database_url: str, relay: RelayProcess) -> None:
    give_up = time.monotonic() + 60
    while delivered_count(database_url).get("done", 0) < 20:
        assert relay.process.poll() is None, relay.output()
        assert time.monotonic() < give_up, relay.output()
        time.sleep(0.1)
