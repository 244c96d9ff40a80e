"""A webhook sink aimed at a non-public address is refused when the configuration loads
(``outbox config check``, relay start), with the ``allowed_networks`` line that fixes it; a
host name that resolves to one only when a delivery is made is refused then, as a retryable
error, since configuration can change the answer."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pydantic import ValidationError

import outbox
from outbox.exceptions import ConfigError, RetryableError
from outbox.plugins import build_sinks, make_plugin_manager, sink_types
from outbox.relay import Relay
from outbox.routing import Subscription
from outbox.runtime import relay_options
from outbox.settings import SinkSettings
from outbox.testing import make_event
from outbox.webhook_sink import WebhookOptions, WebhookSink

SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()
DEADLINE = 20.0


def outbox_cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``outbox ARGS`` as an operator runs it, with no OUTBOX_* variable of the test's."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("OUTBOX_")}
    env["TEST_WEBHOOK_SECRET"] = SECRET
    return subprocess.run(
        [sys.executable, "-m", "outbox.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def write_config(tmp_path: Path, url: str, extra: str = "") -> Path:
    config = tmp_path / "outbox.toml"
    config.write_text(
        textwrap.dedent(f"""
            [sinks.billing]
            type = "webhook"
            url = "{url}"
            secret = {{ env = "TEST_WEBHOOK_SECRET" }}
            {extra}

            [[subscriptions]]
            topics = ["order.#"]
            sinks = ["billing"]
        """),
        encoding="utf-8",
    )
    return config


# -- refused when the configuration loads ------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "reason", "fix"),
    [
        (
            "http://127.0.0.1:8080/hook",
            "127.0.0.1 is not a public address (loopback)",
            "127.0.0.1/32",
        ),
        ("https://10.1.2.3/hook", "10.1.2.3 is not a public address (private)", "10.1.2.3/32"),
        ("https://192.168.0.7/", "192.168.0.7 is not a public address (private)", "192.168.0.7/32"),
        (
            "http://169.254.169.254/",
            "169.254.169.254 is not a public address (link-local)",
            "169.254.169.254/32",
        ),
        ("http://[::1]:9000/", "::1 is not a public address (loopback)", "::1/128"),
        ("http://[fd00::5]/", "fd00::5 is not a public address (private)", "fd00::5/128"),
        (
            "http://[::ffff:10.0.0.1]/",
            "(IPv4 10.0.0.1) is not a public address (private)",
            "10.0.0.1/32",
        ),
        ("http://2130706433/", "127.0.0.1 is not a public address (loopback)", "127.0.0.1/32"),
        ("http://127.1/", "127.0.0.1 is not a public address (loopback)", "127.0.0.1/32"),
        ("http://localhost:8080/", "localhost is a loopback name", "127.0.0.1/32"),
        ("http://api.localhost/", "api.localhost is a loopback name", "::1/128"),
    ],
)
def test_options_refuse_a_non_public_url_with_the_fix(url: str, reason: str, fix: str) -> None:
    with pytest.raises(ValidationError) as caught:
        WebhookOptions(url=url, secret=SECRET)  # type: ignore[arg-type]
    [error] = caught.value.errors()
    assert error["loc"] == ("url",)
    assert reason in error["msg"]
    assert "allowed_networks = [" in error["msg"]
    assert f'"{fix}"' in error["msg"]


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("http://127.0.0.1:8080/hook", ["127.0.0.1/32"]),
        ("https://10.1.2.3/hook", ["10.0.0.0/8"]),
        ("http://[::ffff:10.0.0.1]/", ["10.0.0.0/8"]),
        ("http://localhost:8080/", ["127.0.0.0/8", "::1/128"]),
        ("http://localhost:8080/", ["127.0.0.1/32"]),
        ("https://hooks.example.com/", []),  # a name: checked when it is resolved
        ("https://93.184.215.14/", []),  # public
    ],
)
def test_options_accept_what_allowed_networks_holds(url: str, allowed: list[str]) -> None:
    options = WebhookOptions(url=url, secret=SECRET, allowed_networks=allowed)  # type: ignore[arg-type]
    assert options.url.get_secret_value() == url


def test_the_check_sees_a_url_given_by_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BILLING_URL_FOR_TEST", "http://10.9.8.7/hook")
    with pytest.raises(ValidationError, match=r"10\.9\.8\.7 is not a public address"):
        WebhookOptions.model_validate({"url": {"env": "BILLING_URL_FOR_TEST"}, "secret": SECRET})


def test_config_check_refuses_a_private_url_naming_sink_address_and_fix(tmp_path: Path) -> None:
    config = write_config(tmp_path, "http://10.20.30.40:8080/hooks/outbox")
    result = outbox_cli(tmp_path, "config", "check", "--config", str(config))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    [line, count] = result.stderr.strip().splitlines()
    assert line.startswith("sinks.billing.url: 10.20.30.40 is not a public address (private)")
    assert 'allowed_networks = ["10.20.30.40/32"]' in line
    assert "/hooks/outbox" not in line  # the URL's path may hold a token
    assert count == "1 error(s)"


def test_config_check_passes_once_the_network_is_allowed(tmp_path: Path) -> None:
    allowed = 'allowed_networks = ["10.0.0.0/8"]'
    config = write_config(tmp_path, "http://10.20.30.40:8080/hooks/outbox", allowed)
    result = outbox_cli(tmp_path, "config", "check", "--config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("ok: 1 sink(s)")


def test_relay_start_refuses_it_before_touching_the_database(tmp_path: Path) -> None:
    config = write_config(tmp_path, "http://127.0.0.1:8080/hook")
    # No server listens on port 1: a relay that got as far as the database would exit 1.
    url = "postgresql://postgres@127.0.0.1:1/postgres?connect_timeout=1"
    result = outbox_cli(tmp_path, "relay", "--once", "--config", str(config), "--database-url", url)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "sinks.billing.url: 127.0.0.1 is not a public address (loopback)" in result.stderr
    assert 'allowed_networks = ["127.0.0.1/32"]' in result.stderr


def test_building_the_sinks_in_python_refuses_it_too() -> None:
    settings = {"billing": SinkSettings(type="webhook", url="http://192.168.1.20/", secret=SECRET)}
    with pytest.raises(ConfigError) as caught:
        build_sinks(settings, sink_types(make_plugin_manager(entry_points=False)))
    [(where, message)] = caught.value.errors
    assert where == "sinks.billing.url"
    assert 'allowed_networks = ["192.168.1.20/32"]' in message


# -- a name that resolves to a non-public address when a delivery is made -----------------------


def fake_dns(monkeypatch: pytest.MonkeyPatch, name: str, *addresses: str) -> None:
    """Make ``name`` resolve to ``addresses`` on the running loop (a rebinding DNS answer)."""
    loop = asyncio.get_running_loop()
    real = loop.getaddrinfo

    async def getaddrinfo(host: str, port: int, *args: Any, **kwargs: Any) -> Any:
        if host != name:
            return await real(host, port, *args, **kwargs)
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
            for a in addresses
        ]

    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)


async def test_a_name_resolving_to_a_private_address_is_a_retryable_refusal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_dns(monkeypatch, "hooks.example.com", "10.0.0.7")
    options = WebhookOptions(url="https://hooks.example.com/secret-path", secret=SECRET)  # type: ignore[arg-type]
    async with WebhookSink(options) as sink:
        [result] = await sink.deliver_batch([make_event()])
    assert type(result) is RetryableError
    message = str(result)
    assert (
        "10.0.0.7 is not a public address (private) (hooks.example.com resolves to it)" in message
    )
    assert 'allowed_networks = ["10.0.0.7/32"]' in message
    assert "secret-path" not in message


class Receiver:
    """A plain HTTP server on 127.0.0.1 that records the ids it receives."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["content-length"]))
                receiver.ids.append(self.headers["webhook-id"])
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    server.thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()


