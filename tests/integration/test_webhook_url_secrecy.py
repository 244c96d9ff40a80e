"""A webhook URL's path is a secret by default (Slack-style tokens live there): errors,
``repr``s and so ``last_error`` show ``scheme://host[:port]/…`` only, unless
``url_is_secret = false``. The URL itself may be a ``{ env = ... }`` reference."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import psycopg
import pytest

import outbox
from outbox.exceptions import PermanentError, RetryableError
from outbox.plugins import build_sinks, make_plugin_manager, sink_types
from outbox.relay import Relay
from outbox.routing import Subscription
from outbox.runtime import relay_options
from outbox.settings import SinkSettings
from outbox.testing import make_event
from outbox.webhook_sink import WebhookOptions, WebhookSink

SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()
TOKEN = "T000/B000/xoxb-hunter2"
LOOPBACK = ["127.0.0.1/32"]


@contextlib.asynccontextmanager
async def answering(status: int) -> AsyncIterator[int]:
    """A real HTTP server on 127.0.0.1 answering every request with ``status``; its port."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            (
                int(line.split(b":")[1])
                for line in head.lower().split(b"\r\n")
                if line.startswith(b"content-length:")
            ),
            0,
        )
        await reader.readexactly(length)
        writer.write(
            f"HTTP/1.1 {status} X\r\ncontent-length: 4\r\nconnection: close\r\n\r\nnope".encode()
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def options(url: Any, **values: Any) -> WebhookOptions:
    return WebhookOptions.model_validate(
        {"url": url, "secret": SECRET, "allowed_networks": LOOPBACK, **values}
    )


async def deliver(sink: WebhookSink) -> BaseException | None:
    [result] = await sink.deliver_batch([make_event()])
    return result


async def test_an_error_answer_shows_the_origin_not_the_path() -> None:
    async with (
        answering(500) as port,
        WebhookSink(options(f"http://127.0.0.1:{port}/services/{TOKEN}")) as sink,
    ):
        result = await deliver(sink)
    assert isinstance(result, RetryableError)
    assert f"HTTP 500 from http://127.0.0.1:{port}/…: nope" in str(result)
    assert "hunter2" not in str(result)
    assert "services" not in str(result)


async def test_a_network_error_shows_the_origin_not_the_path() -> None:
    port = closed_port()
    async with WebhookSink(options(f"http://127.0.0.1:{port}/services/{TOKEN}")) as sink:
        result = await deliver(sink)
    assert isinstance(result, RetryableError)
    assert f"http://127.0.0.1:{port}/…" in str(result)
    assert "hunter2" not in str(result)


async def test_a_timeout_shows_the_origin_not_the_path() -> None:
    async def never(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(60)
        raise AssertionError("not reached")

    sink = WebhookSink(
        options(f"https://hooks.example.com/services/{TOKEN}", timeout=0.2, connect_timeout=0.1),
        transport=httpx.MockTransport(never),
    )
    async with sink:
        result = await deliver(sink)
    assert isinstance(result, RetryableError)
    assert "https://hooks.example.com/…" in str(result)
    assert "hunter2" not in str(result)


async def test_an_httpx_error_quoting_the_url_is_redacted() -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"cannot reach {request.url} (path {request.url.path})")

    url = f"https://hooks.example.com/services/{TOKEN}?x=1"
    async with WebhookSink(options(url), transport=httpx.MockTransport(fail)) as sink:
        result = await deliver(sink)
    assert isinstance(result, RetryableError)
    assert "hunter2" not in str(result)
    assert "https://hooks.example.com/…" in str(result)


def test_reprs_do_not_show_the_url_path() -> None:
    configured = options(f"https://hooks.example.com/services/{TOKEN}")
    sink = WebhookSink(configured)
    assert "hunter2" not in repr(configured)
    assert "hunter2" not in repr(sink)
    assert "hunter2" not in str(sink)


async def test_a_url_that_is_not_secret_is_shown_whole_but_for_credentials_and_query() -> None:
    async with answering(400) as port:
        url = f"http://user:pw-hunter2@127.0.0.1:{port}/hooks/outbox?token=hunter2"
        async with WebhookSink(options(url, url_is_secret=False)) as sink:
            result = await deliver(sink)
    assert isinstance(result, PermanentError)
    assert f"HTTP 400 from http://127.0.0.1:{port}/hooks/outbox: nope" in str(result)
    assert "hunter2" not in str(result)


def test_url_is_secret_by_default() -> None:
    assert options("https://hooks.example.com/").url_is_secret is True


async def test_the_url_may_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    async with answering(500) as port:
        monkeypatch.setenv("HOOK_URL", f"http://127.0.0.1:{port}/services/{TOKEN}")
        async with WebhookSink(options({"env": "HOOK_URL"})) as sink:
            result = await deliver(sink)
    assert f"HTTP 500 from http://127.0.0.1:{port}/…" in str(result)


def test_a_url_from_a_missing_variable_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="HOOK_URL_NOT_SET is not set"):
        options({"env": "HOOK_URL_NOT_SET"})


def test_a_bad_url_from_the_environment_is_refused_without_echoing_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HOOK_URL", f"https://hooks.example.com:99999/{TOKEN}")
    with pytest.raises(ValueError, match=r"port 99999 is not in 1\.\.65535") as caught:
        options({"env": "HOOK_URL"})
    assert "hunter2" not in str(caught.value)


def outbox_cli(*args: str) -> str:
    env = {name: value for name, value in os.environ.items() if not name.startswith("OUTBOX_")}
    done = subprocess.run(
        [sys.executable, "-m", "outbox.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return done.stdout + done.stderr


async def test_status_events_show_and_logs_never_print_the_path(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with psycopg.connect(database_url) as conn:
        event_id = outbox.publish(conn, "order.paid", {"n": 1}).id
    async with answering(400) as port:
        url = f"http://127.0.0.1:{port}/services/{TOKEN}"
        settings = {
            "hooks": SinkSettings(type="webhook", url=url, secret=SECRET, allowed_networks=LOOPBACK)
        }
        sinks = build_sinks(settings, sink_types(make_plugin_manager(entry_points=False)))
        options = relay_options(poll_interval=0.05, maintenance_interval=0.1)
        relay = Relay(database_url, sinks, [Subscription(("order.#",), ("hooks",))], options)
        caplog.set_level(logging.DEBUG)
        task = asyncio.create_task(relay.run())
        try:
            deadline = time.monotonic() + 20
            while not _failed(database_url, event_id):
                assert time.monotonic() < deadline, "the event never failed"
                await asyncio.sleep(0.05)
        finally:
            relay.stop()
            await task
    shown = outbox_cli("events", "show", str(event_id), "--database-url", database_url)
    status = outbox_cli("status", "--database-url", database_url)
    assert f"HTTP 400 from http://127.0.0.1:{port}/…" in shown
    for text in (shown, status, caplog.text):
        assert "hunter2" not in text
        assert "services" not in text


def _failed(database_url: str, event_id: int | None) -> bool:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT status FROM outbox_events WHERE id = %s", [event_id]).fetchone()
    return row is not None and row[0] == "failed"
