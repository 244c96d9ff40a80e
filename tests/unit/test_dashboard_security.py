"""Who may reach the dashboard: where it listens, its basic auth, and the command's refusal to
listen on a network address without one. No database needed: the static files answer without
one, and the command refuses before it connects."""

from __future__ import annotations

import base64
import os
import subprocess
import sys

import pytest
from starlette.testclient import TestClient

from outbox.dashboard import create_app
from outbox.dashboard.security import Credentials, check_bind, credentials, is_loopback
from outbox.exceptions import ConfigError
from outbox.settings import Settings

NOWHERE = "postgresql://nobody@127.0.0.1:1/x"
STYLESHEET = "/static/dashboard.css"


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def test_credentials_from_the_environment_before_the_file() -> None:
    settings = Settings.from_values(dashboard={"user": "file-user", "password": "file-pass"})
    assert credentials(settings, {}) == Credentials("file-user", "file-pass")
    environ = {"OUTBOX_DASHBOARD_USER": "ops", "OUTBOX_DASHBOARD_PASSWORD": "s3cret"}
    assert credentials(settings, environ) == Credentials("ops", "s3cret")
    assert credentials(Settings.from_values(), {}) is None
    assert "s3cret" not in repr(credentials(settings, environ))


def test_half_a_login_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="OUTBOX_DASHBOARD_PASSWORD is not set"):
        credentials(Settings.from_values(), {"OUTBOX_DASHBOARD_USER": "ops"})
    with pytest.raises(ConfigError, match="OUTBOX_DASHBOARD_USER is not set"):
        credentials(Settings.from_values(dashboard={"password": "x"}), {})


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
        ("dashboard.internal", False),
    ],
)
def test_only_loopback_listens_without_auth(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
    if loopback:
        check_bind(host, None)
    else:
        with pytest.raises(ConfigError, match=f"refusing to listen on {host} without basic auth"):
            check_bind(host, None)
    check_bind(host, Credentials("ops", "pw"))  # with auth, anywhere


def test_basic_auth_guards_every_request() -> None:
    app = create_app(Settings.from_values(database_url=NOWHERE), auth=Credentials("ops", "pw"))
    with TestClient(app) as client:
        refused = client.get(STYLESHEET)
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"].startswith("Basic ")
        for headers in (
            basic("ops", "wrong"),
            basic("someone", "pw"),
            basic("ops", "pw "),
            {"Authorization": "Basic !!!notbase64"},
            {"Authorization": "Bearer pw"},
            {"Authorization": "Basic " + base64.b64encode(b"opspw").decode()},
        ):
            assert client.get(STYLESHEET, headers=headers).status_code == 401, headers
        assert client.get(STYLESHEET, headers=basic("ops", "pw")).status_code == 200


def test_without_auth_configured_nothing_is_asked() -> None:
    with TestClient(create_app(Settings.from_values(database_url=NOWHERE))) as client:
        response = client.get(STYLESHEET)
    assert response.status_code == 200
    cookie = response.headers["set-cookie"]
    assert "outbox_csrf=" in cookie
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie


def test_the_command_refuses_a_network_address_without_auth() -> None:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_")}
    result = subprocess.run(
        [sys.executable, "-m", "outbox.cli", "dashboard", "--host", "0.0.0.0"],
        env={**environ, "OUTBOX_DATABASE_URL": NOWHERE},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "refusing to listen on 0.0.0.0 without basic auth" in result.stderr
    assert "OUTBOX_DASHBOARD_USER" in result.stderr
