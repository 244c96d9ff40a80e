"""Fixtures of the kafka sink's tests: a Kafka-compatible broker, Tansu, on a free port with
in-memory storage for the session, and one behind a proxy for a test to cut.

Client libraries are imported inside the fixtures, so that a checkout without them skips
the test modules (each calls ``require_module`` first) instead of failing here.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from outbox.end_to_end import require_module
from outbox.server_control import ServerProcess, TcpProxy, free_port, require_server

if TYPE_CHECKING:
    from outbox_kafka.testing import Kafka

HINT = "pip install -e plugins/outbox-kafka"


@pytest.fixture(scope="session")
def tansu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The address of a Tansu broker running for the whole test session."""
    require_module("outbox_kafka", hint=HINT)
    from outbox_kafka.testing import tansu_command

    port = free_port()
    address = f"127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("tansu") / "tansu.log"
    with ServerProcess(tansu_command(address, address), port, log):
        yield address


@pytest.fixture
def kafka(tansu: str) -> Kafka:
    from outbox_kafka.testing import Kafka

    require_server("Tansu (Kafka)", tansu)
    return Kafka(tansu)


@pytest.fixture
def kafka_behind_proxy(tmp_path: Path) -> Iterator[tuple[Kafka, TcpProxy]]:
    """A Tansu of the test's own that clients reach through a proxy only (it advertises
    the proxy's address): cutting the proxy takes the broker away without losing what it
    holds, which restarting an in-memory Tansu would."""
    require_module("outbox_kafka", hint=HINT)
    from outbox_kafka.testing import Kafka, tansu_command

    port = free_port()
    with TcpProxy(f"127.0.0.1:{port}") as proxy:
        command = tansu_command(f"127.0.0.1:{port}", proxy.address)
        with ServerProcess(command, port, tmp_path / "tansu.log"):
            require_server("Tansu (Kafka) behind a proxy", proxy.address)
            yield Kafka(proxy.address), proxy
