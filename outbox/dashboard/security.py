"""Who may see the dashboard and who may act through it.

- **Where it listens**: loopback by default; any other address only with HTTP basic auth
  configured (:func:`check_bind`), so that a dashboard is never open to a network by accident.
- **Basic auth** (:class:`BasicAuth`): ``OUTBOX_DASHBOARD_USER`` and
  ``OUTBOX_DASHBOARD_PASSWORD``, or ``[dashboard] user`` and ``password`` (by reference) in the
  configuration; compared in constant time.
- **CSRF** (:class:`CsrfCookie`, :func:`check_csrf`): every form that changes something
  carries the token of a ``SameSite=Strict`` cookie (the double-submit pattern); a request
  without the matching pair is refused before it is read any further.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import ipaddress
import os
import secrets
from collections.abc import Mapping
from http.cookies import SimpleCookie
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from outbox.exceptions import ConfigError
from outbox.settings import Settings

USER_VARIABLE = "OUTBOX_DASHBOARD_USER"
PASSWORD_VARIABLE = "OUTBOX_DASHBOARD_PASSWORD"
CSRF_COOKIE = "outbox_csrf"
CSRF_FIELD = "csrf"


@dataclasses.dataclass(frozen=True)
class Credentials:
    user: str
    password: str = dataclasses.field(repr=False)


def credentials(settings: Settings, environ: Mapping[str, str] | None = None) -> Credentials | None:
    """The basic auth the configuration asks for, the environment first; None for none."""
    environ = os.environ if environ is None else environ
    configured = settings.dashboard
    user = environ.get(USER_VARIABLE) or configured.user
    password = environ.get(PASSWORD_VARIABLE) or (
        configured.password.get_secret_value() if configured.password else None
    )
    if bool(user) != bool(password):
        missing = PASSWORD_VARIABLE if user else USER_VARIABLE
        raise ConfigError(
            [("dashboard", f"basic auth needs a user and a password: {missing} is not set")]
        )
    return Credentials(user, password) if user and password else None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, auth: Credentials | None) -> None:
    """Refuse to listen on ``host`` if it is not loopback and no basic auth is configured."""
    if auth is None and not is_loopback(host):
        raise ConfigError(
            [
                (
                    "--host",
                    f"refusing to listen on {host} without basic auth: set {USER_VARIABLE} "
                    f"and {PASSWORD_VARIABLE} (or [dashboard] user and password), or listen "
                    "on 127.0.0.1",
                )
            ]
        )


class BasicAuth:
    """Asks every HTTP request for ``auth``'s user and password."""

    def __init__(self, app: ASGIApp, auth: Credentials) -> None:
        self.app = app
        self.expected = (auth.user.encode(), auth.password.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._allowed(dict(scope["headers"]).get(b"authorization")):
            await self.app(scope, receive, send)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"www-authenticate", b'Basic realm="outbox", charset="UTF-8"'),
                    (b"content-type", b"text/plain; charset=utf-8"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b"authentication required\n"})

    def _allowed(self, header: bytes | None) -> bool:
        scheme, _, encoded = (header or b"").partition(b" ")
        if scheme.lower() != b"basic":
            return False
        try:
            user, separator, password = base64.b64decode(encoded, validate=True).partition(b":")
        except (binascii.Error, ValueError):
            return False
        # Both compared, always: the time taken says nothing about which one was wrong.
        user_ok = secrets.compare_digest(user, self.expected[0])
        password_ok = secrets.compare_digest(password, self.expected[1])
        return bool(separator) and user_ok and password_ok


class CsrfCookie:
    """Gives each browser a CSRF token in a cookie, and each request its token in
    ``scope["state"]["csrf"]`` for the forms to carry."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        token = _cookie(scope, CSRF_COOKIE)
        fresh = token is None or len(token) < 32
        if fresh:
            token = secrets.token_urlsafe(32)
        scope.setdefault("state", {})["csrf"] = token

        async def send_with_cookie(message: Message) -> None:
            if fresh and message["type"] == "http.response.start":
                path = scope.get("root_path") or "/"
                MutableHeaders(scope=message).append(
                    "set-cookie",
                    f"{CSRF_COOKIE}={token}; Path={path}; HttpOnly; SameSite=Strict",
                )
            await send(message)

        await self.app(scope, receive, send_with_cookie)


def check_csrf(scope: Scope, form: Mapping[str, Any]) -> None:
    """Refuse (403) a form whose token is not the browser's cookie's."""
    cookie = _cookie(scope, CSRF_COOKIE)
    sent = form.get(CSRF_FIELD)
    if not cookie or not isinstance(sent, str) or not secrets.compare_digest(sent, cookie):
        raise HTTPException(
            403, "the form's CSRF token does not match this browser's: reload the page and retry"
        )


def _cookie(scope: Scope, name: str) -> str | None:
    header = dict(scope["headers"]).get(b"cookie")
    if not header:
        return None
    cookies: SimpleCookie = SimpleCookie()
    try:
        cookies.load(header.decode("latin-1"))
    except Exception:  # a malformed Cookie header: as if there were none
        return None
    morsel = cookies.get(name)
    return morsel.value if morsel else None
