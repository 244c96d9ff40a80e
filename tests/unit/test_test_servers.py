"""The server the tests run on: chosen as documented, named in pytest's header line, and
stopped at the end of the session, leaving no process behind."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import psycopg
import pytest

from outbox.testing import ServerChoice, choose_server, describe_server, postgres_server

ROOT = Path(__file__).resolve().parents[2]

ONE_DATABASE_TEST = """
import psycopg

def test_uses_a_database(database_url):
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM outbox_events").fetchone() == (0,)
"""


def _no_docker() -> str:
    return "no Docker engine answers at unix:///var/run/docker.sock"


def test_a_given_url_comes_first() -> None:
    choice = choose_server({"OUTBOX_TEST_DATABASE_URL": "postgresql://x@h/db"}, _no_docker)
    assert choice == ServerChoice("url", "OUTBOX_TEST_DATABASE_URL is set", "postgresql://x@h/db")


def test_docker_when_an_engine_answers() -> None:
    assert choose_server({}, lambda: None).kind == "docker"


def test_embedded_otherwise_and_the_header_says_why() -> None:
    choice = choose_server({}, _no_docker)
    assert choice.kind == "embedded"
    line = describe_server(choice)
    assert line.startswith("embedded, PostgreSQL 1")
    assert "no Docker engine answers" in line


def test_the_header_names_a_given_server_and_its_version() -> None:
    url = os.environ.get("OUTBOX_TEST_DATABASE_URL")
    if not url:
        pytest.skip("OUTBOX_TEST_DATABASE_URL is not set")
    with psycopg.connect(url) as conn:
        version = conn.info.parameter_status("server_version")
    line = describe_server(choose_server())
    assert line == f"given URL (OUTBOX_TEST_DATABASE_URL is set), PostgreSQL {version}"


def test_a_docker_container_serves_and_is_removed() -> None:
    choice = choose_server({})
    if choice.kind != "docker":
        pytest.skip(f"the Docker path needs a Docker engine: {choice.reason}")
    with postgres_server(choice) as url, psycopg.connect(url) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert "Docker container postgres:" in describe_server(choice)


def _processes_marked(marker: str, tmp: Path) -> list[int]:
    """Processes that inherited ``marker`` in their environment or name ``tmp``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in environ or str(tmp).encode() in cmdline:
            found.append(int(entry.name))
    return found


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads processes from /proc")
def test_a_pytest_session_on_the_embedded_server_leaves_no_process(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    session = tmp_path / "session"
    session.mkdir()
    shutil.copy(ROOT / "conftest.py", session / "conftest.py")
    (session / "test_one.py").write_text(ONE_DATABASE_TEST, encoding="utf-8")
    # The child's temporary files, under a short path: a PostgreSQL socket's path is limited
    # to about 100 bytes, which pytest's own temporary directories can exceed.
    temp = Path(tempfile.mkdtemp(prefix="ox-"))
    request.addfinalizer(lambda: shutil.rmtree(temp, ignore_errors=True))
    marker = f"OUTBOX_TEST_SESSION={uuid.uuid4().hex}"
    env = {k: v for k, v in os.environ.items() if k != "OUTBOX_TEST_DATABASE_URL"}
    env |= dict([marker.split("=", 1)], TMPDIR=str(temp), DOCKER_HOST="unix:///nonexistent")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", str(session)],
        cwd=session,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    left = _processes_marked(marker, temp)
    for pid in left:  # ours, by id: do not leave them running for the next test
        os.kill(pid, signal.SIGKILL)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "PostgreSQL: embedded, PostgreSQL" in result.stdout
    assert left == [], f"the session left processes {left} running"
