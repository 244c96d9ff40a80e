"""The helpers plugin tests stand on: a proxy that is really cut, a server process that is
really stopped, a skip that turns into a failure in CI, and configuration files the relay
reads as written."""

from __future__ import annotations

import socket
import socketserver
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from outbox.end_to_end import require_module, write_config
from outbox.server_control import (
    REQUIRE_VARIABLE,
    ServerProcess,
    TcpProxy,
    free_port,
    require_server,
)
from outbox.settings import load_settings


class Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(1024):
            self.request.sendall(data)


@pytest.fixture
def echo_server() -> Iterator[str]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def echo(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(data)
        return conn.recv(1024)


def test_a_cut_proxy_drops_its_connections_and_refuses_new_ones_until_restored(
    echo_server: str,
) -> None:
    with TcpProxy(echo_server) as proxy:
        open_conn = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        open_conn.sendall(b"before")
        assert open_conn.recv(1024) == b"before"
        proxy.cut()
        assert open_conn.recv(1024) == b""  # closed under the client
        open_conn.close()
        with pytest.raises(ConnectionRefusedError):
            echo(proxy.port, b"during")
        proxy.restore()
        assert echo(proxy.port, b"after") == b"after"


def test_require_server_skips_or_fails_when_nothing_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    address = f"127.0.0.1:{free_port()}"
    monkeypatch.delenv(REQUIRE_VARIABLE, raising=False)
    with pytest.raises(pytest.skip.Exception, match=f"Kafka does not answer at {address}"):
        require_server("Kafka", address)
    monkeypatch.setenv(REQUIRE_VARIABLE, "1")
    with pytest.raises(pytest.fail.Exception, match="every broker test must run"):
        require_server("Kafka", address)


def test_require_module_skips_or_fails_when_it_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert require_module("json").__name__ == "json"
    monkeypatch.delenv(REQUIRE_VARIABLE, raising=False)
    with pytest.raises(pytest.skip.Exception, match="no_such_client is not installed"):
        require_module("no_such_client")
    monkeypatch.setenv(REQUIRE_VARIABLE, "1")
    with pytest.raises(pytest.fail.Exception, match="no_such_client is not installed"):
        require_module("no_such_client")


def test_a_server_process_serves_until_stopped_and_starts_again(tmp_path: Path) -> None:
    port = free_port()
    command = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    with ServerProcess(command, port, tmp_path / "server.log") as server:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        server.stop()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5)
        server.start()
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    assert server.process is None


def test_a_server_that_exits_at_once_says_so(tmp_path: Path) -> None:
    command = [sys.executable, "-c", "print('no such option'); raise SystemExit(2)"]
    with pytest.raises(AssertionError, match="did not start:\nno such option"):
        ServerProcess(command, free_port(), tmp_path / "server.log")


def test_a_written_configuration_reads_back_as_written(tmp_path: Path) -> None:
    options = {"path": str(tmp_path / "out.jsonl"), "options": {"linger.ms": 5, "acks": "all"}}
    config = write_config(tmp_path, "jsonl", options, relay={"batch_size": 7}, topics=["a.*"])
    settings = load_settings(config)
    assert settings.relay.batch_size == 7
    assert settings.relay.lease_seconds == 6.0
    assert settings.sinks["out"].type == "jsonl"
    assert settings.sinks["out"].options() == options
    assert [s.topics for s in settings.subscriptions] == [["a.*"]]
