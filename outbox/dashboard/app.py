"""The dashboard's ASGI application: its routes, its database pool, its templates.

:func:`create_app` is what ``outbox dashboard`` serves, and what an application mounts to
serve it itself (``app.mount("/outbox", create_app(settings))``). The pages are in
:mod:`outbox.dashboard.pages`, the actions in :mod:`outbox.dashboard.actions`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from outbox import _queries, runtime
from outbox._urls import libpq_url
from outbox.dashboard.actions import carry_out, confirm, switch_sink
from outbox.dashboard.pages import event_page, events_page, overview_page, sinks_page
from outbox.dashboard.security import BasicAuth, Credentials, CsrfCookie, credentials
from outbox.dashboard.templating import render, templates
from outbox.settings import Settings

Connection = psycopg.AsyncConnection[Any]
CONNECT_TIMEOUT = 5.0


class Database:
    """A small pool of autocommit connections, opened on the first request (an application
    that mounts the dashboard does not run its lifespan). With ``read_only`` every connection
    refuses writes: a role with SELECT alone is enough."""

    def __init__(self, url: str, *, read_only: bool) -> None:
        self.read_only = read_only
        self._pool = AsyncConnectionPool(
            url,
            min_size=1,
            max_size=4,
            open=False,
            kwargs={"autocommit": True},
            configure=self._configure,
            timeout=CONNECT_TIMEOUT,
            name="outbox-dashboard",
        )
        self._opened = False
        self._lock = asyncio.Lock()

    async def _configure(self, conn: Connection) -> None:
        read_only = "on" if self.read_only else "off"
        await conn.execute(_queries.render("dashboard_session"), {"read_only": read_only})

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        if not self._opened:
            async with self._lock:
                if not self._opened:
                    await self._pool.open(wait=False)
                    self._opened = True
        try:
            async with self._pool.connection() as conn:
                yield conn
        except PoolTimeout as error:
            raise HTTPException(
                503, f"the database does not answer (no connection in {CONNECT_TIMEOUT:g}s)"
            ) from error
        except psycopg.OperationalError as error:
            raise HTTPException(503, f"the database connection failed: {error}") from error

    async def close(self) -> None:
        if self._opened:
            await self._pool.close()
            self._opened = False


def create_app(
    settings: Settings, *, allow_actions: bool = False, auth: Credentials | None = None
) -> Starlette:
    """The dashboard over the outbox ``settings`` name (its database, schema and sinks).

    Read-only unless ``allow_actions``. ``auth`` defaults to the configuration's basic auth
    (:func:`outbox.dashboard.security.credentials`); without any, every request is served.
    """
    auth = auth or credentials(settings)
    database = Database(libpq_url(runtime.database_url(settings)), read_only=not allow_actions)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await database.close()

    middleware = [Middleware(CsrfCookie)]
    if auth is not None:
        middleware.insert(0, Middleware(BasicAuth, auth=auth))
    app = Starlette(
        routes=[
            Route("/", overview_page, name="overview"),
            Route("/events", events_page, name="events"),
            Route("/events/{event_id:int}", event_page, name="event"),
            Route("/sinks", sinks_page, name="sinks"),
            Route("/sinks/{name}/{switch}", switch_sink, methods=["POST"], name="switch"),
            Route("/actions/{action}", confirm, name="confirm"),
            Route("/actions/{action}", carry_out, methods=["POST"], name="carry_out"),
            Mount("/static", StaticFiles(packages=[("outbox.dashboard", "static")]), name="static"),
        ],
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={HTTPException: _error_page},
    )
    app.state.settings = settings
    app.state.database = database
    app.state.allow_actions = allow_actions
    app.state.templates = templates()
    return app


async def _error_page(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    return render(request, "error.html", {"error": error}, status_code=error.status_code)
