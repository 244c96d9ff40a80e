"""``outbox config check --connect``: each sink tries its connection (issue 15), and says
which one cannot be reached and why; without the flag nothing is contacted."""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


class _Receiver(http.server.BaseHTTPRequestHandler):
    """Answers HEAD with 405, as many webhook receivers do, and counts the requests."""

    seen: ClassVar[list[str]] = []

    def do_HEAD(self) -> None:
        self.seen.append(self.command)
        self.send_response(405)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[str]:
    _Receiver.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hooks"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])  # closed again when this returns


def webhook(name: str, url: str) -> str:
    return f"""
    [sinks.{name}]
    type = "webhook"
    url = "{url}"
    secret = {{ env = "HOOK_SECRET" }}
    allowed_networks = ["127.0.0.1/32"]
    connect_timeout = 2.0
    """


def config_check(
    tmp_path: Path, sinks: dict[str, str], *flags: str
) -> subprocess.CompletedProcess[str]:
    text = "".join(webhook(name, url) for name, url in sinks.items())
    text += f"""
    [[subscriptions]]
    topics = ["#"]
    sinks = {list(sinks)!r}
    """.replace("'", '"')
    config = tmp_path / "outbox.toml"
    config.write_text(textwrap.dedent(text), encoding="utf-8")
    env = {name: value for name, value in os.environ.items() if not name.startswith("OUTBOX_")}
    env["HOOK_SECRET"] = SECRET
    return subprocess.run(
        [sys.executable, "-m", "outbox.cli", "config", "check", "--config", str(config), *flags],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_every_sink_reachable(tmp_path: Path, receiver: str) -> None:
    result = config_check(tmp_path, {"billing": receiver}, "--connect")
    assert result.returncode == 0, result.stderr
    assert "each connected" in result.stdout
    assert _Receiver.seen == ["HEAD"]


def test_the_unreachable_sink_is_named_with_the_reason(tmp_path: Path, receiver: str) -> None:
    down = f"http://127.0.0.1:{closed_port()}/hooks"
    result = config_check(tmp_path, {"billing": receiver, "audit": down}, "--connect")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("sinks.")]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith("sinks.audit: cannot connect:"), errors[0]
    assert "connect call failed" in errors[0].lower(), errors[0]
    assert SECRET not in result.stderr + result.stdout


def test_without_the_flag_nothing_is_contacted(tmp_path: Path, receiver: str) -> None:
    down = f"http://127.0.0.1:{closed_port()}/hooks"
    result = config_check(tmp_path, {"billing": receiver, "audit": down})
    assert result.returncode == 0, result.stderr
    assert "connected" not in result.stdout
    assert _Receiver.seen == []
