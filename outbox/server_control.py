"""Servers a test controls: one it starts and stops itself (:class:`ServerProcess`), a proxy
in front of one it may not stop (:class:`TcpProxy`, cut and restored), and
:func:`require_server` to skip a test when a server does not answer (or fail it where
``OUTBOX_REQUIRE_BROKERS=1``). For sink plugins' tests, beside :mod:`outbox.end_to_end`.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = ["REQUIRE_VARIABLE", "ServerProcess", "TcpProxy", "free_port", "require_server"]

REQUIRE_VARIABLE = "OUTBOX_REQUIRE_BROKERS"
"""Set to ``1`` where every broker test must run: a server that does not answer, or a
client library that is not installed, then fails the test instead of skipping it."""


def require_server(name: str, address: str, *, hint: str = "") -> None:
    """Return if something accepts TCP connections at ``address`` (``host:port``); else
    skip the test, saying which server and where (fail it where ``OUTBOX_REQUIRE_BROKERS=1``)."""
    import pytest

    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return
    except OSError as error:
        reason = f"{name} does not answer at {address} ({error.strerror or error})"
    if os.environ.get(REQUIRE_VARIABLE) == "1":
        pytest.fail(f"{reason}, and {REQUIRE_VARIABLE}=1 says every broker test must run")
    pytest.skip(f"{reason}{'; ' + hint if hint else ''}")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class TcpProxy:
    """Forwards 127.0.0.1:``port`` to ``target`` (``host:port``) until :meth:`cut`, which
    closes every connection and the listening socket (a client then meets a refused
    connection), until :meth:`restore`. A ``with`` block closes it."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self._target = (host, int(port))
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        """Listen again."""
        listener = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        """Close the listening socket and every connection through it."""
        with self._lock:
            closing = [*self._sockets, *([self._listener] if self._listener else [])]
            self._sockets.clear()
            self._listener = None
        for sock in closing:
            _close(sock)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                upstream = socket.create_connection(self._target, timeout=5)
            except OSError:
                _close(client)
                continue
            upstream.settimeout(None)
            with self._lock:
                if self._listener is not listener:  # cut meanwhile
                    _close(client)
                    _close(upstream)
                    return
                self._sockets.update((client, upstream))
            for source, destination in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, destination), daemon=True).start()

    def _pump(self, source: socket.socket, destination: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                destination.sendall(data)
        except OSError:
            pass  # one side closed, or cut
        finally:
            _close(source)
            _close(destination)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cut()


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


class ServerProcess:
    """A server binary a test starts itself (a broker to stop and start again): running
    once its ``port`` on 127.0.0.1 accepts connections; stopped when the ``with`` block ends."""

    def __init__(self, command: Sequence[str], port: int, log: Path) -> None:
        self.command = list(command)
        self.port = port
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self, timeout: float = 30.0) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(self.command, stdout=out, stderr=subprocess.STDOUT)
        give_up = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > give_up:
                    self.stop()
                    tail = self.log.read_text(errors="replace")[-2000:]
                    raise AssertionError(f"{self.command[0]} did not start:\n{tail}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM, and SIGKILL if it is still running 10 seconds later."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
