"""Database URLs, normalised and checked at the edge.

Users write ``postgres://``, ``postgresql://`` or ``postgresql+psycopg://`` (or a libpq
``key=value`` string); psycopg wants the libpq form and SQLAlchemy wants a driver it has.
A URL that cannot work is refused here with :class:`InvalidURL`, whose message never quotes
the URL: a password is in it.
"""

from __future__ import annotations

import functools
import re
from urllib.parse import urlsplit, urlunsplit

import psycopg

__all__ = ["InvalidURL", "check_database_url", "libpq_url", "sqlalchemy_url", "with_database"]

_SCHEME = re.compile(r"^(postgres|postgresql)(\+[a-z0-9_]+)?://", re.IGNORECASE)
_ANY_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)


class InvalidURL(ValueError):
    """A database URL that cannot work; the message says why without quoting it."""


def check_database_url(url: str) -> str:
    """``url`` if it is a well-formed PostgreSQL URL or libpq string; else :class:`InvalidURL`."""
    problem = _url_problem(url) if _ANY_SCHEME.match(url) else _conninfo_problem(url)
    if problem is not None:
        raise InvalidURL(f"invalid database URL: {problem}")
    return url


def _url_problem(url: str) -> str | None:
    if not _SCHEME.match(url):
        return "the scheme must be postgresql:// (or postgres://)"
    if any(char.isspace() for char in url):
        return "it contains a space (write %20)"
    try:
        netloc = urlsplit(url).netloc
    except ValueError:
        return "it is not a well-formed URL (unbalanced [ ] around an IPv6 address?)"
    hosts = netloc.rpartition("@")[2]
    for host in hosts.split(","):  # libpq allows several: h1:5432,h2:5433
        port = host.rpartition("]")[2] if host.startswith("[") else host
        if ":" in port and not _valid_port(port.rpartition(":")[2]):
            return "the port is not a number in 1..65535"
    return None


def _valid_port(text: str) -> bool:
    return text == "" or (text.isdigit() and 1 <= int(text) <= 65535)


def _conninfo_problem(conninfo: str) -> str | None:
    try:
        psycopg.conninfo.conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        return "neither a postgresql:// URL nor a libpq key=value string"
    return None


def libpq_url(url: str) -> str:
    """The URL in the form libpq (and so psycopg) accepts; :class:`InvalidURL` if it cannot
    work."""
    return _SCHEME.sub("postgresql://", check_database_url(url), count=1)


def with_database(url: str, name: str) -> str:
    """``url`` (libpq form) pointing at database ``name`` on the same server."""
    return urlunsplit(urlsplit(libpq_url(url))._replace(path="/" + name))


def sqlalchemy_url(url: str, *, driver: str = "psycopg") -> str:
    """The URL with an explicit SQLAlchemy driver (psycopg 3 by default)."""
    return _SCHEME.sub(f"postgresql+{driver}://", url, count=1)


@functools.cache
def options_without_jit(url: str) -> str:
    """The server ``options`` of libpq URL ``url`` (if any), with ``jit`` switched off."""
    options = psycopg.conninfo.conninfo_to_dict(url).get("options") or ""
    return f"{options} -c jit=off".strip()