def _relay(database_url: str, url: str, allowed: list[str]) -> Relay:
    settings = {
        "hooks": SinkSettings(type="webhook", url=url, secret=SECRET, allowed_networks=allowed)
    }
    sinks = build_sinks(settings, sink_types(make_plugin_manager(entry_points=False)))
    options = relay_options(
        poll_interval=0.05,
        maintenance_interval=0.1,
        lease_seconds=10,
        delivery_timeout=5,
        retry=dataclasses.replace(
            relay_options().retry, max_attempts=10, base_seconds=0.05, cap_seconds=0.1, jitter=0
        ),
    )
    return Relay(database_url, sinks, [Subscription(("order.#",), ("hooks",))], options)


def _row(database_url: str, event_id: int) -> tuple[str, int, str | None, Any]:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT status, attempts, last_error, deliveries FROM outbox_events WHERE id = %s",
            [event_id],
        ).fetchone()
    assert row is not None
    return row[0], row[1], row[2], row[3]


async def _run_until(relay: Relay, condition: Callable[[], bool], what: str) -> None:
    task = asyncio.create_task(relay.run())
    try:
        deadline = time.monotonic() + DEADLINE
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            await asyncio.sleep(0.02)
    finally:
        relay.stop()
        await task


async def test_a_refusal_at_delivery_does_not_fail_the_event_and_configuration_fixes_it(
    database_url: str, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_dns(monkeypatch, "receiver.internal.test", "127.0.0.1")
    url = f"http://receiver.internal.test:{receiver.port}/hooks"
    with psycopg.connect(database_url) as conn:
        event = outbox.publish(conn, "order.paid", {"n": 1}, key="order-1")
    event_id = event.id or 0

    refusing = _relay(database_url, url, allowed=[])
    await _run_until(
        refusing, lambda: _row(database_url, event_id)[1] >= 1, "the first attempt to settle"
    )
    status, _, last_error, deliveries = _row(database_url, event_id)
    assert status == "pending"  # a retry, not a failure that parks the key
    assert deliveries["hooks"]["status"] != "failed"
    assert last_error is not None
    assert "127.0.0.1 is not a public address (loopback)" in last_error
    assert "receiver.internal.test resolves to it" in last_error
    assert 'allowed_networks = ["127.0.0.1/32"]' in last_error
    assert receiver.ids == []

    allowing = _relay(database_url, url, allowed=["127.0.0.1/32"])
    await _run_until(allowing, lambda: _row(database_url, event_id)[0] == "done", "delivery")
    assert receiver.ids == [str(event_id)]
