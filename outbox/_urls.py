"""Database URLs, normalised at the edge.

Users write ``postgres://``, ``postgresql://`` or ``postgresql+psycopg://``; psycopg wants the
libpq form and SQLAlchemy wants a driver it has.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

_SCHEME = re.compile(r"^(postgres|postgresql)(\+[a-z0-9_]+)?://", re.IGNORECASE)


def libpq_url(url: str) -> str:
    """The URL in the form libpq (and so psycopg) accepts."""
    return _SCHEME.sub("postgresql://", url, count=1)


def with_database(url: str, name: str) -> str:
    """``url`` (libpq form) pointing at database ``name`` on the same server."""
    return urlunsplit(urlsplit(libpq_url(url))._replace(path="/" + name))


def sqlalchemy_url(url: str, *, driver: str = "psycopg") -> str:
    """The URL with an explicit SQLAlchemy driver (psycopg 3 by default)."""
    return _SCHEME.sub(f"postgresql+{driver}://", url, count=1)
