"""``outbox demo``, run as a newcomer runs it: a subprocess, its exit code, its final table."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from outbox.server_control import free_port

TIMEOUT = 180


def _demo(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_")}
    return subprocess.run(
        [sys.executable, "-m", "outbox.cli", "demo", "--orders", "6", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def _final_table(stdout: str) -> dict[str, tuple[str, int, int, int]]:
    rows = {}
    for line in stdout.splitlines():
        match = re.match(r"^\s+(app|billing|audit)\s+(\w+)\s+(\d+)\s+(\d+)\s+(\d+)$", line)
        if match:
            name, kind, delivered, expected, repeats = match.groups()
            rows[name] = (kind, int(delivered), int(expected), int(repeats))
    return rows


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A data directory outside pytest's own temporary tree: a pytest session starting
    meanwhile resets that tree's permissions to the owner's, and the embedded server runs as
    another user."""
    with tempfile.TemporaryDirectory(prefix="outbox-demo-test-") as parent:
        yield Path(parent) / "pgdata"


def test_demo_on_a_fresh_embedded_server_delivers_everything(
    tmp_path: Path, data_dir: Path
) -> None:
    first = _demo(tmp_path, "--data-dir", str(data_dir))
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"Starting an embedded PostgreSQL; its data is in {data_dir}" in first.stdout
    assert _final_table(first.stdout) == {
        "app": ("callable", 12, 12, 0),
        "billing": ("webhook", 12, 12, 0),
        "audit": ("postgres", 12, 12, 0),
    }
    assert "webhook signatures verified: 12, refused: 0" in first.stdout
    assert "events of the rolled-back transaction in the table: 0" in first.stdout
    assert "All events delivered to every sink." in first.stdout

    # The server stays up so that the printed commands work, until --stop.
    assert f"stop it with: outbox demo --stop --data-dir '{data_dir}'" in first.stdout
    assert _status(tmp_path, first.stdout).returncode == 0
    assert "delivered" in _dashboard_events_page(tmp_path, first.stdout)
    try:
        again = _demo(tmp_path, "--data-dir", str(data_dir))
        assert again.returncode == 0, again.stdout + again.stderr
        assert "Using the embedded PostgreSQL already running from" in again.stdout
    finally:
        stopped = _demo(tmp_path, "--stop", "--data-dir", str(data_dir))
    assert stopped.returncode == 0
    assert "Stopping the embedded server" in stopped.stdout
    assert _status(tmp_path, first.stdout).returncode == 1  # the server is gone


def _status(tmp_path: Path, demo_output: str) -> subprocess.CompletedProcess[str]:
    """``outbox status`` as the demo told the reader to run it."""
    [line] = [line for line in demo_output.splitlines() if "outbox status --database-url" in line]
    url = line.split("'")[1]
    return subprocess.run(
        [sys.executable, "-m", "outbox.cli", "status", "--database-url", url],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def _dashboard_events_page(tmp_path: Path, demo_output: str) -> str:
    """The events page of ``outbox dashboard`` as the demo told the reader to start it (on a
    free port: 8050 may be taken on this machine)."""
    [line] = [line for line in demo_output.splitlines() if "dashboard --database-url" in line]
    url = line.split("'")[1]
    port = free_port()
    command = [sys.executable, "-m", "outbox.cli", "dashboard", "--database-url", url]
    with subprocess.Popen(
        [*command, "--port", str(port)], cwd=tmp_path, stderr=subprocess.PIPE, text=True
    ) as server:
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    return httpx.get(f"http://127.0.0.1:{port}/events", timeout=5).text
                except httpx.TransportError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
        finally:
            server.terminate()
            server.wait(timeout=10)


def test_demo_on_a_given_database(tmp_path: Path, database_url: str) -> None:
    result = _demo(tmp_path, "--database-url", database_url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert _final_table(result.stdout)["audit"] == ("postgres", 12, 12, 0)
