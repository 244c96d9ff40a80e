"""``outbox dashboard``: a web page over the outbox table (extra ``[dashboard]``).

Serve it with the CLI, or mount it in an application of your own::

    from outbox.dashboard import create_app
    from outbox.settings import load_settings

    app.mount("/outbox", create_app(load_settings(), allow_actions=False))

It reads through the same admin functions as the CLI and, with ``allow_actions``, repairs
through the same plan and apply code. See docs/dashboard.md.
"""

from __future__ import annotations

EXTRA_MODULES = {"jinja2", "markupsafe", "multipart", "psycopg_pool", "starlette", "uvicorn"}

try:
    from outbox.dashboard.app import create_app
except ModuleNotFoundError as error:
    if error.name not in EXTRA_MODULES:
        raise
    raise ModuleNotFoundError(
        f"the dashboard needs its extra: pip install 'outbox-relay[dashboard]' "
        f"(no module named {error.name!r})",
        name=error.name,
    ) from error

__all__ = ["create_app"]
